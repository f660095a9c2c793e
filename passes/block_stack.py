"""Analysis: the repeated transformer blocks along the residual stream, with their inputs and outputs.

Matches: submodules named `<container>.<i>` (an nn.ModuleList) of one class, at least two of them, that
contain self-attention; nodes are assigned to blocks by `nn_module_stack`, so no model registry is needed.
Requires: token_axis. Guarantees: `structure.blocks` in execution order, each with its residual-stream input
and output (the token-carrying [B, L, D] value entering and leaving it), chained: block i's output is block
i+1's stream input; every node inside a block gets `meta[BLOCK]`; each attention site gets its block index.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch.fx

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import shape
from mcgraph.compiler.structure import ATTENTION, BLOCK, TOKEN_DIMS, BlockInfo, structure_of

_INDEXED = re.compile(r"^(.+)\.(\d+)$")


def _stream_like(node: torch.fx.Node) -> bool:
    """A [B, L, D] value whose middle dim is the token axis: the shape of the residual stream."""
    s = shape(node)
    return s is not None and len(s) == 3 and node.meta.get(TOKEN_DIMS) == (1,)


class BlockStackAnalysis(GraphPass):
    name = "block_stack"

    def requires(self, gm):
        if structure_of(gm).token_count is None:
            raise PassError(self.name, "requires token_axis to run first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        # container -> index -> (class, nodes)
        found: dict[str, dict[int, tuple[str, list[torch.fx.Node]]]] = defaultdict(dict)
        for node in gm.graph.nodes:
            for path, cls in (node.meta.get("nn_module_stack") or {}).values():
                m = _INDEXED.match(str(path))
                if m:
                    container, idx = m.group(1), int(m.group(2))
                    entry = found[container].setdefault(idx, (str(cls), []))
                    entry[1].append(node)
                    break  # outermost indexed module wins: blocks, not sub-layers inside a block
        candidates = []
        for container, members in found.items():
            classes = {cls for cls, _ in members.values()}
            with_attn = [i for i, (_, nodes) in members.items()
                         if any(ATTENTION in n.meta and n.meta[ATTENTION].kind == "self" for n in nodes)]
            if len(members) >= 2 and len(classes) == 1 and len(with_attn) == len(members):
                candidates.append((len(members), container))
        if not candidates:
            self.fail("no repeated transformer blocks found: expected >= 2 submodules '<name>.<i>' of one class, "
                      "each containing self-attention (found module lists: "
                      f"{sorted(found)[:5] or 'none'})", cls=StructureNotFound)
        _, container = max(candidates)
        members = found[container]
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        indices = sorted(members, key=lambda i: order[members[i][1][0]])  # execution order
        in_block = {n: b for b, idx in enumerate(indices) for n in members[idx][1]}
        for node in gm.graph.nodes:
            if node in in_block:
                node.meta[BLOCK] = in_block[node]
            else:
                node.meta.pop(BLOCK, None)
        blocks: list[BlockInfo] = []
        prev_out = None
        for b, idx in enumerate(indices):
            cls, nodes = members[idx]
            inside = set(nodes)
            external = []
            for n in nodes:
                for a in n.all_input_nodes:
                    if a not in inside and a not in external and a.op != "get_attr":
                        external.append(a)
            stream_outs = [n for n in nodes if _stream_like(n) and any(u not in inside for u in n.users)]
            if len(stream_outs) != 1:
                self.fail(f"block {container}.{idx} should hand exactly one [B, tokens, D] value on along the "
                          f"residual stream, found {[n.name for n in stream_outs]}", nodes[-1], cls=StructureNotFound)
            stream_ins = [a for a in external if _stream_like(a)]
            if prev_out is not None:
                if prev_out not in stream_ins:
                    self.fail(f"block {container}.{idx} does not read the previous block's output {prev_out.name!r}: "
                              "blocks are not chained along one residual stream", nodes[0], cls=StructureNotFound)
                stream_in = prev_out
            elif len(stream_ins) == 1:
                stream_in = stream_ins[0]
            else:
                self.fail(f"cannot tell the residual stream entering {container}.{idx}: candidates "
                          f"{[n.name for n in stream_ins]}", nodes[0], cls=StructureNotFound)
            blocks.append(BlockInfo(index=b, module=f"{container}.{idx}", module_class=cls,
                                    stream_input=stream_in.name, stream_output=stream_outs[0].name,
                                    nodes=[n.name for n in nodes], external_inputs=[a.name for a in external]))
            prev_out = stream_outs[0]
        st = structure_of(gm)
        st.blocks = blocks
        for site in st.attention:
            site.block = next((bl.index for bl in blocks if site.node in set(bl.nodes)), None)
        return PassResult(gm, modified=False, info={"blocks": len(blocks), "container": container})
