"""Analysis: timestep-dependent (modulation) tensors that enter the blocks, and the graph inputs' roles.

Matches: values produced outside the blocks, read inside them, whose *data* depends on a graph input
that is neither the latent (read by the patch embedding) nor the conditioning (read by cross-attention
K/V): that input is the timestep. Requires: token_grid, block_stack. Guarantees: `meta[MODULATION]` on
each such value; `per_token` is True when it carries the token axis (one timestep per frame, diffusion
forcing), False for one vector per sample; `structure.inputs` names each graph input's role.
"""

from __future__ import annotations

import torch.fx

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.graph_walk import placeholders_of
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, is_op, shape, size_str
from mcgraph.compiler.structure import MODULATION, TOKEN_DIMS, ModulationInput, structure_of


def _feeds_sinusoid(node: torch.fx.Node, hops: int = 12) -> bool:
    frontier, seen = [node], {node}
    for _ in range(hops):
        nxt = []
        for n in frontier:
            for u in n.users:
                if is_op(u, ATEN.cos, ATEN.sin):
                    return True
                if u not in seen:
                    seen.add(u)
                    nxt.append(u)
        frontier = nxt
    return False


class ModulationAnalysis(GraphPass):
    name = "modulation"

    def requires(self, gm):
        st = structure_of(gm)
        if st.grid is None or not st.blocks:
            raise PassError(self.name, "requires token_grid and block_stack to run first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        st = structure_of(gm)
        nodes = {n.name: n for n in gm.graph.nodes}
        context_inputs = set()
        for site in st.cross_attention:
            if site.kv_input:
                context_inputs |= placeholders_of(nodes[site.kv_input], data_only=True)
        # a text refiner modulated by the timestep makes the context depend on it: the timestep stays a timestep
        context_inputs = {name for name in context_inputs if not _feeds_sinusoid(nodes[name])}
        latent = st.grid.latent_input
        context_inputs.discard(latent)
        for name in sorted(context_inputs):
            st.inputs[name] = "conditioning"
        stream_inputs = {b.stream_input for b in st.blocks}
        readers: dict[str, list[int]] = {}
        for b in st.blocks:
            for name in b.external_inputs:
                if name not in stream_inputs:
                    readers.setdefault(name, []).append(b.index)
        found = []
        timestep_inputs: set[str] = set()
        for name, blocks in readers.items():
            node = nodes[name]
            if shape(node) is None:
                continue
            sources = placeholders_of(node, data_only=True) - context_inputs - {latent}
            if not sources:
                continue  # rotary tables, masks: built from sizes only
            timestep_inputs |= sources
            info = ModulationInput(node=name, per_token=TOKEN_DIMS in node.meta,
                                   shape="[" + ", ".join(size_str(s) for s in shape(node)) + "]",
                                   sources=sorted(sources), blocks=blocks)
            node.meta[MODULATION] = info
            found.append(info)
        if not found:
            self.fail("no timestep-dependent modulation enters the blocks; is this a diffusion transformer "
                      "(adaLN / timestep conditioning)?", cls=StructureNotFound)
        for name in sorted(timestep_inputs):
            # a timestep goes through a sinusoidal embedding; other inputs mixed into the modulation
            # (e.g. a class label added to the time embedding) are conditioning
            st.inputs[name] = "timestep" if _feeds_sinusoid(nodes[name]) else "conditioning"
        st.modulation = found
        return PassResult(gm, modified=False, info={"modulation": len(found),
                                                    "per_token": sum(m.per_token for m in found)})
