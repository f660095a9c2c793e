"""The reuse decision sees every input (issue "Zero silent wrong answers", items 1, 3, 4).

- a changed conditioning (same latent and timestep, other text) is recomputed, never served from the cache;
- a token whose timestep rises (a new chunk or generation in the same shape, no reset) starts fresh;
- diffusers' `_reset_stateful_cache()` resets mcgraph's state.
Each holds in the eager and the traced mode (the same step code serves compile and export).
"""

from __future__ import annotations

import pytest
import torch

from mcgraph.config import MotionCacheConfig
from mcgraph.runtime.step_graph import StepGraph

from .cached import cached

# a threshold no step distance reaches: after warm-up, the policy alone would reuse everything
LAZY = MotionCacheConfig(threshold=1e9, warmup_steps=1, phase1_computes=0, force_final_step=False,
                         capacity_buckets=(0.5, 1.0))


def _calls(subject, seed=0):
    kw = subject.make_kwargs(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    other = {k: (torch.randn(v.shape, generator=g) if k == "context" else v) for k, v in kw.items()}
    return kw, other


def _run(opt, kwargs, traced: bool):
    if not traced:
        with torch.no_grad():
            return opt(**kwargs)
    spec, _, flat = opt.specialisation_for(**kwargs)
    graph = spec.graph
    session = opt.cache_session
    from mcgraph.runtime.optimized import TracedRunner

    with torch.no_grad():
        return spec.unflatten(session.call(flat, TracedRunner(graph), traced=True))


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_changed_conditioning_is_recomputed(traced):
    subject, opt = cached("reference-untrained", LAZY)
    kw, other_text = _calls(subject)
    records = opt.record_decisions()
    _run(opt, kw, traced)
    again = _run(opt, kw, traced)
    assert records[-1].path == "skip"  # the premise: an identical call is served from the cache
    torch.testing.assert_close(again, subject.model(**kw), atol=1e-5, rtol=0)
    got = _run(opt, other_text, traced)
    assert records[-1].path == "full", "a different conditioning must not reuse the cache"
    with torch.no_grad():
        torch.testing.assert_close(got, subject.model(**other_text), atol=1e-5, rtol=0)
        assert (got - again).abs().max() > 1e-3  # the two texts really give different outputs


def test_conditioning_is_state_in_the_traced_graph():
    subject, opt = cached("reference-untrained", LAZY)
    spec, _, flat = opt.specialisation_for(**subject.kwargs)
    names = StepGraph(spec.step, flat).state_names
    assert "watch_context" in names and "watch_timesteps" not in names and "watch_hidden_states" not in names


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_rising_timestep_starts_a_token_fresh(traced):
    subject, opt = cached("reference-untrained", LAZY)
    kw = subject.make_kwargs(seed=3)
    frames = kw["timesteps"].shape[1]
    records = opt.record_decisions()
    early = dict(kw, timesteps=torch.full((1, frames), 300.0))
    _run(opt, early, traced)
    _run(opt, dict(early, timesteps=torch.full((1, frames), 200.0)), traced)
    assert records[-1].path == "skip"  # lazy policy, falling timesteps: reused
    # the second half of the frames starts again (a new chunk enters the same slots)
    t = torch.full((1, frames), 100.0)
    t[:, frames // 2:] = 999.0
    fresh = dict(kw, timesteps=t)
    got = _run(opt, fresh, traced)
    per_frame = records[-1].tokens // frames
    assert records[-1].computed[0, (frames // 2) * per_frame:].all()
    assert not records[-1].computed[0, : (frames // 2) * per_frame].any()


def test_diffusers_reset_protocol_resets_mcgraph_state():
    subject, opt = cached("reference-untrained", LAZY)
    with torch.no_grad():
        opt(**subject.kwargs)
    assert opt.cache_state_bytes() > 0
    opt._reset_stateful_cache()  # what diffusers pipelines call after every generation
    assert opt.cache_state_bytes() == 0
    records = opt.record_decisions()
    with torch.no_grad():
        opt(**subject.kwargs)
    assert records[-1].path == "full"


def test_diffusers_context_protocol_and_per_context_reset():
    subject, opt = cached("reference-untrained", LAZY)
    with torch.no_grad():
        with opt.cache_context("cond", step=3, is_first=False):  # diffusers' hooks pass step information
            opt(**subject.kwargs)
        with opt.cache_context("uncond"):
            opt(**subject.kwargs)
    assert set(opt.cache_session.states) == {"cond", "uncond"}
    opt.reset_cache("cond")  # one request's reset leaves the other's state
    assert set(opt.cache_session.states) == {"uncond"}


@pytest.mark.parametrize("field, value", [("threshold", "0.1"), ("force_final_step", "no"),
                                          ("temporal_voting", "false"), ("max_cache_bytes", True),
                                          ("capacity_buckets", "0.5,1"), ("warmup_steps", 2.5),
                                          ("placebo_seed", True), ("motion_source", 3)])
def test_config_types_are_checked_by_field(field, value):
    from mcgraph.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"MotionCacheConfig\.{field} = .*must be"):
        MotionCacheConfig(**{field: value})


def test_config_accepts_json_lists_and_numpy_numbers():
    import numpy as np

    cfg = MotionCacheConfig(threshold=np.float32(0.1), warmup_steps=np.int64(3), capacity_buckets=[0.5, 1])
    assert cfg.capacity_buckets == (0.5, 1.0) and cfg.warmup_steps == 3
