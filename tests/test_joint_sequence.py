"""Self-attention sequences with tokens outside the video grid (issue 13): text concatenated with the video in
each block (joint attention, CogVideoX-style) and learned register tokens concatenated before the blocks. The
analysis places the grid in the sequence; the per-token decision state covers the grid only (records [B, grid]),
the non-grid rows are recomputed whenever the stack runs, and the residual / K/V caches cover the whole sequence.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import mcgraph
from mcgraph.compiler.capture import bind_call
from mcgraph.config import MotionCacheConfig

from .construct_zoo import CONSTRUCTS, GRID, REGISTERS

JOINT = ("joint_attention", "register_tokens", "chained_stacks")
GRID_TOKENS = GRID[0] * GRID[1] * GRID[2]
PER_FRAME = GRID[1] * GRID[2]
# every token that changes is due at once; no warm-up, voting or minimum update in the way of a clean subset
SUBSET_CONFIG = dict(threshold=1e-3, warmup_steps=1, phase1_computes=0, temporal_voting=False,
                     min_update_ratio=0.0, force_final_step=False, token_distance="token")


def _optimized(name: str, config):
    model, kwargs, make_call = CONSTRUCTS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = mcgraph.optimize(model, config, (), kwargs)
    return model, opt, kwargs


def _frame_changed(kwargs: dict, frame: int, seed: int) -> dict:
    """The call's inputs with one latent frame perturbed (only that frame's grid tokens change)."""
    latent = kwargs["latent"].clone()
    g = torch.Generator().manual_seed(seed)
    latent[:, :, frame] += 0.3 * torch.randn(latent[:, :, frame].shape, generator=g)
    return dict(kwargs, latent=latent)


def test_analysis_places_the_grid_in_the_sequence():
    joint = mcgraph.inspect(*CONSTRUCTS["joint_attention"]()[:1], (), CONSTRUCTS["joint_attention"]()[1]).grid
    assert joint.joint == "attention" and joint.extra == 0
    assert isinstance(joint.offset, str)  # the text length: a size symbol, read from the context at run time
    assert joint.size_inputs[joint.offset][:2] == ("context", 1)
    registers = mcgraph.inspect(*CONSTRUCTS["register_tokens"]()[:1], (), CONSTRUCTS["register_tokens"]()[1]).grid
    assert (registers.joint, registers.offset, registers.extra) == ("sequence", REGISTERS, 0)


@pytest.mark.parametrize("name", JOINT)
def test_positive_threshold_runs_subsets_of_grid_tokens_and_stays_close(name):
    model, opt, kwargs = _optimized(name, MotionCacheConfig(**SUBSET_CONFIG))
    records = opt.record_decisions()
    calls = [kwargs, _frame_changed(kwargs, 1, 0)]
    calls.append(_frame_changed(calls[1], 2, 1))  # frame 1 as in the last call, frame 2 changes
    with torch.no_grad():
        got = [opt(**kw) for kw in calls]
        want = [model(**kw) for kw in calls]
    assert [r.path for r in records] == ["full", "subset", "subset"]
    for r, frame in zip(records[1:], (1, 2)):
        assert r.computed.shape == (2, GRID_TOKENS) and r.tokens == GRID_TOKENS
        changed = torch.zeros(GRID_TOKENS, dtype=torch.bool)
        changed[frame * PER_FRAME:(frame + 1) * PER_FRAME] = True
        assert torch.equal(r.computed.any(0), changed) and r.executed == PER_FRAME
    assert (got[0] - want[0]).abs().max().item() <= 1e-5
    scale = want[2].abs().max().item()
    for g, w in zip(got[1:], want[1:]):
        # cached tokens attend over the fresh rows' K/V but keep their own stale residual: close, not exact
        assert (g - w).abs().max().item() <= 0.05 * scale


def test_changed_text_is_recomputed_with_joint_attention():
    model, opt, kwargs = _optimized("joint_attention", MotionCacheConfig(**SUBSET_CONFIG))
    records = opt.record_decisions()
    other_text = dict(kwargs, context=kwargs["context"] + 0.5)
    with torch.no_grad():
        opt(**kwargs)
        same = opt(**kwargs)
        got = opt(**other_text)
        want = model(**other_text)
    assert [r.path for r in records] == ["full", "skip", "full"]
    assert records[2].computed.shape == (2, GRID_TOKENS) and records[2].computed.all()
    assert (got - want).abs().max().item() <= 1e-5
    assert (same - model(**kwargs)).abs().max().item() <= 1e-5


def test_registers_run_with_every_subset_and_unchanged_grid_reuses_all():
    model, opt, kwargs = _optimized("register_tokens", MotionCacheConfig(**SUBSET_CONFIG))
    records = opt.record_decisions()
    with torch.no_grad():
        first = opt(**kwargs)
        again = opt(**kwargs)  # no grid token due: only the register rows run (executed counts grid tokens)
    assert records[1].executed == 0 and not records[1].computed.any()
    assert (again - first).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", JOINT)
@pytest.mark.parametrize("budget", [None, 0.25])
def test_traced_step_matches_eager_step(name, budget):
    """The traced mode (static buckets or a budget, cond branches run as Python branches here) decides and
    computes what the eager mode does with the same buckets."""
    config = MotionCacheConfig(**SUBSET_CONFIG, capacity_buckets=None if budget else (0.25, 0.5, 1.0),
                               token_budget=budget)
    _, opt, kwargs = _optimized(name, config)
    step, spec = opt.step, opt.latest
    calls = [kwargs, _frame_changed(kwargs, 1, 0), _frame_changed(kwargs, 2, 1), kwargs]
    states = {True: None, False: None}
    with torch.no_grad():
        for kw in calls:
            flat = spec.flatten(bind_call(opt.original_module, (), kw))
            results = {}
            for traced in (True, False):
                results[traced] = step(flat, states[traced], traced=traced, buckets=config.capacity_buckets)
                states[traced] = results[traced].new_state
            assert torch.equal(results[True].recomputed, results[False].recomputed)
            assert int(results[True].executed) == int(results[False].executed)
            assert (results[True].outputs[0] - results[False].outputs[0]).abs().max().item() <= 1e-5


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", JOINT[:2])  # chained_stacks' traced step: checked through ONNX below (36 s less)
def test_compiled_matches_eager(name):
    model, opt, kwargs = _optimized(name, MotionCacheConfig(**SUBSET_CONFIG, capacity_buckets=(0.25, 0.5, 1.0)))
    calls = [kwargs, _frame_changed(kwargs, 1, 0), _frame_changed(kwargs, 2, 1)]
    with torch.no_grad():
        want = [opt(**kw) for kw in calls]
        opt.reset_cache()
        compiled = torch.compile(opt, backend="aot_eager", fullgraph=True, dynamic=False)
        got = [compiled(**kw) for kw in calls]
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 1e-4
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("name", JOINT)
def test_onnx_runtime_matches_eager_with_non_grid_rows(name, tmp_path):
    """The exported step with non-grid rows: skip and subset calls, the same paths and outputs as eager (also a
    MotionCache without voting or minimum ratio: its unread token phase once left a dangling node)."""
    import mcgraph.export

    model, kwargs, make_call = CONSTRUCTS[name]()
    cfg = MotionCacheConfig(threshold=0.3, warmup_steps=1, phase1_computes=0, capacity_buckets=(0.5, 1.0),
                            chunk_frames=1, temporal_voting=False, min_update_ratio=0.0, token_distance="token")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = mcgraph.optimize(model, cfg, (), kwargs)
        records = opt.record_decisions()
        want = [opt(**make_call(step)) for step in range(5)]
        info = mcgraph.export.onnx(opt, tmp_path / f"{name}.onnx", example_kwargs=kwargs)
        session = mcgraph.export.OrtSession(info.path, threads=1)
        ort_records = session.record_decisions()
        got = [session(**make_call(step)) for step in range(5)]
    assert [r.path for r in ort_records] == [r.path for r in records]
    assert {"skip", "subset"} <= {r.path for r in records}
    assert max((a - b).abs().max().item() for a, b in zip(got, want)) <= 1e-5
