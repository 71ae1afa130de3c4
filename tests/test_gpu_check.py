"""benches/gpu_check.sh --dry-run: the GPU check's every step runs (tiny shapes on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_OUT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "benches" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for step in ("loss", "train", "trl", "tests"):
        assert f"  {step} (limit " in proc.stdout and "FAILED" not in proc.stdout
    assert "<= 480 s required" in proc.stdout
    # the trl smoke ran its loss check: ours dft == TRL's dft
    log = (tmp_path / "trl.dry.log").read_text()
    assert "loss check (SGD, fp32, 2 steps)" in log
    rel = float(log.split("max rel diff ")[1].split()[0])
    assert rel <= 1e-5


def test_gpu_check_refuses_unknown_arguments() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "benches" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr
