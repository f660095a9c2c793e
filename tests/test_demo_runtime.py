"""`mcgraph demo --cache P --runtime compile|onnx`: the cached video made by torch.compile / ONNX Runtime matches
the eager cache with the same capacity buckets; setup time is reported apart from the generation times."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from PIL import Image

from mcgraph.bench.demo_run import run_demo
from mcgraph.bench.runtimes import graph_config
from mcgraph.bench.settings import parse_buckets
from mcgraph.cli.demo import cache_report
from mcgraph.cli.main import main
from mcgraph.runtime.step_graph import DEFAULT_GRAPH_BUCKETS

TOL = 1e-4
SMALL = dict(steps=3, window_frames=8, overlap_frames=4, progress=False, cache="motioncache", buckets=(0.5, 1.0))


def run(*argv):
    return main([str(a) for a in argv])


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def test_demo_runtime_onnx_matches_eager_with_the_same_buckets(tiny_weights, tmp_path):
    logged = []
    # windows [0, 8) and [4, 10): two static shapes, two exported files, one router
    result = run_demo(tmp_path, frames=10, weights=tiny_weights, runtime="onnx", log=logged.append, **SMALL)
    c = result.cache
    assert c.runtime == "onnx" and c.config.capacity_buckets == (0.5, 1.0)
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["demo_cached_6f.onnx", "demo_cached_8f.onnx"]
    assert [f.latent_shape[2] for f in c.exported] == [8, 6]
    # same computation as the eager cache with these buckets: float noise only, same decisions, same quality
    assert c.eager_max_abs_diff <= TOL
    assert c.psnr_db == pytest.approx(c.eager_psnr_db, abs=0.01)
    assert c.computed_fraction == pytest.approx(c.eager_computed_fraction)
    assert c.computed_fraction < 1 and set(c.calls_by_path) & {"subset", "skip"}
    assert c.cached_wall_time_s > 0 and c.eager_wall_time_s > 0 and c.uncached_wall_time_s > 0
    assert c.setup_time_s > 0 and "ONNX export" in c.setup_note  # not inside the generation times
    assert any("exported" in line and "demo_cached_8f.onnx" in line for line in logged)
    # heat maps from the decisions the ONNX graph returned: one GIF frame per schedule row
    with Image.open(c.heatmap_gif) as gif:
        assert gif.n_frames == result.rows
    report = cache_report("motioncache", c)
    for text in ("motioncache eager", "motioncache onnx", "onnx vs eager cached:", "(eager, same buckets)",
                 "setup (not in the times above): ONNX export"):
        assert text in report


def test_demo_runtime_compile_matches_eager_with_the_same_buckets(tiny_weights, tmp_path, capsys):
    code = run("demo", "--cache", "motioncache", "--runtime", "compile", "--compile-backend", "aot_eager",
               "--buckets", "0.5,1", "--steps", 3, "--frames", 8, "--window", 8, "--overlap", 4, "--out", tmp_path,
               "--weights", tiny_weights, "--threads", 1, "--no-progress", "--no-heatmap")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "motioncache compile" in out and "compile vs eager cached:" in out
    assert "torch.compile backend aot_eager: warm-up generation" in out and "4 graphs compiled" in out
    diff = float(out.split("max |latent diff| compile vs eager cached: ")[1].split()[0])
    assert diff <= TOL
    assert "warning" not in out  # nothing compiled during the timed generation


def test_graph_runtimes_default_to_the_graph_buckets(tiny_weights, tmp_path, monkeypatch):
    # the graph's default buckets, made small here: a 7-branch graph takes much longer to export
    monkeypatch.setattr("mcgraph.runtime.step_graph.DEFAULT_GRAPH_BUCKETS", (0.5, 1.0))
    result = run_demo(tmp_path, frames=4, window_frames=4, overlap_frames=0, steps=1, weights=tiny_weights,
                      progress=False, cache="teacache", runtime="onnx", heatmap=False, log=lambda s: None)
    assert result.cache.config.capacity_buckets == (0.5, 1.0)
    assert result.cache.eager_max_abs_diff <= TOL


def test_buckets_helpers():
    assert parse_buckets("1, 0.25;0.5") == (0.25, 0.5, 1.0)
    for bad, message in (("0.5", "include 1"), ("", "comma-separated"), ("x,1", "numbers"), ("1.5,1", "(0, 1]")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            parse_buckets(bad)
    from mcgraph.config import MotionCacheConfig

    assert graph_config(MotionCacheConfig()).capacity_buckets == DEFAULT_GRAPH_BUCKETS
    assert graph_config(MotionCacheConfig(capacity_buckets=(0.5, 1.0))).capacity_buckets == (0.5, 1.0)
    assert graph_config(MotionCacheConfig(), (0.25, 1.0)).capacity_buckets == (0.25, 1.0)


def test_demo_runtime_usage_errors(tiny_weights, tmp_path, capsys):
    base = ("demo", "--weights", tiny_weights, "--out", tmp_path, "--steps", 1, "--frames", 4, "--window", 4,
            "--overlap", 0)
    assert run(*base, "--runtime", "onnx") == 2  # no --cache
    assert "needs a caching policy" in capsys.readouterr().err
    assert run(*base, "--runtime", "compile", "--cache", "none") == 2
    assert "needs a caching policy" in capsys.readouterr().err
    assert run(*base, "--cache", "motioncache", "--compile-backend", "aot_eager") == 2
    assert "runtime 'compile' only" in capsys.readouterr().err
    assert run(*base, "--cache", "motioncache", "--runtime", "tensorrt") == 2
    assert "invalid choice" in capsys.readouterr().err
    assert run(*base, "--cache", "motioncache", "--buckets", "0.25,0.5") == 2
    assert "include 1" in capsys.readouterr().err
    assert run(*base, "--buckets", "0.5,1") == 2  # buckets without a cache
    assert "need a cache policy" in capsys.readouterr().err
    assert run(*base, "--cache", "none", "--buckets", "0.5,1") == 2
    assert "caching policy" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx"))
    assert run("demo", "--help") == 0
    help_text = capsys.readouterr().out
    for option in ("--runtime", "--compile-backend", "--buckets"):
        assert option in help_text


def test_eager_with_buckets_keeps_the_eager_report(tiny_weights, tmp_path, capsys):
    code = run("demo", "--cache", "motioncache", "--buckets", "0.5,1", "--steps", 2, "--frames", 4, "--window", 4,
               "--overlap", 0, "--out", tmp_path, "--weights", tiny_weights, "--threads", 1, "--no-progress",
               "--no-heatmap")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "capacity buckets 0.5,1" in out and "speedup vs uncached:" in out
    assert "eager cached" not in out and not list(tmp_path.glob("*.onnx"))
