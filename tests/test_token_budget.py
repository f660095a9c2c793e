"""Static token budgets: a fixed number of tokens per call, one graph for every call, never a silently stale token."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import mcgraph
from mcgraph.config import FlowCacheConfig, MotionCacheConfig, TeaCacheConfig

from .cached import cached
from .generations import reference_generation
from .test_cache_properties import FRAMES, REF, TOKENS, _inputs

BUDGET = 0.25
K = round(BUDGET * TOKENS)


def _run(opt, steps, **kw):
    records = opt.record_decisions()
    outs = [opt(**_inputs(step, **kw)) for step in range(steps)]
    opt.record_decisions(False)
    return outs, records


@pytest.mark.parametrize("config_type", [MotionCacheConfig, FlowCacheConfig, TeaCacheConfig])
def test_every_call_after_the_first_runs_exactly_the_budget(config_type):
    _, opt = cached(REF, config_type(threshold=0.0, warmup_steps=1, token_budget=BUDGET))
    _, records = _run(opt, 6)
    assert records[0].executed == TOKENS  # first call: nothing cached yet
    assert [r.executed for r in records[1:]] == [K] * 5
    for r in records[1:]:
        # threshold 0 selects everything: the budget keeps exactly K of them, the rest wait
        assert int(r.computed.any(0).sum()) == K


def test_deferred_tokens_keep_their_accumulators_and_lead_the_next_calls():
    """Everything is due every call (threshold 0) and only a quarter fits: the waiting tokens keep their
    accumulated distance, so four calls in a row refresh every token once (a rotation, not the same K).
    TeaCache: every token accumulates the same distance, so only the kept accumulators order them."""
    _, opt = cached(REF, TeaCacheConfig(threshold=0.0, warmup_steps=1, token_budget=BUDGET))
    _, records = _run(opt, 5)
    refreshed = torch.stack([r.computed.any(0) for r in records[1:]])  # [4, L]
    assert refreshed.long().sum(0).tolist() == [1] * TOKENS


def test_required_tokens_beyond_the_budget_run_the_full_stack():
    """A changed conditioning invalidates every cached residual of the sample: no budget may reuse them."""
    _, opt = cached(REF, MotionCacheConfig(threshold=0.05, token_budget=BUDGET))
    records = opt.record_decisions()
    opt(**_inputs(0))
    opt(**_inputs(1))
    other = dict(_inputs(2), context=torch.randn(1, 11, 64, generator=torch.Generator().manual_seed(9)))
    out = opt(**other)
    assert [r.path for r in records] == ["full", "subset", "full"]
    torch.testing.assert_close(out, opt.original_module(**other), atol=1e-5, rtol=0)


def test_budget_of_every_token_equals_the_uncached_model():
    subject, opt = cached(REF, MotionCacheConfig(threshold=1e9, token_budget=1.0))
    for step in range(3):
        x = _inputs(step)
        torch.testing.assert_close(opt(**x), subject.model(**x), atol=1e-5, rtol=0)


def test_budget_selection_prefers_the_policy_then_the_stalest():
    """With a high threshold nothing is due after warm-up: the budget still runs K tokens per call, the ones
    whose accumulated distance is largest (the frames that change), never the unchanged ones."""
    _, opt = cached(REF, MotionCacheConfig(threshold=1e9, warmup_steps=1, phase1_computes=0, token_budget=BUDGET,
                                           token_distance="token"))
    _, records = _run(opt, 4, frames_changing=range(2))  # frames 0-1 change: exactly K = 2 * 64 tokens
    changing = torch.zeros(TOKENS, dtype=torch.bool)
    changing[: 2 * (TOKENS // FRAMES)] = True
    for r in records[1:]:
        assert r.executed == K
        assert torch.equal(r.computed.any(0), changing)  # what ran: the tokens that changed


def test_token_budget_config_errors():
    with pytest.raises(mcgraph.ConfigError, match=r"token_budget = 0"):
        MotionCacheConfig(token_budget=0)
    with pytest.raises(mcgraph.ConfigError, match=r"token_budget .* capacity_buckets"):
        MotionCacheConfig(token_budget=0.3, capacity_buckets=(0.5, 1.0))


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_budget_is_one_graph_and_matches_eager():
    """torch.compile(optimize(m)) with a budget: the same decisions and video as eager, no recompiles."""
    _, opt = cached(REF, MotionCacheConfig(threshold=0.15, warmup_steps=2, phase1_computes=1, chunk_frames=4,
                                           token_budget=0.3))
    opt.reset_cache()
    records = opt.record_decisions()
    want = reference_generation(opt)
    opt.record_decisions(False)
    paths = {r.path for r in records}
    assert paths == {"full", "subset"}, paths
    assert {r.executed for r in records} <= {round(0.3 * records[0].tokens), records[0].tokens}
    compiled = torch.compile(opt, backend="aot_eager", fullgraph=True, dynamic=False)
    got = reference_generation(compiled)
    assert (got - want).abs().max().item() <= 1e-4
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_onnx_runtime_budget_matches_eager(tmp_path):
    """The exported step with a budget: two branches (budget, full), the same decisions and video as eager."""
    import mcgraph.export

    from .generations import reference_call_kwargs

    subject, opt = cached(REF, MotionCacheConfig(threshold=0.15, warmup_steps=2, phase1_computes=1,
                                                 chunk_frames=4, token_budget=0.3))
    opt.reset_cache()
    records = opt.record_decisions()
    want = reference_generation(opt)
    opt.record_decisions(False)
    info = mcgraph.export.onnx(opt, tmp_path / "budget.onnx", example_kwargs=reference_call_kwargs(subject.model))
    assert info.op_counts.get("If", 0) == 1  # budget or full: one branch point
    session = mcgraph.export.OrtSession(info.path, threads=1)
    ort_records = session.record_decisions()
    got = reference_generation(session)
    assert (got - want).abs().max().item() <= 1e-4
    assert [r.executed for r in ort_records] == [r.executed for r in records]
    assert all(torch.equal(a.computed, b.computed) for a, b in zip(ort_records, records))


def test_final_steps_go_before_the_rest_of_the_selection():
    """Everything is due (threshold 0) and a quarter fits: the two frames at their final denoising step run
    first (a final step left out would keep a stale velocity for good)."""
    _, opt = cached(REF, MotionCacheConfig(threshold=0.0, warmup_steps=1, phase1_computes=0, token_budget=BUDGET,
                                           final_timestep=50.0))
    records = opt.record_decisions()
    base = _inputs(0)
    g = torch.Generator().manual_seed(3)
    for t_rest, t_last in ((900.0, 900.0), (800.0, 100.0), (700.0, 40.0)):  # frames 6-7 reach t=40: final
        t = torch.full((1, FRAMES), t_rest)
        t[:, 6:] = t_last
        x = base["hidden_states"] + 0.05 * torch.randn(base["hidden_states"].shape, generator=g)
        opt(**dict(base, hidden_states=x, timesteps=t))
    last_two = torch.zeros(TOKENS, dtype=torch.bool)
    last_two[6 * (TOKENS // FRAMES):] = True
    assert records[2].executed == K == int(last_two.sum())
    assert torch.equal(records[2].computed.any(0), last_two)
