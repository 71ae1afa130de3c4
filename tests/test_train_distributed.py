"""Two processes on the CPU (gloo) give what one process gives.

- DDP through transformers' Trainer: the same losses as one process with
  gradient accumulation, for `onpolicy-sft train` and for the drop-in.
- FSDP2 (``fully_shard`` per decoder layer + root): LossHead computes the loss
  inside the lm_head forward with the gathered weight, and the drop-in right
  after the forward; the gradients equal a one-process full-batch reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from onpolicy_sft.config import LossConfig, TrainConfig
    from onpolicy_sft.integrations import compute_loss_func
    from onpolicy_sft.training import (
        Collator, ExampleDataset, build_examples, read_data, shutdown_distributed, train)

    model_dir, data_dir, out = sys.argv[1:4]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    res = train(
        model=model_dir, dataset=data_dir, output_dir=f"{out}/ours{world}", scheme="dft",
        normalize="sequence", learning_rate=3e-3, max_steps=3, per_device_train_batch_size=2,
        gradient_accumulation_steps=2 // world, warmup_ratio=0.0, lr_scheduler_type="constant",
        save_steps=1000, seed=0)
    ours = [h["loss"] for h in res.log_history if "nll" in h]

    # the drop-in under DDP with transformers' default find_unused_parameters=True,
    # normalised by the global token count and per sequence
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = TrainConfig(model=model_dir, dataset=data_dir, loss=LossConfig(scheme="dft"))
    examples, _ = build_examples(read_data(data_dir), tok, cfg)
    plain = {}
    for normalize in ("tokens", "sequence"):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        func = compute_loss_func(
            "dft", model=model, normalize=normalize, gradient_accumulation_steps=2 // world)
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=f"{out}/plain{world}{normalize}", per_device_train_batch_size=2,
                gradient_accumulation_steps=2 // world, learning_rate=3e-3, max_steps=3,
                lr_scheduler_type="constant", seed=0, data_seed=0, logging_steps=1,
                save_strategy="no", report_to=[], remove_unused_columns=False, use_cpu=True,
                dataloader_pin_memory=False),
            train_dataset=ExampleDataset(examples), data_collator=Collator(tok.pad_token_id),
            compute_loss_func=func)
        trainer.train()
        plain[normalize] = [
            (h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "loss" in h]
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps({"ours": ours, "plain": plain}), flush=True)
    shutdown_distributed()
    """
)


def _run(cmd: list[str], tmp_path: Path) -> dict[str, list[float]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_accumulation(
    tiny_qwen2: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import make_data

    data = make_data(tiny_qwen2, tmp_path / "data")
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT, encoding="utf-8")
    args = [str(script), str(tiny_qwen2), str(data), str(tmp_path / "out")]
    single = _run([sys.executable, *args], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", "29517"]
    ddp = _run([*torchrun, *args], tmp_path)
    assert len(single["ours"]) == len(ddp["ours"]) == 3
    assert ddp["ours"] == pytest.approx(single["ours"], rel=1e-5)
    for normalize in ("tokens", "sequence"):  # logged loss and gradient norm per step
        assert len(ddp["plain"][normalize]) == 3
        got = [x for step in ddp["plain"][normalize] for x in step]
        want = [x for step in single["plain"][normalize] for x in step]
        assert got == pytest.approx(want, rel=1e-5), normalize


FSDP2_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM
    from onpolicy_sft.integrations import LossHead, compute_loss_func
    from onpolicy_sft.losses import PolicyLoss

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    model_dir = sys.argv[1]
    torch.manual_seed(0)
    ids = torch.randint(3, 250, (4, 20))
    labels = ids.clone()
    labels[:, :6] = -100
    labels[1, 15:] = -100
    total = int((labels[:, 1:] != -100).sum())
    mine = slice(2 * rank, 2 * rank + 2)

    ref = AutoModelForCausalLM.from_pretrained(model_dir)
    rh = LossHead.install(ref, PolicyLoss("pear", backend="torch"))
    blp = torch.randn(4, 20) * 0.1 - 3.0
    with rh.batch(labels, blp):
        ref(input_ids=ids, use_cache=False)
    rh.result.output.loss.backward()

    for mode in ("head", "drop-in"):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if mode == "head":
            head = LossHead.install(model, PolicyLoss("pear", backend="torch"))
            with head.batch(labels[mine], blp[mine], normalizer=total):
                model(input_ids=ids[mine], use_cache=False)
            loss = head.result.output.loss
        else:
            func = compute_loss_func("pear", model=model, backend="torch")
            out = model(input_ids=ids[mine], behavior_logprobs=blp[mine])
            loss = func(out, labels[mine], num_items_in_batch=total)
        (loss * 2).backward()  # FSDP averages gradients over the 2 ranks
        bad = []
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            g = p.grad.full_tensor()
            if not torch.allclose(g, q.grad, rtol=1e-4, atol=1e-7):
                bad.append(name)
        sharded = type(model.lm_head.weight).__name__
        if rank == 0:
            print(f"RESULT {mode} {sharded} {len(bad)} {bad}", flush=True)
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_fsdp2_gradients_equal_a_one_process_reference(tiny_qwen2: Path, tmp_path: Path) -> None:
    script = tmp_path / "fsdp2_script.py"
    script.write_text(FSDP2_SCRIPT, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", "29519", str(script), str(tiny_qwen2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = [x.split()[1:] for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    # the lm_head weight is sharded (a DTensor) outside forward, and no gradient differs
    assert [(mode, kind, n) for mode, kind, n, *_ in lines] == [
        ("head", "DTensor", "0"),
        ("drop-in", "DTensor", "0"),
    ], proc.stdout


@pytest.mark.slow
def test_cli_train_under_torchrun_exits_cleanly_on_every_rank(
    tiny_qwen2: Path, tmp_path: Path
) -> None:
    """`torchrun -m onpolicy_sft train` ends with exit 0 on both ranks: the CLI
    tears the gloo process group down itself instead of leaving it to
    interpreter exit (where a rank could abort after finishing its work)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import make_data

    data = make_data(tiny_qwen2, tmp_path / "data")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", "29521", "-m", "onpolicy_sft", "train"]
    cmd += ["--model", str(tiny_qwen2), "--dataset", str(data), "--output_dir", str(out)]
    cmd += ["--scheme", "dft", "--max_steps", "2", "--per_device_train_batch_size", "2"]
    cmd += ["--gradient_accumulation_steps", "1", "--save_steps", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "terminate called" not in proc.stderr
    assert proc.stdout.count("trained 2 steps") == 2, proc.stdout[-2000:]
    assert (out / "train_config.json").is_file()
    assert (out / "model.safetensors").is_file()


FSDP2_ACCELERATE = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
use_cpu: true
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: Qwen2DecoderLayer
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
"""


@pytest.mark.slow
def test_cli_train_under_accelerate_fsdp2_matches_one_process(
    tiny_qwen2: Path, tmp_path: Path
) -> None:
    """`accelerate launch` with an FSDP2 config (the README's recipe, on CPU/gloo):
    the same logged losses and the same saved weights as one process with
    gradient accumulation. (FSDP1 needs an accelerator; it cannot run here.)"""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import make_data

    data = make_data(tiny_qwen2, tmp_path / "data")
    config = tmp_path / "fsdp2.yaml"
    config.write_text(FSDP2_ACCELERATE, encoding="utf-8")
    flags = ["train", "--model", str(tiny_qwen2), "--dataset", str(data), "--scheme", "dft"]
    flags += ["--max_steps", "3", "--per_device_train_batch_size", "2"]
    flags += ["--learning_rate", "3e-3", "--warmup_ratio", "0", "--lr_scheduler_type", "constant"]
    flags += ["--save_steps", "1000", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = {
        "one": [
            sys.executable, "-m", "onpolicy_sft", *flags, "--output_dir", str(tmp_path / "one"),
            "--gradient_accumulation_steps", "2",
        ],
        "fsdp2": [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", "29523", "-m", "onpolicy_sft", *flags,
            "--output_dir", str(tmp_path / "fsdp2"), "--gradient_accumulation_steps", "1",
        ],
    }  # fmt: skip
    losses = {}
    for name, cmd in runs.items():
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        state = json.loads((tmp_path / name / "trainer_state.json").read_text())
        losses[name] = [h["loss"] for h in state["log_history"] if "nll" in h]
    assert len(losses["one"]) == 3
    assert losses["fsdp2"] == pytest.approx(losses["one"], rel=1e-5)
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    sharded = load_file(str(tmp_path / "fsdp2" / "model.safetensors"))
    assert one.keys() == sharded.keys()
    for key, value in one.items():
        assert torch.allclose(sharded[key], value, rtol=1e-4, atol=1e-6), key
