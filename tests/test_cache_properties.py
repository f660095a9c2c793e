"""Behavioural properties of the cache-aware model: what is reused, what is recomputed, and bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mcgraph
from mcgraph.runtime.session import CacheMemoryError
from mcgraph.runtime.step import bucket_sizes, select_tokens
from mcgraph.config import FlowCacheConfig, MotionCacheConfig, TeaCacheConfig

from .cached import cached

REF = "reference-untrained"
FRAMES, PER_FRAME = 8, 64  # the reference subject's example: 8 frames of 8x8 tokens
TOKENS = FRAMES * PER_FRAME


def _inputs(step: int, frames_changing=range(FRAMES), batch: int = 1, seed: int = 0, base_seed: int = 123):
    """Call `step` of a made-up denoising run: changing frames get a new latent and a lower timestep,
    the others keep exactly the latent and timestep of step 0."""
    g0 = torch.Generator().manual_seed(base_seed)
    x0 = torch.randn(batch, 12, FRAMES, 16, 16, generator=g0)
    ctx = torch.randn(batch, 11, 64, generator=g0)
    t = torch.full((batch, FRAMES), 900.0)
    x = x0.clone()
    if step:
        g = torch.Generator().manual_seed(seed * 1000 + step)
        for f in frames_changing:
            x[:, :, f] = x0[:, :, f] * (1 - 0.02 * step) + 0.02 * step * torch.randn(batch, 12, 16, 16, generator=g)
            t[:, f] = 900.0 - 50.0 * step
    return dict(hidden_states=x, timesteps=t, context=ctx)


def test_identical_inputs_reuse_everything():
    _, opt = cached(REF, MotionCacheConfig(threshold=0.05))
    records = opt.record_decisions()
    first = opt(**_inputs(0))
    again = opt(**_inputs(0))
    assert [r.path for r in records] == ["full", "skip"]
    assert records[1].executed == 0 and not records[1].computed.any()
    torch.testing.assert_close(again, first, atol=1e-6, rtol=0)  # h_0 + R reproduces the computed output


def test_unchanged_tokens_are_never_recomputed_after_the_first_call():
    _, opt = cached(REF, MotionCacheConfig(threshold=0.05, warmup_steps=3))
    records = opt.record_decisions()
    for step in range(8):
        opt(**_inputs(step, frames_changing=range(4)))  # chunk 0 denoises, chunk 1 waits (not started)
    frozen = slice(4 * PER_FRAME, TOKENS)
    assert records[0].computed.all()
    for r in records[1:]:
        assert not r.computed[0, frozen].any()
    assert all(r.computed[0, : 4 * PER_FRAME].all() for r in records[1:3])  # warm-up of the moving chunk


@pytest.mark.parametrize("force", [True, False])
def test_forced_final_step(force):
    cfg = MotionCacheConfig(threshold=1e9, warmup_steps=1, phase1_computes=0, force_final_step=force,
                            final_timestep=60.0)
    _, opt = cached(REF, cfg)
    records = opt.record_decisions()
    x = _inputs(1)
    opt(**_inputs(0))
    opt(**x)  # t = 850: nothing due at this threshold
    x_final = dict(x, hidden_states=x["hidden_states"] * 0.9, timesteps=torch.full((1, FRAMES), 40.0))
    opt(**x_final)  # t = 40 <= final_timestep: the token's last step
    assert not records[1].computed.any()
    assert bool(records[2].computed.all()) is force


def _run_counts(cfg, thresholds_steps=8, seed=0):
    _, opt = cached(REF, cfg)
    records = opt.record_decisions()
    for step in range(thresholds_steps):
        opt(**_inputs(step, seed=seed))
    return torch.stack([r.computed[0] for r in records]).sum(0)


@settings(max_examples=6, deadline=None)
@given(low=st.floats(0.0, 0.3), extra=st.floats(0.0, 0.5), seed=st.integers(0, 3),
       policy=st.sampled_from(["teacache", "flowcache", "motioncache"]))
def test_higher_threshold_never_recomputes_more(low, extra, seed, policy):
    def make(threshold):
        common = dict(threshold=threshold, warmup_steps=2, final_timestep=0.0)
        if policy == "teacache":
            return TeaCacheConfig(**common)
        if policy == "flowcache":
            return FlowCacheConfig(**common)
        # weights from the input latent (not the cached output) and no voting: decisions are per token
        return MotionCacheConfig(**common, phase1_computes=0, motion_source="latent", temporal_voting=False,
                                 min_update_ratio=0.0)

    counts_low = _run_counts(make(low), seed=seed)
    counts_high = _run_counts(make(low + extra), seed=seed)
    assert (counts_high <= counts_low).all()


def test_cfg_branches_do_not_share_decisions():
    cfg = FlowCacheConfig(threshold=0.08, warmup_steps=2)
    _, alone = cached(REF, cfg)
    _, mixed = cached(REF, cfg)
    rec_alone, rec_mixed = alone.record_decisions(), mixed.record_decisions()
    for step in range(6):
        with alone.cache_context("cond"):
            out_alone = alone(**_inputs(step))
        with mixed.cache_context("cond"):
            out_mixed = mixed(**_inputs(step))
        with mixed.cache_context("uncond"):  # a very different input stream in the other branch
            mixed(**_inputs(step, seed=7, base_seed=99))
        torch.testing.assert_close(out_mixed, out_alone, atol=1e-6, rtol=0)
    cond = [r.computed for r in rec_mixed if r.context == "cond"]
    assert len(cond) == 6 and all(torch.equal(a, b.computed) for a, b in zip(cond, rec_alone))


def test_batch_samples_decide_independently():
    cfg = FlowCacheConfig(threshold=0.05, warmup_steps=2)
    _, batched = cached(REF, cfg, batch=2)
    _, single = cached(REF, cfg)
    rec_b, rec_s = batched.record_decisions(), single.record_decisions()
    for step in range(6):
        xb = _inputs(step, batch=2)
        x_static = _inputs(0, batch=2)
        xb["hidden_states"][0], xb["timesteps"][0] = x_static["hidden_states"][0], x_static["timesteps"][0]
        batched(**xb)
        single(**{k: v[1:] for k, v in xb.items()})
    for rb, rs in zip(rec_b[1:], rec_s[1:]):
        assert not rb.computed[0].any()  # sample 0 never changes: never due
        assert torch.equal(rb.computed[1], rs.computed[0])  # sample 1 decides as if alone


def test_capacity_buckets_give_static_sizes():
    cfg = MotionCacheConfig(threshold=0.05, warmup_steps=2, capacity_buckets=(0.25, 0.5, 1.0))
    _, opt = cached(REF, cfg)
    records = opt.record_decisions()
    for step in range(8):
        opt(**_inputs(step, frames_changing=range(2)))
    assert {r.executed for r in records} <= {0, TOKENS // 4, TOKENS // 2, TOKENS}
    assert any(r.path == "subset" for r in records)
    for r in records:
        assert r.executed >= int(r.computed.any(0).sum())  # a bucket holds every selected token


def test_shape_change_mid_generation_resets_with_a_warning():
    subject, opt = cached(REF, MotionCacheConfig(threshold=0.05))
    records = opt.record_decisions()
    opt(**_inputs(0))
    longer = subject.make_kwargs(frames=12, seed=5)
    with pytest.warns(UserWarning, match="changed mid-generation"):
        out = opt(**longer)
    assert records[-1].path == "full" and records[-1].frames == 12
    torch.testing.assert_close(out, subject.model(**longer), atol=1e-5, rtol=0)


def test_memory_budget_is_checked_before_allocating():
    _, opt = cached(REF, MotionCacheConfig(threshold=0.05, max_cache_bytes=1024))
    with pytest.raises(CacheMemoryError, match="needs .* MiB .* over max_cache_bytes"):
        opt(**_inputs(0))
    assert opt.cache_state_bytes() == 0
    _, roomy = cached(REF, MotionCacheConfig(threshold=0.05, max_cache_bytes=2**30))
    roomy(**_inputs(0))
    need = roomy.step.state_bytes(1, TOKENS)
    assert 0.8 * need <= roomy.cache_state_bytes() <= 1.2 * need  # the estimate matches what is held


def test_nan_input_is_rejected_without_touching_state():
    _, opt = cached(REF, MotionCacheConfig(threshold=0.05))
    opt(**_inputs(0))
    held = opt.cache_state_bytes()
    bad = _inputs(1)
    bad["hidden_states"][0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="hidden_states' contains NaN"):
        opt(**bad)
    assert opt.cache_state_bytes() == held


@pytest.mark.parametrize("kwargs, field", [
    (dict(threshold=-1), "threshold"), (dict(warmup_steps=0), "warmup_steps"),
    (dict(motion_source="optical-flow"), "motion_source"), (dict(weight_floor=1.5), "weight_floor"),
    (dict(capacity_buckets=(0.25, 0.5)), "capacity_buckets"), (dict(vote_threshold=1.0), "vote_threshold"),
    (dict(min_update_ratio=2), "min_update_ratio"), (dict(max_cache_bytes=0), "max_cache_bytes"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(mcgraph.ConfigError, match=rf"MotionCacheConfig\.{field} = "):
        MotionCacheConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    cfg = MotionCacheConfig(threshold=0.2, capacity_buckets=[1.0, 0.5], motion_source="clean")
    again = mcgraph.CacheConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.capacity_buckets == (0.5, 1.0)


def test_drop_in_surface():
    subject, opt = cached(REF, MotionCacheConfig(threshold=0.05))
    model = subject.model
    assert opt.config is model.config
    assert list(opt.state_dict()) == list(model.state_dict())
    assert sum(p.numel() for p in opt.parameters()) == sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = opt(*_inputs(0).values())  # positional call, like the original
    torch.testing.assert_close(out, model(*_inputs(0).values()), atol=1e-5, rtol=0)


def test_history_frames_held_at_a_small_timestep_are_not_forced():
    """Re-noised history (prefix) frames sit at t=20 every call: that is not their final step each time."""
    cfg = MotionCacheConfig(threshold=1e9, warmup_steps=1, phase1_computes=0, final_timestep=60.0)
    _, opt = cached(REF, cfg)
    records = opt.record_decisions()
    g = torch.Generator().manual_seed(0)
    base = _inputs(0)
    for step in range(4):
        x = dict(base, hidden_states=base["hidden_states"] + 0.02 * torch.randn(base["hidden_states"].shape, generator=g),
                 timesteps=torch.full((1, FRAMES), 20.0))
        opt(**x)
    assert records[0].computed.all()
    assert not any(r.computed.any() for r in records[1:])


def test_capacity_bucket_extras_are_the_most_overdue_tokens():
    cfg = MotionCacheConfig(threshold=0.05, warmup_steps=2, capacity_buckets=(0.5, 1.0))
    _, opt = cached(REF, cfg)
    assert opt.step.config.capacity_buckets == (0.5, 1.0)
    selected = torch.zeros(TOKENS, dtype=torch.bool)
    selected[:10] = True
    acc = torch.zeros(1, TOKENS)
    acc[0, 100:400] = torch.linspace(0.01, 0.04, 300)
    k = next(k for k in bucket_sizes(cfg.capacity_buckets, TOKENS) if k >= int(selected.sum()))
    index = select_tokens(selected, acc, k)
    assert index.numel() == TOKENS // 2
    chosen = set(index.tolist())
    assert set(range(10)) <= chosen
    assert set(range(400 - (TOKENS // 2 - 10), 400)) <= chosen  # the largest accumulators fill the bucket


def test_cache_bytes_are_known_up_front_and_match_what_is_held():
    """The estimate every budget check uses equals the bytes one context really holds after a call."""
    subject, opt = cached(REF, MotionCacheConfig(threshold=0.05))
    opt.reset_cache()
    estimate = opt.cache_bytes_per_context()
    assert estimate > 0
    with torch.no_grad():
        opt(**subject.kwargs)
    held = opt.cache_state_bytes()
    assert abs(held - estimate) <= 0.02 * estimate, (held, estimate)
