"""Hand-written stubs of the Rust extension onpolicy_sft._core (checked with mypy.stubtest)."""

__version__: str

# ---------------------------------------------------------------- verify

from collections.abc import Sequence

_VerdictTuple = tuple[bool | None, str | None, str | None, str]

VERIFY_MAX_PREDICTION_BYTES: int
VERIFY_MAX_GOLD_BYTES: int

def verify(prediction: str, gold: str) -> _VerdictTuple: ...
def verify_batch(
    predictions: Sequence[str], golds: Sequence[str], threads: int | None = None
) -> list[_VerdictTuple]: ...
def extract_answer(text: str) -> str | None: ...
def verify_case(
    prediction: str,
    gold: str,
    harness: str,
    match_types: Sequence[str],
    precision: int,
    strict: bool,
    allow_set_relation_comp: bool,
) -> _VerdictTuple: ...

# ------------------------------------------------------------ end verify

# ---------------------------------------------------------------- ledger

# ------------------------------------------------------------ end ledger
