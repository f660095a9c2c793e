"""Analysis: which values carry the token dimension of the hidden-state stream, and which of their dims.

Matches: the sequence length of the self-attention queries. When self-attention runs over sequences of
different lengths (a refiner stack over the text before the video blocks), the token stream is the one whose
length is a video token grid (`token_grid.find_grid`); self-attention over any other sequence is not the cached
stack and its sites become kind "other" (so the block and stack analyses leave them to the prologue).
Requires: attention_sites. Guarantees: every tensor value with a dim provably equal to the token count
gets `meta[TOKEN_DIMS]` (e.g. hidden states (1,), per-token modulation (1,) or (2,), rotary tables (0,),
a [L, L] mask (0, 1)). With the symbolic capture (default) the match is an expression equality, so a
channel or head count that happens to equal the token count is never mistaken for it; with a static
capture the summary says the match was by value (`token_axis_exact=False`).
"""

from __future__ import annotations

import torch.fx

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.graph_walk import indexed_module
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import example_int, is_symbolic, same_size, size_str
from mcgraph.compiler.structure import ATTENTION, TOKEN_DIMS, structure_of

from mcgraph.passes.grid_match import find_grid, plain_shape
from mcgraph.passes.token_grid import find_joint


class TokenAxisAnalysis(GraphPass):
    name = "token_axis"

    def requires(self, gm):
        if not structure_of(gm).attention:
            raise PassError(self.name, "requires attention_sites to run first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        token_count = self._token_count(gm)
        values = []
        for node in gm.graph.nodes:
            s = plain_shape(node)
            if s is None:
                continue
            dims = tuple(i for i, size in enumerate(s) if same_size(size, token_count))
            if dims:
                node.meta[TOKEN_DIMS] = dims
                values.append(node.name)
            else:
                node.meta.pop(TOKEN_DIMS, None)
        st = structure_of(gm)
        st.token_count = size_str(token_count)
        st.token_count_example = example_int(token_count)
        st.token_axis_exact = is_symbolic(token_count)
        st.token_values = values
        return PassResult(gm, modified=False, info={"token_count": st.token_count, "values": len(values)})

    def _token_count(self, gm: torch.fx.GraphModule):
        """The self-attention query length of the video tokens; sites over other sequences become "other"."""
        selfs = [n for n in gm.graph.nodes if ATTENTION in n.meta and n.meta[ATTENTION].kind == "self"]
        groups: list[tuple[object, list[torch.fx.Node]]] = []  # (length, sites), lengths provably distinct
        for n in selfs:
            length = plain_shape(n.args[0])[-2]
            group = next((g for g in groups if same_size(g[0], length)), None)
            if group is None:
                groups.append((length, [n]))
            else:
                group[1].append(n)
        resolved = [_resolve(gm, length, sites) for length, sites in groups]
        gridded = [i for i, (count, _) in enumerate(resolved) if count is not None]
        if len(groups) == 1 and not gridded:
            return groups[0][0]  # no grid at all: token_grid refuses it, naming what it found
        if len(gridded) != 1:
            lengths = "; ".join(f"{size_str(length)} at {sites[0].name!r}" for length, sites in groups)
            which, culprit = ("none", groups[1]) if not gridded else ("more than one", groups[gridded[1]])
            self.fail(f"self-attention sites disagree on the token count ({lengths}) and {which} of these lengths "
                      "is a video token grid's, so the cached token stream is ambiguous", culprit[1][0],
                      cls=StructureNotFound)
        count, cached = resolved[gridded[0]]
        for n in selfs:
            if n not in cached:
                n.meta[ATTENTION].kind = "other"  # another sequence, or an earlier stack: runs before the cached one
        return count


def _resolve(gm, length, sites) -> tuple[object, list]:
    """(token count, the self-attention sites of the cached stack) for the sites over `length` tokens; the
    count is None when their sequence holds no grid. When the sites of several block stacks do not place the
    grid alike (dual-stream blocks concatenating text per block, then single-stream blocks over one sequence
    concatenated between the stacks), the last stack that places it alone is the cached one: its stream is
    what the head reads, and the earlier stacks run in full before it, like any other prologue work."""
    count = _video_length(gm, length, sites)
    if count is not None:
        return count, sites
    stacks: dict[str, list] = {}
    for n in sites:
        where = indexed_module(n)
        stacks.setdefault(where[0] if where else "", []).append(n)
    for stack_sites in reversed(list(stacks.values())) if len(stacks) > 1 else ():
        count = _video_length(gm, length, stack_sites)
        if count is not None:
            return count, stack_sites
    return None, sites


def _video_length(gm, length, sites):
    """The residual stream's token count when self-attention over `length` tokens is the video's: `length` for a
    grid or a sequence concatenated before the blocks (text, registers), the grid's own when each block
    concatenates other tokens with it (joint attention); None when the sequence holds no grid."""
    if find_grid(gm, length) is not None:
        return length
    joint = find_joint(gm, length, sites)
    return None if joint is None else joint.grid_size if joint.per_block else length
