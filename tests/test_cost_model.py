"""The subset cost model: a subset that would cost more than the full stack runs the full stack instead."""

from __future__ import annotations

import pytest
import torch

from mcgraph.config import MotionCacheConfig
from mcgraph.runtime.cost_model import MIN_BREAK_EVEN, SubsetCost

from .cached import cached
from .test_cache_properties import FRAMES, REF, TOKENS, _inputs


@pytest.mark.parametrize("full, fixed, per_token, want", [
    (10.0, 2.0, 0.01, 1.0),  # 800 tokens to break even: more than there are
    (10.0, 2.0, 0.02, 0.78125),  # (10 - 2) / 0.02 = 400 of 512
    (10.0, 8.0, 0.02, MIN_BREAK_EVEN),  # 100 tokens: clamped, noise must not send half-skipping calls to full
    (10.0, 12.0, 0.0, MIN_BREAK_EVEN),  # the subset alone costs more: no opinion below half
])
def test_break_even_from_the_fitted_line(full, fixed, per_token, want):
    assert SubsetCost(512, full, fixed, per_token).break_even == pytest.approx(want)


def _with_cost(config, break_even: float):
    _, opt = cached(REF, config)
    per_token = 1e-3
    # a made-up measurement whose break-even is exactly `break_even` of the tokens
    cost = SubsetCost(TOKENS, full_s=per_token * break_even * TOKENS + 1e-3, fixed_s=1e-3, per_token_s=per_token)
    opt.step.subset_cost = cost
    assert cost.break_even == pytest.approx(break_even)
    return opt


def test_selection_above_the_break_even_runs_the_full_stack():
    # warm-up: a changed token is recomputed at its first 3 computes, an unchanged one never (threshold 1e9)
    config = MotionCacheConfig(threshold=1e9, warmup_steps=3, phase1_computes=0)
    opt = _with_cost(config, 0.6)
    records = opt.record_decisions()
    changing_most = range(6)  # 6 of 8 frames change: 75 % of the tokens are recomputed (warming up)
    outs = [opt(**_inputs(step, frames_changing=changing_most)) for step in range(3)]
    assert records[0].path == "full"
    # the first changed call selects the changed frames: 75 % > 60 %: the full stack
    assert int(records[1].computed.any(0).sum()) == 6 * TOKENS // FRAMES
    assert records[1].path == "full" and records[1].executed == TOKENS
    # the full path is exact for every token
    torch.testing.assert_close(outs[1], opt.original_module(**_inputs(1, frames_changing=changing_most)),
                               atol=1e-5, rtol=0)
    opt = _with_cost(config, 0.9)
    records = opt.record_decisions()
    for step in range(3):
        opt(**_inputs(step, frames_changing=changing_most))
    assert records[1].path == "subset" and records[1].executed == 6 * TOKENS // FRAMES


def test_cost_model_off_runs_exactly_the_selection():
    config = MotionCacheConfig(threshold=1e9, warmup_steps=3, phase1_computes=0, subset_cost_model=False)
    opt = _with_cost(config, 0.6)
    records = opt.record_decisions()
    for step in range(2):
        opt(**_inputs(step, frames_changing=range(6)))
    assert records[1].path == "subset"


def test_measured_cost_is_plausible_and_shared_by_configs():
    """Measured once per capture on its example (a subset of 3/4 of the tokens costs more than one of 1/4),
    and another config on the same capture keeps the measurement instead of timing again."""
    _, opt = cached(REF, MotionCacheConfig(threshold=0.1))
    cost = opt.step.subset_cost
    assert cost is not None and cost.tokens == TOKENS
    assert cost.full_s > 0 and cost.per_token_s > 0
    assert MIN_BREAK_EVEN <= cost.break_even <= 1.0
    again = opt.with_config(MotionCacheConfig(threshold=0.2))
    assert again.step.subset_cost is cost
