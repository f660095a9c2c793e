"""Run the structural analyses on a captured graph; `inspect(model, ...)` does capture + analyses."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.fx

from mcgraph.compiler.capture import CapturedGraph, capture
from mcgraph.compiler.pass_infra import GraphPass, PassManager
from mcgraph.compiler.structure import STRUCTURE, ModelStructure, structure_of


def analysis_passes() -> list[GraphPass]:
    from mcgraph.passes.attention_sites import AttentionSiteAnalysis
    from mcgraph.passes.block_stack import BlockStackAnalysis
    from mcgraph.passes.canonical_attention import CanonicalAttention
    from mcgraph.passes.modulation import ModulationAnalysis
    from mcgraph.passes.token_axis import TokenAxisAnalysis
    from mcgraph.passes.token_grid import TokenGridAnalysis

    # canonical_attention first: it hands the analyses a rewritten copy where attention is written by hand
    return [CanonicalAttention(), AttentionSiteAnalysis(), TokenAxisAnalysis(), TokenGridAnalysis(),
            BlockStackAnalysis(), ModulationAnalysis()]


# captured.meta key: the graph module the analyses annotated (the captured one, or canonical_attention's copy)
ANALYSED = "mcgraph.analysed_graph"


def analyze(captured: CapturedGraph, *, dump_dir: str | Path | None = None) -> ModelStructure:
    """Annotate the captured graph (node.meta) and return its structure summary. Where canonical_attention
    rewrites something (hand-written attention), the analyses annotate its copy instead, never the captured
    graph identity runs; `analysed_module(captured)` is the one annotated, what the cache rewrites split."""
    gm = captured.graph_module
    gm.meta.pop(STRUCTURE, None)
    gm.meta["mcgraph.model_class"] = captured.model_class
    captured.meta.pop(ANALYSED, None)
    result = PassManager(analysis_passes(), dump_dir=dump_dir).run(gm)
    captured.meta[ANALYSED] = result.graph_module
    return structure_of(result.graph_module)


def analysed_module(captured: CapturedGraph) -> torch.fx.GraphModule:
    """The graph module `analyze` annotated last (the captured one when it has not run)."""
    return captured.meta.get(ANALYSED, captured.graph_module)


def inspect(model: torch.nn.Module, args: tuple = (), kwargs: dict | None = None, *,
            dump_dir: str | Path | None = None) -> ModelStructure:
    """Capture `model` on example inputs and report the structure the compiler finds in it.

    Raises CaptureError if the model cannot be captured, StructureNotFound (naming what is missing and
    where) if it is not a DiT the passes understand.
    """
    return analyze(capture(model, args, kwargs), dump_dir=dump_dir)
