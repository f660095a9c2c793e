"""canonical_attention: hand-written softmax attention becomes one SDPA call (on a copy: the captured graph, which
identity runs, is left as captured), MultiheadAttention's sequence-first projection is moved behind its
transpose, and what is not rewritten (linear attention, flex attention) is named by the refusal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcgraph import StructureNotFound, capture
from mcgraph.compiler.pass_infra import PassManager, graph_fingerprint
from mcgraph.compiler.shapes import ATEN, is_op
from mcgraph.passes.attention_sites import AttentionSiteAnalysis
from mcgraph.passes.canonical_attention import CanonicalAttention

B, L, D, HEADS = 2, 6, 8, 2


def _heads(x):
    return x.unflatten(-1, (HEADS, -1)).transpose(1, 2)


class Hand(nn.Module):
    """Self-attention written by hand, in the form `variant` picks."""

    def __init__(self, variant):
        super().__init__()
        self.variant = variant
        self.q, self.k, self.v = (nn.Linear(D, D) for _ in range(3))

    def forward(self, x, mask):
        q, k, v = _heads(self.q(x)), _heads(self.k(x)), _heads(self.v(x))
        d = q.shape[-1]
        if self.variant == "div":
            w = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)
        elif self.variant == "prescaled":
            w = torch.softmax((q * d**-0.5) @ k.permute(0, 1, 3, 2), dim=-1)
        elif self.variant == "additive":
            w = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5 + mask, -1)
        elif self.variant == "masked_fill":
            w = torch.softmax((q @ k.transpose(-1, -2) * d**-0.5).masked_fill(~(mask == 0), float("-inf")), -1)
        elif self.variant == "weights_used":  # the attention weights are returned too: not one SDPA call
            w = torch.softmax(q @ k.transpose(-1, -2), -1)
            return (w @ v).transpose(1, 2).flatten(2), w
        return (w @ v).transpose(1, 2).flatten(2)


def _mask():
    keep = torch.ones(L, L, dtype=torch.bool).tril()
    return torch.zeros(L, L).masked_fill(~keep, float("-inf"))


def _run(model):
    torch.manual_seed(0)
    kwargs = dict(x=torch.randn(B, L, D), mask=_mask())
    captured = capture(model.eval(), (), kwargs)
    before = graph_fingerprint(captured.graph_module)
    result = PassManager([CanonicalAttention()]).run(captured.graph_module)
    assert graph_fingerprint(captured.graph_module) == before, "the captured graph must stay as captured"
    return captured, kwargs, result


def _count(gm, *ops):
    return sum(is_op(n, *ops) for n in gm.graph.nodes)


@pytest.mark.parametrize("variant", ["div", "prescaled", "additive", "masked_fill"])
def test_hand_written_softmax_attention_becomes_one_sdpa_call(variant):
    torch.manual_seed(0)
    captured, kwargs, result = _run(Hand(variant))
    gm = result.graph_module
    assert result.modified and gm is not captured.graph_module
    assert _count(gm, ATEN.scaled_dot_product_attention) == 1
    assert _count(gm, ATEN.softmax, ATEN._softmax, ATEN.matmul) == 0
    assert _count(captured.graph_module, ATEN.softmax, ATEN._softmax) == 1  # identity's graph: as captured
    with torch.no_grad():
        torch.testing.assert_close(gm(**kwargs), captured.graph_module(**kwargs), rtol=0, atol=1e-6)
    PassManager([AttentionSiteAnalysis()]).run(gm)  # now a self-attention site


def test_attention_weights_used_elsewhere_are_left_alone():
    captured, _, result = _run(Hand("weights_used"))
    assert not result.modified and result.graph_module is captured.graph_module


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(D, HEADS, batch_first=True)

    def forward(self, x, mask):
        return self.mha(x, x, x, need_weights=False)[0]


def test_multihead_attention_projects_batch_first():
    captured, kwargs, result = _run(MHA())
    gm = result.graph_module
    linears = [n for n in gm.graph.nodes if is_op(n, ATEN.linear) and n.name.endswith("_batch_first")]
    assert len(linears) == 1 and linears[0].args[0].name == "x"  # the packed in_proj reads [B, L, D] now
    with torch.no_grad():
        torch.testing.assert_close(gm(**kwargs), captured.graph_module(**kwargs), rtol=0, atol=1e-6)


class Linear(Hand):
    def forward(self, x, mask):
        q, k, v = (F.elu(_heads(p(x))) + 1 for p in (self.q, self.k, self.v))
        return (q @ (k.transpose(-1, -2) @ v)).transpose(1, 2).flatten(2)


class Flex(Hand):
    def forward(self, x, mask):
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(_heads(self.q(x)), _heads(self.k(x)), _heads(self.v(x))).transpose(1, 2).flatten(2)


@pytest.mark.parametrize("model, words", [(Linear("-"), "linear attention (no softmax over keys)"),
                                          (Flex("-"), "flex attention (higher-order op"),
                                          (Hand("weights_used"), "hand-written softmax attention in a form")])
def test_unsupported_attention_is_named_with_node_and_source(model, words):
    torch.manual_seed(0)
    captured = capture(model.eval(), (), dict(x=torch.randn(B, L, D), mask=_mask()))
    with pytest.raises(StructureNotFound) as info:
        PassManager([CanonicalAttention(), AttentionSiteAnalysis()]).run(captured.graph_module)
    msg = str(info.value)
    assert words in msg and "at node '" in msg and "test_canonical_attention.py" in msg, msg
