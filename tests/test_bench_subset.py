"""tools/bench_subset.py runs end to end on a tiny Wan (seconds) and counts attention FLOPs on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_subset", ROOT / "tools" / "bench_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_bench_tiny_wan_end_to_end(bench, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    assert bench.main(["--models", "wan-tiny", "--repeats", "3", "--json", str(out), "--fraction", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "FLOP-ratio speedup" in text and "speedup / FLOP speedup" in text and "per-op wall time" in text
    doc = json.loads(out.read_text())
    (r,) = doc["results"]
    assert r["tokens"] == 2 * 4 * 4 and r["selected_tokens"] == 16
    assert r["max_abs_error_subset_vs_full_rows"] < 1e-4  # fresh K/V cache: subset rows equal the full stack's
    assert 1.5 < r["flop_speedup"] <= 2.0 + 1e-6  # half the tokens: at most half the FLOPs
    for clock in ("wall", "cpu"):
        m = r[clock]
        assert m["ms_full"] > 0 and m["ms_subset"] > 0 and m["model_call_ms"] > 0
        assert set(m["motion_weights_ms"]) == {"hidden", "latent", "clean"}
    assert set(r["profile"]) == {"full", "subset", "per_op_wall_excess"}
