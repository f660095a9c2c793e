"""Where a benchmark ran: versions, CPU model, git commit, checkpoint (stored in every result JSON): the
environment sections of bench.json, runtime_bench.json and peers.json."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["bench_environment", "cpu_model", "git_commit", "mcgraph_version", "optional_version", "peer_environment",
           "runtime_environment"]


def mcgraph_version() -> str:
    from mcgraph import __version__

    return __version__


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    """HEAD of the checkout mcgraph runs from, with "-dirty" when tracked files changed; None outside git."""
    import subprocess

    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except Exception:
        pass
    return None


def optional_version(module: str) -> str | None:
    """`module.__version__`, or None when the (optional) module is not installed."""
    try:
        return __import__(module).__version__
    except Exception:  # optional
        return None


def bench_environment(threads, weights_path: Path) -> dict:
    """The environment section of bench.json (`threads`: the thread counts timed)."""
    import numpy
    import torch

    from mcgraph.zoo.weights import read_metadata

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "mcgraph": mcgraph_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "torch_default_threads": torch.get_num_threads(),
        "threads": list(threads),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": git_commit(),
    }
    env["diffusers"] = optional_version("diffusers")
    info = {}
    try:
        info = read_metadata(weights_path).get("info", {})
    except Exception:
        pass
    env["checkpoint"] = {"path": str(weights_path), "step": info.get("step"),
                         "modified": datetime.fromtimestamp(weights_path.stat().st_mtime, timezone.utc).isoformat()
                         if weights_path.exists() else None}
    return env


def runtime_environment(threads: int, weights: Path) -> dict:
    """The environment section of runtime_bench.json."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "mcgraph": mcgraph_version(),
            "cpu": cpu_model(), "threads": threads, "git_commit": git_commit(), "weights": str(weights),
            "onnxruntime": optional_version("onnxruntime")}


def peer_environment(threads) -> dict:
    """The environment section of peers.json (`mcgraph bench --peers-only`; `threads`: the thread counts timed)."""
    import numpy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "diffusers": optional_version("diffusers"), "mcgraph": mcgraph_version(), "git_commit": git_commit(),
            "platform": platform.platform(), "processor": cpu_model(), "cpu_count": os.cpu_count() or 1,
            "threads": list(threads), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
