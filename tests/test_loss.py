"""PolicyLoss (torch backend) against the materialised reference, and patch_model.

The reference (kernels/reference.py) builds the full logits in float64 and
writes every weight with explicit loops; the fused chunked backend must agree on
loss, logprobs, entropy, weights and the gradients of hidden, weight and bias
under a random upstream gradient.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any

import pytest
import torch

from onpolicy_sft.integrations import patch_model, unpatch_model
from onpolicy_sft.kernels import chunked, torch_rows
from onpolicy_sft.kernels.reference import policy_loss_reference
from onpolicy_sft.losses import LossError, PolicyLoss

# (atol, rtol) per compared quantity, keyed by input dtype. Errors are measured as
# max|ours - ref| <= atol + rtol * max|ref| against float64 references of the *same*
# (rounded) inputs. bf16/fp16 differ because the logits GEMM and d logits run in that
# dtype; measured worst cases over all schemes (3 seeds, relative to max|ref|):
# bf16 values 2.4e-3, weights 4.1e-3, grads 4.0e-2; fp16 values 7.3e-4, weights
# 1.1e-3, grads 1.0e-2; fp32 values 3.6e-7, weights 5.1e-7, grads 4.9e-6.
TOL: dict[torch.dtype, dict[str, tuple[float, float]]] = {
    torch.float32: {"value": (1e-6, 1e-5), "weights": (1e-7, 1e-5), "grad": (1e-7, 5e-5)},
    torch.float16: {"value": (1e-5, 3e-3), "weights": (1e-6, 4e-3), "grad": (1e-6, 3e-2)},
    torch.bfloat16: {"value": (1e-5, 1e-2), "weights": (1e-6, 1.5e-2), "grad": (1e-5, 1e-1)},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Every scheme x level (and the options that change the gradient or the weight step).
SCHEMES: dict[str, dict[str, Any]] = {
    "sft": dict(scheme="sft"),
    "sft-seqnorm": dict(scheme="sft", normalize="sequence"),
    "dft": dict(scheme="dft"),
    "is-token": dict(scheme="is"),
    "is-token-clip": dict(scheme="is", clip=(0.8, 1.2)),
    "is-seq": dict(scheme="is", level="sequence"),
    "is-seq-mean": dict(scheme="is", level="sequence", seq_mean=True, clip=(0.0, 5.0)),
    "idft": dict(scheme="idft"),
    "idft-gamma-only": dict(scheme="idft", idft_detach_gamma_only=True),
    "idft-ramp": dict(scheme="idft", idft_lambda=0.5),  # the authors' schedule mid-ramp
    "dft-microbatch": dict(scheme="dft", normalize="micro_batch"),
    "pear-token": dict(scheme="pear"),
    "pear-block3": dict(scheme="pear", level="block", pear_block=3),
    "pear-seq": dict(scheme="pear", level="sequence"),
}


def make_case(
    n: int = 13,
    h: int = 16,
    v: int = 37,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    logit_scale: float = 1.0,
    with_bias: bool = True,
    masked: tuple[int, ...] = (0, 5, 6),
) -> dict[str, Any]:
    """A small batch: 3 sequences, some masked tokens, behaviour logprobs near the
    model's own (so PEAR deltas are partly inside their clip) with one missing."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).double()
    weight = (torch.randn(v, h, generator=g) * logit_scale / math.sqrt(h)).to(dtype).double()
    bias = (torch.randn(v, generator=g) * 0.1).to(dtype).double() if with_bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    for i in masked:
        if i < n:
            labels[i] = -100
    cuts = sorted({0, n // 3, (2 * n) // 3, n})
    seq_ids = torch.zeros(n, dtype=torch.long)
    for k, (a, b) in enumerate(itertools.pairwise(cuts)):
        seq_ids[a:b] = k
    with torch.no_grad():
        logits = hidden @ weight.t() + (bias if bias is not None else 0)
        lp = torch.log_softmax(logits, -1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
    blogp = lp + 0.15 * torch.randn(n, generator=g, dtype=torch.float64)
    upstream = torch.rand((), generator=g, dtype=torch.float64) * 2 + 0.5
    return dict(
        hidden=hidden,
        weight=weight,
        bias=bias,
        labels=labels,
        seq_ids=seq_ids,
        blogp=blogp,
        upstream=upstream,
        dtype=dtype,
    )


def run_ours(case: dict[str, Any], opts: dict[str, Any], *, device: str = "cpu", **call: Any):
    dt = case["dtype"]
    h = case["hidden"].to(device=device, dtype=dt).requires_grad_()
    w = case["weight"].to(device=device, dtype=dt).requires_grad_()
    b = None if case["bias"] is None else case["bias"].to(device=device, dtype=dt)
    if b is not None:
        b.requires_grad_()
    call.setdefault("behavior_logprobs", case["blogp"].float())
    call.setdefault("seq_ids", case["seq_ids"])
    call = {k: v.to(device) if torch.is_tensor(v) else v for k, v in call.items()}
    out = PolicyLoss(**opts)(h, w, case["labels"].to(device), bias=b, **call)
    (out.loss * case["upstream"].float()).backward()
    return out, h.grad, w.grad, None if b is None else b.grad


def run_ref(case: dict[str, Any], opts: dict[str, Any], **call: Any):
    o = {k: v for k, v in opts.items() if k not in ("backend", "chunk_size", "grad_accum")}
    h = case["hidden"].clone().requires_grad_()
    w = case["weight"].clone().requires_grad_()
    b = None if case["bias"] is None else case["bias"].clone().requires_grad_()
    call.setdefault("behavior_logprobs", case["blogp"])
    call.setdefault("seq_ids", case["seq_ids"])
    ref = policy_loss_reference(h, w, case["labels"], bias=b, **o, **call)
    (ref.loss * case["upstream"]).backward()
    return ref, h.grad, w.grad, None if b is None else b.grad


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: tuple[float, float]):
    ours, ref = ours.detach().cpu().double(), ref.detach().cpu().double()
    assert torch.isfinite(ours).all(), f"{name}: non-finite values {ours}"
    err = (ours - ref).abs().max().item() if ref.numel() else 0.0
    bound = tol[0] + tol[1] * (ref.abs().max().item() if ref.numel() else 0.0)
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


def compare(case, opts, *, backend="torch", chunk_size=4, tol=None, device="cpu", **call):
    o = dict(opts, backend=backend, chunk_size=chunk_size)
    ours, gh, gw, gb = run_ours(case, o, device=device, **call)
    ref, rh, rw, rb = run_ref(case, opts, **call)
    tol = tol or TOL[case["dtype"]]
    assert_close("loss", ours.loss, ref.loss, tol["value"])
    assert_close("logprobs", ours.logprobs, ref.logprobs, tol["value"])
    assert_close("entropy", ours.entropy, ref.entropy, tol["value"])
    assert_close("weights", ours.weights, ref.weights, tol["weights"])
    assert_close("grad_hidden", gh, rh, tol["grad"])
    assert_close("grad_weight", gw, rw, tol["grad"])
    if rb is not None:
        assert_close("grad_bias", gb, rb, tol["grad"])
    return ours, ref


# --------------------------------------------------------------- reference


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("opts", list(SCHEMES.values()), ids=list(SCHEMES))
def test_torch_backend_matches_reference(opts, dtype):
    case = make_case(dtype=dtype, seed=zlib.crc32(repr(opts).encode()) % 1000)
    compare(case, opts)


@pytest.mark.parametrize("opts", list(SCHEMES.values()), ids=list(SCHEMES))
def test_chunk_size_does_not_change_the_result(opts):
    case = make_case(n=11, with_bias=False)
    a, *ga = run_ours(case, dict(opts, backend="torch", chunk_size=1))
    b, *gb = run_ours(case, dict(opts, backend="torch", chunk_size=64))
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.weights, b.weights, rtol=1e-5, atol=1e-6)
    for x, y in zip(ga, gb):
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_weights_follow_the_formulas_by_hand():
    """A 4-token sequence small enough to write PEAR and is-seq out by hand."""
    case = make_case(n=4, masked=(), with_bias=False)
    case["seq_ids"] = torch.zeros(4, dtype=torch.long)
    ref, *_ = run_ref(case, dict(scheme="sft"))
    lp = ref.logprobs.double()
    bl = case["blogp"]
    d = (lp - bl).clamp(-0.08, 0.3)
    g = math.log(0.999)
    want_pear = torch.stack(
        [
            torch.exp((3 * g + d[1] + d[2] + d[3]).clamp(-10, 5)),
            torch.exp((2 * g + d[2] + d[3]).clamp(-10, 5)),
            torch.exp((1 * g + d[3]).clamp(-10, 5)),
            torch.tensor(1.0, dtype=torch.float64),
        ]
    )
    ours, *_ = run_ours(case, dict(scheme="pear", backend="torch"))
    torch.testing.assert_close(ours.weights.double(), want_pear, rtol=1e-5, atol=1e-6)
    # blocks of 2: tokens 0,1 see block {2,3}; tokens 2,3 see nothing
    blk = torch.exp((2 * g + d[2] + d[3]).clamp(-10, 5))
    one = torch.tensor(1.0, dtype=torch.float64)
    ours, *_ = run_ours(case, dict(scheme="pear", level="block", pear_block=2, backend="torch"))
    torch.testing.assert_close(
        ours.weights.double(), torch.stack([blk, blk, one, one]), rtol=1e-5, atol=1e-6
    )
    ours, *_ = run_ours(case, dict(scheme="is", level="sequence", clip=(0, 100)))
    want = torch.exp((lp - bl).sum()).expand(4)
    torch.testing.assert_close(ours.weights.double(), want, rtol=1e-5, atol=1e-6)
    ours, *_ = run_ours(case, dict(scheme="dft"))
    torch.testing.assert_close(ours.weights.double(), lp.exp(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- edge cases


@pytest.mark.parametrize("scheme", ["sft", "dft", "idft", "pear", "is"])
def test_single_token(scheme):
    case = make_case(n=1, masked=())
    compare(case, dict(scheme=scheme), chunk_size=1)


@pytest.mark.parametrize("opts", list(SCHEMES.values()), ids=list(SCHEMES))
def test_all_masked_gives_zero_loss_and_zero_grads(opts):
    case = make_case(n=6, masked=tuple(range(6)))
    out, gh, gw, gb = run_ours(case, dict(opts, backend="torch", chunk_size=4))
    assert out.loss.item() == 0.0
    for t in (gh, gw, gb, out.logprobs, out.weights, *out.stats.values()):
        assert torch.isfinite(t).all()
    assert gh.abs().max() == 0 and gw.abs().max() == 0 and gb.abs().max() == 0
    assert out.stats["tokens"].item() == 0


def test_one_sequence_fully_masked_is_ignored_by_sequence_normalisation():
    case = make_case(n=12, masked=(0, 1, 2, 3))  # first sequence (rows 0-3) all masked
    compare(case, dict(scheme="dft", normalize="sequence"))
    compare(case, dict(scheme="pear", level="sequence"))


@pytest.mark.parametrize("scheme", ["sft", "dft", "idft", "is", "pear"])
def test_huge_logits_stay_finite(scheme):
    # hidden ~ N(0,1), weight scaled so logits reach about +-1e4
    case = make_case(n=7, h=8, v=23, logit_scale=4e3, masked=(2,))
    with torch.no_grad():
        z = case["hidden"] @ case["weight"].t()
    assert z.abs().max() > 5e3
    # fp32 logits of 1e4 carry ~1e-3 absolute error, which the ratio weights amplify
    loose = {"value": (1e-2, 1e-3), "weights": (1e-3, 1e-2), "grad": (1e-3, 1e-3)}
    ours, _ref = compare(case, dict(scheme=scheme, pear_delta_clip=(-1e5, 1e5)), tol=loose)
    assert torch.isfinite(ours.entropy).all()


@pytest.mark.parametrize("scheme", ["dft", "idft"])
def test_minus_inf_bias_masks_vocabulary_without_nan(scheme):
    # a -inf bias is a common way to forbid tokens: 0 * log 0 must count as 0 in the entropy
    case = make_case(n=9, v=23, masked=(4,))
    banned = [3, 7, 11]
    case["bias"][banned] = float("-inf")
    for b in banned:
        case["labels"][case["labels"] == b] = 0
    ours, _ref = compare(case, dict(scheme=scheme))
    assert torch.isfinite(ours.entropy).all() and torch.isfinite(ours.loss)


def test_cu_seqlens_equals_seq_ids():
    case = make_case(n=12)
    cu = torch.tensor([0, 4, 8, 12])
    for opts in (SCHEMES["pear-token"], SCHEMES["is-seq"], SCHEMES["sft-seqnorm"]):
        a, *_ = run_ours(case, dict(opts, backend="torch"), seq_ids=None, cu_seqlens=cu)
        b, *_ = run_ours(case, dict(opts, backend="torch"))
        torch.testing.assert_close(a.loss, b.loss)
        torch.testing.assert_close(a.weights, b.weights)


def test_interleaved_seq_ids_group_by_id_in_position_order():
    case = make_case(n=10, masked=(3,))
    case["seq_ids"] = torch.tensor([5, 2, 5, 2, 2, 5, 9, 9, 2, 5])
    for opts in (SCHEMES["pear-token"], SCHEMES["pear-block3"], SCHEMES["is-seq-mean"]):
        compare(case, opts)


def test_three_d_inputs_are_one_sequence_per_row():
    case = make_case(n=12, masked=(0, 7))
    opts = dict(scheme="pear", backend="torch")
    flat, *_ = run_ours(case, opts, seq_ids=torch.arange(3).repeat_interleave(4))
    dt = case["dtype"]
    out = PolicyLoss(**opts)(
        case["hidden"].to(dt).reshape(3, 4, -1),
        case["weight"].to(dt),
        case["labels"].reshape(3, 4),
        behavior_logprobs=case["blogp"].float().reshape(3, 4),
        bias=case["bias"].to(dt),
    )
    torch.testing.assert_close(out.loss, flat.loss)
    torch.testing.assert_close(out.weights, flat.weights)


def test_normalizer_overrides_the_token_count():
    case = make_case()
    a, *_ = run_ours(case, dict(scheme="dft"))
    b, *_ = run_ours(case, dict(scheme="dft"), normalizer=100.0)
    count = (case["labels"] != -100).sum().item()
    torch.testing.assert_close(b.loss, a.loss * count / 100.0)
    compare(case, dict(scheme="dft"), normalizer=100.0)


# ------------------------------------------------ missing behaviour logprobs


def test_is_without_blogp_is_an_error_and_all_nan_is_dft():
    case = make_case()
    with pytest.raises(LossError, match=r"scheme='is' needs behavior_logprobs.*NaN"):
        run_ours(case, dict(scheme="is"), behavior_logprobs=None)
    nan = torch.full_like(case["blogp"].float(), float("nan"))
    a, *ga = run_ours(case, dict(scheme="is", clip=(0.0, 2.0)), behavior_logprobs=nan)
    b, *gb = run_ours(case, dict(scheme="dft"))
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.weights, b.weights)
    torch.testing.assert_close(ga[0], gb[0])
    # the convention is counted: every supervised token went without a behaviour log-prob
    assert float(a.stats["tokens_without_behavior"]) == float(a.stats["tokens"]) > 0
    assert float(b.stats["tokens_without_behavior"]) == 0.0


def test_is_nan_blogp_rows_use_the_dft_weight():
    case = make_case(masked=())
    bl = case["blogp"].clone()
    bl[2] = float("nan")
    out, *_ = run_ours(case, dict(scheme="is", clip=(0.0, 100.0)), behavior_logprobs=bl.float())
    torch.testing.assert_close(out.weights[2], out.logprobs[2].exp())
    compare(case, dict(scheme="is", clip=(0.0, 100.0)), behavior_logprobs=bl)


def test_pear_without_blogp_is_an_error_naming_the_option():
    case = make_case()
    with pytest.raises(LossError, match="missing_behavior='zero'"):
        run_ours(case, dict(scheme="pear"), behavior_logprobs=None)
    bl = case["blogp"].clone()
    bl[3] = float("nan")
    with pytest.raises(LossError, match=r"row 3.*missing_behavior='zero'"):
        run_ours(case, dict(scheme="pear"), behavior_logprobs=bl.float())
    # opted in: blogp = 0 for the missing token, like `is`
    compare(case, dict(scheme="pear", missing_behavior="zero"), behavior_logprobs=bl)
    compare(case, dict(scheme="pear", missing_behavior="zero"), behavior_logprobs=None)


def test_nan_blogp_on_masked_rows_is_fine_for_pear():
    case = make_case(masked=(0, 5, 6))
    bl = case["blogp"].clone()
    bl[5] = float("nan")
    compare(case, dict(scheme="pear"), behavior_logprobs=bl)


# ------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (dict(scheme="ppo"), "scheme='ppo' is unknown"),
        (dict(scheme="dft", level="sequence"), "applies to is and pear only"),
        (dict(scheme="pear", pear_block=4), "set level='block'"),
        (dict(scheme="is", clip=(2.0, 1.0)), "lo <= hi"),
        (dict(scheme="sft", normalize="batch"), "normalize='batch'"),
        (dict(scheme="is", seq_mean=True), "seq_mean applies"),
        (dict(scheme="sft", backend="cuda"), "backend='cuda' is unknown"),
    ],
    ids=["scheme", "level", "block", "clip", "normalize", "seq_mean", "backend"],
)
def test_bad_options_are_rejected_with_the_fix(opts, match):
    with pytest.raises(LossError, match=match):
        PolicyLoss(**opts)


def test_bad_inputs_name_the_row_and_the_fix():
    case = make_case()
    labels = case["labels"].clone()
    labels[4] = 99
    with pytest.raises(LossError, match=r"label 99 at row 4 .*ignore_index"):
        PolicyLoss("sft")(case["hidden"].float(), case["weight"].float(), labels)
    with pytest.raises(LossError, match="seq_ids"):
        PolicyLoss("pear")(
            case["hidden"].float(),
            case["weight"].float(),
            case["labels"],
            behavior_logprobs=case["blogp"].float(),
        )


# ----------------------------------------------------- stats and no-grad


def test_stats_match_their_definitions():
    case = make_case()
    opts = dict(scheme="is", clip=(0.9, 1.1))
    out, *_ = run_ours(case, opts)
    ref, *_ = run_ref(case, opts)
    m = case["labels"] != -100
    w = ref.weights[m]
    s = out.stats
    assert s["tokens"].item() == m.sum().item()
    assert s["mean_weight"].item() == pytest.approx(w.mean().item(), rel=1e-5)
    assert s["max_weight"].item() == pytest.approx(w.max().item(), rel=1e-5)
    ess = (w.sum() ** 2 / (w**2).sum() / w.numel()).item()
    assert s["ess_fraction"].item() == pytest.approx(ess, rel=1e-5)
    ratio = (ref.logprobs[m] - case["blogp"][m]).exp()
    clipped = ((ratio < 0.9) | (ratio > 1.1)).double().mean().item()
    assert s["clipped_fraction"].item() == pytest.approx(clipped)
    assert s["mean_entropy"].item() == pytest.approx(ref.entropy[m].mean().item(), rel=1e-5)
    phi = (ref.logprobs[m] + ref.entropy[m]).mean().item()
    assert s["mean_phi"].item() == pytest.approx(phi, rel=1e-5)


def test_no_grad_forward_gives_the_same_values():
    case = make_case(with_bias=False)
    opts = dict(scheme="pear", backend="torch", chunk_size=4)
    a, *_ = run_ours(case, opts)
    with torch.no_grad():
        b = PolicyLoss(**opts)(
            case["hidden"].float(),
            case["weight"].float(),
            case["labels"],
            behavior_logprobs=case["blogp"].float(),
            seq_ids=case["seq_ids"],
        )
    assert b.loss.grad_fn is None
    torch.testing.assert_close(b.loss, a.loss.detach())
    torch.testing.assert_close(b.logprobs, a.logprobs)
    torch.testing.assert_close(b.weights, a.weights)


def test_peak_logits_are_one_chunk(monkeypatch):
    """The backend never builds more than chunk_size x V logits at once."""
    seen: list[tuple[int, ...]] = []
    real = chunked._linear

    def spy(h, w, b):
        out = real(h, w, b)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(chunked, "_linear", spy)
    case = make_case(n=13, v=37)
    for opts in (SCHEMES["dft"], SCHEMES["pear-token"]):
        seen.clear()
        compare(case, opts, chunk_size=4)
        assert seen and max(s[0] for s in seen) <= 4 and all(s[1] == 37 for s in seen)
        # one pass for token-local schemes, two for the sequence-level ones
        passes = 1 if opts["scheme"] == "dft" else 2
        assert len(seen) == passes * math.ceil(13 / 4)


SEQUENCE_SCHEMES = {
    k: v for k, v in SCHEMES.items() if k in ("is-seq", "is-seq-mean") or "pear" in k
}


def test_sequence_groups_cut_at_sequence_boundaries():
    from onpolicy_sft.kernels.weights import Segments

    seg = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    groups = chunked.sequence_groups(Segments(seg, 4), 5)
    assert groups == [(slice(0, 5), 2), (slice(5, 10), 2)]
    assert chunked.sequence_groups(Segments(seg, 4), 9) == [(slice(0, 9), 3), (slice(9, 10), 1)]
    assert chunked.sequence_groups(Segments(seg, 4), 3) is None  # sequence 2 has 4 tokens
    # a lone sequence may exceed the limit up to `longest`; runs never pack past the limit
    assert chunked.sequence_groups(Segments(seg, 4), 3, 4) == [
        (slice(0, 3), 1),
        (slice(3, 5), 1),
        (slice(5, 9), 1),
        (slice(9, 10), 1),
    ]
    # empty sequences (cu_seqlens with a repeated offset) do not block the grouping
    assert chunked.sequence_groups(Segments(torch.tensor([0, 0, 2, 2]), 3), 4) == [(slice(0, 4), 2)]
    # dense ids need not be in order, only contiguous
    assert chunked.sequence_groups(Segments(torch.tensor([1, 1, 0, 0]), 2), 2) == [
        (slice(0, 2), 1),
        (slice(2, 4), 1),
    ]
    # interleaved tokens of one sequence: no grouping (two-pass path)
    assert chunked.sequence_groups(Segments(torch.tensor([0, 1, 0, 1]), 2), 4) is None


@pytest.fixture
def gemm_rows(monkeypatch) -> list[int]:
    """The row count of every logits GEMM the fused driver runs (in order)."""
    calls: list[int] = []
    real = chunked._linear

    def spy(h, w, b):
        calls.append(h.shape[0])
        return real(h, w, b)

    monkeypatch.setattr(chunked, "_linear", spy)
    return calls


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("opts", list(SEQUENCE_SCHEMES.values()), ids=list(SEQUENCE_SCHEMES))
def test_sequence_schemes_one_pass_when_sequences_fit(opts, dtype, gemm_rows):
    """Sequences of 4, 4 and 5 tokens: a chunk of 8 groups whole sequences and
    computes each chunk's logits once (3 GEMMs in all); a chunk of 4 cannot hold
    the 5-token sequence, so the logits are recomputed in a second pass. Both
    match the float64 reference."""
    calls = gemm_rows
    case = make_case(dtype=dtype, seed=zlib.crc32(repr(opts).encode()) % 1000)
    compare(case, opts, chunk_size=8)
    assert calls == [8, 5]  # [seq 0 + seq 1], [seq 2]: one pass
    calls.clear()
    compare(case, opts, chunk_size=4)
    assert calls == [4, 4, 4, 1] * 2  # forward, then the recomputing pass


@pytest.mark.parametrize("opts", list(SEQUENCE_SCHEMES.values()), ids=list(SEQUENCE_SCHEMES))
def test_default_chunk_size_never_packs_past_one_chunk(opts, gemm_rows, monkeypatch):
    """Default sizing (here 4 rows): runs of whole sequences hold at most 4 rows;
    the 5-token sequence, alone, may take up to twice that, and all is one pass."""
    calls = gemm_rows
    monkeypatch.setattr(torch_rows, "CHUNK_BYTES", 4 * 37 * 4 * torch_rows._TORCH_TEMPS)
    case = make_case(seed=5)  # sequences of 4, 4 and 5 tokens, V=37
    compare(case, opts, chunk_size=None)
    assert calls == [4, 4, 5]
    calls.clear()
    case = make_case(n=12, seed=6)
    case["seq_ids"] = torch.arange(12) // 2  # six sequences of 2
    compare(case, opts, chunk_size=None)
    assert calls == [4, 4, 4]


@pytest.mark.parametrize("opts", list(SEQUENCE_SCHEMES.values()), ids=list(SEQUENCE_SCHEMES))
def test_sequence_schemes_with_interleaved_tokens_match_reference(opts):
    """Tokens of a sequence need not be contiguous: the two-pass path handles it."""
    case = make_case(n=12, seed=3)
    case["seq_ids"] = torch.arange(12) % 3
    compare(case, opts, chunk_size=64)


# ------------------------------------------------------------ patch_model


def _model_batch(path, seed=0):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train()
    for mod in model.modules():  # deterministic forward
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    g = torch.Generator().manual_seed(seed)
    v = model.config.vocab_size
    b, t = 3, 9
    input_ids = torch.randint(3, v, (b, t), generator=g)
    attention_mask = torch.ones(b, t, dtype=torch.long)
    attention_mask[2, 6:] = 0  # right padding on the last row
    labels = input_ids.clone()
    labels[:, :3] = -100  # prompt
    labels[attention_mask == 0] = -100
    blogp = -torch.rand(b, t, generator=g) * 3
    return model, input_ids, attention_mask, labels, blogp


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "opts",
    [dict(scheme="dft"), dict(scheme="pear", pear_delta_clip=(-1.0, 1.0)), dict(scheme="is")],
    ids=["dft", "pear", "is"],
)
@pytest.mark.parametrize("arch", ["tiny_qwen2", "tiny_llama"])
def test_patched_model_matches_materialised_logits(arch, opts, request):
    path = request.getfixturevalue(arch)
    model, ids, am, labels, blogp = _model_batch(path)
    upstream = 1.7

    # reference: logits from the unpatched model's decoder + lm_head, then reference.py
    hidden = model.model(input_ids=ids, attention_mask=am).last_hidden_state
    logits_hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    shifted = labels[:, 1:].reshape(-1)
    ref = policy_loss_reference(
        logits_hidden,
        model.lm_head.weight,
        shifted,
        **opts,
        behavior_logprobs=blogp[:, 1:].reshape(-1),
        seq_ids=torch.arange(3).repeat_interleave(ids.shape[1] - 1),
    )
    (ref.loss * upstream).backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)

    patch_model(model, PolicyLoss(**opts, backend="torch", chunk_size=5))
    out = model(input_ids=ids, attention_mask=am, labels=labels, behavior_logprobs=blogp)
    assert out.logits is None
    (out.loss * upstream).backward()
    got = _grads(model)
    torch.testing.assert_close(out.loss, ref.loss.float(), rtol=1e-5, atol=1e-6)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert model.policy_loss_output.stats["tokens"].item() == (shifted != -100).sum().item()

    # without labels forward is the original (logits returned); unpatch restores it
    plain = model(input_ids=ids, attention_mask=am)
    assert plain.logits.shape == (3, ids.shape[1], model.config.vocab_size)
    unpatch_model(model)
    assert "forward" not in model.__dict__


def test_patched_model_uses_num_items_in_batch_and_shift_labels(tiny_qwen2):
    model, ids, am, labels, _ = _model_batch(tiny_qwen2)
    patch_model(model, PolicyLoss("sft", backend="torch"))
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=am, labels=labels)
        shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
        b = model(input_ids=ids, attention_mask=am, shift_labels=shifted, num_items_in_batch=50)
        # transformers' own loss on materialised logits, for sft
        unpatch_model(model)
        c = model(input_ids=ids, attention_mask=am, labels=labels)
    count = (shifted != -100).sum().item()
    torch.testing.assert_close(b.loss, a.loss * count / 50, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.loss, c.loss, rtol=1e-5, atol=1e-6)


def test_frozen_lm_head_only_gets_hidden_grads():
    case = make_case()
    full, gh_full, _, _ = run_ours(case, dict(scheme="idft", backend="torch", chunk_size=4))
    h = case["hidden"].float().requires_grad_()
    w = case["weight"].float()  # frozen
    out = PolicyLoss("idft", backend="torch", chunk_size=4)(
        h, w, case["labels"], bias=case["bias"].float()
    )
    (out.loss * case["upstream"].float()).backward()
    torch.testing.assert_close(out.loss, full.loss.detach())
    torch.testing.assert_close(h.grad, gh_full)


def test_autocast_runs_the_loss_in_the_autocast_dtype():
    """Under autocast, fp32 master weights are cast like F.linear would, and the grads
    reach the fp32 leaves; equal to casting to bf16 by hand."""
    case = make_case(with_bias=False)
    opts = dict(scheme="dft", backend="torch", chunk_size=4)
    h = case["hidden"].float().requires_grad_()
    w = case["weight"].float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = PolicyLoss(**opts)(h, w, case["labels"])
    out.loss.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    h2 = case["hidden"].float().requires_grad_()
    w2 = case["weight"].float().requires_grad_()
    out2 = PolicyLoss(**opts)(h2.bfloat16(), w2.bfloat16(), case["labels"])
    out2.loss.backward()
    torch.testing.assert_close(out.loss, out2.loss)
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


def test_empty_batch_gives_zero_loss():
    h = torch.zeros(0, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    out = PolicyLoss("pear", backend="torch")(
        h,
        w,
        torch.zeros(0, dtype=torch.long),
        behavior_logprobs=torch.zeros(0),
        seq_ids=torch.zeros(0, dtype=torch.long),
    )
    out.loss.backward()
    assert out.loss.item() == 0.0 and w.grad.abs().max() == 0


def test_patched_tied_model_matches_transformers_own_loss(tmp_path):
    """sft through patch_model equals transformers' cross entropy on materialised logits,
    with the lm_head tied to the input embedding (its grad has two contributions)."""
    from onpolicy_sft.testing import build_tiny_model

    path = build_tiny_model(tmp_path / "tied", arch="qwen2", tie_word_embeddings=True)
    model, ids, am, labels, _ = _model_batch(path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    want = model(input_ids=ids, attention_mask=am, labels=labels)
    want.loss.backward()
    want_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    patch_model(model, PolicyLoss("sft", backend="torch", chunk_size=4))
    got = model(input_ids=ids, attention_mask=am, labels=labels)
    got.loss.backward()
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("opts", [SCHEMES["dft"], SCHEMES["pear-token"]], ids=["dft", "pear"])
def test_grad_accum_in_input_dtype_matches_reference(opts, dtype):
    case = make_case(dtype=dtype, seed=11)
    compare(dict(case), dict(opts, grad_accum="input"))


def test_second_backward_is_refused():
    case = make_case()
    h = case["hidden"].float().requires_grad_()
    out = PolicyLoss("dft", backend="torch")(h, case["weight"].float(), case["labels"])
    out.loss.backward(retain_graph=True)
    # the precomputed grads were consumed in place; autograd's version check says so
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.loss.backward()
