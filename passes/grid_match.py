"""The patch embedding and the token grid (frames x height x width) it makes, found in a captured graph, and
how a call's grid sizes are read back from the call's inputs (`formula`, `size_reader`). Used by the
token_grid analysis (and token_axis, to tell which self-attention sequence is the video's); the matching
rules are in `passes/token_grid.py`'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy
import torch
import torch.fx
from torch.utils._sympy.functions import FloorDiv, Mod, PythonMod

from mcgraph.compiler.graph_walk import find_producer, is_projection, placeholders_of
from mcgraph.compiler.shapes import ATEN, is_op, is_symbolic, same_size, shape

CONV_OPS = (ATEN.conv3d, ATEN.conv2d, ATEN.convolution, ATEN._convolution)
# ops that move elements without computing: the patch embedding's output reaches the token stream through them
LAYOUT_OPS = (ATEN.view, ATEN.reshape, ATEN._unsafe_view, ATEN.flatten, ATEN.unflatten, ATEN.transpose,
              ATEN.permute, ATEN.contiguous, ATEN.clone, ATEN.alias)
RESHAPE_OPS = (ATEN.view, ATEN.reshape, ATEN._unsafe_view, ATEN.flatten, ATEN.unflatten)


@dataclass
class GridMatch:
    """A patch embedding and the grid of the tokens it makes."""

    sizes: tuple  # (frames, height, width): ints or SymInts
    patch: tuple[int, int, int]
    embed: torch.fx.Node
    latent: str | None  # the graph input the embedding reads
    layout: str  # TokenGrid.latent_layout


def plain_shape(node) -> tuple | None:
    """`shape`, with sizes export left as SymInts of a known value (a baked-in Python int) as plain ints, so
    they compare with the ints they equal."""
    s = shape(node)
    if s is None:
        return None
    return tuple(int(x.node.expr) if isinstance(x, torch.SymInt) and x.node.expr.is_Integer else x for x in s)


def find_grid(gm: torch.fx.GraphModule, token_count) -> GridMatch | None:
    """The patch embedding whose tokens form a grid of exactly `token_count` tokens (module docstring), or None."""
    return _conv_grid(gm, token_count) or _token_input_grid(gm, token_count)


# ------------------------------------------------------------------------------------------- convolutions
def _conv_grid(gm, token_count) -> GridMatch | None:
    for node in gm.graph.nodes:
        out = plain_shape(node) if is_op(node, *CONV_OPS) else None
        if out is None or len(out) not in (4, 5):
            continue
        if len(out) == 5:
            sizes, layout = tuple(out[2:]), "video"
        elif same_size(out[2] * out[3], token_count):
            sizes, layout = (1, out[2], out[3]), "image"
        else:
            frames = _folded_frames(node, token_count)
            if frames is None:
                continue
            sizes, layout = (frames, out[2], out[3]), "frames in batch"
        if same_size(math.prod(sizes), token_count):
            sources = sorted(placeholders_of(node.args[0], data_only=True))
            return GridMatch(sizes, _patch(node), node, sources[0] if len(sources) == 1 else None, layout)
    return None


def _patch(conv: torch.fx.Node) -> tuple[int, int, int]:
    kernel = tuple(plain_shape(conv.args[1])[2:])
    stride = conv.args[3] if len(conv.args) > 3 else kernel
    patch = tuple(int(s) for s in (stride if isinstance(stride, (list, tuple)) else [stride] * len(kernel)))
    return (1,) + patch if len(patch) == 2 else patch


def _folded_frames(conv: torch.fx.Node, token_count):
    """F when a Conv2d output [B*F, D, h, w] reaches a [B, T, ...] value through layout ops only, else None."""
    stream = _layout_descendant(conv, token_count)
    if stream is None:
        return None
    folded, batch = plain_shape(conv)[0], plain_shape(stream)[0]
    frames = folded // batch
    return frames if same_size(frames * batch, folded) else None


def _layout_descendant(node: torch.fx.Node, token_count, max_depth: int = 8) -> torch.fx.Node | None:
    """The nearest value downstream of `node`, through layout ops only, with the token axis on dim 1."""
    frontier, seen = [node], {node}
    for _ in range(max_depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if u in seen or not is_op(u, *LAYOUT_OPS):
                    continue
                s = plain_shape(u)
                if s is not None and len(s) >= 2 and same_size(s[1], token_count):
                    return u
                seen.add(u)
                nxt.append(u)
        frontier = nxt
    return None


# ------------------------------------------------------------------------------- pre-patchified tokens
def _token_input_grid(gm, token_count) -> GridMatch | None:
    """A projection over a graph input [B, T, C] (tokens patchified outside the model)."""
    for p in gm.graph.nodes:
        s = plain_shape(p) if p.op == "placeholder" else None
        if s is None or len(s) != 3 or not same_size(s[1], token_count):
            continue
        embed = next((n for n in gm.graph.nodes if is_projection(n) and n.args
                      and find_producer(n.args[0], lambda x, p=p: x is p, max_depth=8) is not None), None)
        if embed is None:
            continue
        sizes = _grid_sizes(gm, token_count)
        return None if sizes is None else GridMatch(sizes, (1, 1, 1), embed, p.name, "tokens")
    return None


def _grid_sizes(gm, token_count) -> tuple | None:
    """(F, H, W) of a token sequence no convolution lays out: a three-factor split of the token axis, else three
    adjacent Python ints of the call (agreeing with a two-factor split's frames, if any), else a two-factor
    (F, H*W) split, H and W from two adjacent ints when they multiply to H*W."""
    splits = _token_splits(gm, token_count)
    three = next((f for f in splits if len(f) == 3), None)
    if three is not None:
        return three
    two = next((f for f in splits if len(f) == 2), None)
    ints = [p.meta.get("val") for p in gm.graph.nodes if p.op == "placeholder"]
    ints = [v for v in ints if isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)]
    for i in range(len(ints) - 2):
        f, h, w = ints[i:i + 3]
        if same_size(f * h * w, token_count) and (two is None or same_size(f, two[0])):
            return f, h, w
    if two is None:
        return None
    frames, per_frame = two
    hw = next(((h, w) for h, w in zip(ints, ints[1:]) if same_size(h * w, per_frame)), (per_frame, 1))
    return (frames, *hw)


def _token_splits(gm, token_count) -> list[tuple]:
    """Factors that reshapes split the token axis into, or merge it from, in graph order."""
    out = []
    for node in gm.graph.nodes:
        if not is_op(node, *RESHAPE_OPS) or not node.args:
            continue
        a, b = plain_shape(node.args[0]), plain_shape(node)
        if a is None or b is None:
            continue
        for merged, split in ((b, a), (a, b)):
            factors = _factors(merged, split, token_count)
            if factors:
                out.append(factors)
    return out


def _factors(merged: tuple, split: tuple, token_count) -> tuple | None:
    """split[d:d+k] when `split` is `merged` with its token dim d spelled as k = 2 or 3 factors (none of them 1)."""
    k = len(split) - len(merged) + 1
    if k not in (2, 3):
        return None
    for d, size in enumerate(merged):
        factors = tuple(split[d:d + k])
        if (same_size(size, token_count) and all(map(same_size, merged[:d], split[:d]))
                and all(map(same_size, merged[d + 1:], split[d + k:]))
                and not any(not is_symbolic(f) and int(f) == 1 for f in factors)
                and same_size(math.prod(factors), token_count)):
            return factors
    return None


# ------------------------------------------------------------------------------ a call's grid, at run time
def formula(expr: sympy.Expr):
    """A size expression as a tree `TokenGrid.evaluate` runs without sympy (and that dynamo can trace): an int,
    a symbol's name, or (op, *operands) with op one of + * // %. ValueError for anything else."""
    if expr.is_Integer:
        return int(expr)
    if expr.is_Symbol:
        return expr.name
    ops = ((sympy.Add, "+"), (sympy.Mul, "*"), (FloorDiv, "//"), (Mod, "%"), (PythonMod, "%"))
    for cls, op in ops:
        if isinstance(expr, cls):
            return (op, *(formula(a) for a in expr.args))
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and expr.exp > 0:
        return ("*", *[formula(expr.base)] * int(expr.exp))
    raise ValueError(f"cannot evaluate {expr} at run time")


def size_reader(gm, symbol: sympy.Symbol, latent: str | None) -> tuple[str, int | None, int] | None:
    """Where a call's value of a size symbol is read: (input, dim, divisor), dim None for a Python int input;
    the latent input first. None when no input has it as a dim (or a multiple of it)."""
    places = sorted((n for n in gm.graph.nodes if n.op == "placeholder"), key=lambda n: n.name != latent)
    for p in places:
        v = p.meta.get("val")
        if isinstance(v, torch.SymInt) and v.node.expr == symbol:
            return p.name, None, 1
        for d, size in enumerate(v.shape if isinstance(v, torch.Tensor) else ()):
            ratio = size.node.expr / symbol if is_symbolic(size) else None
            if ratio is not None and ratio.is_Integer and ratio > 0:
                return p.name, d, int(ratio)
    return None
