"""Analysis: which values carry the token dimension of the hidden-state stream, and which of their dims.

Matches: the sequence length of the self-attention queries (all self-attention sites must agree).
Requires: attention_sites. Guarantees: every tensor value with a dim provably equal to the token count
gets `meta[TOKEN_DIMS]` (e.g. hidden states (1,), per-token modulation (1,) or (2,), rotary tables (0,),
a [L, L] mask (0, 1)). With the symbolic capture (default) the match is an expression equality, so a
channel or head count that happens to equal the token count is never mistaken for it; with a static
capture the summary says the match was by value (`token_axis_exact=False`).
"""

from __future__ import annotations

import torch
import torch.fx

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import example_int, is_symbolic, same_size, shape, size_str
from mcgraph.compiler.structure import ATTENTION, TOKEN_DIMS, structure_of


class TokenAxisAnalysis(GraphPass):
    name = "token_axis"

    def requires(self, gm):
        if not structure_of(gm).attention:
            raise PassError(self.name, "requires attention_sites to run first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        selfs = [n for n in gm.graph.nodes if ATTENTION in n.meta and n.meta[ATTENTION].kind == "self"]
        lengths = [shape(n.args[0])[-2] for n in selfs]
        token_count = lengths[0]
        for n, length in zip(selfs, lengths):
            if not same_size(length, token_count):
                self.fail(f"self-attention sites disagree on the token count: {size_str(length)} here vs "
                          f"{size_str(token_count)} at {selfs[0].name}", n, cls=StructureNotFound)
        values = []
        for node in gm.graph.nodes:
            s = shape(node)
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
