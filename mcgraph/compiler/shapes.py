"""Shape helpers over the IR's fake-tensor metadata (sizes may be symbolic `SymInt`s)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

ATEN = torch.ops.aten


def value(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def shape(node: Any) -> tuple | None:
    """The (possibly symbolic) shape of a tensor-valued node, else None."""
    v = value(node)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def is_symbolic(size: Any) -> bool:
    return isinstance(size, torch.SymInt) and not size.node.is_constant()


def same_size(a: Any, b: Any) -> bool:
    """True only when a == b is provable: symbolic sizes compare as expressions, never by example value."""
    if is_symbolic(a) or is_symbolic(b):
        if not (is_symbolic(a) and is_symbolic(b)):
            return False
        return bool(statically_known_true(a == b))
    return int(a) == int(b)


def size_str(size: Any) -> str:
    return str(size.node.expr) if is_symbolic(size) else str(int(size))


def example_int(size: Any) -> int:
    """The concrete size seen at capture time (the hint of a symbolic size)."""
    if is_symbolic(size):
        return int(size.node.hint)
    return int(size)


def dim_arg(node: torch.fx.Node) -> int:
    """The `dim` argument of a cat / slice / split node (second positional, or keyword; default 0), made
    non-negative by the rank of the node's value."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    rank = len(shape(node) or ())
    return dim % rank if rank else dim


def is_op(node: torch.fx.Node, *packets) -> bool:
    """node calls one of the given aten op packets (any overload), e.g. is_op(n, ATEN.linear)."""
    if node.op != "call_function":
        return False
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    return any(target is p or packet is p for p in packets)
