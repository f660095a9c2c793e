"""Rewrite: attention written out by hand, and projections in sequence-first layout, into the form the analyses read.

Matches:
- softmax attention written by hand: `matmul(q, kT)` [`* s` or `/ s`, s a Python number] [`+ mask` or
  `masked_fill(m, -inf)`] -> `softmax(-1)` [-> eval-mode dropout] -> `matmul(., v)`, with q [..., Lq, d],
  kT [..., d, Lk], v [..., Lk, dv] of one batch shape, q possibly pre-scaled (`(q * s) @ kT`), and every
  intermediate read only by the next step (attention weights used elsewhere are not rewritten);
- a projection that reads a transposed value, `linear(transpose(x, 0, 1))`, feeding an attention call's Q, K or
  V (nn.MultiheadAttention moves batch-first inputs to [L, B, D] before its packed in_proj).
Requires: a captured ATen graph with `val` metadata, without flex attention (refused, naming the call and its
source line: see `FLEX`).
Guarantees: the graph it is given is left unchanged (identity runs the captured graph as captured; the pass
manager checks it, the pass being declared read-only); when something matched, it returns a new GraphModule over
a copy of the graph (parameters shared, node names and source locations kept) in which each hand-written
attention is one `aten.scaled_dot_product_attention(q, k, v, attn_mask=..., scale=s)` and each such
projection is `transpose(linear(x), 0, 1)`: the same values up to float rounding. Nothing matched: the input
module is returned as is. `unsupported_attention` names the attention forms it does not rewrite (flex
attention, linear attention, other hand-written forms) for the attention analysis's refusal.
"""

from __future__ import annotations

import copy
import os
import re
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.fx

from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, is_op, same_size, shape
from mcgraph.compiler.structure import STRUCTURE
from mcgraph.errors import StructureNotFound
from mcgraph.passes.attention_sites import is_attention

MATMULS = (ATEN.matmul, ATEN.bmm)
SOFTMAXES = (ATEN.softmax, ATEN._softmax)
WEIGHT_PROJECTIONS = (ATEN.linear, ATEN.mm, ATEN.addmm, ATEN.matmul, ATEN.bmm)
# from Q/K/V back to their projection through these only: reshapes and head splits, never arithmetic
_TO_PROJECTION = (ATEN.view, ATEN.reshape, ATEN._unsafe_view, ATEN.transpose, ATEN.permute, ATEN.unflatten,
                  ATEN.contiguous, ATEN.clone, ATEN.unsqueeze, ATEN.squeeze, ATEN.select, ATEN.unbind, ATEN.split,
                  ATEN.chunk, ATEN.split_with_sizes, ATEN.slice, ATEN.expand)
_NOT = (ATEN.bitwise_not, ATEN.logical_not)
# masked_fill values that act as -inf: exp underflows to exactly 0 in every float dtype (hand-written attention often
# fills -1e9 or finfo.min); only a row with every key masked differs (uniform weights there, NaN from SDPA)
_MASKED = -1e4

FLEX = ("flex attention (higher-order op `flex_attention`): MotionCache does not run it on a token subset yet (its "
        "score_mod and block_mask are written for the full query set)")


def user_source(node: torch.fx.Node) -> str:
    """' (called at file.py:LINE)' for the innermost frame of the node's stack trace in a real source file: the
    flex attention call's innermost frame is generated code (`<eval_with_key>`), which names nothing."""
    frames = re.findall(r'File "([^"<][^"]*)", line (\d+)', node.meta.get("stack_trace") or "")
    return f" (called at {os.path.basename(frames[-1][0])}:{frames[-1][1]})" if frames else ""


def flex_attention_node(gm: torch.fx.GraphModule) -> torch.fx.Node | None:
    """The first call of the flex attention higher-order op, if any."""
    flex = getattr(torch.ops.higher_order, "flex_attention", None)  # absent on a torch without flex attention
    return next((n for n in gm.graph.nodes if flex is not None and n.op == "call_function" and n.target is flex),
                None)


@dataclass
class SoftmaxAttention:
    """One matched hand-written attention: what the SDPA call takes and the nodes it replaces."""

    q: torch.fx.Node
    kt: torch.fx.Node  # K with its last two dims swapped
    v: torch.fx.Node
    out: torch.fx.Node  # the final matmul: its users read the SDPA call instead
    scale: float = 1.0
    mask: torch.fx.Node | None = None
    mask_is_masked_out: bool = False  # masked_fill(m, -inf): m marks the masked-out scores, SDPA wants the kept
    replaced: list = field(default_factory=list)  # from the first matmul on, erased once unused


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _op(node: torch.fx.Node | None, *packets) -> bool:
    """`is_op` that takes None (no single user) as no match."""
    return isinstance(node, torch.fx.Node) and is_op(node, *packets)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_last_dim(node: torch.fx.Node, dim) -> bool:
    s = shape(node)
    return s is not None and isinstance(dim, int) and dim % len(s) == len(s) - 1


def _swaps_last_two(node: torch.fx.Node) -> bool:
    s = shape(node.args[0]) if is_op(node, ATEN.transpose) else None
    return s is not None and {d % len(s) for d in node.args[1:3]} == {len(s) - 2, len(s) - 1}


def _shapes_fit(q, kt, v) -> bool:
    """q [..., Lq, d], kT [..., d, Lk], v [..., Lk, dv], one batch shape (SDPA does not broadcast it)."""
    sq, sk, sv = shape(q), shape(kt), shape(v)
    if sq is None or sk is None or sv is None or not len(sq) == len(sk) == len(sv) >= 3:
        return False
    batch_ok = all(same_size(a, b) and same_size(a, c) for a, b, c in zip(sq[:-2], sk[:-2], sv[:-2]))
    return batch_ok and same_size(sq[-1], sk[-2]) and same_size(sk[-1], sv[-2])


def _score_steps(m: SoftmaxAttention, node: torch.fx.Node) -> torch.fx.Node | None:
    """Walk the optional scale and mask after `q @ kT`; return the node the softmax must read."""
    nxt = _only_user(node)
    if _op(nxt, ATEN.mul, ATEN.div) and nxt.args[0] is node and _number(nxt.args[1]) and nxt.args[1]:
        m.scale *= nxt.args[1] if _op(nxt, ATEN.mul) else 1.0 / nxt.args[1]
        m.replaced.append(nxt)
        node, nxt = nxt, _only_user(nxt)
    if _op(nxt, ATEN.add) and not nxt.kwargs and len(nxt.args) == 2:
        mask = nxt.args[1] if nxt.args[0] is node else nxt.args[0]
        dtype = getattr(_val(mask), "dtype", None)
        if dtype is None or dtype != getattr(_val(node), "dtype", None) or mask is node:
            return None  # SDPA adds a float mask of the query's dtype only
        m.mask = mask
    elif _op(nxt, ATEN.masked_fill) and nxt.args[0] is node and _number(nxt.args[2]) and nxt.args[2] <= _MASKED:
        m.mask, m.mask_is_masked_out = nxt.args[1], True
    else:
        return node
    m.replaced.append(nxt)
    return nxt


def match_softmax_attention(mm: torch.fx.Node) -> SoftmaxAttention | None:
    """The hand-written attention headed by `mm = matmul(q, kT)` (module docstring), or None."""
    if not is_op(mm, *MATMULS) or len(mm.args) != 2 or not all(isinstance(a, torch.fx.Node) for a in mm.args):
        return None
    q, kt = mm.args
    m = SoftmaxAttention(q, kt, v=mm, out=mm, replaced=[mm])
    scores = _score_steps(m, mm)
    sm = _only_user(scores) if scores is not None else None
    if not _op(sm, *SOFTMAXES) or sm.args[0] is not scores or not _is_last_dim(sm, sm.args[1]):
        return None
    if (sm.args[2] if len(sm.args) > 2 else sm.kwargs.get("dtype", sm.kwargs.get("half_to_float"))):
        return None  # a softmax in another dtype: SDPA's own precision would differ by more than rounding
    m.replaced.append(sm)
    probs, out = sm, _only_user(sm)
    if _op(out, ATEN.dropout) and out.args[0] is sm and not out.args[2]:  # eval-mode dropout: the identity
        m.replaced.append(out)
        probs, out = out, _only_user(out)
    if not _op(out, *MATMULS) or len(out.args) != 2 or out.args[0] is not probs:
        return None
    m.v, m.out = out.args[1], out
    if is_op(q, ATEN.mul) and _only_user(q) is mm and _number(q.args[1]) and isinstance(q.args[0], torch.fx.Node):
        m.scale *= q.args[1]  # `(q * s) @ kT`: the pre-scaled query
        m.replaced.insert(0, q)
        m.q = q.args[0]
    return m if _shapes_fit(m.q, kt, m.v) else None


def _fake(fn, fallback):
    """The new node's `val`, computed on the fake tensors (symbolic sizes kept); `fallback` where that fails."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - metadata only: a same-shaped stand-in keeps the verifier's invariant
        return fallback


def _val(node: torch.fx.Node | None):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _call(g: torch.fx.Graph, target, args, kwargs, like: torch.fx.Node, val, suffix: str) -> torch.fx.Node:
    """A new node named after `like` (+ `suffix`), with its source location (module, stack trace) and `val`."""
    node = g.create_node("call_function", target, args, kwargs, name=f"{like.name}_{suffix}")
    node.meta = {**like.meta, "val": val}
    return node


def rewrite_softmax_attention(g: torch.fx.Graph, m: SoftmaxAttention) -> torch.fx.Node:
    """Replace a match by one SDPA call at the final matmul's place; return the call."""
    with g.inserting_before(m.out):
        k = m.kt.args[0] if _swaps_last_two(m.kt) else _call(
            g, ATEN.transpose.int, (m.kt, -2, -1), {}, m.kt, _fake(lambda: _val(m.kt).transpose(-2, -1), None), "k")
        mask = m.mask
        if mask is not None and m.mask_is_masked_out:
            mask = mask.args[0] if is_op(mask, *_NOT) else _call(
                g, ATEN.logical_not.default, (mask,), {}, mask, _fake(lambda: _val(m.mask).logical_not(), None), "kept")
        kwargs = {"attn_mask": mask, "scale": float(m.scale)} if mask is not None else {"scale": float(m.scale)}
        val = _fake(lambda: ATEN.scaled_dot_product_attention.default(
            _val(m.q), _val(k), _val(m.v), attn_mask=_val(mask), scale=float(m.scale)), _val(m.out))
        sdpa = _call(g, ATEN.scaled_dot_product_attention.default, (m.q, k, m.v), kwargs, m.out, val, "sdpa")
    m.out.replace_all_uses_with(sdpa)
    # users before producers; the key and mask go too when nothing else reads them (dangling nodes fail the verifier)
    for node in dict.fromkeys([m.out, *reversed(m.replaced), m.kt, m.mask]):
        if node is not None and not node.users and node.op == "call_function":
            g.erase_node(node)
    return sdpa


def _projection_behind(node: torch.fx.Node) -> torch.fx.Node | None:
    """The linear a Q/K/V value comes from, walked back through reshapes and head splits."""
    seen, queue = {node}, deque([node])
    while queue:
        n = queue.popleft()
        if is_op(n, ATEN.linear):
            return n
        if is_op(n, *_TO_PROJECTION) or (n.op == "call_function" and getattr(n.target, "__name__", "") == "getitem"):
            for p in n.all_input_nodes[:1]:
                if p not in seen:
                    seen.add(p)
                    queue.append(p)
    return None


def sequence_first_projections(g: torch.fx.Graph) -> list[torch.fx.Node]:
    """Linears feeding an attention's Q/K/V whose input is a transpose that keeps the feature (last) dim."""
    found = []
    for n in g.nodes:
        if not is_attention(n):
            continue
        for x in n.args[:3]:
            proj = _projection_behind(x) if isinstance(x, torch.fx.Node) else None
            t = proj.args[0] if proj is not None else None
            s = shape(t.args[0]) if _op(t, ATEN.transpose) else None
            if s and len(s) - 1 not in {d % len(s) for d in t.args[1:3]} and proj not in found:
                found.append(proj)
    return found


def rewrite_sequence_first_projection(g: torch.fx.Graph, proj: torch.fx.Node) -> torch.fx.Node:
    """`linear(transpose(x, a, b), W, bias)` -> `transpose(linear(x, W, bias), a, b)`: the projection then reads
    the batch-first value the block computes, and the transpose moves after it (exact: linear acts on the last
    dim only)."""
    t = proj.args[0]
    x, a, b = t.args[0], *t.args[1:3]
    with g.inserting_before(proj):
        lin_val = _fake(lambda: _val(proj).transpose(a, b), None)
        lin = _call(g, proj.target, (x, *proj.args[1:]), dict(proj.kwargs), proj, lin_val, "batch_first")
        moved = _call(g, t.target, (lin, a, b), {}, t, _val(proj), "after")
    proj.replace_all_uses_with(moved)
    g.erase_node(proj)
    if not t.users:
        g.erase_node(t)
    return moved


def copy_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A new GraphModule over a copy of `gm`'s graph (node names, shallow-copied meta and the calling convention
    kept), sharing its parameters, buffers and submodules."""
    graph = torch.fx.Graph(tracer_cls=gm.graph._tracer_cls)
    value, output = graph.graph_copy(gm.graph, {}, return_output_node=True)
    graph.output(value).meta = copy.copy(output.meta)
    # shared, not deep-copied: the calling convention (pytree specs) is never mutated, and deep-copying its
    # tree specs warns on current torch
    graph._codegen = gm.graph._codegen
    new = torch.fx.GraphModule(gm, graph)
    new.meta.update({k: v for k, v in gm.meta.items() if k != STRUCTURE})
    return new


class CanonicalAttention(GraphPass):
    name = "canonical_attention"
    mutates = False  # the captured graph stays as captured: matches are rewritten on a copy

    def requires(self, gm: torch.fx.GraphModule) -> None:
        # refused before anything else: flex attention's functorch-level calls (kept by capture, results unused)
        # fail the verifier after any pass, which would hide what the construct is
        flex = flex_attention_node(gm)
        if flex is not None:
            self.fail(f"the graph calls {FLEX}{user_source(flex)}; identity (NoCache) runs it as captured", flex,
                      cls=StructureNotFound)

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        nodes = list(gm.graph.nodes)
        if not any(match_softmax_attention(n) for n in nodes) and not sequence_first_projections(gm.graph):
            return PassResult(gm, modified=False, info={"softmax_attention": 0, "sequence_first": 0})
        new = copy_graph_module(gm)
        g = new.graph
        rewritten, taken = 0, set()
        for m in [m for m in map(match_softmax_attention, list(g.nodes)) if m is not None]:
            if taken.isdisjoint(m.replaced + [m.out]):  # chains never share nodes; guarded all the same
                taken.update(m.replaced + [m.out])
                rewrite_softmax_attention(g, m)
                rewritten += 1
        moved = [rewrite_sequence_first_projection(g, p) for p in sequence_first_projections(g)]
        new.recompile()
        return PassResult(new, modified=True, info={"softmax_attention": rewritten, "sequence_first": len(moved)})


# ----------------------------------------------------------------------------------- what is not rewritten
def _sources(node: torch.fx.Node, depth: int = 12) -> set[torch.fx.Node]:
    """What the nearest weight projections upstream of `node` read (any op walked through, parameters aside)."""
    out, seen, queue = set(), {node}, deque([(node, 0)])
    while queue:
        n, d = queue.popleft()
        weights = [a for a in n.args[:3] if isinstance(a, torch.fx.Node) and a.op == "get_attr"]
        if is_op(n, *WEIGHT_PROJECTIONS) and weights:
            out.update(a for a in n.all_input_nodes if a.op != "get_attr")
            continue
        if d < depth and n.op == "call_function":
            for p in n.all_input_nodes:
                if p not in seen and p.op != "get_attr":
                    seen.add(p)
                    queue.append((p, d + 1))
    return out


def _token_mixing_product(gm: torch.fx.GraphModule) -> torch.fx.Node | None:
    """The first product of two activations that come from projections of one value (Q/K/V-like)."""
    for n in gm.graph.nodes:
        if not is_op(n, *MATMULS) or len(n.args) != 2:
            continue
        a, b = n.args
        if all(isinstance(x, torch.fx.Node) and x.op != "get_attr" for x in (a, b)) and _sources(a) & _sources(b):
            return n
    return None


def _has_softmax_after(node: torch.fx.Node, depth: int = 6) -> torch.fx.Node | None:
    """A softmax within `depth` steps downstream of `node` (scores that a softmax normalises), if any."""
    frontier = [node]
    for _ in range(depth):
        frontier = [u for n in frontier for u in n.users]
        hit = next((u for u in frontier if is_op(u, *SOFTMAXES)), None)
        if hit is not None:
            return hit
    return None


def unsupported_attention(gm: torch.fx.GraphModule) -> tuple[str, torch.fx.Node] | None:
    """(what it is, the node) for the first attention-like computation this pass does not rewrite to SDPA and
    the attention analysis therefore does not see: flex attention, hand-written attention of another form,
    linear attention. None when there is none."""
    flex = flex_attention_node(gm)
    if flex is not None:
        return FLEX + user_source(flex), flex
    mix = _token_mixing_product(gm)
    if mix is None:
        return None
    softmax = _has_softmax_after(mix)
    if softmax is not None:
        return ("hand-written softmax attention in a form mcgraph does not rewrite to scaled_dot_product_attention "
                "(it expects softmax(q @ k^T * scale [+ mask], -1) @ v with the weights used nowhere else)", softmax)
    return ("linear attention (no softmax over keys): tokens are mixed by a product of projections of one value; "
            "MotionCache caches softmax attention only (K/V rows of the tokens it skips)", mix)
