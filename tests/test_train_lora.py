"""LoRA from the CLI: --use_peft --lora_r --lora_alpha --lora_dropout --lora_target_modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data(tmp_path: Path) -> Path:
    rows = [
        {
            "prompt": [{"role": "user", "content": f"{a}+{b}?"}],
            "completion": [{"role": "assistant", "content": f"{a + b}"}],
        }
        for a, b in [(2, 3), (7, 5), (11, 4), (6, 9)]
    ]
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onpolicy_sft", "train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_lora_adapter_in_peft_layout_and_merged(tiny_qwen2: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    proc = _cli(
        "--model", str(tiny_qwen2), "--dataset", str(_data(tmp_path)), "--output_dir", str(out),
        "--scheme", "dft", "--max_steps", "3", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--learning_rate", "0.05", "--use_peft",
        "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
        "--lora_target_modules", "q_proj", "v_proj", "--merge_adapter", "--gradient_checkpointing",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter, not a copy of the model
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (
        cfg["r"] == 4
        and cfg["lora_alpha"] == 8
        and set(cfg["target_modules"]) == {"q_proj", "v_proj"}
    )
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # trained
    # stderr is a pipe here: progress lines instead of a bar
    assert "train: 3/3 steps (100%)" in proc.stderr
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen2), str(out))
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a, b, c = (m(ids).logits for m in (base, tuned, merged))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--use_peft", "--lora_target_modules", "qq_proj"], None,
         r"--lora_target_modules qq_proj matches no linear layer of Qwen2ForCausalLM; its linear layers are named .*q_proj"),
        (["--use_peft", "--lora_target_modules", "lm_head"], None, r"is the lm_head"),
        (["--merge_adapter"], None, r"merge_adapter needs use_peft"),
        (["--use_peft"], {"PYTHONPATH": "BLOCK"}, r"--use_peft needs the peft package.*pip install 'onpolicy-sft\[peft\]'"),
    ],
)  # fmt: skip
def test_bad_lora_input_is_one_line(
    tiny_qwen2: Path, tmp_path: Path, extra: list[str], env: Any, message: str
) -> None:
    if env:  # peft as if not installed: sitecustomize blanks it before anything imports it
        block = tmp_path / "block"
        block.mkdir()
        (block / "sitecustomize.py").write_text("import sys\nsys.modules['peft'] = None\n")
        env = {"PYTHONPATH": f"{block}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = _cli(
        "--model", str(tiny_qwen2), "--dataset", str(_data(tmp_path)),
        "--output_dir", str(tmp_path / "o"), "--max_steps", "1", *extra, env=env,
    )  # fmt: skip
    assert proc.returncode != 0
    err = [x for x in proc.stderr.splitlines() if "error:" in x]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    import re

    assert re.search(message, err[0]), err[0]
