"""The graph verifier, run after every pass by default.

Checks what every pass relies on: the graph is well formed (fx lint: every use after its definition,
one output), every computing node carries shape metadata (`val`), and there are no dangling nodes
(pure nodes whose result nobody uses: a rewrite that forgot to reconnect something leaves exactly those).
Bodies of higher-order ops (`torch.cond` branches, wrapped regions) are sub-graphs reached by `get_attr`:
they are verified in turn, recursively, and need no metadata on the `get_attr` itself.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from mcgraph.errors import VerificationError


def _needs_val(node: torch.fx.Node) -> bool:
    if node.op not in ("call_function", "call_method", "call_module", "placeholder", "get_attr"):
        return False
    if node.op == "call_module" and str(node.target).startswith("_guards"):
        return False  # export's input-shape guard check returns nothing
    if node.op == "call_function" and node.is_impure():
        return False  # asserts and in-place state updates return nothing worth describing
    return True


def _subgraph(gm: torch.fx.GraphModule, node: torch.fx.Node):
    if node.op != "get_attr":
        return None
    try:
        target = gm.get_submodule(str(node.target))
    except AttributeError:
        return None
    return target if isinstance(target, torch.fx.GraphModule) else None


def verify_graph(gm: torch.fx.GraphModule, pass_name: str = "verifier", meta_key: str | None = "val",
                 dangling: bool = True) -> None:
    """Raise VerificationError naming the pass and the offending node if an invariant is broken.
    `meta_key`: the shape metadata every computing node must carry (dynamo graphs: "example_value"; None: not
    checked); `dangling`: check for unused pure nodes."""
    try:
        gm.graph.lint()
    except Exception as exc:
        raise VerificationError(pass_name, f"graph is malformed: {exc}") from exc
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if len(outputs) != 1:
        raise VerificationError(pass_name, f"graph must have exactly one output node, found {len(outputs)}")
    for node in gm.graph.nodes:
        body = _subgraph(gm, node)
        if body is not None:
            verify_graph(body, f"{pass_name} / {node.target}", meta_key, dangling)
            continue
        if meta_key is not None and _needs_val(node) and meta_key not in node.meta:
            raise VerificationError(pass_name, f"node has no shape metadata (meta[{meta_key!r}])", node)
        # an unused element of a multi-output node (operator.getitem) is unpacking, not a forgotten rewrite
        if (dangling and node.op == "call_function" and not node.users and not node.is_impure()
                and node.target is not operator.getitem):
            raise VerificationError(pass_name, "dangling node: its result is never used", node)
