"""Capture: turn (model, example inputs) into the one IR every pass works on.

The IR is the unlifted ATen-level `torch.fx.GraphModule` of a non-strict `torch.export` (DESIGN: fx
symbolic_trace fails on diffusers' Wan/SkyReels models; export works). Every tensor dimension of every
input is captured as `Dim.AUTO`, so the token count is a symbolic expression (e.g. ``s0*(s1//2)*(s2//2)``)
rather than a number: the token-axis analysis can then match it exactly instead of guessing from equal
sizes. Export keeps `val` (fake tensor with symbolic shape), `nn_module_stack` and `stack_trace` on every
node, which is what the analyses and error messages use.

The torch.compile backend lowers dynamo's FX graph through the same function (`capture` accepts any
`nn.Module`, a dynamo `GraphModule` included), so passes are written once.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch.export import Dim

from .errors import CaptureError


@dataclass
class CapturedGraph:
    """The IR: an ATen graph module plus what is known about how it was captured."""

    graph_module: torch.fx.GraphModule
    model_class: str
    input_names: list[str]  # graph placeholder names of the flattened user inputs, in order
    capture_seconds: float
    dynamic: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def graph(self) -> torch.fx.Graph:
        return self.graph_module.graph

    def node_count(self) -> int:
        return len(self.graph_module.graph.nodes)


def _auto_dims(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {i: Dim.AUTO for i in range(value.dim())}
    if isinstance(value, (list, tuple)):
        return type(value)(_auto_dims(v) for v in value)
    if isinstance(value, dict):
        return {k: _auto_dims(v) for k, v in value.items()}
    return None


def capture(
    model: torch.nn.Module,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    dynamic: bool = True,
) -> CapturedGraph:
    """Capture `model(*args, **kwargs)` as an ATen graph with symbolic shapes.

    Requires: the model runs on the example inputs; avoid size-1 example dims you want symbolic (export
    specialises 0/1 sizes, e.g. batch 1). Guarantees: the returned graph module takes the same arguments
    as the model and returns the same structure, and checks input shapes against what it was captured for.
    """
    kwargs = dict(kwargs or {})
    args = tuple(args)
    name = type(model).__name__
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = {}
        import inspect

        try:
            params = list(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            params = []
        # export wants dynamic_shapes keyed by the forward's parameter names; positional args map in order
        if len(params) >= len(args) and not any(p in kwargs for p in params[: len(args)]):
            for pname, value in zip(params, args):
                dynamic_shapes[pname] = _auto_dims(value)
            for key, value in kwargs.items():
                dynamic_shapes[key] = _auto_dims(value)
        else:
            dynamic_shapes = None
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            _quiet_export_logs()
            exported = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:  # export raises many types; one clear error names the model and the cause
        if dynamic:
            # symbolic shapes are what makes analyses exact, but a static capture still beats no capture
            try:
                return _static_fallback(model, args, kwargs, name, exc)
            except CaptureError:
                pass
        raise CaptureError(f"could not capture {name} with torch.export (non-strict): {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    gm = exported.module()
    # export leaves unused symbolic-size arithmetic behind; the verifier treats dead nodes as bugs
    gm.graph.eliminate_dead_code()
    gm.recompile()
    seconds = time.perf_counter() - start
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    return CapturedGraph(gm, name, inputs, seconds, dynamic=dynamic)


def _static_fallback(model, args, kwargs, name, first_error) -> CapturedGraph:
    warnings.warn(
        f"mcgraph: dynamic capture of {name} failed ({type(first_error).__name__}: {str(first_error)[:200]}); "
        "capturing with static shapes: the token axis is then matched by size, not symbolically",
        stacklevel=3,
    )
    captured = capture(model, args, kwargs, dynamic=False)
    captured.meta["dynamic_capture_error"] = repr(first_error)[:1000]
    return captured


def _quiet_export_logs():
    # export logs a warning per 0/1-specialised Dim.AUTO (batch 1 is normal here); that is not news to users
    import logging

    logging.getLogger("torch._export.non_strict_utils").setLevel(logging.ERROR)
    logging.getLogger("torch.fx.experimental.symbolic_shapes").setLevel(logging.ERROR)
