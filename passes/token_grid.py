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

from dataclasses import dataclass

import sympy
import torch
import torch.fx

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.graph_walk import along_first_operands, ancestors, placeholders_of
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, dim_arg, example_int, is_op, is_symbolic, same_size, size_str
from mcgraph.compiler.structure import ATTENTION, TOKEN_DIMS, TokenGrid, structure_of
from mcgraph.passes.grid_match import find_grid, formula, plain_shape, size_reader


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
            for cat, at in zip(joint.concats, joint.grid_indices) if joint.per_block else ():
                cat.meta[JOINT] = at  # the token-subset rewrite maps their rows to K/V rows
        if st.grid.latent_input:
            st.inputs[st.grid.latent_input] = "latent"
        return PassResult(gm, modified=False, info={"grid": st.grid.example, "patch": match.patch,
                                                    "layout": match.layout, "joint": st.grid.joint})

    def _refuse(self, gm, token_count):
        """Why no grid has the token count: other tokens concatenated with the video grid in a way not
        supported (the concatenations disagree), or no embedding."""
        for node in gm.graph.nodes:
            parts = _concat_parts(node, token_count)
            video = [p for p in parts if find_grid(gm, plain_shape(p)[dim_arg(node)]) is not None]
            if len(video) != 1:
                continue
            dim = dim_arg(node)
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
    grid_indices: list  # per concatenation: which of its inputs is the grid's


def self_attention_sites(gm) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if ATTENTION in n.meta and n.meta[ATTENTION].kind == "self"]


def _joint_candidate(gm, node, seq_len, grids: dict) -> tuple | None:
    """(grid index, grid size, offset, extra) when `node` concatenates exactly one grid's tokens with others
    into a sequence of `seq_len` tokens, else None."""
    parts = _concat_parts(node, seq_len)
    if not parts or len(parts) != len(node.args[0]):
        return None
    dim = dim_arg(node)
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
    tokens: the nearest ones upstream of each site's query (and, per block, of its keys and values: MMDiT blocks
    join each stream's Q, K and V after the head split); None when there are none or they disagree."""
    grids: dict = {}
    found = {n: c for n in gm.graph.nodes if (c := _joint_candidate(gm, n, seq_len, grids)) is not None}
    if not found or not sites:
        return None
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    nearest = [_nearest(site.args[0], found) for site in sites]
    per_block = (len(sites) > 1 and all(nearest)
                 and sum(map(len, nearest)) == len(set().union(*nearest)))  # no two sites share a concatenation
    if per_block:
        for site, near in zip(sites, nearest):
            near |= _nearest(site.args[1], found) | _nearest(site.args[2], found)
        # the join that carries the query's own rows comes first (its grid part is the indicator's source)
        first = along_first_operands(sites[0].args[0], nearest[0].__contains__, 24) or min(nearest[0], key=order.get)
        concats = [first, *sorted(set().union(*nearest) - {first}, key=order.get)]
    else:
        if not nearest[0] or any(near != nearest[0] for near in nearest):
            return None
        concats = sorted(nearest[0], key=order.get)
    index, grid_size, offset, extra = found[concats[0]]
    if not all(same_size(found[c][2], offset) and same_size(found[c][3], extra) for c in concats):
        return None
    return JointMatch(concats, index, concats[0].args[0][index], grid_size, offset, extra, per_block,
                      [found[c][0] for c in concats])


def _nearest(start: torch.fx.Node, found: dict) -> set:
    """The concatenations in `found` nearest upstream of `start` (the first met on each path)."""
    seen, todo, near = set(), [start], set()
    while todo:
        n = todo.pop()
        if isinstance(n, torch.fx.Node) and n not in seen:
            seen.add(n)
            if n in found:
                near.add(n)
            else:
                todo.extend(n.all_input_nodes)
    return near


def _concat_parts(node: torch.fx.Node, token_count) -> list[torch.fx.Node]:
    """The inputs of a concatenation whose output length along its dim is the token count, else []."""
    if not is_op(node, ATEN.cat) or plain_shape(node) is None:
        return []
    parts = [p for p in node.args[0] if isinstance(p, torch.fx.Node) and plain_shape(p) is not None]
    dim = dim_arg(node)
    return parts if len(parts) > 1 and same_size(plain_shape(node)[dim], token_count) else []


def _describe_tokens(part: torch.fx.Node, dim: int) -> str:
    """'7 tokens from input 'context'' or '4 learned tokens (a parameter: registers)'."""
    n = size_str(plain_shape(part)[dim])
    sources = sorted(placeholders_of(part, data_only=True))
    if sources:
        return f"{n} tokens from input{'s' if len(sources) > 1 else ''} {', '.join(map(repr, sources))}"
    params = sorted(a.target for a in ancestors([part], data_only=True) if a.op == "get_attr")
    return f"{n} learned tokens (parameter {', '.join(map(repr, params))}: registers)"
