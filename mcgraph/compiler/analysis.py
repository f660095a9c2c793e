"""Run the structural analyses on a captured graph; `inspect(model, ...)` does capture + analyses."""

from __future__ import annotations

from pathlib import Path

import torch

from mcgraph.compiler.capture import CapturedGraph, capture
from mcgraph.compiler.pass_infra import GraphPass, PassManager
from mcgraph.compiler.structure import STRUCTURE, ModelStructure, structure_of


def analysis_passes() -> list[GraphPass]:
    from mcgraph.passes.attention_sites import AttentionSiteAnalysis
    from mcgraph.passes.block_stack import BlockStackAnalysis
    from mcgraph.passes.modulation import ModulationAnalysis
    from mcgraph.passes.token_axis import TokenAxisAnalysis
    from mcgraph.passes.token_grid import TokenGridAnalysis

    return [AttentionSiteAnalysis(), TokenAxisAnalysis(), TokenGridAnalysis(), BlockStackAnalysis(),
            ModulationAnalysis()]


def analyze(captured: CapturedGraph, *, dump_dir: str | Path | None = None) -> ModelStructure:
    """Annotate the captured graph in place (node.meta) and return its structure summary."""
    gm = captured.graph_module
    gm.meta.pop(STRUCTURE, None)
    gm.meta["mcgraph.model_class"] = captured.model_class
    PassManager(analysis_passes(), dump_dir=dump_dir).run(gm)
    return structure_of(gm)


def inspect(model: torch.nn.Module, args: tuple = (), kwargs: dict | None = None, *,
            dump_dir: str | Path | None = None) -> ModelStructure:
    """Capture `model` on example inputs and report the structure the compiler finds in it.

    Raises CaptureError if the model cannot be captured, StructureNotFound (naming what is missing and
    where) if it is not a DiT the passes understand.
    """
    return analyze(capture(model, args, kwargs), dump_dir=dump_dir)
