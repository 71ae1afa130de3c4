"""PolicySFTTrainer: TRL's SFTTrainer with our loss in one forward per step.

The checks compare against TRL itself in the same process: TRL's own
``loss_type="dft"`` gives the losses our ``dft`` must give (SGD, fp32), and
the behaviour-log-prob path is checked by an identity: with behaviour
log-probs equal to the model's own, the ``is`` ratio is 1 and the first
step's loss is exactly ``sft``'s -- through TRL's tokenisation, truncation,
padding-free packing and collator, which any misalignment would break.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from _helpers import trainer_args

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")

PAIRS = [(2, 3), (7, 5), (11, 4), (6, 9), (13, 8), (3, 14), (21, 5), (9, 9)]
GEN_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}\n{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def conversational() -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"What is {a}+{b}?"}],
                "completion": [{"role": "assistant", "content": f"{a}+{b}={a + b}."}],
            }
            for a, b in PAIRS
        ]
    )


def args(cls: Any, out: Path, **kw: Any) -> Any:
    """Three SGD steps in fp32 (an exact comparison with TRL's own losses)."""
    sgd = dict(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=0.5,
        optim="sgd",
        max_steps=3,
    )
    return trainer_args(cls, out, **{**sgd, **kw})


def run(model_dir: Path, out: Path, dataset: Any, ours: bool = True, tok: Any = None, **kw: Any):
    """Train; returns (log lines with a loss, backbone forwards, lm_head output widths, trainer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy_sft.integrations import PolicySFTConfig, PolicySFTTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    forwards = [0]
    widths: list[int] = []
    model.model.register_forward_pre_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1))
    model.lm_head.register_forward_hook(lambda m, i, o: widths.append(int(o.shape[-1])))
    peft_config = kw.pop("peft_config", None)
    cls, cfg = (PolicySFTTrainer, PolicySFTConfig) if ours else (trl.SFTTrainer, trl.SFTConfig)
    trainer = cls(
        model=model,
        args=args(cfg, out, **kw),
        train_dataset=dataset,
        processing_class=tok or AutoTokenizer.from_pretrained(model_dir),
        peft_config=peft_config,
    )
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h], forwards[0], widths, trainer


def test_dft_matches_trl_own_dft_with_one_forward_and_no_logits(tiny_qwen2: Path, tmp_path: Path):
    theirs, n_theirs, _, _ = run(
        tiny_qwen2, tmp_path / "a", conversational(), False, loss_type="dft"
    )
    mine, n_mine, widths, _ = run(tiny_qwen2, tmp_path / "b", conversational(), loss_scheme="dft")
    assert n_mine == n_theirs == 3 * 2  # steps x accumulation: one forward each
    assert widths and set(widths) == {0}  # the lm_head never built (N, V) logits
    assert [h["loss"] for h in mine] == pytest.approx([h["loss"] for h in theirs], rel=1e-5)
    assert len({round(h["loss"], 7) for h in mine}) > 1  # the steps changed the model
    for a, b in zip(mine, theirs):
        assert a["entropy"] == pytest.approx(b["entropy"], rel=1e-5)
        assert a["num_tokens"] == b["num_tokens"]
        assert 0 < a["mean_weight"] < 1 and a["mean_weight"] <= a["max_weight"] < 1
        assert 0 < a["ess_fraction"] <= 1 and a["clipped_fraction"] == 0
        assert math.isfinite(a["phi"]) and a["nll"] > 0 and a["tokens_without_behavior"] == 0


def _scored(model_dir: Path, expert: set[int] = frozenset()) -> tuple[Any, int]:
    """prompt/completion strings + the model's own log-prob of each completion token.

    Returns the dataset and the number of completion tokens in expert rows.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows, expert_tokens = [], 0
    for i, (a, b) in enumerate(PAIRS):
        prompt, completion = f"Q: {a}+{b}? A:", f" {a + b}, since {a}+{b}={a + b}."
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        full = tok(prompt + completion + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert full[: len(p)] == p
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1)[torch.arange(len(full) - 1), torch.tensor(full[1:])]
        blp = lp[len(p) - 1 :].tolist()
        if i in expert:
            expert_tokens += len(blp)
        rows.append(
            {
                "prompt": prompt,
                "completion": completion,
                "behavior_logprobs": None if i in expert else blp,
                "tier": "expert" if i in expert else "self",
            }
        )
    return Dataset.from_list(rows), expert_tokens


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="padded"),
        pytest.param({"packing": True, "max_length": 64}, id="padding-free-packed"),
        pytest.param({"max_length": 16}, id="truncated"),
    ],
)
def test_behavior_logprobs_survive_preparation_collation_and_packing(
    tiny_qwen2: Path, tmp_path: Path, extra: dict[str, Any]
):
    data, _ = _scored(tiny_qwen2)
    kw = dict(max_steps=1, gradient_accumulation_steps=1, **extra)
    ratio_one, _, _, _ = run(tiny_qwen2, tmp_path / "is", data, loss_scheme="is", **kw)
    sft, _, _, _ = run(tiny_qwen2, tmp_path / "sft", data, loss_scheme="sft", **kw)
    dft, _, _, _ = run(tiny_qwen2, tmp_path / "dft", data, loss_scheme="dft", **kw)
    assert ratio_one[0]["loss"] == pytest.approx(sft[0]["loss"], rel=1e-5)
    assert ratio_one[0]["mean_weight"] == pytest.approx(1.0, abs=1e-4)
    assert dft[0]["loss"] < 0.5 * sft[0]["loss"]  # a misaligned path would not give ratio 1


def test_expert_rows_get_the_dft_weight_and_are_counted(tiny_qwen2: Path, tmp_path: Path):
    data, expert_tokens = _scored(tiny_qwen2, expert={1, 4})
    kw = dict(max_steps=1, gradient_accumulation_steps=1, per_device_train_batch_size=8)
    logs, _, _, trainer = run(tiny_qwen2, tmp_path / "is", data, loss_scheme="is", **kw)
    assert trainer.expert_rows == 2
    assert logs[0]["tokens_without_behavior"] == expert_tokens > 0
    assert logs[0]["tokens_expert"] == expert_tokens and logs[0]["tokens_self"] > 0
    # expert tokens weigh p < 1, the others 1
    assert 0.5 < logs[0]["mean_weight"] < 1.0


@pytest.mark.parametrize("scheme", ["sft", "dft", "is", "idft", "pear"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_every_scheme_and_level_trains_in_one_forward(
    tiny_qwen2: Path, tmp_path: Path, scheme: str, level: str
):
    if level == "sequence" and scheme not in ("is", "pear"):
        pytest.skip("sequence level is for is and pear")
    data, _ = _scored(tiny_qwen2)
    logs, forwards, widths, _ = run(
        tiny_qwen2,
        tmp_path / scheme,
        data,
        loss_scheme=scheme,
        loss_kwargs={"level": level, "normalize": "sequence" if level == "sequence" else "tokens"},
        max_steps=2,
    )
    assert forwards == 4 and set(widths) == {0}
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in logs)


def test_assistant_only_loss_matches_trl(tiny_qwen2: Path, tmp_path: Path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    tok.chat_template = GEN_TEMPLATE
    data = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": f"What is {a}+{b}?"},
                    {"role": "assistant", "content": f"{a + b}."},
                    {"role": "user", "content": "Sure?"},
                    {"role": "assistant", "content": f"Yes, {a}+{b}={a + b}."},
                ]
            }
            for a, b in PAIRS
        ]
    )
    kw = dict(assistant_only_loss=True, max_steps=2)
    theirs, _, _, _ = run(tiny_qwen2, tmp_path / "a", data, False, tok, loss_type="dft", **kw)
    mine, n, _, _ = run(tiny_qwen2, tmp_path / "b", data, True, tok, loss_scheme="dft", **kw)
    assert n == 4
    assert [h["loss"] for h in mine] == pytest.approx([h["loss"] for h in theirs], rel=1e-5)


def test_lora_and_gradient_checkpointing(tiny_qwen2: Path, tmp_path: Path):
    pytest.importorskip("peft")
    from peft import LoraConfig

    lora = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    plain, _, _, _ = run(
        tiny_qwen2, tmp_path / "a", conversational(), peft_config=LoraConfig(**lora), max_steps=2
    )
    ckpt, n, widths, t2 = run(
        tiny_qwen2,
        tmp_path / "b",
        conversational(),
        peft_config=LoraConfig(**lora),
        max_steps=2,
        gradient_checkpointing=True,
    )
    assert type(t2.model).__name__.startswith("Peft") and set(widths) == {0}
    assert [h["loss"] for h in ckpt] == pytest.approx([h["loss"] for h in plain], rel=1e-5)
    trained = [n for n, p in t2.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    # LoRA B starts at zero: a trained adapter has moved off it
    b = [p for n, p in t2.model.named_parameters() if "lora_B" in n]
    assert any(float(p.abs().max()) > 0 for p in b)
    assert n == 4  # one forward per micro-batch (checkpointing recomputes layers, not the model)


def test_bad_inputs_are_one_line_errors(tiny_qwen2: Path, tmp_path: Path):
    from datasets import Dataset

    from onpolicy_sft.integrations import PolicySFTConfig

    data, _ = _scored(tiny_qwen2, expert={2})
    no_tier = data.remove_columns("tier")
    with pytest.raises(ValueError, match=r"loss_scheme='is': row 3 .*'behavior_logprobs' is null"):
        run(tiny_qwen2, tmp_path / "x", no_tier, loss_scheme="is")
    self_row = data.map(lambda r, i: {"tier": "self" if i == 2 else r["tier"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"row 3 .*tier 'self'.*Rescore"):
        run(tiny_qwen2, tmp_path / "x", self_row, loss_scheme="pear")
    with pytest.raises(ValueError, match=r"'expert' row without .*missing_behavior='auto' refuses"):
        run(tiny_qwen2, tmp_path / "x", data, loss_scheme="pear")
    with pytest.raises(ValueError, match=r"no 'behavior_logprobs' column"):
        run(tiny_qwen2, tmp_path / "x", conversational(), loss_scheme="is")
    wrong = Dataset.from_list([{"prompt": "2+2?", "completion": 4}])
    with pytest.raises(ValueError, match=r"column 'completion', row 1: expected"):
        run(tiny_qwen2, tmp_path / "x", wrong)
    no_assistant = Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ValueError, match=r"column 'messages', row 1: no assistant turn"):
        run(tiny_qwen2, tmp_path / "x", no_assistant)
    with pytest.raises(ValueError, match=r"leave TRL's loss_type at 'nll'"):
        PolicySFTConfig(output_dir=str(tmp_path), loss_type="dft", use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match=r"clip"):
        PolicySFTConfig(
            output_dir=str(tmp_path), loss_kwargs='{"clip": [2, 1]}', use_cpu=True, bf16=False
        )


DDP_SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer
from onpolicy_sft.integrations import PolicySFTConfig, PolicySFTTrainer
from onpolicy_sft.training import shutdown_distributed

model_dir, data_dir, out = sys.argv[1:4]
world = int(os.environ.get("WORLD_SIZE", "1"))
result = {}
for scheme, kw in (("dft", {}), ("is", {}),
                   ("pear", {"normalize": "sequence", "missing_behavior": "zero"})):
    torch.manual_seed(0)
    trainer = PolicySFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=PolicySFTConfig(
            output_dir=f"{out}/{scheme}{world}", per_device_train_batch_size=2,
            gradient_accumulation_steps=2 // world, learning_rate=0.5, optim="sgd", max_steps=3,
            lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
            use_cpu=True, bf16=False, seed=0, data_seed=0, dataloader_pin_memory=False,
            loss_scheme=scheme, loss_kwargs=kw),
        train_dataset=load_from_disk(data_dir),
        processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.train()
    result[scheme] = [
        (h["loss"], h["grad_norm"], h["num_tokens"])
        for h in trainer.state.log_history if "loss" in h]
if int(os.environ.get("RANK", "0")) == 0:
    print("RESULT " + json.dumps(result), flush=True)
shutdown_distributed()
"""


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_accumulation(tiny_qwen2: Path, tmp_path: Path):
    import json
    import os
    import subprocess
    import sys

    data, _ = _scored(tiny_qwen2, expert={3})
    data.save_to_disk(str(tmp_path / "data"))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    argv = [str(script), str(tiny_qwen2), str(tmp_path / "data"), str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def launch(cmd: list[str]) -> dict[str, Any]:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        return json.loads(line[len("RESULT ") :])

    single = launch([sys.executable, *argv])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    ddp = launch([*torchrun, "--master_port", "29531", *argv])
    for scheme in ("dft", "is", "pear"):
        assert len(ddp[scheme]) == len(single[scheme]) == 3
        got = [x for step in ddp[scheme] for x in step]
        want = [x for step in single[scheme] for x in step]
        assert got == pytest.approx(want, rel=1e-5), scheme


def test_the_example_runs(tmp_path: Path):
    import ast
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "policy_sft_trainer.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    logged = ast.literal_eval(proc.stdout.split("logged: ")[1].splitlines()[0])
    assert len(logged) == 2 and all(loss > 0 and 0 < w < 1 for loss, w in logged)
