"""Exactness of the cache-aware rewrite.

Threshold 0 recomputes every token every call, so whole diffusion-forcing generations with CFG must match
eager to <= 1e-5 on the reference model and on diffusers' SkyReels-V2 and Wan transformers (unmodified).
The token-subset stack must give the selected tokens exactly the full stack's output when the cached K/V
are fresh, which checks the gathers, the K/V cache rewrite and the size substitution on every subject.
"""

from __future__ import annotations

import pytest
import torch

from mcgraph.video.adapters import SkyReelsV2Adapter
from mcgraph.config import FlowCacheConfig, MotionCacheConfig, TeaCacheConfig
from mcgraph.video.sampler import sample

from .cached import cached
from .generations import wan_generation

TOL = 1e-5
DF = dict(steps=8, shift=2.0, guidance_scale=4.0, ar_step=2)


@pytest.mark.parametrize("config", [MotionCacheConfig(threshold=0.0), FlowCacheConfig(threshold=0.0),
                                    TeaCacheConfig(threshold=0.0)], ids=lambda c: c.policy)
def test_threshold_zero_reproduces_reference_generation(config):
    subject, opt = cached("reference-untrained", config)
    model = subject.model
    ctx, neg = torch.randn(1, 11, 64, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 11, 64)
    kw = dict(DF, causal_block_size=4, window_frames=12, overlap_frames=4)
    want = sample(model, (1, 12, 20, 16, 16), ctx, neg, seed=3, **kw)
    opt.record_decisions()
    got = sample(opt, (1, 12, 20, 16, 16), ctx, neg, seed=3, **kw)
    assert got.model_calls == want.model_calls
    assert (got.latent - want.latent).abs().max().item() <= TOL
    records = opt.decision_records
    assert {r.context for r in records} == {"cond", "uncond"}
    assert all(r.executed == r.tokens for r in records)


def test_threshold_zero_reproduces_skyreels_generation():
    subject, opt = cached("skyreels-tiny", MotionCacheConfig(threshold=0.0))
    ctx = torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(2))
    neg = torch.zeros(1, 7, 16)
    kw = dict(DF, causal_block_size=2, window_frames=6, overlap_frames=2)
    want = sample(SkyReelsV2Adapter(subject.model), (1, 4, 8, 8, 10), ctx, neg, seed=5, **kw)
    got = sample(SkyReelsV2Adapter(opt), (1, 4, 8, 8, 10), ctx, neg, seed=5, **kw)
    assert (got.latent - want.latent).abs().max().item() <= TOL


def test_threshold_zero_reproduces_wan_generation():
    subject, opt = cached("wan-tiny", MotionCacheConfig(threshold=0.0))
    want = wan_generation(subject.model)
    got = wan_generation(opt)
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["reference-untrained", "skyreels-tiny", "skyreels-small", "wan-tiny", "wan-small",
                                  "plain-dit"])
def test_token_subset_stack_matches_full_stack_rows(name):
    subject, opt = cached(name, MotionCacheConfig(threshold=0.0))
    graphs = opt.step.graphs
    with torch.no_grad():
        stack_in = opt.stack_inputs(**subject.make_kwargs(seed=11))
        h_full, *kv = graphs.stack(*stack_in)
        tokens = h_full.shape[1]
        g = torch.Generator().manual_seed(0)
        for n in (1, tokens // 3, tokens):
            index = torch.randperm(tokens, generator=g)[:n].sort().values
            for subset_stack in (graphs.subset_stack, graphs.subset_stack_functional):
                # the selected rows of the cache are stale (zero): the subset stack must write them fresh
                stale = [t.clone().index_fill_(t.dim() - 2, index, 0.0) for t in kv]
                h_sel, *kv_new = subset_stack(*stack_in, index, *stale)
                assert h_sel.shape == (h_full.shape[0], n, h_full.shape[2])
                torch.testing.assert_close(h_sel, h_full.index_select(1, index), atol=2e-5, rtol=1e-4)
                assert len(kv_new) == len(kv) > 0
                for fresh, full in zip(kv_new, kv):
                    assert fresh is not full
                    torch.testing.assert_close(fresh, full, atol=2e-5, rtol=1e-4)


def test_subset_attends_to_stale_cache_rows():
    """Non-selected rows must come from the cache: poisoning them changes the selected tokens' output."""
    subject, opt = cached("reference-untrained", MotionCacheConfig(threshold=0.0))
    graphs = opt.step.graphs
    with torch.no_grad():
        stack_in = opt.stack_inputs(**subject.kwargs)
        h_full, *kv = graphs.stack(*stack_in)
        index = torch.arange(0, h_full.shape[1], 2)
        poisoned = [t + 1.0 for t in kv]
        h_sel, *_ = graphs.subset_stack(*stack_in, index, *poisoned)
        assert (h_sel - h_full.index_select(1, index)).abs().max() > 1e-3
