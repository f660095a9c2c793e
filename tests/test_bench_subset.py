"""tools/bench_subset.py times the library's own computations (no copy of the runtime), runs end to end on a
tiny Wan (seconds) and counts attention FLOPs on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mcgraph
from mcgraph.config import MOTION_SOURCES, MotionCacheConfig

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "bench_subset.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_subset", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(bench):
    torch.set_num_threads(1)
    model, kwargs, _ = bench.wan_tiny_model()
    opt = mcgraph.optimize(model, MotionCacheConfig(threshold=0.1), (), kwargs)
    return model, kwargs, opt, opt.specialisation_for(**kwargs)[2]


def test_tool_copies_no_runtime_code():
    text = TOOL.read_text()
    for copied in ("def decide", "def chunk_mean", "def _motion_weights", "def _geometry", "frame_differences",
                   "normalise_per_frame", ".abs().mean(-1)", "import decide", "import chunk_mean"):
        assert copied not in text, copied
    for used in ("step.decide(", "step.with_config(", ".finish(", "graphs.run(\"subset_stack\""):
        assert used in text, used


def test_flop_count_includes_cpu_attention(bench):
    q, k, v = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 32, 16), torch.randn(1, 2, 32, 16)
    mask = torch.ones(8, 32, dtype=torch.bool)
    total, by_op = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert total == 2 * (2 * 2 * 8 * 32 * 16)  # QK^T and AV, 2 FLOPs per multiply-add
    assert any("attention" in op for op in by_op)
    total, _ = bench.count_flops(lambda: torch.nn.functional.linear(torch.randn(4, 8), torch.randn(3, 8)))
    assert total == 2 * 4 * 8 * 3


def test_interleaved_times_every_function_on_both_clocks(bench):
    calls = []
    times = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # order rotated per repeat
    assert set(times) == {"a", "b"} and all(len(t[c]) == 3 for t in times.values() for c in ("wall", "cpu"))


def test_timed_callables_are_the_runtime_calls(bench, tiny):
    model, kwargs, opt, flat = tiny
    step = opt.step
    with torch.no_grad():
        fns = bench.decision_fns(model, kwargs, step, flat, seed=0)
        assert set(fns) == {"model", "run_full", "run_skip", "pro_epi", "decision",
                            *[f"motion_{s}" for s in MOTION_SOURCES]}
        full, skip = fns["run_full"](), fns["run_skip"]()
        assert int(full.executed) == full.tokens and int(skip.executed) == 0  # full path, then the skip path
        # the skip path is the prologue, h_L = h_0 + R and the epilogue: same outputs as pro_epi
        torch.testing.assert_close(skip.outputs[0], fns["pro_epi"]()[0])
        # and the full path's outputs are the model's
        torch.testing.assert_close(full.outputs[0], fns["model"]()[0], atol=1e-4, rtol=1e-4)
        selected = fns["decision"]()
        assert selected.dim() == 2 and selected.shape[1] == 1 and selected.numel() <= full.tokens
        for s in MOTION_SOURCES:  # each source's state update yields [B, L] weights in [floor, 1]
            w = fns[f"motion_{s}"]()["weights"]
            assert w.shape == (1, full.tokens) and float(w.min()) >= 0.6 - 1e-6 and float(w.max()) <= 1 + 1e-6


def test_subset_stack_matches_full_rows_and_has_fixed_cost_variants(bench, tiny):
    _, kwargs, opt, _ = tiny
    with torch.no_grad():
        stack_in = opt.stack_inputs(**kwargs)
        h_full, index, kv, err, fns = bench.stack_fns(opt.step.graphs, stack_in, 0.25, seed=3)
        assert len(index) == round(0.25 * h_full.shape[1]) and bool((index[1:] > index[:-1]).all())
        assert err < 1e-4
        assert fns["subset_1"]()[0].shape[1] == 1 and fns["subset_all"]()[0].shape[1] == h_full.shape[1]


def test_bench_tiny_wan_end_to_end(bench, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    assert bench.main(["--models", "wan-tiny", "--repeats", "3", "--json", str(out), "--fraction", "0.5",
                       "--what-if", "inplace"]) == 0
    text = capsys.readouterr().out
    assert "FLOP-ratio speedup" in text and "speedup / FLOP speedup" in text and "per-op self CPU time" in text
    doc = json.loads(out.read_text())
    (r,) = doc["results"]
    assert r["tokens"] == 2 * 4 * 4 and r["selected_tokens"] == 16
    assert r["max_abs_error_subset_vs_full_rows"] < 1e-4  # fresh K/V cache: subset rows equal the full stack's
    assert 1.5 < r["flop_speedup"] <= 2.0 + 1e-6  # half the tokens: at most half the FLOPs
    for clock in ("wall", "cpu"):
        m = r[clock]
        assert m["ms_full"] > 0 and m["ms_subset"] > 0 and m["model_call_ms"] > 0
        assert m["step_run_skip_ms"] > 0 and m["decision_ms"] > 0
        assert m["skip_overhead_ms"] == pytest.approx(m["step_run_skip_ms"] - m["prologue_plus_epilogue_ms"])
        assert set(m["motion_weights_ms"]) == set(MOTION_SOURCES)
    assert set(r["profile"]) == {"full", "subset", "per_op_excess"}
    assert any("index_copy_" in o["op"] for o in r["profile"]["per_op_excess"]["ops"])  # K/V written in place
    assert r["what_if"]["ratio_in_place_kv"] > 0 and r["what_if"]["ratio_out_of_place"] > 0
