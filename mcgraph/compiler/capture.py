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

import contextlib
import inspect
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree
from torch.export import Dim

from mcgraph.compiler.lean_code import lean_function
from mcgraph.errors import CaptureError


@dataclass
class CapturedGraph:
    """The IR: an ATen graph module plus what is known about how it was captured."""

    graph_module: torch.fx.GraphModule
    model_class: str
    input_names: list[str]  # graph placeholder names of the flattened user inputs, in order
    capture_seconds: float
    dynamic: bool
    static_key: tuple = ()  # the non-tensor arguments it was captured with (they are baked in)
    example_bound: dict | None = None  # the example inputs, by name (rewrites check their graphs on them)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # read once (dynamo does not trace into GraphModule.graph); graphs built by hand may have no pytree code
        info = getattr(self.graph_module.graph._codegen, "pytree_info", None)
        self.in_spec = info.in_spec if info is not None else None
        self.out_spec = info.out_spec if info is not None else None
        kwargs_spec = self.in_spec.child(1) if self.in_spec is not None else None
        # inputs that are all leaves (tensors, numbers, None) flatten by name: no pytree walk per call
        self._leaf_names = (list(kwargs_spec.context) if kwargs_spec is not None and kwargs_spec.type is dict and
                            all(c.is_leaf() for c in kwargs_spec.children()) else None)
        self._lean = None

    def flatten(self, bound: dict[str, Any]) -> list:
        """The graph's flat inputs from a call's bound arguments."""
        if self._leaf_names is not None and len(bound) == len(self._leaf_names):
            try:
                return [bound[k] for k in self._leaf_names]
            except KeyError:
                pass  # another set of names: the pytree walk says what is wrong
        return fx_pytree.tree_flatten_spec(((), bound), self.in_spec)

    def unflatten(self, outputs) -> Any:
        """The model's return structure from the graph's flat outputs."""
        return pytree.tree_unflatten(list(outputs), self.out_spec)

    def __call__(self, bound_inputs: dict[str, Any]):
        """Run the graph on inputs bound by `bind_call`: its lean function when run eagerly (see
        `compiler.lean_code`), the module itself under torch.compile / export (they trace it)."""
        if self.in_spec is None or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return self.graph_module(**bound_inputs)
        if self._lean is None:
            self._lean = lean_function(self.graph_module)
        return self.unflatten(self._lean(*self.flatten(bound_inputs)))

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


_SIGNATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(model: torch.nn.Module) -> inspect.Signature:
    """`inspect.signature(model.forward)`, computed once per forward function (it costs more than a small
    model's call: this runs on every call of an optimised module)."""
    forward = model.forward
    function = getattr(forward, "__func__", forward)
    try:
        return _SIGNATURES[function]
    except (KeyError, TypeError):
        sig = inspect.signature(forward)
        with contextlib.suppress(TypeError):  # not weakly referenceable: not cached
            _SIGNATURES[function] = sig
        return sig


_FAST_BINDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _FastBinder:
    """`Signature.bind` + `apply_defaults` for the common call (named parameters only, none twice, no unknown
    keyword): a dict merge instead of ~25 us of `inspect` per call. Anything else takes the exact path."""

    def __init__(self, sig: inspect.Signature):
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = list(sig.parameters.values())
        self.positional = [p.name for p in params if p.kind in kinds]
        self.keywords = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY
                         and p.kind in (*kinds, inspect.Parameter.KEYWORD_ONLY)}
        self.defaults = {p.name: p.default for p in params if p.kind in (*kinds, inspect.Parameter.KEYWORD_ONLY)}
        self.required = {name for name, d in self.defaults.items() if d is inspect.Parameter.empty}
        self.has_var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if self.has_var_keyword:
            return None  # the exact path keeps where **kwargs land
        if len(args) > len(self.positional):
            return None
        positional = dict(zip(self.positional, args))
        if not kwargs.keys() <= self.keywords or not positional.keys().isdisjoint(kwargs):
            return None
        out = {**self.defaults, **positional, **kwargs}
        if self.required and any(out[name] is inspect.Parameter.empty for name in self.required):
            return None
        return out


def bind_call(model: torch.nn.Module, args: tuple, kwargs: dict | None) -> dict[str, Any]:
    """Name every argument of `model.forward` (defaults filled in), so positional and keyword calls of the
    same inputs map to one calling convention: the graph is always called with keywords."""
    sig = _signature(model)
    forward = model.forward
    function = getattr(forward, "__func__", forward)
    try:
        binder = _FAST_BINDERS[function]
    except KeyError:
        binder = _FAST_BINDERS[function] = _FastBinder(sig)
    except TypeError:  # not weakly referenceable
        binder = None
    if binder is not None:
        fast = binder.bind(args, kwargs or {})
        if fast is not None:
            return fast
    try:
        bound = sig.bind(*args, **(kwargs or {}))
    except TypeError as exc:
        raise CaptureError(f"{type(model).__name__}.forward{sig}: {exc}") from exc
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise CaptureError(f"{type(model).__name__}.forward takes *{name}; mcgraph needs named inputs")
        else:
            out[name] = value
    return out


def static_key(bound: dict[str, Any]) -> tuple:
    """What a captured graph is specialised on besides symbolic sizes: the non-tensor arguments (export bakes
    them in as constants) and each tensor's dtype and rank."""
    return tuple((k, f"{v.dtype}[{v.dim()}]" if isinstance(v, torch.Tensor) else repr(v)) for k, v in bound.items())


def capture(
    model: torch.nn.Module,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    dynamic: bool = True,
) -> CapturedGraph:
    """Capture `model(*args, **kwargs)` as an ATen graph with symbolic shapes.

    Requires: the model runs on the example inputs; avoid size-1 example dims you want symbolic (export
    specialises 0/1 sizes, e.g. batch 1). Guarantees: the returned graph takes the model's inputs as
    keywords (see `bind_call`), returns the same structure, and checks input shapes against its guards.
    """
    name = type(model).__name__
    bound = bind_call(model, tuple(args), kwargs)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        exported = _export(model, bound, dynamic)
    except Exception as exc:  # export raises many types, a model's own TypeError included: try static first
        if dynamic:
            # symbolic shapes are what makes analyses exact, but a static capture still beats no capture
            return _static_fallback(model, args, kwargs, name, exc)
        raise _capture_error(model, bound, name, exc) from exc
    finally:
        model.train(was_training)
    gm = exported.module()
    # export leaves unused symbolic-size arithmetic behind; the verifier treats dead nodes as bugs
    gm.graph.eliminate_dead_code(is_impure_node=_keeps_state)
    gm.recompile()
    seconds = time.perf_counter() - start
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    return CapturedGraph(gm, name, inputs, seconds, dynamic=dynamic, static_key=static_key(bound),
                         example_bound=bound)


_PURE_MODULES = ("_operator", "operator", "math", "builtins")


def _keeps_state(node: torch.fx.Node) -> bool:
    """Dead code that must stay: fx's own impure ops, and any call that is neither an ATen op nor plain
    arithmetic (e.g. flex attention's `_vmap_increment_nesting` / `_vmap_decrement_nesting`: their results are
    unused, but the functorch level they set is read later). What goes is dead size arithmetic and ATen ops."""
    if node.is_impure():
        return True
    target = node.target
    if node.op != "call_function" or isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return False
    name = getattr(target, "__name__", "")
    return getattr(target, "__module__", "") not in _PURE_MODULES and not name.startswith("sym_")


def _fresh(bound: dict[str, Any]) -> dict[str, Any]:
    # export marks the dims of the tensors it is given (and a failed export leaves the marks behind, so a static
    # retry on the same objects fails the same way): it gets new tensor objects over the same storage
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach(), bound)


def _export(model: torch.nn.Module, bound: dict[str, Any], dynamic: bool):
    fresh = _fresh(bound)
    dynamic_shapes = {k: _auto_dims(v) for k, v in fresh.items()} if dynamic else None
    # no_grad: a grad-mode export traces backward-capable ops some kernels lack on CPU (e.g. flex attention)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        _quiet_export_logs()
        return torch.export.export(model, (), fresh, dynamic_shapes=dynamic_shapes, strict=False)


def _capture_error(model: torch.nn.Module, bound: dict[str, Any], name: str, exc: BaseException) -> CaptureError:
    """Whose failure it is: the model's own (it fails when simply run on the example) or torch.export's."""
    try:
        with torch.no_grad():
            model(**_fresh(bound))
    except Exception as own:
        return CaptureError(f"{name} fails on the example inputs when run eagerly, before any capture: "
                            f"{type(own).__name__}: {own}")
    return CaptureError(f"could not capture {name} with torch.export (non-strict), although it runs eagerly on "
                        f"the example inputs: {type(exc).__name__}: {exc}")


def _static_fallback(model, args, kwargs, name, first_error) -> CapturedGraph:
    warnings.warn(
        f"mcgraph: dynamic capture of {name} failed ({type(first_error).__name__}: {str(first_error)[:200]}); "
        "capturing with static shapes: the token axis is then matched by size, not symbolically",
        stacklevel=3,
    )
    try:
        captured = capture(model, args, kwargs, dynamic=False)
    except CaptureError as exc:
        raise CaptureError(f"{exc} (the dynamic-shape capture failed first: {type(first_error).__name__}: "
                           f"{str(first_error)[:300]})") from exc
    captured.meta["dynamic_capture_error"] = repr(first_error)[:1000]
    return captured


def _quiet_export_logs():
    # export logs a warning per 0/1-specialised Dim.AUTO (batch 1 is normal here); that is not news to users
    import logging

    logging.getLogger("torch._export.non_strict_utils").setLevel(logging.ERROR)
    logging.getLogger("torch.fx.experimental.symbolic_shapes").setLevel(logging.ERROR)
