"""Analysis: the token grid (frames x height x width) from the patch embedding.

Matches: a convolution whose output [B, D, F, H, W] (or [B, D, H, W] for images) has F*H*W provably equal
to the token count, i.e. the patch embedding that creates the token stream.
Requires: token_axis. Guarantees: `structure.grid` holds the symbolic and example grid, the patch size
(the convolution's stride) and the graph input the patch embedding reads (the video latent).
"""

from __future__ import annotations

import math

import torch.fx

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.graph_walk import placeholders_of
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, example_int, is_op, same_size, shape, size_str
from mcgraph.compiler.structure import TokenGrid, structure_of

CONV_OPS = (ATEN.conv3d, ATEN.conv2d, ATEN.convolution, ATEN._convolution)


class TokenGridAnalysis(GraphPass):
    name = "token_grid"

    def requires(self, gm):
        if structure_of(gm).token_count is None:
            raise PassError(self.name, "requires token_axis to run first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        st = structure_of(gm)
        token_node = next(n for n in gm.graph.nodes if n.name in set(st.token_values))
        token_count = shape(token_node)[token_node.meta["mcgraph.token_dims"][0]]
        for node in gm.graph.nodes:
            if not is_op(node, *CONV_OPS):
                continue
            out = shape(node)
            if out is None or len(out) not in (4, 5):
                continue
            spatial = list(out[2:]) if len(out) == 5 else [1] + list(out[2:])
            if not same_size(math.prod(spatial), token_count):
                continue
            weight = node.args[1]
            kernel = tuple(shape(weight)[2:])
            stride = node.args[3] if len(node.args) > 3 else kernel
            patch = tuple(int(s) for s in (stride if isinstance(stride, (list, tuple)) else [stride] * len(kernel)))
            if len(patch) == 2:
                patch = (1,) + patch
            sources = sorted(placeholders_of(node.args[0]))
            st.grid = TokenGrid(
                frames=size_str(spatial[0]), height=size_str(spatial[1]), width=size_str(spatial[2]),
                example=tuple(example_int(s) for s in spatial),
                patch_size=patch, patch_embed=node.name, latent_input=sources[0] if len(sources) == 1 else None,
            )
            if st.grid.latent_input:
                st.inputs[st.grid.latent_input] = "latent"
            return PassResult(gm, modified=False, info={"grid": st.grid.example, "patch": patch})
        self.fail(f"no patch embedding found: no Conv2d/Conv3d output has frames*height*width equal to the "
                  f"token count {st.token_count}", cls=StructureNotFound)
