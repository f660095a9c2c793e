"""`mcgraph export`: a cache-aware model written as one checked ONNX file, and its usage errors."""

from __future__ import annotations

import json
import re

import onnx
import pytest
import torch

from mcgraph.cli.main import main
from mcgraph.errors import McGraphError


def run(*argv):
    return main([str(a) for a in argv])


def _meta(path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return json.loads({p.key: p.value for p in model.metadata_props}["mcgraph.meta"])


def test_export_reference_writes_a_checked_file_that_matches_eager(tiny_weights, tmp_path, capsys):
    out = tmp_path / "new" / "model.onnx"  # the folder is created
    code = run("export", "--model", "reference", "--cache", "motioncache", "--weights", tiny_weights, "--frames", 8,
               "--buckets", "1,0.5", "--threshold", 0.2, "--threads", 1, "--verify", out)
    text = capsys.readouterr().out
    assert code == 0, text
    onnx.checker.check_model(str(out))
    meta = _meta(out)
    assert meta["buckets"] == [0.5, 1.0]
    assert meta["config"]["policy"] == "motioncache" and meta["config"]["threshold"] == 0.2
    assert meta["config"]["capacity_buckets"] == [0.5, 1.0]
    shapes = {t["name"]: t["shape"] for t in meta["tensor_inputs"]}
    assert shapes["hidden_states"] == [1, 12, 8, 16, 16] and shapes["timesteps"] == [1, 8]
    # the printed summary: nodes, size, checker, every state tensor
    assert re.search(r"model\.onnx: [\d.]+ MiB, \d+ nodes", text)
    assert "onnx.checker: passed" in text
    states = [s["name"] for s in meta["state"]]
    assert f"state tensors ({len(states)}): {', '.join(states)}" in text
    assert {"indicator", "residual", "k_cache_0", "v_cache_1"} <= set(states)
    # --verify ran full and subset calls through ONNX Runtime and eager with the same buckets
    verify = re.search(r"verify: 10 calls \((.*)\), max \|ONNX Runtime - eager\| (\S+)", text)
    assert verify, text
    assert {"full", "subset"} <= set(verify.group(1).split(", "))
    assert float(verify.group(2)) <= 1e-4

    from mcgraph.export import OrtSession

    session = OrtSession(out, threads=1)  # static shapes: other window lengths need another export
    with pytest.raises(McGraphError, match="exported"):
        session(torch.zeros(1, 12, 4, 16, 16), torch.zeros(1, 4), torch.zeros(1, 11, 16))


def test_export_a_zoo_subject_with_a_passthrough_state(tmp_path, capsys):
    out = tmp_path / "plain.onnx"
    code = run("export", "--model", "plain-dit", "--cache", "flowcache", "--buckets", "0.5,1", "--threads", 1,
               "--verify", out)
    text = capsys.readouterr().out
    assert code == 0, text
    onnx.checker.check_model(str(out))
    meta = _meta(out)
    assert meta["model_class"] == "PlainDiT" and meta["config"]["policy"] == "flowcache"
    assert {t["name"]: t["shape"] for t in meta["tensor_inputs"]}["x"] == [2, 3, 4, 16, 20]
    assert "example inputs: x [2, 3, 4, 16, 20], t [2], y [2]" in text
    # FlowCache never changes its `weights` state: the file must still take it as `state_weights` (OrtSession
    # feeds every state under that name), whatever name the exporter gave the pass-through value
    graph = onnx.load(str(out), load_external_data=False).graph
    names = [i.name for i in graph.input]
    assert names == [t["name"] for t in meta["tensor_inputs"]] + [f"state_{s['name']}" for s in meta["state"]]
    assert "new_state_weights" in [o.name for o in graph.output]
    verify = re.search(r"verify: 10 calls \((.*)\), max \|ONNX Runtime - eager\| (\S+)", text)
    assert verify and float(verify.group(2)) <= 1e-4, text


@pytest.mark.parametrize("argv, message", [
    (("--cache", "none"), "no cache to export"),
    (("--buckets", "0.5"), "include 1"),
    (("--buckets", "0,1"), "(0, 1]"),
    (("--buckets", "half,1"), "numbers"),
    (("--threshold", "-1"), ">= 0"),
    (("--frames", "0"), ">= 1"),
    (("--model", "nosuchmodel"), "invalid choice"),
    (("--model", "plain-dit", "--weights", "w.safetensors"), "--weights applies to --model reference only"),
    (("--motion-source", "bogus"), "motion_source"),
    (("--cache", "flowcache", "--motion-source", "latent"), "motioncache"),
])
def test_export_usage_errors(argv, message, tmp_path, capsys):
    assert run("export", *argv, tmp_path / "m.onnx") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_other_errors_and_help(tmp_path, capsys):
    assert run("export") == 2  # no output file
    assert "FILE" in capsys.readouterr().err
    assert run("export", tmp_path) == 2  # a directory
    assert "is a directory" in capsys.readouterr().err
    assert run("export", "--weights", tmp_path / "missing.safetensors", tmp_path / "m.onnx") == 2  # before any work
    assert "--weights" in (err := capsys.readouterr().err) and "no such file" in err
    assert run("export", "--help") == 0
    help_text = capsys.readouterr().out
    for option in ("--model", "--cache", "--threshold", "--buckets", "--frames", "--weights", "--verify"):
        assert option in help_text
    assert run("--help") == 0
    assert "export" in capsys.readouterr().out
