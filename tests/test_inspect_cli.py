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
    assert (tmp_path / "00_attention_sites_before.txt").is_file()


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
