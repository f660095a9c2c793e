"""Lean code: run an fx graph eagerly with the least Python per node.

Matches: any `torch.fx.GraphModule` (ATen graphs from capture and the rewrites, higher-order ops included).
Requires: nothing of the graph; `get_attr` targets are read once, when the function is made.
Guarantees: `lean_function(gm)(*flat_inputs)` computes exactly what `gm` computes (same nodes, same order, same
kernels) and returns what the graph's output node holds (for a captured graph: its flat outputs, before
`gm`'s pytree code would unflatten them). It differs only in how Python gets there: fx's
generated `forward` reads every parameter through `nn.Module.__getattr__` chains, enters
`OpOverload.__call__` (a Python frame) for every ATen op and flattens / unflattens pytrees on each call;
measured on diffusers' Wan (tiny, 325 ATen ops) that made the captured graph 0.58x eager. Here parameters are
bound constants, ATen ops are called through their C++ entry points (`OpOverload._op`), and values are freed
after their last use, as fx does.

A parameter *rebound* on the model after this (not updated in place) is not seen: the model guard
(`mcgraph.runtime.model_guard`) recaptures on any rebinding, which makes new functions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

__all__ = ["lean_function"]


def _fetch_attr(root: torch.nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


class _Emitter:
    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.globals: dict[str, Any] = {}
        self.names: dict[torch.fx.Node, str] = {}
        self._constant_ids: dict[int, str] = {}

    def constant(self, value: Any) -> str:
        if value is None or isinstance(value, bool) or (isinstance(value, int) and not isinstance(value, bool)):
            return repr(value)
        if isinstance(value, str):
            return repr(value)
        key = id(value)
        if key not in self._constant_ids:
            name = f"c{len(self._constant_ids)}"
            self._constant_ids[key] = name
            self.globals[name] = value
        return self._constant_ids[key]

    def arg(self, value: Any) -> str:
        if isinstance(value, torch.fx.Node):
            return self.names[value]
        if isinstance(value, (list, tuple)) and any(_has_node(v) for v in value):
            inner = ", ".join(self.arg(v) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
        if isinstance(value, dict) and any(_has_node(v) for v in value.values()):
            return "{" + ", ".join(f"{self.constant(k)}: {self.arg(v)}" for k, v in value.items()) + "}"
        if isinstance(value, slice) and any(_has_node(v) for v in (value.start, value.stop, value.step)):
            return f"slice({self.arg(value.start)}, {self.arg(value.stop)}, {self.arg(value.step)})"
        return self.constant(value)

    def callee(self, target: Any) -> str:
        # the C++ entry point of an ATen op: OpOverload.__call__ is a Python frame that only forwards to it
        fn = target._op if isinstance(target, torch._ops.OpOverload) else target
        return self.constant(fn)

    def call(self, node: torch.fx.Node) -> str:
        args = [self.arg(a) for a in node.args] + [f"{k}={self.arg(v)}" for k, v in node.kwargs.items()]
        if node.op == "call_function":
            return f"{self.callee(node.target)}({', '.join(args)})"
        if node.op == "call_method":
            return f"{args[0]}.{node.target}({', '.join(args[1:])})"
        if node.op == "call_module":
            return f"{self.constant(_module_callee(_fetch_attr(self.gm, node.target)))}({', '.join(args)})"
        raise ValueError(f"unexpected node {node.format_node()}")


def _module_callee(module: torch.nn.Module) -> Callable:
    """What to call for a submodule: export's shape-guard module (`_guards_fn`) is a plain function wrapped in a
    context manager that only tells dynamo to trace it (~60 us a call through `nn.Module.__call__`); eagerly the
    function itself is the same check. Any other module is called as a module."""
    forward = module.__dict__.get("forward")
    if type(module).__name__ == "GuardsFn" and forward is not None:
        for cell in forward.__closure__ or ():
            inner = cell.cell_contents
            if inspect.isfunction(inner) and inner.__name__ == "_" and inner.__code__.co_flags & inspect.CO_VARARGS:
                return inner
    return module


def _has_node(value: Any) -> bool:
    if isinstance(value, torch.fx.Node):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_node(v) for v in value)
    if isinstance(value, dict):
        return any(_has_node(v) for v in value.values())
    if isinstance(value, slice):
        return any(_has_node(v) for v in (value.start, value.stop, value.step))
    return False


def _same_value(node: torch.fx.Node) -> torch.fx.Node | None:
    """The input `node` returns unchanged, when its metadata proves it: `to(dtype)` / `type_as` to the dtype
    (and device) the value already has, and dropout outside training. ATen returns the input tensor itself for
    these, so skipping the call changes nothing but the ~1 us of dispatch (export leaves dozens per block)."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], torch.fx.Node):
        return None
    src = node.args[0]
    val, out = src.meta.get("val"), node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    aten = torch.ops.aten
    if node.target is aten.dropout.default:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
        return src if train is False else None
    if node.target is aten.to.dtype:
        plain = not node.kwargs.get("copy", False) and node.kwargs.get("memory_format") is None and len(node.args) <= 3
        dtype = node.args[1] if len(node.args) > 1 else node.kwargs.get("dtype")
        return src if plain and dtype == val.dtype else None
    if node.target is aten.type_as.default:
        other_node = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        other = other_node.meta.get("val") if isinstance(other_node, torch.fx.Node) else None
        same = isinstance(other, torch.Tensor) and other.dtype == val.dtype and other.device == val.device
        return src if same else None
    return None


def lean_function(gm: torch.fx.GraphModule) -> Callable[..., Any]:
    """`fn(*flat_inputs) -> the output node's value` running `gm`'s graph (see module docstring)."""
    em = _Emitter(gm)
    nodes = list(gm.graph.nodes)
    emitted = []  # nodes that become a line of code
    for i, node in enumerate(nodes):
        same = _same_value(node)
        if same is not None:
            em.names[node] = em.names[same]
        elif node.op == "get_attr":
            em.names[node] = em.constant(_fetch_attr(gm, node.target))
        else:
            em.names[node] = f"v{i}"
            emitted.append(node)
    # a variable is freed after the last line that reads it (aliases share their source's variable)
    last_reader: dict[str, torch.fx.Node] = {}
    local = {em.names[node] for node in emitted}
    for node in emitted:
        for used in node.all_input_nodes:
            if em.names[used] in local:  # not a bound constant (a parameter, or an alias of one)
                last_reader[em.names[used]] = node
    freed_after: dict[torch.fx.Node, list[str]] = {}
    for name, node in last_reader.items():
        freed_after.setdefault(node, []).append(name)
    params, body = [], []
    for node in emitted:
        name = em.names[node]
        if node.op == "placeholder":
            params.append(f"{name}={em.constant(node.args[0])}" if node.args else name)
            continue
        if node.op == "output":
            body.append(f"return {em.arg(node.args[0])}")
            continue
        # a value never read (an assertion's None, the alias an in-place op returns) is dropped at once, as fx's
        # `name = None` does: kept in a variable, a returned view would hold its base to the end
        body.append(f"{name} = {em.call(node)}" if name in last_reader else em.call(node))
        if node in freed_after:
            # as fx's own code does: free intermediates (activations) at their last use
            body.append(f"del {', '.join(sorted(freed_after[node]))}")
    source = f"def lean_forward({', '.join(params)}):\n" + "".join(f"    {line}\n" for line in body)
    namespace = dict(em.globals)
    exec(compile(source, f"<mcgraph lean {type(gm).__name__}>", "exec"), namespace)  # noqa: S102 - our own code
    fn = namespace["lean_forward"]
    fn.__mcgraph_source__ = source
    return fn
