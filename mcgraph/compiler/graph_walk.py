"""Small graph traversals the analyses share."""

from __future__ import annotations

import operator
import re
from collections import deque
from collections.abc import Callable, Iterable

import torch
import torch.fx

from mcgraph.compiler.shapes import ATEN, is_op

# Ops that move or rescale a value without mixing tokens or features in a learned way: walking back
# through them from an attention input reaches the projection that produced it.
PASS_THROUGH = (
    ATEN.view, ATEN.reshape, ATEN._unsafe_view, ATEN.transpose, ATEN.permute, ATEN.unflatten, ATEN.flatten,
    ATEN.contiguous, ATEN.clone, ATEN.unsqueeze, ATEN.squeeze, ATEN.expand, ATEN.alias, ATEN.to, ATEN._to_copy,
    ATEN.type_as, ATEN.rms_norm, ATEN.layer_norm, ATEN.native_layer_norm, ATEN.mul, ATEN.add, ATEN.sub,
    ATEN.stack, ATEN.cat, ATEN.slice, ATEN.select, ATEN.unbind, ATEN.split, ATEN.chunk, ATEN.split_with_sizes,
    ATEN.flatten, ATEN.neg, ATEN.div, ATEN.pow, ATEN.mean, ATEN.rsqrt,
)
PROJECTIONS = (ATEN.linear, ATEN.addmm, ATEN.mm, ATEN.matmul, ATEN.bmm)


def find_producer(start: torch.fx.Node, match: Callable[[torch.fx.Node], bool], max_depth: int = 40) -> torch.fx.Node | None:
    """Nearest node upstream of `start` (itself included) that `match`es, walking only through PASS_THROUGH ops
    and getitem. Breadth-first, so the closest producer wins."""
    seen = {start}
    queue = deque([(start, 0)])
    while queue:
        node, depth = queue.popleft()
        if match(node):
            return node
        if depth >= max_depth:
            continue
        passthrough = is_op(node, *PASS_THROUGH) or (node.op == "call_function" and node.target is operator.getitem)
        if not passthrough:
            continue
        for parent in node.all_input_nodes:
            if parent not in seen and parent.op != "get_attr":
                seen.add(parent)
                queue.append((parent, depth + 1))
    return None


def along_first_operands(node, stop: Callable[[torch.fx.Node], bool], depth: int) -> torch.fx.Node | None:
    """The first node, `node` itself included, that `stop` accepts, following each node's first operand (a
    projection's input, a norm's, a head split's) at most `depth` steps; None when the chain ends first."""
    for _ in range(depth):
        if not isinstance(node, torch.fx.Node):
            return None
        if stop(node):
            return node
        if not node.args or not isinstance(node.args[0], torch.fx.Node):
            return None
        node = node.args[0]
    return None


def is_projection(node: torch.fx.Node) -> bool:
    return is_op(node, *PROJECTIONS)


def ancestors(nodes: Iterable[torch.fx.Node], data_only: bool = False) -> set[torch.fx.Node]:
    """Every node the given nodes depend on (themselves included). With `data_only`, a dependency on an
    input's *size* (aten.sym_size) does not count: a rotary table built from the frame count does not
    depend on the latent's values."""
    out: set[torch.fx.Node] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n in out:
            continue
        out.add(n)
        if data_only and is_op(n, ATEN.sym_size):
            continue
        stack.extend(n.all_input_nodes)
    return out


def placeholders_of(node: torch.fx.Node, data_only: bool = False) -> set[str]:
    return {n.name for n in ancestors([node], data_only) if n.op == "placeholder"}


_INDEXED = re.compile(r"^(.+)\.(\d+)$")


def indexed_module(node: torch.fx.Node) -> tuple[str, int, str] | None:
    """(container, index, class) of the outermost module `<container>.<i>` (a member of an nn.ModuleList or
    nn.Sequential) the node was traced in, by export's `nn_module_stack`; None outside every such module.
    Outermost, so a block is found rather than a sub-layer inside it."""
    for path, cls in (node.meta.get("nn_module_stack") or {}).values():
        m = _INDEXED.match(str(path))
        if m:
            return m.group(1), int(m.group(2)), str(cls)
    return None
