"""Several block stacks (issue 13): blocks in more than one module list.

- Chained along one residual stream (HunyuanVideo: dual-stream blocks, then single-stream blocks that join the
  video and text streams inside each block and split them after): one cached stack over both lists.
- A stream that changes between the stacks (Flux-style: the text joined to the video once, between the lists):
  the last stack is cached, the earlier one runs in full before it, like any other prologue work.

Subjects: the from-scratch constructs `chained_stacks` / `dual_single_stacks` (tests/construct_zoo.py) and
diffusers' `HunyuanVideoTransformer3DModel` (tiny random config, text padded by its attention mask).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import mcgraph
from mcgraph.config import MotionCacheConfig

from .construct_zoo import CONSTRUCTS
from .test_construct_table import _subset_err

TOL = 1e-5
# no warm-up, voting or minimum update in the way: the reuse decision alone picks the tokens
SUBSET = dict(warmup_steps=1, phase1_computes=0, temporal_voting=False, min_update_ratio=0.0, force_final_step=False,
              subset_cost_model=False)  # the timed cost model may send a loaded machine down the full path


def _optimized(model, kwargs, config):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return mcgraph.optimize(model, config, (), kwargs)


def test_chained_stacks_are_one_cached_stack():
    model, kwargs, _ = CONSTRUCTS["chained_stacks"]()
    st = mcgraph.inspect(model, (), kwargs)
    assert [b.module for b in st.blocks] == ["blocks.0", "blocks.1", "single.0", "single.1"]
    assert st.grid.joint == "attention" and st.grid.offset == 0  # video first, then the text
    assert all(site.kind == "self" and site.block is not None for site in st.self_attention)


def test_stream_changing_between_stacks_caches_the_last_stack():
    model, kwargs, make_call = CONSTRUCTS["dual_single_stacks"]()
    st = mcgraph.inspect(model, (), kwargs)
    assert [b.module for b in st.blocks] == ["single.0", "single.1"]
    assert st.grid.joint == "sequence"  # the text rows joined before the cached stack
    dual_sites = [a for a in st.attention if a.module.startswith("blocks.")]
    assert dual_sites and all(a.kind == "other" for a in dual_sites)  # run in the prologue
    opt = _optimized(model, kwargs, MotionCacheConfig(threshold=0.05, **SUBSET))
    records = opt.record_decisions()
    with torch.no_grad():
        got = [opt(**make_call(s)) for s in range(5)]
        want = [model(**make_call(s)) for s in range(5)]
    assert "subset" in {r.path for r in records} or "skip" in {r.path for r in records}
    assert all(torch.isfinite(g).all() for g in got)
    assert (got[0] - want[0]).abs().max().item() <= TOL
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 0.1 * want[-1].abs().max().item()


def _hunyuan_video():
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 2, 4), guidance_embeds=False).eval()
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False  # the second prompt is shorter: padded text rows are masked out of attention
    kwargs = dict(hidden_states=torch.randn(2, 4, 3, 8, 8, generator=g), timestep=torch.tensor([900.0, 900.0]),
                  encoder_hidden_states=torch.randn(2, 6, 16, generator=g), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, 8, generator=g), return_dict=False)
    noise = torch.randn(kwargs["hidden_states"].shape, generator=g)

    def make_call(step: int) -> dict:
        return {**kwargs, "hidden_states": kwargs["hidden_states"] + 0.05 * step * noise,
                "timestep": kwargs["timestep"] - 150.0 * step}

    return model, kwargs, make_call


@pytest.fixture(scope="module")
def hunyuan():
    model, kwargs, make_call = _hunyuan_video()
    return model, kwargs, make_call, _optimized(model, kwargs, mcgraph.NoCache())


def test_hunyuan_video_identity_and_threshold_zero_exact(hunyuan):
    model, kwargs, make_call, opt = hunyuan
    mc = opt.with_config(MotionCacheConfig(threshold=0.0))
    assert [b.module.rsplit(".", 1)[0] for b in mc.step.structure.blocks] == \
        ["transformer_blocks"] * 2 + ["single_transformer_blocks"] * 2
    with torch.no_grad():
        for step in range(4):
            want = model(**make_call(step))[0]
            assert torch.equal(opt(**make_call(step))[0], want)
            assert (mc(**make_call(step))[0] - want).abs().max().item() <= TOL


@pytest.mark.parametrize("fraction", [2, 3])
def test_hunyuan_video_subset_rows_match_full_stack(hunyuan, fraction):
    """The token-subset stack (what a positive threshold runs) over both lists: the selected video rows and every
    layer's K/V (video and text rows) equal the full stack's."""
    model, kwargs, make_call, opt = hunyuan
    mc = opt.with_config(MotionCacheConfig(threshold=0.0))
    with torch.no_grad():
        assert _subset_err(mc, kwargs, fraction) <= 2e-5


def test_hunyuan_video_positive_threshold_reuses_and_stays_close(hunyuan):
    model, kwargs, make_call, opt = hunyuan
    mc = opt.with_config(MotionCacheConfig(threshold=0.05, **SUBSET))
    records = mc.record_decisions()
    with torch.no_grad():
        got = [mc(**make_call(s))[0] for s in range(6)]
        want = [model(**make_call(s))[0] for s in range(6)]
    assert {"subset", "skip"} & {r.path for r in records}
    assert all(torch.isfinite(g).all() for g in got)
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 0.1 * want[-1].abs().max().item()


def test_side_stack_of_hints_runs_in_the_prologue():
    """VACE-style: a hint stack over the control tokens beside the main blocks; the main stack is cached and the
    hint stack's self-attention runs before it (its hints are side inputs of the cached stack)."""
    model, kwargs, _ = CONSTRUCTS["hint_stack"]()
    st = mcgraph.inspect(model, (), kwargs)
    assert [b.module for b in st.blocks] == ["blocks.0", "blocks.1"]
    hint_sites = [a for a in st.attention if a.module.startswith("hint_blocks.") and a.kind == "self"]
    assert len(hint_sites) == 2 and all(a.block is None for a in hint_sites)


def test_largest_stack_not_residual_is_refused_not_replaced():
    """When the largest module list is not a residual stack, its reason is the refusal: a smaller list beside it
    is not cached instead."""
    from .construct_zoo import Block, HintStackDiT, norm

    class NormedBetween(HintStackDiT):
        def __init__(self):
            super().__init__()
            self.blocks.append(Block())
            self.hint_out.append(torch.nn.Linear(24, 24))

        def forward(self, latent, t, context, control):
            x, grid = self.embed(latent)
            mod, ctx = self.modulation(t, grid[0], grid[1] * grid[2]), self.text(context)
            c = self.control(control).flatten(2).transpose(1, 2) + x
            for blk in self.hint_blocks:
                c = blk(c, mod, ctx)
            for blk in self.blocks:
                x = norm(blk(x, mod, ctx))  # the stream normalised between blocks: not a residual stack
            return self.unpatchify(x + c, grid)

    _, kwargs, _ = CONSTRUCTS["hint_stack"]()
    torch.manual_seed(0)
    with pytest.raises(mcgraph.errors.StructureNotFound, match=r"between blocks\.0 and blocks\.1"):
        mcgraph.inspect(NormedBetween().eval(), (), kwargs)
