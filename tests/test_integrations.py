"""compute_loss_func drops into a plain transformers Trainer and matches `onpolicy-sft train`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from _helpers import trainer_args

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.parquet with rows of different lengths; behaviour log-probs perturbed from pi_0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy_sft.prompts import train_prompt

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        problem = f"{i} * {i + 3}?"
        prompt = train_prompt(tok, problem)
        response = f"{i}*{i + 3}={i * (i + 3)}" + " ok" * (i % 3) + f" \\boxed{{{i * (i + 3)}}}"
        r = [*tok(response, add_special_tokens=False).input_ids, tok.eos_token_id]
        p = tok(prompt, add_special_tokens=False).input_ids
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1], -1)
        blp = lp.gather(1, torch.tensor(r)[:, None])[:, 0]
        blp = blp + 0.3 * torch.randn(blp.shape, generator=gen)  # off-policy: ratios != 1
        rows.append(
            {
                "problem_id": f"q{i}",
                "prompt": prompt,
                "response": response,
                "response_token_ids": r,
                "tier": "self",
                "behavior_logprobs": blp.tolist(),
            }
        )
    out = tmp_path_factory.mktemp("integ_data")
    pq.write_table(pa.Table.from_pylist(rows), out / "data.parquet")
    return out


STEPS = 4


@pytest.mark.parametrize("scheme", ["sft", "dft", "is", "idft", "dft-per-sequence"])
def test_compute_loss_func_in_a_plain_trainer_matches_onpolicy_sft_train(
    scheme: str, tiny_qwen2: Path, data_dir: Path, tmp_path: Path
) -> None:
    normalize = "sequence" if scheme.endswith("per-sequence") else "tokens"
    scheme = scheme.split("-")[0]
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from onpolicy_sft.cli import main
    from onpolicy_sft.config import LossConfig, TrainConfig
    from onpolicy_sft.integrations import compute_loss_func
    from onpolicy_sft.training import Collator, ExampleDataset, build_examples, read_data

    # one schedule for both runs
    schedule = dict(
        learning_rate=2e-3,
        max_steps=STEPS,
        seed=3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        lr_scheduler_type="constant",
    )

    # 1. the command line
    ours = tmp_path / "ours"
    argv = ["train", "--model", str(tiny_qwen2), "--dataset", str(data_dir)]
    argv += ["--output_dir", str(ours), "--scheme", scheme, "--warmup_ratio", "0"]
    argv += [arg for k, v in schedule.items() for arg in (f"--{k}", str(v))]
    argv += ["--save_steps", "1000", "--backend", "torch", "--normalize", normalize]
    assert main(argv) == 0
    state = json.loads((ours / "trainer_state.json").read_text())
    ours_loss = [h["loss"] for h in state["log_history"] if "nll" in h]

    # 2. a plain transformers Trainer with compute_loss_func, same data and schedule
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    cfg = TrainConfig(model=str(tiny_qwen2), dataset=str(data_dir), loss=LossConfig(scheme=scheme))
    examples, _ = build_examples(read_data(str(data_dir)), tok, cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    # (every micro-batch holds 2 sequences, so per-sequence normalisation over the
    # accumulated batch is the micro-batch mean / accumulation steps)
    loss_func = compute_loss_func(
        scheme, model=model, backend="torch", normalize=normalize, gradient_accumulation_steps=2
    )
    trainer = Trainer(
        model=model,
        # (on the device the command line trains on; data_seed as `train` derives it)
        args=trainer_args(
            TrainingArguments,
            tmp_path / "plain",
            **schedule,
            data_seed=3,
            use_cpu=False,
            remove_unused_columns=False,
        ),
        train_dataset=ExampleDataset(examples),
        data_collator=Collator(tok.pad_token_id, with_behavior=scheme == "is"),
        compute_loss_func=loss_func,
    )
    trainer.train()
    plain_loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    assert len(ours_loss) == len(plain_loss) == STEPS
    assert plain_loss == pytest.approx(ours_loss, rel=1e-5)
    assert loss_func.last is not None
    ours_params = load_file(str(ours / "model.safetensors"))
    for name, value in model.state_dict().items():
        if name in ours_params:
            torch.testing.assert_close(value, ours_params[name], rtol=1e-5, atol=1e-6)
    if scheme == "is":  # the behaviour log-probs reached the loss: the weights are not DFT's p
        last = loss_func.last.output
        assert not torch.allclose(last.weights, last.logprobs.exp(), rtol=1e-2)


def test_loss_head_equals_cross_entropy_on_materialised_logits(tiny_llama: Path) -> None:
    """The shift/selection plumbing: sft through LossHead == F.cross_entropy on the logits."""
    from transformers import AutoModelForCausalLM

    from onpolicy_sft.integrations import LossHead
    from onpolicy_sft.losses import PolicyLoss

    torch.manual_seed(0)
    ids = torch.randint(3, 200, (3, 17))
    labels = ids.clone()
    labels[:, :5] = -100  # prompt
    labels[1, 12:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0

    ref_model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    logits = ref_model(input_ids=ids, attention_mask=mask).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    ref.backward()

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    head = LossHead.install(model, PolicyLoss("sft", backend="torch"))
    with head.batch(labels):
        out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    assert out.logits.shape == (3, 17, 0)
    assert head.result is not None and head.result.num_tokens == int((labels[:, 1:] != -100).sum())
    head.result.output.loss.backward()
    torch.testing.assert_close(head.result.output.loss, ref.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    # disarmed, the model is the model again: full logits, identical to the reference
    with torch.no_grad():
        again = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(again, logits.detach())
    head.remove()
    assert model.get_output_embeddings().forward.__self__ is model.get_output_embeddings()


def _per_sequence_mean_nll(logits: torch.Tensor, labels: torch.Tensor, bounds: list) -> float:
    """Mean over sequences of each sequence's mean token NLL (unshifted labels)."""
    lp = torch.log_softmax(logits[0, :-1].double(), -1)
    y = labels[0, 1:]
    means = []
    for a, b in bounds:  # the sequence's positions [a, b) in the packed row
        t = torch.arange(a, b - 1)  # predictions made inside it
        keep = y[t] != -100
        means.append(-lp[t[keep], y[t[keep]]].mean())
    return float(torch.stack(means).mean())


def test_packed_row_sequences_from_position_ids(tiny_qwen2: Path) -> None:
    """A padding-free packed row (one row, position_ids restarting at 0, no
    seq_ids): normalize="sequence" averages per packed sequence, as explicit
    seq_ids would; TRL's padding-free collator sends exactly this."""
    from transformers import AutoModelForCausalLM

    from onpolicy_sft.integrations import compute_loss_func

    torch.manual_seed(0)
    bounds = [(0, 9), (9, 14), (14, 26)]
    ids = torch.randint(3, 200, (1, 26))
    labels = ids.clone()
    for a, _ in bounds:
        labels[0, a : a + 3] = -100  # each sequence's prompt
    pos = torch.cat([torch.arange(b - a) for a, b in bounds])[None]
    seq = torch.cat([torch.full((b - a,), k) for k, (a, b) in enumerate(bounds)])[None]
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    with torch.no_grad():
        # without a cache transformers reads packed position_ids as separate
        # sequences (block-diagonal attention), as in a training forward
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        ref = _per_sequence_mean_nll(logits, labels, bounds)
    model.train()
    func = compute_loss_func("sft", model=model, normalize="sequence", backend="torch")
    results = {}
    for name, extra in (("position_ids", {}), ("seq_ids", {"seq_ids": seq}), ("seq_idx", {})):
        kw = {"seq_idx": seq} if name == "seq_idx" else {}
        out = model(input_ids=ids, position_ids=pos, **extra, **kw)
        results[name] = float(func(out, labels).detach())
        assert func.last is not None and func.last.num_sequences == 3, name
    assert results["position_ids"] == pytest.approx(ref, rel=1e-5)
    assert results["seq_ids"] == pytest.approx(ref, rel=1e-5)
    assert results["seq_idx"] == pytest.approx(ref, rel=1e-5)


def test_sequence_normalised_drop_in_divides_only_what_accumulates(tiny_qwen2: Path) -> None:
    """normalize="sequence": in training the micro-batch mean is divided by the
    accumulation steps (the Trainer does not divide a custom loss); in
    evaluation nothing accumulates, so the loss is the plain mean."""
    from transformers import AutoModelForCausalLM

    from onpolicy_sft.integrations import compute_loss_func

    torch.manual_seed(1)
    ids = torch.randint(3, 200, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    func = compute_loss_func(
        "sft", model=model, normalize="sequence", gradient_accumulation_steps=4, backend="torch"
    )
    model.eval()
    with torch.no_grad():
        plain = float(func(model(input_ids=ids), labels))
    model.train()
    train = float(func(model(input_ids=ids), labels, num_items_in_batch=100))
    assert train == pytest.approx(plain / 4, rel=1e-5)


def test_drop_in_leaves_generation_working(tiny_qwen2: Path) -> None:
    from transformers import AutoModelForCausalLM

    from onpolicy_sft.integrations import compute_loss_func

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    compute_loss_func("dft", model=model, backend="torch")
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 8)


def test_unattached_or_label_less_calls_explain_the_fix() -> None:
    from onpolicy_sft.integrations import PolicyLossFunc
    from onpolicy_sft.losses import PolicyLoss

    func = PolicyLossFunc(PolicyLoss("sft"))
    with pytest.raises(RuntimeError, match=r"\.attach\(model\)"):
        func(None, torch.zeros(1, 3, dtype=torch.long))


def test_the_example_script_runs(tmp_path: Path) -> None:
    script = "compute_loss_func_trainer.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), "--steps", "10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scheme=dft: final step stats" in proc.stdout
    text = proc.stdout.split("logged losses: ")[1].splitlines()[0]
    losses = json.loads(text.replace("'", '"'))
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
