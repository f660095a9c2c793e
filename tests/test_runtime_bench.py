"""`mcgraph bench --runtimes eager,compile,onnx --quick`: the table's structure and the runtimes' parity (not their
speed, which CI machines do not measure reliably)."""

from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo

from mcgraph.cli.main import main
from mcgraph.bench.settings import RuntimeBenchSettings, quick_runtime_settings

RUN_IDS = ["eager_uncached", "eager_cached_exact", "eager_cached_buckets", "compiled_cached", "ort_uncached",
           "ort_cached"]


def run(*argv):
    return main([str(a) for a in argv])


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def test_quick_runtime_bench_structure_and_parity(tiny_weights, tmp_path, capsys):
    code = run("bench", "--runtimes", "eager,compile,onnx", "--quick", "--weights", tiny_weights, "--out", tmp_path,
               "--no-progress")
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads((tmp_path / "runtime_bench.json").read_text())
    assert data["settings"]["quick"] and data["settings"]["compile_backend"] == "aot_eager"
    assert data["graph_buckets"] == [0.5, 1.0] and data["settings"]["threads"] == 1
    runs = {r["id"]: r for r in data["runs"]}
    assert list(runs) == RUN_IDS
    for r in runs.values():
        assert r["median_s"] > 0 and len(r["times_s"]) == 1
        assert 0 < r["computed_fraction"] <= 1
    assert runs["eager_uncached"]["computed_fraction"] == runs["ort_uncached"]["computed_fraction"] == 1.0
    assert runs["compiled_cached"]["label"] == "compiled cached (aot_eager)"
    # the bucketed eager, compiled and ONNX runs are one computation: same decisions, float noise only
    parity = data["parity"]
    for key in ("compiled_vs_eager_buckets", "ort_cached_vs_eager_buckets", "ort_cached_vs_compiled",
                "ort_uncached_vs_eager_uncached"):
        assert parity[key] <= 1e-4, (key, parity[key])
    assert parity["ok"] and parity["ort_decisions_identical"]
    assert runs["ort_cached"]["computed_fraction"] == runs["eager_cached_buckets"]["computed_fraction"]
    ratios = data["ratios"]
    for key in ("eager_speedup", "eager_speedup_buckets", "compile_speedup", "ort_speedup", "ort_over_eager_speedup"):
        assert ratios[key] > 0
    assert ratios["ort_over_eager_speedup"] == pytest.approx(ratios["ort_speedup"] / ratios["eager_speedup"])
    assert ratios["ort_target"] == 0.8 and isinstance(ratios["ort_target_met"], bool)
    compiled = data["compile"]
    assert compiled["graphs"] >= 1 and compiled["graphs_compiled_in_timed_runs"] == 0
    assert compiled["first_generation_max_abs_diff"] <= 1e-4
    for key in ("cached", "uncached"):
        info = data["onnx"][key]
        assert info["nodes"] > 0 and info["bytes"] > 0 and info["export_s"] > 0
        assert all((tmp_path / "onnx" / f["path"].split("/")[-1]).is_file() for f in info["files"])
    assert data["onnx"]["cached"]["nodes"] > data["onnx"]["uncached"]["nodes"]  # the If branches
    # the printed table (also in the Markdown report)
    report = (tmp_path / "runtime_report.md").read_text()
    for text in ("| run | median s | speedup vs eager uncached |", "| eager cached (exact K) |",
                 "| compiled cached (aot_eager) |", "| ORT cached |", "ORT speedup / eager speedup",
                 "compile speedup = eager cached (buckets) / compiled cached", "parity ok", "export"):
        assert text in out and text in report
    assert "mcgraph bench --runtimes eager,compile,onnx --quick" in data["command"]


@pytest.mark.parametrize("argv, message", [
    (("--runtimes", "eager,tensorrt"), "unknown runtime"),
    (("--runtimes", "eager", "--thresholds", "motioncache=0.1,0.2"), "one policy at one threshold"),
    (("--runtimes", "eager", "--thresholds", "motioncache=0.1", "--thresholds", "flowcache=0.1"), "one policy"),
    (("--runtimes", "eager", "--peers"), "--peers does not apply"),
    (("--runtimes", "eager", "--policies", "motioncache"), "--policies does not apply"),
    (("--runtimes", "eager", "--seeds", "0,1"), "one seed"),
    (("--runtimes", "eager", "--threads", "1,2"), "one thread count"),
    (("--runtimes", "eager", "--buckets", "0.5"), "include 1"),
    (("--runtimes", "eager", "--compile-backend", "tvm"), "invalid choice"),
    (("--runtimes", "eager", "--repeats", "0"), "repeats"),
    (("--buckets", "0.5,1"), "--runtimes"),
    (("--compile-backend", "aot_eager"), "--runtimes"),
])
def test_runtime_bench_usage_errors(argv, message, tmp_path, capsys):
    assert run("bench", *argv, "--out", tmp_path, "--no-progress") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runtime_bench.json").exists()


def test_runtime_settings():
    quick = quick_runtime_settings()
    assert quick.compile_backend == "aot_eager" and quick.buckets == (0.5, 1.0) and quick.repeats == 1
    full = RuntimeBenchSettings()
    assert full.policy == "motioncache" and full.threshold == 0.1 and full.threads == 1
    assert full.compile_backend == "inductor" and full.buckets is None
    with pytest.raises(ValueError, match="caching policy"):
        RuntimeBenchSettings(policy="none")
