"""The captured specialisations of one optimised model, kept valid and bounded.

A capture is specialised on what `torch.export` baked in: the non-tensor arguments' values, the tensors'
dtypes and ranks, the shape guards, and the model's Python state (`ModelSnapshot`). This module decides,
per call, which specialisation serves it and when to capture again:

- the model changed after capture (an attribute, a `config` field, a submodule, a hook): warned with the
  changed names, every specialisation dropped and captured again, the cache state reset by the caller;
- a non-tensor argument took a new value (a float guidance scale): captured again, warned once naming the
  argument; more than `MAX_SPECIALISATIONS` values refuse (`CaptureError`), never recapture without bound;
- inputs of a new shape: captured again; beyond `MAX_SPECIALISATIONS` the oldest shape is evicted (warned).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mcgraph.compiler.analysis import analyze
from mcgraph.compiler.cache_build import build_step_graphs
from mcgraph.compiler.capture import CapturedGraph, capture
from mcgraph.compiler.structure import ModelStructure
from mcgraph.config import CacheConfig, ReuseConfig
from mcgraph.errors import CaptureError
from mcgraph.runtime.model_guard import ModelSnapshot
from mcgraph.runtime.cost_model import SubsetCost, measure_subset_cost
from mcgraph.runtime.step import CacheStep
from mcgraph.runtime.step_graph import StepGraph

MAX_SPECIALISATIONS = 8


@dataclass
class Specialisation:
    """One captured shape specialisation: its graph, what the analyses found and, for caching configs, its
    cache step and the step's traced form."""

    captured: CapturedGraph
    structure: ModelStructure | None
    step: CacheStep | None = None
    graph: StepGraph | None = None

    @property
    def in_spec(self):
        return self.captured.in_spec

    @property
    def out_spec(self):
        return self.captured.out_spec

    def flatten(self, bound: dict) -> list:
        """The graph's flat inputs from a call's bound arguments."""
        return self.captured.flatten(bound)

    def unflatten(self, outputs) -> Any:
        """The model's return structure from the graph's flat outputs."""
        return self.captured.unflatten(outputs)


def chunk_frames(model: torch.nn.Module, config: ReuseConfig) -> int:
    if config.chunk_frames is not None:
        return config.chunk_frames
    cfg = getattr(model, "config", None)
    for key in ("causal_block_size", "num_frame_per_block"):
        value = getattr(cfg, key, None) if cfg is not None else None
        if isinstance(value, int) and value >= 1:
            return value
    return 1


def specialise(model, args, kwargs, config: CacheConfig, dump_dir) -> Specialisation:
    return specialise_captured(model, capture(model, args, kwargs), config, dump_dir)


def specialise_captured(model, captured: CapturedGraph, config: CacheConfig, dump_dir,
                        reuse: Specialisation | None = None) -> Specialisation:
    """For a caching config, analyse a captured graph and build its cache step and step graph; `reuse`: a
    specialisation of the same capture whose structure and step graphs (where it has them) are taken as they
    are (another config on the same capture). Identity needs no structure: it runs the captured graph as is,
    so a model the analyses do not understand still runs."""
    structure = reuse.structure if reuse is not None else None
    if not config.caches:
        return Specialisation(captured, structure)
    if structure is None:
        structure = analyze(captured, dump_dir=dump_dir)
    graphs = reuse.step.graphs if reuse is not None and reuse.step is not None else build_step_graphs(captured,
                                                                                                      dump_dir)
    step = CacheStep(graphs, structure, config, chunk_frames(model, config))
    step.subset_cost = _subset_cost(captured, step, reuse)
    spec = Specialisation(captured, structure, step)
    spec.graph = step_graph_for(step, spec)
    return spec


def _subset_cost(captured: CapturedGraph, step: CacheStep, reuse: Specialisation | None) -> SubsetCost | None:
    """The subset stack's measured cost, for configs that run exact token counts (taken from `reuse` when it
    has one: the same graphs)."""
    if reuse is not None and reuse.step is not None and reuse.step.subset_cost is not None:
        return reuse.step.subset_cost
    config = step.config
    if not config.subset_cost_model or config.capacity_buckets is not None or config.token_budget is not None:
        return None
    return measure_subset_cost(step, captured.flatten(captured.example_bound))


def step_graph_for(step: CacheStep, spec: Specialisation) -> StepGraph:
    return StepGraph(step, spec.flatten(spec.captured.example_bound))


class SpecialisationSet:
    """Specialisations of `model` (most recent last) and the model snapshot they were captured against.
    `capture(bound) -> Specialisation` captures one for bound call inputs."""

    def __init__(self, model, first, capture: Callable, owner: str, snapshot: ModelSnapshot | None = None):
        self.model = model
        self.items = [first]
        self.capture = capture
        self.owner = owner
        self.snapshot = snapshot or ModelSnapshot(model)
        self.model_changes = 0
        self.values_seen: dict[str, list[str]] = {}

    def model_changed(self) -> bool:
        """True (after capturing again, warned) when the model changed since the snapshot; the caller resets
        its cache state. Raises CaptureError naming the change when capturing the changed model fails or the
        model keeps changing."""
        if self.snapshot.matches():
            return False
        changes = "; ".join(self.snapshot.changes())
        self.model_changes += 1
        if self.model_changes > MAX_SPECIALISATIONS:
            raise CaptureError(f"{self.owner} changed after capture {self.model_changes} times ({changes}); each "
                               "change needs a new capture: stop changing it between calls, or optimise it again")
        warnings.warn(f"mcgraph: {self.owner} changed after it was captured ({changes}); the capture baked the old "
                      "values in, so it was captured again and its cache state was reset", stacklevel=4)
        try:
            first = self.capture(self.items[0].captured.example_bound)
        except CaptureError as exc:
            raise CaptureError(f"{self.owner} changed after it was captured ({changes}) and capturing it again "
                               f"failed: {exc}") from exc
        self.items = [first]
        self.snapshot = ModelSnapshot(self.model)
        return True

    def add_for(self, bound: dict, key: tuple, guard_errors: list[str]):
        """Capture a specialisation for a call no existing one serves; see module docstring for the bounds."""
        self._check_argument_values(key)
        if len(self.items) >= MAX_SPECIALISATIONS:
            warnings.warn(f"mcgraph: {len(self.items)} shape specialisations of {self.owner} captured and the "
                          f"inputs keep changing shape ({guard_errors[-1] if guard_errors else key}); the oldest "
                          "is dropped", stacklevel=4)
            del self.items[1]  # the first one stays: `with_config` and the example shape use it
        try:
            spec = self.capture(bound)
        except CaptureError as exc:
            raise CaptureError(f"inputs match no captured specialisation of {self.owner} "
                               f"({guard_errors[0] if guard_errors else key}) and capturing them failed: {exc}") from exc
        self.items.append(spec)
        return spec

    def _check_argument_values(self, key: tuple) -> None:
        """Non-tensor arguments are constants of a capture: a new value means a new capture."""
        known = [dict(s.captured.static_key) for s in self.items]
        for name, value in key:
            if value.startswith(("torch.", "torch_")) or all(k.get(name) == value for k in known):
                continue  # a tensor's dtype/rank, or unchanged
            seen = self.values_seen.setdefault(name, sorted({k[name] for k in known if name in k}))
            if value not in seen:
                seen.append(value)
            if len(seen) > MAX_SPECIALISATIONS:
                raise CaptureError(
                    f"argument {name!r} of {self.owner} took {len(seen)} different values ({', '.join(seen[:4])}, "
                    "...): a Python value is baked into the graph, so each one needs its own capture. Pass it as "
                    "a tensor (torch.tensor(value)) so one graph serves every value")
            if len(seen) == 2:
                warnings.warn(f"mcgraph: argument {name!r} of {self.owner} changed ({seen[0]} -> {seen[1]}); it is a "
                              "Python value baked into the graph, so each new value is captured again (seconds); "
                              "pass it as a tensor if it changes between calls", stacklevel=5)
