"""mcgraph: MotionCache as a graph compiler for video diffusion transformers.

Public API: `optimize(model, config, example_args, example_kwargs)`, `inspect(model, ...)`, the config
classes, and the errors. Heavy optional dependencies (onnx, onnxruntime, diffusers) are imported lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

from mcgraph.compiler.analysis import inspect
from mcgraph.compiler.capture import CapturedGraph, capture
from mcgraph.config import CacheConfig, NoCache
from mcgraph.errors import (
    CaptureError,
    ConfigError,
    McGraphError,
    PassError,
    StructureNotFound,
    VerificationError,
)
from mcgraph.runtime.optimized import OptimizedModule, optimize
from mcgraph.runtime.context import cache_context, reset_cache
from mcgraph.compiler.structure import ModelStructure

__all__ = [
    "CacheConfig", "CaptureError", "CapturedGraph", "ConfigError", "McGraphError", "ModelStructure", "NoCache",
    "OptimizedModule", "PassError", "StructureNotFound", "VerificationError", "__version__", "cache_context",
    "capture", "inspect", "optimize", "reset_cache",
]
