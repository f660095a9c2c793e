"""`mcgraph inspect`: prints the structure, or a clear error and exit code 1."""

from __future__ import annotations

import json

import torch

from mcgraph.cli.main import main


def test_inspect_reports_the_structure(capsys):
    assert main(["inspect", "--model", "skyreels-tiny"]) == 0
    out = capsys.readouterr().out
    assert "blocks: 3 x SkyReelsV2TransformerBlock" in out
    assert "attention sites: 3 self, 3 cross" in out
    assert "frames x height x width" in out and "(= 4 x 4 x 5)" in out
    assert "per-token" in out


def test_inspect_json_and_dump(capsys, tmp_path):
    assert main(["inspect", "--model", "plain-dit", "--json", "--dump", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["grid"]["example"] == [4, 4, 5] and len(data["blocks"]) == 3
    assert list(tmp_path.glob("*_attention_sites_before.txt")), sorted(p.name for p in tmp_path.iterdir())


def no_attention_model():
    from tests.test_analyses import _NoAttention

    return _NoAttention(), dict(x=torch.randn(2, 3, 3, 8, 8), t=torch.rand(2))


def test_inspect_unsupported_model_is_a_clear_error(capsys):
    assert main(["inspect", "--factory", "tests.test_inspect_cli:no_attention_model"]) == 1
    err = capsys.readouterr().err
    assert "StructureNotFound" in err and "no attention found" in err and "Traceback" not in err


def test_inspect_bad_factory_is_a_usage_error(capsys):
    assert main(["inspect", "--factory", "nocolon"]) == 2
    assert main(["inspect", "--factory", "no_such_module_xyz:f"]) == 2
    assert main(["inspect", "--model", "nope"]) == 2


def test_inspect_with_a_cache_reports_its_memory(capsys):
    assert main(["inspect", "--model", "plain-dit", "--cache", "motioncache"]) == 0
    out = capsys.readouterr().out
    assert "blocks: 3 x _PlainBlock" in out
    # batch 2 x 80 tokens x 2064 B (see tests/test_memory_report.py) + 16 B of the watched label
    assert "cache memory of PlainDiT under MotionCacheConfig" in out and "322.52 KiB per context" in out
    assert "per token and sample: 2.02 KiB" in out and "x the weights" in out
    assert main(["inspect", "--model", "plain-dit", "--cache", "teacache", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    memory = data["cache_memory"]
    assert memory["config"] == "TeaCacheConfig" and memory["bytes_per_context"] == 2064 * 160 + 16
    assert {t["name"] for t in memory["tensors"]} >= {"indicator", "residual", "acc", "kv.0", "watch_y"}


def test_inspect_without_a_cache_reports_no_memory(capsys):
    assert main(["inspect", "--model", "plain-dit", "--json"]) == 0
    assert "cache_memory" not in json.loads(capsys.readouterr().out)
