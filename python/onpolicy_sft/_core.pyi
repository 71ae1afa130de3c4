"""Hand-written stubs of the Rust extension onpolicy_sft._core (checked with mypy.stubtest)."""

import os
from collections.abc import Sequence
from typing import Any, final

from onpolicy_sft.errors import OnpolicyError

__version__: str

# ---------------------------------------------------------------- verify

_VerdictTuple = tuple[bool | None, str | None, str | None, str]

VERIFY_MAX_PREDICTION_BYTES: int
VERIFY_MAX_GOLD_BYTES: int
VERIFY_MAX_THREADS: int

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

FINGERPRINT_BYTES: int

class LedgerError(OnpolicyError): ...
class LedgerCorruptError(LedgerError): ...
class LedgerLockedError(LedgerError): ...

@final
class LedgerCore:
    def __new__(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        readonly: bool = False,
        repair: bool = False,
        segment_bytes: int | None = None,
    ) -> LedgerCore: ...
    def warnings(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...
    def add_problems(self, ids: Sequence[str], references: Sequence[str]) -> None: ...
    def record(
        self,
        attempts: list[Any],
        tok_lens: bytes,
        tokens: bytes,
        behavior: bytes,
        base_lens: bytes,
        base: bytes,
    ) -> None: ...
    def finish_stage(self, ids: Sequence[str], stage: str) -> None: ...
    def pending(self, stage: str) -> list[str]: ...
    def problem_ids(self) -> list[str]: ...
    def has_problem(self, problem_id: str) -> bool: ...
    def sync_problems(
        self,
        ids: Sequence[str],
        references: Sequence[str],
        fingerprints: bytes | None,
        on_change: str,
    ) -> dict[str, Any]: ...
    def set_aside(self, ids: Sequence[str]) -> tuple[int, int]: ...
    def fingerprints(self) -> bytes: ...
    def attempts(self, problem_id: str) -> dict[str, bytes]: ...
    def read_locs(self, locs: bytes) -> dict[str, bytes]: ...
    def references(self, problems: bytes) -> tuple[bytes, bytes]: ...
    def assign(self, selection: str = "likeliest", seed: int = 0) -> tuple[bytes, bytes]: ...
    def stats(self, selection: str = "likeliest", seed: int = 0) -> dict[str, Any]: ...
    @staticmethod
    def merge(
        paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
    ) -> list[str]: ...

# ------------------------------------------------------------ end ledger
