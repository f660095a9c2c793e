"""Analysis: every attention call, self vs cross, and the projections producing its Q, K and V.

Matches: `aten.scaled_dot_product_attention` (and its CPU/flash/efficient overloads) anywhere in the graph;
hand-written softmax attention counts once canonical_attention has rewritten it to that call.
Requires: a captured ATen graph. Guarantees: each matched node gets `meta[ATTENTION]` (an AttentionSite)
and the summary lists them in graph order; a graph with no self-attention raises StructureNotFound, naming
the construct that computes it instead where it is recognisable (flex attention, linear attention).
Self vs cross is decided structurally: self-attention when K and V are projected from the same value
that Q is projected from; a different source (a text/label embedding) means cross-attention.
"""

from __future__ import annotations

import torch.fx

from mcgraph.errors import StructureNotFound, module_path
from mcgraph.compiler.graph_walk import find_producer, is_projection
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, is_op, shape, size_str
from mcgraph.compiler.structure import ATTENTION, AttentionSite, structure_of

SDPA_OPS = (
    ATEN.scaled_dot_product_attention,
    ATEN._scaled_dot_product_flash_attention_for_cpu,
    ATEN._scaled_dot_product_flash_attention,
    ATEN._scaled_dot_product_efficient_attention,
    ATEN._scaled_dot_product_cudnn_attention,
)


def is_attention(node: torch.fx.Node) -> bool:
    return is_op(node, *SDPA_OPS)


def attention_mask_arg(node: torch.fx.Node) -> torch.fx.Node | None:
    if "attn_mask" in node.kwargs:
        mask = node.kwargs["attn_mask"]
    else:
        mask = node.args[3] if len(node.args) > 3 else None
    return mask if isinstance(mask, torch.fx.Node) else None


class AttentionSiteAnalysis(GraphPass):
    name = "attention_sites"

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        sites = []
        for node in gm.graph.nodes:
            if not is_attention(node):
                continue
            q, k, v = node.args[:3]
            projs = [find_producer(x, is_projection) for x in (q, k, v)]
            srcs = [p.args[0] if p is not None else None for p in projs]
            if srcs[0] is not None and srcs[1] is not None:
                kind = "self" if srcs[0] is srcs[1] else "cross"
            else:
                # no projection found (unusual attention): fall back to comparing sequence lengths
                kind = "self" if str(shape(q)[-2]) == str(shape(k)[-2]) else "cross"
            mask = attention_mask_arg(node)
            site = AttentionSite(
                node=node.name,
                kind=kind,
                module=module_path(node),
                block=None,
                q_proj=projs[0].name if projs[0] is not None else None,
                k_proj=projs[1].name if projs[1] is not None else None,
                v_proj=projs[2].name if projs[2] is not None else None,
                query_input=srcs[0].name if srcs[0] is not None else None,
                kv_input=srcs[1].name if srcs[1] is not None else None,
                mask=mask.name if mask is not None else None,
                query_len=size_str(shape(q)[-2]),
                kv_len=size_str(shape(k)[-2]),
            )
            node.meta[ATTENTION] = site
            sites.append(site)
        if not any(s.kind == "self" for s in sites):
            self._refuse(gm, sites)
        structure_of(gm).attention = sites
        return PassResult(gm, modified=False, info={"self": sum(s.kind == "self" for s in sites),
                                                    "cross": sum(s.kind == "cross" for s in sites)})

    def _refuse(self, gm: torch.fx.GraphModule, sites: list[AttentionSite]):
        """No self-attention found: name what computes it instead where it is recognisable (flex attention,
        linear attention, hand-written attention of a form canonical_attention does not rewrite)."""
        # imported here: canonical_attention reads this module's `is_attention`
        from mcgraph.passes.canonical_attention import unsupported_attention

        found = (f"found {len(sites)} attention calls but no self-attention over the token stream" if sites else
                 "no attention found (no scaled_dot_product_attention call in the graph)")
        other = unsupported_attention(gm)
        if other is not None:
            what, node = other
            self.fail(f"{found}: the self-attention is {what}; identity (NoCache) runs it as captured", node,
                      cls=StructureNotFound)
        self.fail(f"{found}; mcgraph needs a transformer whose self-attention goes through "
                  "F.scaled_dot_product_attention or is written as softmax(q @ k^T * scale) @ v", cls=StructureNotFound)
