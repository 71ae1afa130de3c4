"""The Triton backend against the float64 reference.

Without CUDA the kernels run in Triton's CPU interpreter: conftest.py sets
TRITON_INTERPRET=1 for the session before anything imports triton (the flag is
read when ``@triton.jit`` decorates, triton.language's own helpers included, and
again at launch). Interpreter shapes stay tiny
(N <= 16, H <= 16, V <= 80); the vocabulary tile is capped at 16 so that the
rows span several tiles with a ragged last one. Real shapes run under the
``gpu`` marker.
"""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
triton = pytest.importorskip("triton")
from onpolicy_sft.kernels import chunked, triton_rows, weights  # noqa: E402

if not HAS_CUDA and not triton_rows.INTERPRETED:  # pragma: no cover - conftest sets it
    raise RuntimeError(
        "no CUDA and the Triton kernels were not built by the interpreter: run pytest from"
        " the repository root so tests/conftest.py sets TRITON_INTERPRET=1 first"
    )

from test_loss import DTYPES, SCHEMES, TOL, assert_close, compare, make_case, run_ours  # noqa: E402

from onpolicy_sft.config import LossConfig  # noqa: E402
from onpolicy_sft.losses import PolicyLoss  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def small_tiles(monkeypatch):
    """Cap the vocabulary tile at 16 so V=37 is 3 tiles, the last one partial."""
    monkeypatch.setattr(triton_rows, "_MAX_BLOCK_V", 16)


def tri(case, opts, **kw):
    return compare(case, opts, backend="triton", device=DEVICE, **kw)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("opts", list(SCHEMES.values()), ids=list(SCHEMES))
def test_triton_matches_reference(opts, dtype, small_tiles):
    case = make_case(n=13, h=16, v=37, dtype=dtype, seed=7)
    tri(case, opts, chunk_size=5)


@pytest.mark.parametrize(
    "opts", [o for o in SCHEMES.values() if o.get("level") == "sequence" or o["scheme"] == "pear"]
)
def test_triton_two_pass_path_matches_reference(opts, small_tiles):
    """Chunks of 3 cannot hold the 4- and 5-token sequences: logits are recomputed."""
    case = make_case(n=13, h=16, v=37, seed=11)
    tri(case, opts, chunk_size=3)


@pytest.mark.parametrize("opts", list(SCHEMES.values()), ids=list(SCHEMES))
def test_triton_equals_torch_backend(opts, small_tiles):
    case = make_case(n=12, h=8, v=29, seed=3)
    a, *ga = run_ours(case, dict(opts, backend="triton", chunk_size=5), device=DEVICE)
    b, *gb = run_ours(case, dict(opts, backend="torch", chunk_size=3))
    for x, y in zip(
        (a.loss, a.logprobs, a.entropy, a.weights, *ga),
        (b.loss, b.logprobs, b.entropy, b.weights, *gb),
    ):
        torch.testing.assert_close(x.cpu(), y, rtol=2e-5, atol=2e-6)
    for k in b.stats:
        torch.testing.assert_close(
            a.stats[k].cpu(), b.stats[k], rtol=2e-5, atol=2e-6, equal_nan=True
        )


@pytest.mark.parametrize("v", [1, 5, 16, 17, 80], ids=lambda v: f"V{v}")
def test_vocab_sizes_around_the_tile(v, small_tiles):
    case = make_case(n=6, h=8, v=v, masked=(1,), seed=v)
    tri(case, SCHEMES["idft"], chunk_size=4)
    tri(case, SCHEMES["pear-token"], chunk_size=4)


@pytest.mark.parametrize("scheme", ["sft", "dft", "is", "idft", "pear"])
def test_triton_single_token(scheme):
    case = make_case(n=1, h=8, v=11, masked=())
    tri(case, dict(scheme=scheme), chunk_size=1)


@pytest.mark.parametrize(
    "opts",
    [SCHEMES["dft"], SCHEMES["is-seq"], SCHEMES["pear-token"]],
    ids=["dft", "is-seq", "pear"],
)
def test_triton_all_masked(opts):
    case = make_case(n=5, h=8, v=11, masked=tuple(range(5)))
    out, gh, gw, gb = run_ours(case, dict(opts, backend="triton", chunk_size=2), device=DEVICE)
    assert out.loss.item() == 0.0
    for t in (gh, gw, gb, out.logprobs, out.entropy, out.weights):
        assert torch.isfinite(t).all() and t.abs().max() == 0


@pytest.mark.parametrize("scheme", ["sft", "dft", "is", "idft", "pear"])
def test_triton_huge_logits(scheme, small_tiles):
    case = make_case(n=7, h=8, v=23, logit_scale=4e3, masked=(2,))
    loose = {"value": (1e-2, 1e-3), "weights": (1e-3, 1e-2), "grad": (1e-3, 1e-3)}
    out, _ = tri(case, dict(scheme=scheme, pear_delta_clip=(-1e5, 1e5)), tol=loose)
    assert torch.isfinite(out.entropy).all()


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize(
    "opts",
    [SCHEMES[k] for k in ("sft", "dft", "is-token", "idft", "idft-gamma-only")],
    ids=["sft", "dft", "is", "idft", "idft-gamma-only"],
)
def test_row_kernel_weights_and_logit_grads(opts, dtype, small_tiles):
    """The forward row kernel alone: in-kernel weights vs weights.local_weights, and the
    in-place d loss / d logits vs coef * (softmax - onehot) in float64."""
    spec = LossConfig(**opts)
    g = torch.Generator().manual_seed(1)
    c, v = 6, 37
    z64 = (torch.randn(c, v, generator=g, dtype=torch.float64) * 3).to(dtype).double()
    labels = torch.randint(0, v, (c,), generator=g)
    labels[4] = -100
    blogp = -torch.rand(c, generator=g) * 4
    scale = torch.rand(c, generator=g)
    scale[4] = 0.0
    logits = z64.to(dtype).to(DEVICE)
    out = tuple(torch.empty(c, device=DEVICE) for _ in range(5))
    triton_rows.TritonRows().forward(
        logits,
        labels.to(DEVICE),
        blogp.to(DEVICE),
        scale.to(DEVICE),
        spec,
        out,
        local=True,
        write_grad=True,
    )
    logp, ent, lse, w, coef = (t.cpu().double() for t in out)
    lsm = torch.log_softmax(z64, -1)
    valid = labels != -100
    safe = labels.clamp(min=0)
    want_lp = lsm.gather(1, safe[:, None])[:, 0]
    want_ent = -(lsm.exp() * lsm).sum(-1)
    want_w, want_g = weights.local_weights(want_lp, want_ent, blogp.double(), spec)
    tol = TOL[torch.float32]["value"]
    torch.testing.assert_close(logp[valid], want_lp[valid], rtol=tol[1], atol=1e-5)
    torch.testing.assert_close(ent[valid], want_ent[valid], rtol=tol[1], atol=1e-5)
    torch.testing.assert_close(lse, torch.logsumexp(z64, -1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(w[valid], want_w[valid].double(), rtol=1e-5, atol=1e-6)
    want_coef = (scale.double() * want_g.double()) * valid
    torch.testing.assert_close(coef, want_coef, rtol=1e-5, atol=1e-6)
    want_dz = want_coef[:, None] * (lsm.exp() - torch.nn.functional.one_hot(safe, v))
    rtol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(logits.cpu().double(), want_dz, rtol=rtol, atol=rtol * 1e-2)
    assert logits[4].abs().max() == 0  # masked row: zero gradient


def test_sequence_schemes_pass_count(monkeypatch):
    """Sequences of 2, 3 and 3 tokens. Chunks of 4 hold whole sequences: each chunk
    runs forward then backward on the same logits (one pass). Chunks of 2 cannot
    hold a 3-token sequence: every forward first, then a recomputing backward pass."""
    calls: list[str] = []
    rows = triton_rows.TritonRows()
    real_f, real_b = rows.forward, rows.backward
    monkeypatch.setattr(chunked, "get_rows", lambda backend: rows)
    monkeypatch.setattr(rows, "forward", lambda *a, **k: (calls.append("f"), real_f(*a, **k)))
    monkeypatch.setattr(rows, "backward", lambda *a, **k: (calls.append("b"), real_b(*a, **k)))
    case = make_case(n=8, h=8, v=13)
    run_ours(case, dict(scheme="pear", backend="triton", chunk_size=4), device=DEVICE)
    assert calls == ["f", "b"] * 3
    calls.clear()
    run_ours(case, dict(scheme="pear", backend="triton", chunk_size=2), device=DEVICE)
    assert calls == ["f"] * 4 + ["b"] * 4
    calls.clear()
    run_ours(case, dict(scheme="dft", backend="triton", chunk_size=4), device=DEVICE)
    assert calls == ["f", "f"]


def test_triton_backend_refuses_plain_cpu_tensors_when_compiled():
    if DEVICE == "cpu":
        pytest.skip("the interpreter runs CPU tensors by design")
    case = make_case(n=4, h=8, v=11)
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA tensor"):
        run_ours(case, dict(scheme="sft", backend="triton"))


# ------------------------------------------------------------- real shapes


def _gpu_case(n, h, v, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, h, device="cuda", generator=g, dtype=dtype)
    weight = (torch.randn(v, h, device="cuda", generator=g) / h**0.5).to(dtype)
    labels = torch.randint(0, v, (n,), device="cuda", generator=g)
    labels[: n // 8] = -100
    seq_ids = torch.arange(n, device="cuda") // 512
    return hidden, weight, labels, seq_ids


@pytest.mark.gpu
@pytest.mark.parametrize(
    "opts",
    [SCHEMES[k] for k in ("sft", "dft", "is-token", "idft", "is-seq", "pear-token")],
    ids=["sft", "dft", "is", "idft", "is-seq", "pear"],
)
def test_gpu_real_shape_matches_torch_backend(opts):
    """Qwen2.5-0.5B lm_head shape in bf16: Triton vs the chunked torch backend (same GEMMs)."""
    hidden, weight, labels, seq_ids = _gpu_case(2048, 896, 151936, torch.bfloat16)
    with torch.no_grad():
        lp = PolicyLoss("sft", backend="torch")(hidden, weight, labels).logprobs
    blogp = lp + 0.1 * torch.randn_like(lp)
    res = []
    for backend in ("triton", "torch"):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        out = PolicyLoss(**opts, backend=backend, chunk_size=512)(
            h, w, labels, behavior_logprobs=blogp, seq_ids=seq_ids
        )
        (out.loss * 1.3).backward()
        res.append((out.loss, out.weights, h.grad.float(), w.grad.float()))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-4)


@pytest.mark.gpu
def test_gpu_matches_fp32_reference_and_memory_is_one_chunk():
    from onpolicy_sft.kernels.reference import policy_loss_reference

    n, h, v = 1024, 256, 32000
    hidden, weight, labels, seq_ids = _gpu_case(n, h, v, torch.float32)
    blogp = -torch.rand(n, device="cuda")
    hh = hidden.double().requires_grad_()
    ww = weight.double().requires_grad_()
    ref = policy_loss_reference(
        hh, ww, labels, scheme="pear", behavior_logprobs=blogp.double(), seq_ids=seq_ids
    )
    ref.loss.backward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    h1 = hidden.clone().requires_grad_()
    w1 = weight.clone().requires_grad_()
    out = PolicyLoss("pear", backend="triton", chunk_size=128)(
        h1, w1, labels, behavior_logprobs=blogp, seq_ids=seq_ids
    )
    out.loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    torch.testing.assert_close(out.loss.double(), ref.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h1.grad.double(), hh.grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(w1.grad.double(), ww.grad, rtol=1e-3, atol=1e-6)
    # grads (h: n*h, weight: fp32 accumulator + result) + one chunk of logits + O(N)
    grads = 4 * (2 * n * h + 3 * v * h)
    chunk = 4 * 128 * v
    assert peak <= grads + 2 * chunk + 64 * 2**20, (peak, grads, chunk)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("scheme", ["dft", "pear"])
def test_gpu_bf16_grads_match_float64_reference(scheme, backend):
    """bf16 on CUDA takes the float32-output GEMM path for grad_weight accumulation."""
    from onpolicy_sft.kernels.reference import policy_loss_reference

    n, h, v = 512, 128, 8192
    hidden, weight, labels, seq_ids = _gpu_case(n, h, v, torch.bfloat16)
    blogp = -torch.rand(n, device="cuda", dtype=torch.float64)
    hh = hidden.double().requires_grad_()
    ww = weight.double().requires_grad_()
    ref = policy_loss_reference(
        hh, ww, labels, scheme=scheme, behavior_logprobs=blogp, seq_ids=seq_ids
    )
    (ref.loss * 0.7).backward()
    h1 = hidden.clone().requires_grad_()
    w1 = weight.clone().requires_grad_()
    out = PolicyLoss(scheme, backend=backend, chunk_size=128)(
        h1, w1, labels, behavior_logprobs=blogp.float(), seq_ids=seq_ids
    )
    (out.loss * 0.7).backward()
    tol = TOL[torch.bfloat16]
    assert_close("loss", out.loss, ref.loss, tol["value"])
    assert_close("weights", out.weights, ref.weights, tol["weights"])
    assert_close("grad_hidden", h1.grad, hh.grad, tol["grad"])
    assert_close("grad_weight", w1.grad, ww.grad, tol["grad"])
