"""Analysis: the token grid (frames x height x width) of the video tokens, read from the graph.

Matches, in this order (the first that fits the token count T wins):

- a convolution whose output [B, D, F, H, W] (Conv3d) or [B, D, H, W] (Conv2d, one frame) has F*H*W == T;
- a Conv2d run with the frames folded into the batch: its output [B*F, D, h, w] reaches a [B, T, ...] value
  through layout ops only (flatten, transpose, reshape), which gives F = (B*F) / B, and F*h*w == T;
- a projection (Linear) over pre-patchified tokens, a graph input [B, T, C]. Nothing lays those out as a grid,
  so the grid comes from a reshape that splits the token axis into (or merges it from) three factors (a 3-D
  rotary table), else from three adjacent Python ints the call passes (export bakes them into the capture)
  whose product is T, else from a two-factor (F, H*W) reshape (a per-frame value broadcast to its tokens).

With the symbolic capture every equality is proved on size expressions, so no size equal by chance matches.
Requires: token_axis. Guarantees: `structure.grid` holds the symbolic and example grid, the patch size (the
convolution's stride; (1, 1, 1) over pre-patchified tokens), the patch embedding node, the graph input it reads
(the video latent), its layout, and how a call's grid is read from the call's inputs (`formulas` over
`size_inputs`, see `TokenGrid`). Other tokens (text, registers) concatenated with the grid's into the
self-attention sequence are placed (`find_joint`): one concatenation before the blocks (the stream holds every
row, `joint="sequence"`) or one per block (joint attention over a text and a video stream, `joint="attention"`,
each marked `meta[JOINT]` for the token-subset rewrite); `offset` / `extra` say how many come before and after
the grid, as formulas like the grid's. Concatenations that disagree on the grid's place are refused, named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy
import torch
import torch.fx
from torch.utils._sympy.functions import FloorDiv, Mod, PythonMod

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.graph_walk import ancestors, find_producer, is_projection, placeholders_of
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, example_int, is_op, is_symbolic, same_size, shape, size_str
from mcgraph.compiler.structure import ATTENTION, TOKEN_DIMS, TokenGrid, structure_of

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


class TokenGridAnalysis(GraphPass):
    name = "token_grid"

    def requires(self, gm):
        if structure_of(gm).token_count is None:
            raise PassError(self.name, "requires token_axis to run first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        st = structure_of(gm)
        token_node = next(n for n in gm.graph.nodes if n.name in set(st.token_values))
        token_count = plain_shape(token_node)[token_node.meta[TOKEN_DIMS][0]]
        sites = self_attention_sites(gm)
        seq_len = plain_shape(sites[0].args[0])[-2] if sites else token_count
        joint = None if same_size(seq_len, token_count) else find_joint(gm, seq_len, sites)  # in each block
        match = find_grid(gm, token_count)
        if match is None:  # concatenated before the blocks: the stream holds the other tokens too
            joint = find_joint(gm, token_count, sites)
            match = find_grid(gm, joint.grid_size) if joint is not None and not joint.per_block else None
        if match is None:
            self._refuse(gm, token_count)
        around = (0, 0) if joint is None else (joint.offset, joint.extra)
        exprs = [s.node.expr if is_symbolic(s) else sympy.Integer(int(s)) for s in (*match.sizes, *around)]
        try:
            formulas = tuple(formula(e) for e in exprs)
        except ValueError as exc:
            self.fail(f"the token grid {[size_str(s) for s in match.sizes]} or the tokens around it in the sequence "
                      f"cannot be read from a call's inputs: {exc}", match.embed, cls=StructureNotFound)
        readers = {}
        for symbol in sorted(set().union(*(e.free_symbols for e in exprs)), key=str):
            readers[symbol.name] = size_reader(gm, symbol, match.latent)
            if readers[symbol.name] is None:
                self.fail(f"the token grid size {symbol} is no input's dim: a call's grid cannot be read from its "
                          "inputs", match.embed, cls=StructureNotFound)
        f, h, w = match.sizes
        st.grid = TokenGrid(
            frames=size_str(f), height=size_str(h), width=size_str(w),
            example=tuple(example_int(s) for s in match.sizes), patch_size=match.patch,
            patch_embed=match.embed.name, latent_input=match.latent, latent_layout=match.layout,
            formulas=formulas[:3], size_inputs=readers, offset=formulas[3], extra=formulas[4],
        )
        if joint is not None:
            st.grid.joint = "attention" if joint.per_block else "sequence"
            st.grid.concat, st.grid.grid_value = joint.concats[0].name, joint.grid_part.name
            for cat in joint.concats if joint.per_block else ():
                cat.meta[JOINT] = joint.grid_index  # the token-subset rewrite maps their rows to K/V rows
        if st.grid.latent_input:
            st.inputs[st.grid.latent_input] = "latent"
        return PassResult(gm, modified=False, info={"grid": st.grid.example, "patch": match.patch,
                                                    "layout": match.layout, "joint": st.grid.joint})

    def _refuse(self, gm, token_count):
        """Why no grid has the token count: other tokens concatenated with the video grid in a way not
        supported (the concatenations disagree), or no embedding."""
        for node in gm.graph.nodes:
            parts = _concat_parts(node, token_count)
            video = [p for p in parts if find_grid(gm, plain_shape(p)[_cat_dim(node)]) is not None]
            if len(video) != 1:
                continue
            dim = _cat_dim(node)
            others = " + ".join(_describe_tokens(p, dim) for p in parts if p is not video[0])
            self.fail(f"the self-attention sequence ({size_str(token_count)} tokens) is {others} + the video "
                      f"grid's {size_str(plain_shape(video[0])[dim])} tokens, concatenated at {node.name!r}, but the "
                      "concatenations building the attention sequences disagree on where the grid sits (or some "
                      "attention's sequence is built elsewhere): the grid's place in the sequence is ambiguous",
                      node, cls=StructureNotFound)
        self.fail(f"no patch embedding found: no Conv3d/Conv2d output ([B, D, F, H, W], [B, D, H, W] or frames "
                  f"folded into the batch) has frames*height*width equal to the token count "
                  f"{size_str(token_count)}, and no projection reads a [B, tokens, C] input whose grid the "
                  "reshapes or the call's Python ints give", cls=StructureNotFound)


# ------------------------------------------------------------------- other tokens in the attention sequence
JOINT = "mcgraph.joint"  # node.meta on a per-block concatenation of the attention sequence: its grid part's index


@dataclass
class JointMatch:
    """Where the grid sits in a self-attention sequence concatenated from it and other tokens (text,
    registers): `per_block` when each block concatenates its own (joint attention over two streams), else one
    sequence built before the blocks (the residual stream holds every row)."""

    concats: list  # per block: one per self-attention, in graph order; else the one building the stream first
    grid_index: int  # which input of the concatenation is the grid's
    grid_part: torch.fx.Node
    grid_size: object
    offset: object  # tokens before the grid (int or SymInt)
    extra: object  # tokens after it
    per_block: bool


def self_attention_sites(gm) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if ATTENTION in n.meta and n.meta[ATTENTION].kind == "self"]


def _joint_candidate(gm, node, seq_len, grids: dict) -> tuple | None:
    """(grid index, grid size, offset, extra) when `node` concatenates exactly one grid's tokens with others
    into a sequence of `seq_len` tokens, else None."""
    parts = _concat_parts(node, seq_len)
    if not parts or len(parts) != len(node.args[0]):
        return None
    dim = _cat_dim(node)
    sizes = [plain_shape(p)[dim] for p in parts]
    for size in sizes:
        if size_str(size) not in grids:
            grids[size_str(size)] = find_grid(gm, size) is not None
    video = [i for i, size in enumerate(sizes) if grids[size_str(size)]]
    if len(video) != 1:
        return None
    i = video[0]
    return i, sizes[i], sum(sizes[:i], 0), sum(sizes[i + 1:], 0)


def find_joint(gm, seq_len, sites) -> JointMatch | None:
    """The concatenation(s) of grid and non-grid tokens that build the self-attention sequences of `seq_len`
    tokens: the nearest ones upstream of each site's query; None when there are none or they disagree."""
    grids: dict = {}
    found = {n: c for n in gm.graph.nodes if (c := _joint_candidate(gm, n, seq_len, grids)) is not None}
    if not found or not sites:
        return None
    nearest = []
    for site in sites:
        seen, todo, near = set(), [site.args[0]], set()
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                if n in found:
                    near.add(n)
                else:
                    todo.extend(n.all_input_nodes)
        nearest.append(near)
    per_block = len(sites) > 1 and all(len(near) == 1 for near in nearest) and len(set().union(*nearest)) == len(sites)
    concats = [next(iter(near)) for near in nearest] if per_block else sorted(nearest[0], key=list(gm.graph.nodes).index)
    if not concats or (not per_block and any(near != nearest[0] for near in nearest)):
        return None
    index, grid_size, offset, extra = found[concats[0]]
    if not all(same_size(found[c][2], offset) and same_size(found[c][3], extra) for c in concats):
        return None
    return JointMatch(concats, index, concats[0].args[0][index], grid_size, offset, extra, per_block)


def _cat_dim(node: torch.fx.Node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim % len(plain_shape(node))


def _concat_parts(node: torch.fx.Node, token_count) -> list[torch.fx.Node]:
    """The inputs of a concatenation whose output length along its dim is the token count, else []."""
    if not is_op(node, ATEN.cat) or plain_shape(node) is None:
        return []
    parts = [p for p in node.args[0] if isinstance(p, torch.fx.Node) and plain_shape(p) is not None]
    dim = _cat_dim(node)
    return parts if len(parts) > 1 and same_size(plain_shape(node)[dim], token_count) else []


def _describe_tokens(part: torch.fx.Node, dim: int) -> str:
    """'7 tokens from input 'context'' or '4 learned tokens (a parameter: registers)'."""
    n = size_str(plain_shape(part)[dim])
    sources = sorted(placeholders_of(part, data_only=True))
    if sources:
        return f"{n} tokens from input{'s' if len(sources) > 1 else ''} {', '.join(map(repr, sources))}"
    params = sorted(a.target for a in ancestors([part], data_only=True) if a.op == "get_attr")
    return f"{n} learned tokens (parameter {', '.join(map(repr, params))}: registers)"
