"""`mcgraph bench --peers-only`: diffusers' cache hooks vs mcgraph's policies on diffusers' Wan transformer,
on the tiny size (a few seconds): every row is there, the exact rows are exact, the files are written and
valid, the settings and options are checked."""

from __future__ import annotations

import json
import warnings

import pytest

from mcgraph.bench.peer_models import PEER_SIZES, peer_model
from mcgraph.bench.peer_report import peers_markdown, peers_table_rows
from mcgraph.bench.peer_settings import (
    DEFAULT_PEER_MODEL,
    PEER_METHODS,
    PEER_MODELS,
    normalise_peer_thresholds,
)
from mcgraph.bench.report import load_schema
from mcgraph.bench.settings import BenchSettings, quick_settings
from mcgraph.cli.main import main


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["bench", "--peers-only", "--quick", "--repeats", "2", "--peer-steps", "8",
                     "--peer-thresholds", "motioncache=0,0.1", "--peer-thresholds", "taylorseer=3,4:2",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    return out, json.loads((out / "peers.json").read_text()), [str(w.message) for w in caught]


def test_peers_only_writes_valid_files(peers_run):
    import jsonschema

    out, doc, _ = peers_run
    jsonschema.validate(doc["peers"], load_schema()["properties"]["peers"])  # bench.json's peers section
    assert (out / "peers.md").read_text() == peers_markdown(doc)
    assert doc["command"].startswith("mcgraph bench --peers-only --quick --repeats 2 --peer-steps 8")
    assert "--peer-thresholds taylorseer=3:1,4:2" in doc["command"]
    assert doc["settings"]["peer_model"] == "wan-tiny" and doc["settings"]["repeats"] == 2
    p = doc["peers"]
    assert p["loop"]["steps"] == 8 and p["loop"]["calls"] == 16
    assert doc["video_tokens"] == 60
    assert doc["reproducible"]  # every timed generation gave its counted latent bit for bit
    assert len(p["baseline"]["wall_repeats"]["1"]) == 2
    for r, c in zip(p["runs"], doc["cpu"]["runs"]):
        assert c["label"] == r["label"] and len(c["cpu_repeats"]["1"]) == 2 == len(r["wall_repeats"]["1"])


def test_peers_all_rows_present(peers_run):
    _, doc, _ = peers_run
    labels = [r["label"] for r in doc["peers"]["runs"]]
    assert labels == [
        "mcgraph teacache τ=0.1", "mcgraph flowcache τ=0.1", "mcgraph motioncache τ=0", "mcgraph motioncache τ=0.1",
        "mcgraph motioncache budget=0.5 (τ=0.1)", "diffusers FirstBlockCache threshold=0.1", "diffusers PAB skip=2",
        "diffusers TaylorSeer interval=3 order=1", "diffusers TaylorSeer interval=4 order=2"]
    table = (peers_run[0] / "peers.md").read_text()
    for label in labels:
        assert f"| {label.split(' ', 1)[1]} |" in table
    assert "| — | uncached (eager) | 1.00× |" in table


def test_peers_figures(peers_run):
    _, doc, messages = peers_run
    p = doc["peers"]
    runs = {r["label"]: r for r in p["runs"]}
    base = p["baseline"]
    assert base["flops"] > 0
    # diffusers' hooks leave registries on the modules they touched: they run on a copy, so mcgraph's capture
    # stays valid (no "changed after it was captured" recapture in the timed rounds)
    assert not [m for m in messages if "changed after it was captured" in m]
    exact = runs["mcgraph motioncache τ=0"]
    assert exact["rel_error"] <= 1e-5 and exact["executed_fraction"] == 1.0
    assert exact["flops"] == pytest.approx(base["flops"], rel=0.02) and exact["params"] == {"threshold": 0.0}
    budget = runs["mcgraph motioncache budget=0.5 (τ=0.1)"]
    assert budget["params"] == {"threshold": 0.1, "token_budget": 0.5} and budget["method"] == "motioncache_budget"
    # after each context's first call (full) every call runs exactly half the tokens
    assert 0.5 <= budget["executed_fraction"] < 0.65 and budget["flop_speedup"] > 1.3
    assert runs["diffusers TaylorSeer interval=4 order=2"]["params"]["max_order"] == 2
    for r in p["runs"]:
        assert r["flops"] > 0 and r["speedup"]["1"] > 0
        assert r["efficiency"]["1"] == pytest.approx(r["speedup"]["1"] / r["flop_speedup"])
        assert r["speedup"]["1"] == pytest.approx(base["wall_s"]["1"] / r["wall_s"]["1"])
        if r["framework"] == "diffusers":
            assert r["executed_fraction"] is None and r["rel_error"] > 0 and r["flop_speedup"] > 1
        elif r is not exact:
            assert 0 < r["executed_fraction"] < 1 and r["rel_error"] > 0
    rows = peers_table_rows(doc)
    assert rows[0]["method"] == "uncached (eager)" and rows[0]["rel_error"] == 0 and rows[0]["speedup"] == 1
    assert [r["framework"] for r in rows[1:]] == ["mcgraph"] * 5 + ["diffusers"] * 4
    for row in rows[1:]:
        r = row["run"]
        lo, hi = row["speedup_range"]
        assert lo <= hi and row["cpu_speedup"] > 0
        # overhead: the wall time beyond the FLOPs at the uncached rate, per call
        assert row["overhead_ms"] == pytest.approx(
            (r["wall_s"]["1"] - base["wall_s"]["1"] * r["flops"] / base["flops"]) / 16 * 1e3)


def test_peer_sizes():
    assert DEFAULT_PEER_MODEL == "wan-384" == BenchSettings().peer_model
    assert set(PEER_MODELS) == {"wan-tiny", *PEER_SIZES} and quick_settings().peer_model == "wan-tiny"
    model, latent, text, cfg = peer_model("wan-384")
    # issue 14's setting: hidden 384, 4 blocks, ffn 4 x hidden, 1024 video tokens, 512 text tokens
    assert cfg["num_attention_heads"] * cfg["attention_head_dim"] == 384 and cfg["num_layers"] == 4
    assert cfg["ffn_dim"] == 4 * 384 and len(model.blocks) == 4
    p = cfg["patch_size"]
    assert (latent[2] // p[0]) * (latent[3] // p[1]) * (latent[4] // p[2]) == 1024 and text == (1, 512, 64)
    assert latent[1] == cfg["in_channels"] and text[2] == cfg["text_dim"]
    _, latent, text, cfg = peer_model("wan-bench")
    assert latent == (1, 16, 8, 16, 16) and cfg["num_attention_heads"] * cfg["attention_head_dim"] == 128
    with pytest.raises(ValueError, match="peer_model"):
        BenchSettings(peer_model="wan-huge")
    with pytest.raises(ValueError, match="unknown peer size"):
        peer_model("wan-huge")


def test_peer_thresholds_settings():
    s = BenchSettings()
    assert set(s.peer_thresholds) == set(PEER_METHODS)
    assert s.peer_thresholds["taylorseer"] == ((4, 1), (5, 1), (5, 2))
    assert s.peer_thresholds["motioncache_budget"] == (0.5, 0.3)
    for policy in ("teacache", "flowcache", "motioncache"):
        assert len(s.peer_thresholds[policy]) == 2
    assert s.to_json()["peer_thresholds"]["taylorseer"] == [[4, 1], [5, 1], [5, 2]]
    assert normalise_peer_thresholds({"taylorseer": (3, [5, 2]), "pyramid_attention_broadcast": (2.0,)}) == \
        {"taylorseer": ((3, 1), (5, 2)), "pyramid_attention_broadcast": (2,)}
    for bad, match in (({"magcache": (0.1,)}, "unknown peer method"), ({"motioncache_budget": (1.5,)}, "budgets"),
                       ({"taylorseer": ((5, 0),)}, "integers >= 1"), ({"teacache": (-1,)}, ">= 0"),
                       ({"pyramid_attention_broadcast": (1.5,)}, "integers")):
        with pytest.raises(ValueError, match=match):
            normalise_peer_thresholds(bad)
    with pytest.raises(ValueError, match="peer_steps"):
        BenchSettings(peer_steps=1)


def test_peers_only_usage_errors(tmp_path, capsys):
    out = str(tmp_path)
    for argv, message in ((["--seeds", "0"], "--seeds does not apply to --peers-only"),
                          (["--peers"], "--peers does not apply to --peers-only"),
                          (["--peer-thresholds", "taylorseer=0"], "integers >= 1"),
                          (["--peer-thresholds", "magcache=0.1"], "unknown peer method"),
                          (["--peer-size", "wan-huge"], "invalid choice")):
        assert main(["bench", "--peers-only", *argv, "--out", out]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert main(["bench", "--runtimes", "eager", "--peers-only", "--out", out]) == 2
    assert "--runtimes does not apply to --peers-only" in capsys.readouterr().err
    assert main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--peers-only", "--peer-size", "--peer-thresholds", "wan-384"):
        assert option in text


def test_peer_thresholds_option():
    import argparse

    from mcgraph.cli.bench_peers import peer_threshold_spec, peer_values

    assert peer_threshold_spec("taylorseer=4,5:2") == ("taylorseer", ((4, 1), (5, 2)))
    assert peer_threshold_spec("first_block_cache=0.12, 0.2") == ("first_block_cache", (0.12, 0.2))
    assert peer_threshold_spec("teacache=") == ("teacache", ())  # no rows of that kind
    assert peer_values(((4, 1), (5, 2))) == "4:1,5:2" and peer_values((0.12, 0.2)) == "0.12,0.2"
    for bad in ("taylorseer", "motioncache_budget=0", "pyramid_attention_broadcast=2:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            peer_threshold_spec(bad)
    assert BenchSettings().peer_thresholds["first_block_cache"] == (0.12, 0.15, 0.2)
