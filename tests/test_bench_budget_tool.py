"""tools/bench_budget.py at a tiny size (8 frames, 4 steps, one seed), in process: budget rows run their budget
after each context's first call, and a budget of every token is the uncached model."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_budget.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("bench_budget", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def result(tool, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_budget") / "budget.json"
    lines = []
    code = tool.main(["--steps", "4", "--frames", "8", "--seeds", "0", "--thresholds", "0.1", "--budgets", "1.0,0.3",
                      "--flow-budgets", "0.3", "--json", str(out)], log=lines.append)
    assert code == 0, "\n".join(lines)
    assert "\n| MotionCache budget 0.3 (τ=0.1) |" in "\n".join(lines)  # the table was printed
    return json.loads(out.read_text())


def test_budget_rows_run_their_budget_after_the_first_call(result):
    rows = {r["id"]: r for r in result["rows"]}
    assert list(rows) == ["motioncache-t0.1", "motioncache-b1", "motioncache-b0.3", "flowcache-b0.3"]
    for rid in ("motioncache-b0.3", "flowcache-b0.3"):
        seed = rows[rid]["per_seed"][0]
        assert seed["token_fraction_after_first"] == pytest.approx(0.3, abs=0.02), rid
        assert seed["full_calls_after_first"] == 0
        assert seed["token_fraction"] > seed["token_fraction_after_first"]  # first calls run every token
        assert seed["calls"] == result["rows"][0]["per_seed"][0]["calls"]
    assert rows["motioncache-b1"]["per_seed"][0]["token_fraction_after_first"] == 1.0
    assert rows["motioncache-b0.3"]["vs_sweep_psnr"]["n"] == 0  # one threshold brackets nothing: no comparison


def test_a_budget_of_every_token_is_the_uncached_video(result):
    rows = {r["id"]: r for r in result["rows"]}
    psnr = rows["motioncache-b1"]["per_seed"][0]["psnr"]
    assert math.isinf(psnr) or psnr >= 60
    assert 0 < rows["motioncache-b0.3"]["per_seed"][0]["psnr"] < 60  # a cache that skips work does change it
    assert result["reproducible"]
    for r in result["rows"]:
        assert r["wall_s"]["mean"] > 0 and r["speedup"]["mean"] > 0


def test_bad_settings_exit_1(tool):
    assert tool.main(["--budgets", "1.5", "--seeds", "0"], log=lambda s: None) == 1
    assert tool.main(["--seeds", "x"], log=lambda s: None) == 1
