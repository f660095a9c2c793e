"""Why an optimised module refuses torch.export, torch.onnx.export and torch.jit.trace.

Those trace `OptimizedModule.forward` once and keep what it read: the cache session's state at that moment
becomes constants of the graph, and every call of the result would reuse that one state, silently. The
cache-aware export is `mcgraph.export.export_onnx`, whose graph takes and returns the state explicitly.
"""

from __future__ import annotations

import torch

from mcgraph.errors import McGraphError


def under_plain_export() -> bool:
    """True inside torch.export (strict or not; torch.onnx.export uses it) or torch.jit.trace."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def refuse_plain_export(module) -> None:
    """McGraphError naming the right API, for a module with a caching config (identity has nothing to freeze)."""
    config = module.mcgraph_config
    if not config.caches:
        return
    raise McGraphError(
        f"{module.captured.model_class} optimised with {type(config).__name__} cannot be exported with "
        "torch.export.export / torch.onnx.export / torch.jit.trace: its live cache state would be frozen into the "
        "graph as constants. Use mcgraph.export.export_onnx(model, path), which makes the cache state explicit "
        "inputs and outputs, or export the original model (model.original_module) without caching")
