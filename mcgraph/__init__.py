"""mcgraph: MotionCache as a graph compiler for video diffusion transformers.

Public API: `optimize(model, config, example_args, example_kwargs)`, `inspect(model, ...)`, the config
classes, and the errors. Heavy optional dependencies (onnx, onnxruntime, diffusers) are imported lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .analysis import inspect
from .capture import CapturedGraph, capture
from .config import CacheConfig, NoCache
from .errors import (
    CaptureError,
    ConfigError,
    McGraphError,
    PassError,
    StructureNotFound,
    VerificationError,
)
from .optimize import OptimizedModule, optimize
from .runtime_context import cache_context, reset_cache
from .structure import ModelStructure

__all__ = [
    "CacheConfig", "CaptureError", "CapturedGraph", "ConfigError", "McGraphError", "ModelStructure", "NoCache",
    "OptimizedModule", "PassError", "StructureNotFound", "VerificationError", "__version__", "cache_context",
    "capture", "inspect", "optimize", "reset_cache",
]
