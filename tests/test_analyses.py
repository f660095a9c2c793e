"""Structural analyses on every subject, asserted against what a person reading each model's code finds."""

from __future__ import annotations

import pytest
import torch

from mcgraph import StructureNotFound, inspect
from mcgraph.compiler.shapes import ATEN, is_op, shape
from mcgraph.compiler.structure import ATTENTION, BLOCK, MODULATION, TOKEN_DIMS

from .analysed import SUBJECT_LIST, analysed


@pytest.mark.parametrize("name", SUBJECT_LIST)
def test_blocks_grid_and_attention_counts(name):
    subject, captured, st = analysed(name)
    assert len(st.blocks) == subject.blocks
    assert st.grid.example == subject.grid
    assert len(st.self_attention) == subject.self_attention
    assert len(st.cross_attention) == subject.cross_attention
    assert st.token_count_example == subject.grid[0] * subject.grid[1] * subject.grid[2]
    assert st.token_axis_exact, "capture with Dim.AUTO must make the token count symbolic"


@pytest.mark.parametrize("name", SUBJECT_LIST)
def test_input_roles(name):
    subject, _, st = analysed(name)
    assert st.inputs[subject.latent_input] == "latent"
    assert st.inputs[subject.timestep_input] == "timestep"
    if subject.context_input:
        assert st.inputs[subject.context_input] == "conditioning"
    assert st.grid.latent_input == subject.latent_input


@pytest.mark.parametrize("name", SUBJECT_LIST)
def test_blocks_form_one_residual_chain(name):
    _, captured, st = analysed(name)
    nodes = {n.name: n for n in captured.graph.nodes}
    for prev, nxt in zip(st.blocks, st.blocks[1:]):
        assert nxt.stream_input == prev.stream_output
    for b in st.blocks:
        assert b.module.endswith(f".{b.index}") or b.module.split(".")[-1].isdigit()
        out = nodes[b.stream_output]
        assert out.meta[BLOCK] == b.index and out.meta[TOKEN_DIMS] == (1,) and len(shape(out)) == 3
    # every attention site lives in exactly one block, each block has one self-attention
    per_block = [sum(1 for a in st.self_attention if a.block == b.index) for b in st.blocks]
    assert per_block == [1] * len(st.blocks)


@pytest.mark.parametrize("name", SUBJECT_LIST)
def test_attention_producers_are_the_projections(name):
    subject, captured, st = analysed(name)
    nodes = {n.name: n for n in captured.graph.nodes}
    for site in st.attention:
        node = nodes[site.node]
        assert node.meta[ATTENTION] is site
        for proj in (site.q_proj, site.k_proj, site.v_proj):
            assert proj is not None and is_op(nodes[proj], ATEN.linear)
        q_in, kv_in = nodes[site.query_input], nodes[site.kv_input]
        if site.kind == "self":
            assert q_in is kv_in and q_in.meta[TOKEN_DIMS] == (1,)
        else:
            assert TOKEN_DIMS not in kv_in.meta  # the conditioning sequence has its own length
    if name == "plain-dit":  # fused qkv: one linear feeds q, k and v
        assert all(a.q_proj == a.k_proj == a.v_proj for a in st.attention)
    else:
        assert all(len({a.q_proj, a.k_proj, a.v_proj}) == 3 for a in st.attention)


@pytest.mark.parametrize("name", SUBJECT_LIST)
def test_token_axis_on_known_spots(name):
    subject, captured, st = analysed(name)
    nodes = {n.name: n for n in captured.graph.nodes}
    # the patch embedding output [B, D, F, H, W] is before flattening: no single token dim
    assert TOKEN_DIMS not in nodes[st.grid.patch_embed].meta
    # the latent input never carries the flattened token axis
    assert TOKEN_DIMS not in nodes[subject.latent_input].meta
    for site in st.self_attention:
        q = nodes[site.node].args[0]
        assert q.meta[TOKEN_DIMS] == (2,)  # [B, heads, L, head_dim]
        if site.mask:
            assert nodes[site.mask].meta[TOKEN_DIMS][-2:] == (len(shape(nodes[site.mask])) - 2,
                                                              len(shape(nodes[site.mask])) - 1)
    for site in st.cross_attention:
        k = nodes[site.node].args[1]
        assert TOKEN_DIMS not in k.meta
        assert nodes[site.node].meta[TOKEN_DIMS] == (2,)  # output has the query's token axis


@pytest.mark.parametrize("name", SUBJECT_LIST)
def test_modulation(name):
    subject, captured, st = analysed(name)
    assert st.modulation, "every subject is timestep-modulated"
    assert all(m.per_token == subject.per_token_modulation for m in st.modulation)
    read = sorted({b for m in st.modulation for b in m.blocks})
    assert read == list(range(subject.blocks))
    nodes = {n.name: n for n in captured.graph.nodes}
    for m in st.modulation:
        assert nodes[m.node].meta[MODULATION] is m
        assert subject.timestep_input in m.sources
        assert subject.latent_input not in m.sources


def test_symbolic_match_is_exact_when_sizes_collide():
    """A model whose hidden size equals its token count: only the real token dims are marked."""
    from mcgraph.zoo.subjects import PlainDiT

    torch.manual_seed(0)
    model = PlainDiT(dim=64, heads=4, patch=(1, 4, 4)).eval()
    kwargs = dict(x=torch.randn(2, 3, 4, 16, 16), t=torch.rand(2) * 1000, y=torch.tensor([1, 2]))  # 4*4*4 = 64 tokens
    from mcgraph import capture
    from mcgraph.compiler.analysis import analyze

    captured = capture(model, (), kwargs)
    st = analyze(captured)
    assert st.token_count_example == 64 and st.token_axis_exact
    for n in captured.graph.nodes:
        s = shape(n)
        if s and len(s) == 3 and TOKEN_DIMS in n.meta and n.meta.get(BLOCK) is not None:
            assert n.meta[TOKEN_DIMS] == (1,), f"{n.name} {s}: hidden dim 64 mistaken for the token axis"


class _NoAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv3d(3, 16, (1, 2, 2), (1, 2, 2))
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))

    def forward(self, x, t):
        z = self.embed(x).flatten(2).transpose(1, 2) * t[:, None, None]
        for layer in self.layers:
            z = z + layer(z)
        return z


class _OneBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv3d(3, 16, (1, 2, 2), (1, 2, 2))
        self.qkv = torch.nn.Linear(16, 48)
        self.t = torch.nn.Linear(1, 16)

    def forward(self, x, t):
        z = self.embed(x).flatten(2).transpose(1, 2)
        z = z + self.t(t[:, None])[:, None]
        q, k, v = self.qkv(z).view(z.shape[0], z.shape[1], 3, 2, 8).permute(2, 0, 3, 1, 4)
        return z + torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def test_model_without_attention_gets_a_clear_error():
    with pytest.raises(StructureNotFound, match=r"\[attention_sites\] no attention found"):
        inspect(_NoAttention(), (torch.randn(2, 3, 3, 8, 8), torch.rand(2)))


def test_model_without_repeated_blocks_gets_a_clear_error():
    with pytest.raises(StructureNotFound, match=r"\[block_stack\] no repeated transformer blocks"):
        inspect(_OneBlock(), (torch.randn(2, 3, 3, 8, 8), torch.rand(2)))
