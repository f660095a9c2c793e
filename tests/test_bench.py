"""`mcgraph bench`: the quick mode runs end to end, its JSON validates against the shipped schema, and the
reports (Markdown table, README "Results" section, plots) are generated from it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mcgraph.bench.report import SCHEMA_PATH, load_schema, results_section, validate
from mcgraph.bench.settings import BenchSettings, quick_settings
from mcgraph.bench.summary import pareto_front
from mcgraph.cli.main import main
from tests.conftest import TINY_WEIGHTS_STEP


@pytest.fixture(scope="module")
def quick_run(tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", "--quick", "--peers", "--weights", str(tiny_weights), "--steps", "12",
                 "--peer-steps", "8", "--thresholds", "motioncache=0.05,0.1", "--out", str(out), "--no-progress",
                 "--threads", "1"])
    assert code == 0
    return out, json.loads((out / "bench.json").read_text())


def test_quick_bench_writes_valid_json(quick_run):
    out, data = quick_run
    validate(data)  # the shipped schema
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(load_schema())
    assert SCHEMA_PATH.name == "schema.json"
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["checkpoint"]["step"] == TINY_WEIGHTS_STEP and env["threads"] == [1]
    s = data["settings"]
    assert s["quick"] and s["steps"] == 12 and s["frames"] == 12 and s["thresholds"]["motioncache"] == [0.05, 0.1]
    assert data["generation"]["segments"] == 2 and data["generation"]["calls_per_row"] == 2
    assert data["generation"]["reproducible"]  # every timed generation reproduced the counted one exactly
    for name in ("bench.json", "report.md", "results.md", "pareto.png", "computed_fraction.png", "strip.png"):
        assert (out / name).is_file(), name


def test_quick_bench_figures_are_consistent(quick_run):
    _, data = quick_run
    runs = {r["id"]: r for r in data["runs"]}
    assert set(runs) == {"none", "teacache-0.1", "flowcache-0.1", "motioncache-hidden-0.05",
                         "motioncache-hidden-0.1"}
    base = data["baseline"]["per_seed"][0]
    assert base["flops"] > 0 and base["model_calls"] == 2 * data["generation"]["rows"]
    none = runs["none"]["summary"]
    # the captured graph without a cache computes exactly what the model computes
    assert none["psnr"] == "inf" and none["identical"] and none["flop_speedup"] == pytest.approx(1.0)
    assert none["executed_fraction"] == 1.0 and none["peak_cache_bytes"] == 0
    for r in runs.values():
        su = r["summary"]
        assert su["speedup"]["1"] > 0 and su["wall_s"]["1"] > 0
        assert su["efficiency"]["1"] == pytest.approx(su["speedup"]["1"] / su["flop_speedup"])
        seed = r["per_seed"][0]
        assert seed["model_calls"] == base["model_calls"]
        assert len(seed["wall_repeats"]["1"]) == data["settings"]["repeats"]
        if r["policy"] == "none":
            continue
        # caching skips arithmetic: fewer FLOPs, fewer tokens; the FLOP ratio follows the tokens computed
        assert su["flop_speedup"] > 1.0 and 0 < su["executed_fraction"] < 1
        assert su["peak_cache_bytes"] > 0
        assert seed["paths"]["full"] + seed["paths"]["subset"] + seed["paths"]["skip"] == seed["calls"]
        assert len(r["per_row_executed_fraction"]) == data["generation"]["rows"]
        assert all(0 <= x <= 1 for x in r["per_row_executed_fraction"])
        assert su["psnr"] == "inf" or su["psnr"] > 10
        assert 0 < su["ssim"] <= 1 and su["latent_rel_error"] >= 0
    # a higher threshold never computes more (MotionCache, same source)
    lo, hi = runs["motioncache-hidden-0.05"]["summary"], runs["motioncache-hidden-0.1"]["summary"]
    assert hi["flops"] <= lo["flops"]
    assert any(r["pareto"] for r in runs.values())


def test_quick_bench_peers(quick_run):
    _, data = quick_run
    peers = data["peers"]
    assert peers["model"]["class"] == "diffusers.WanTransformer3DModel"
    methods = {(r["framework"], r["method"]) for r in peers["runs"]}
    assert {("diffusers", "first_block_cache"), ("diffusers", "pyramid_attention_broadcast"),
            ("diffusers", "taylorseer"), ("mcgraph", "flowcache"), ("mcgraph", "motioncache")} <= methods
    assert peers["baseline"]["flops"] > 0
    for r in peers["runs"]:
        assert r["rel_error"] >= 0 and r["speedup"]["1"] > 0 and r["flops"] > 0
        if r["framework"] == "mcgraph":
            assert 0 < r["executed_fraction"] <= 1


def test_reports_and_readme_section(quick_run, tmp_path, capsys):
    out, data = quick_run
    report = (out / "report.md").read_text()
    assert "| policy | τ |" in report and "motioncache[hidden]" in report and "FirstBlockCache" in report
    section = (out / "results.md").read_text()
    assert section.startswith("## Results")
    assert "mcgraph bench --quick" in section and "--peers" in section  # the command that reproduces it
    assert "pareto.png" in section and "Peer comparison" in section
    # regenerate from the JSON alone, with the README's plot folder
    code = main(["bench", "--from-json", str(out / "bench.json"), "--out", str(tmp_path), "--readme",
                 "--readme-plots-dir", "docs/bench"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "## Results" in printed and "docs/bench/pareto.png" in printed
    assert (tmp_path / "results.md").read_text().startswith("## Results")
    assert (tmp_path / "pareto.png").is_file()
    assert results_section(data, "x").count("\n") > 10


def test_schema_rejects_malformed_results(quick_run):
    import jsonschema

    _, data = quick_run
    bad = json.loads(json.dumps(data))
    bad["runs"][0]["summary"]["speedup"] = {"1": -1}
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(data))
    del bad["environment"]["torch"]
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(data))
    bad["runs"][1]["per_seed"][0]["psnr"] = "infinite"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_pareto_front():
    pts = [(1.0, 50.0), (2.0, 40.0), (1.5, 30.0), (3.0, 20.0), (2.0, 45.0)]
    assert pareto_front(pts) == [0, 4, 3]
    assert pareto_front([(1.0, math.inf), (2.0, 30.0)]) == [0, 1]


def test_settings_validation_and_usage_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown policies"):
        BenchSettings(policies=("none", "magic"))
    with pytest.raises(ValueError, match="thresholds"):
        BenchSettings(thresholds={"none": (0.1,)})
    q = quick_settings()
    assert q.quick and q.seeds == (0,) and q.motion_sources == ("hidden",)
    assert main(["bench", "--thresholds", "teacache", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--motion-sources", "pixels", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--overlap", "3", "--out", str(tmp_path)]) == 2  # not whole chunks
    err = capsys.readouterr().err
    assert "overlap_frames=3" in err
    assert main(["bench", "--help"]) == 0
    help_text = capsys.readouterr().out
    for option in ("--quick", "--seeds", "--thresholds", "--threads", "--out", "--repeats", "--motion-sources",
                   "--peers", "--from-json"):
        assert option in help_text
