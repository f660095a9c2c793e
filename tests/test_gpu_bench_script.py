"""tools/gpu_bench.py, the one-call GPU benchmark, checked on a CPU with its --small preset.

One subprocess run (30-40 s on one core: its tests are `slow`): every planned run is in the JSON, measured or skipped with a reason
(CUDA graphs need CUDA), times are positive, and identity matched eager uncached (the benchmark's correctness
check) within 1e-4 in float32. Compiled runs use the `eager` backend here (dynamo only; Inductor's C++ compile of
the cond graphs takes minutes on one core), and must match the same condition run eagerly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcgraph.config import MotionCacheConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_bench.py"
IDENTITY_TOL = 1e-4  # float32; identity runs the captured graph of the same ops
HAS_BUDGET = "token_budget" in {f.name for f in dataclasses.fields(MotionCacheConfig)}


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), OUT=str(out))
    return subprocess.run([sys.executable, str(SCRIPT), "--small", "--device", "cpu", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench-out")
    proc = _run(out)  # --out defaults to $OUT
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_bench.json").read_text()), proc.stdout


@pytest.mark.slow
def test_small_run_measures_every_condition(small_run):
    doc, _ = small_run
    budgets = ["budget50", "budget30", "budget15"] if HAS_BUDGET else []
    results = {(r["mode"], r["condition"]): r for r in doc["results"]}
    for condition in ["uncached", "identity", *budgets]:
        for mode in ("eager", "inductor"):
            r = results[(mode, condition)]
            assert r["status"] == "ok", r.get("error")
            assert r["ms_per_call_median"] > 0 and r["ms_per_call_mean"] > 0
            assert r["calls"] == 8 and all(t > 0 for t in r["ms_calls"])
            assert r["speedup_vs_eager_uncached"] > 0
            if mode == "inductor":
                assert r["compile_s"] >= 0 and r["recompiled_while_timed"] == 0
                assert r["final_max_abs_vs_eager_same_condition"] <= IDENTITY_TOL
    skipped = {(s["mode"], s["condition"]): s["reason"] for s in doc["skipped"]}
    assert set(results) | set(skipped) == {tuple(p.split("/")) for p in doc["plan"]}
    assert all("CUDA" in reason for (mode, _), reason in skipped.items() if mode == "cudagraphs")
    assert doc["measured"] == len(results)
    assert doc["model"]["tokens"] == 64 and "peak_memory_gib" not in results[("eager", "uncached")]


@pytest.mark.slow
def test_identity_matches_eager_uncached(small_run):
    doc, stdout = small_run
    check = doc["identity_check"]
    assert check["tolerance"] == IDENTITY_TOL
    assert check["ok"] and 0 <= check["max_abs_diff"] <= IDENTITY_TOL
    assert "identity vs eager uncached" in stdout and "ms/call med" in stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BUDGET, reason="MotionCacheConfig.token_budget not in this mcgraph yet")
def test_budgets_run_their_token_count(small_run):
    doc, _ = small_run
    for r in doc["results"]:
        if r["mode"] == "eager" and r["condition"].startswith("budget"):
            k = r["budget_tokens"]
            assert k == round(r["token_budget"] * 64)
            # the first call of each context (cond, uncond) computes every token, then the budget
            assert r["executed_tokens_warmup"] == [64, 64]
            assert 0 < r["final_max_abs_vs_eager_uncached"]


def test_nothing_measured_exits_1(tmp_path):
    proc = _run(tmp_path, "--modes", "cudagraphs", "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    doc = json.loads((tmp_path / "o" / "gpu_bench.json").read_text())
    assert doc["measured"] == 0 and doc["skipped"]


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_without_token_budget_skips_budgets_with_a_note():
    gb = _module()
    args = gb._parser().parse_args([])
    plan, notes, _ = gb._plan(args, has_budget=False)
    assert plan == [("eager", "uncached"), ("eager", "identity"), ("cudagraphs", "uncached"),
                    ("inductor", "uncached"), ("cudagraphs", "identity"), ("inductor", "identity")]
    assert notes and "token_budget" in notes[0]
    plan, notes, budgets = gb._plan(args, has_budget=True)
    assert not notes and budgets == {"budget50": 0.5, "budget30": 0.3, "budget15": 0.15}
    # eager first, then the headline budget under CUDA graphs, uncached, then the rest
    assert plan[:7] == [("eager", "uncached"), ("eager", "identity"), ("eager", "budget50"), ("eager", "budget30"),
                        ("eager", "budget15"), ("cudagraphs", "budget30"), ("cudagraphs", "uncached")]
    assert len(plan) == 15
