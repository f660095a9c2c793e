"""tools/probe_diffusers.py: the probe of diffusers' video transformers runs on a tiny Wan in seconds and reports
what it measured (identity bit-exact, MotionCache at threshold 0 exact, the row's cells), shows a refusal as
refused and anything else as crashed, and has a CLI that exits 0 on --help and 2 naming an unknown model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcgraph.errors import CaptureError

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "probe_diffusers.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("probe_diffusers", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def wan(probe):
    torch.set_num_threads(1)
    return probe.measure("wan-t2v", calls=4)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd=ROOT, check=False)


def test_wan_is_captured_identity_exact_and_motioncache_exact(wan):
    assert not wan.errors, {s: wan.first_line(s) for s in wan.errors}
    assert wan.capture == "dynamic" and wan.capture_s > 0
    assert wan.identity_exact is True and wan.identity_err == 0.0
    assert wan.cached is True  # MotionCache built its cache step: the error below is of the cached module
    assert wan.motion_err is not None and wan.motion_err <= 1e-5
    assert wan.structure == "2 blocks, grid 4x4x5"  # 4 latent frames of 8 x 10, patch 1 x 2 x 2
    assert wan.tokens == 80


def test_wan_row_format(probe, wan):
    cells = probe.cells(wan)
    assert len(cells) == len(probe.HEADER)
    assert cells[:4] == ["wan-t2v", "WanTransformer3DModel", "80", "dynamic"]
    assert cells[5] == "yes (0.0e+00)"
    assert cells[6].startswith("exact (") and cells[6].endswith(", 2 blocks, grid 4x4x5")
    assert cells[7] == ""
    table = probe.markdown([wan]).splitlines()
    assert table[0] == "| " + " | ".join(probe.HEADER) + " |"
    assert table[2] == "| " + " | ".join(cells) + " |"
    assert probe.summary([wan]).startswith("1 of 1 capture (0 by the static fallback), identity exact on 1, "
                                           "MotionCache exact on 1, 0 refused")


def _fake(probe, monkeypatch, name, optimize=None, call=None):
    """Register a tiny model (probe.MODELS is a plain dict) whose capture raises what `optimize` raises."""

    def build():
        model = torch.nn.Linear(4, 4).eval()
        if call is not None:
            model.forward = call
        x = torch.randn(2, 3, 4)
        return model, {"input": x}, lambda step: {"input": x + step}

    monkeypatch.setitem(probe.MODELS, name, build)
    monkeypatch.setitem(probe.INFO, name, probe.Info("Fake", 3))
    if optimize is not None:
        monkeypatch.setattr(probe.mcgraph, "optimize", optimize)


def test_refusal_and_crash_are_told_apart(probe, monkeypatch):
    def refuse(*a, **k):
        raise CaptureError("the fake construct 'blocks.0' is not supported")

    _fake(probe, monkeypatch, "fake-refused", refuse)
    refused = probe.measure("fake-refused", calls=2)
    assert refused.capture == "refused" and probe.cells(refused)[3] == "refused"
    assert "capture: CaptureError: the fake construct" in probe.cells(refused)[7]

    def crash(*a, **k):
        raise KeyError("boom")

    _fake(probe, monkeypatch, "fake-crashed", crash)
    crashed = probe.measure("fake-crashed", calls=2)
    assert crashed.capture == "crashed" and probe.cells(crashed)[3] == "crashed"
    assert probe.cells(crashed)[7] == "capture: KeyError: 'boom'"
    assert ", 1 crashed (fake-crashed)" in probe.summary([refused, crashed])


def test_model_that_cannot_run_eagerly_is_listed_with_its_reason(probe, monkeypatch):
    def broken(input):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nsecond line")

    _fake(probe, monkeypatch, "fake-broken", call=broken)
    row = probe.measure("fake-broken", calls=2)
    cells = probe.cells(row)
    assert cells[3] == "eager call failed" and cells[5] == cells[6] == "-"
    assert cells[7] == "eager: RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    assert "1 not built or not callable eagerly (fake-broken)" in probe.summary([row])


def test_every_builder_names_a_diffusers_class(probe):
    import diffusers

    for name, info in probe.INFO.items():
        assert hasattr(diffusers, info.cls), (name, info.cls)
        assert info.tokens > 0


def test_main_writes_markdown_and_json(probe, tmp_path, capsys):
    out, js = tmp_path / "probe.md", tmp_path / "probe.json"
    assert probe.main(["--models", "wan-t2v", "--calls", "2", "--out", str(out), "--json", str(js)]) == 0
    printed = capsys.readouterr()
    assert "| wan-t2v | WanTransformer3DModel | 80 | dynamic |" in printed.out
    assert "[1/1] wan-t2v" in printed.err  # progress on stderr
    assert "| wan-t2v | WanTransformer3DModel |" in out.read_text()
    data = json.loads(js.read_text())
    (row,) = data["rows"]
    assert row["identity_exact"] is True and row["motioncache_max_err"] <= 1e-5 and row["errors"] == {}


def test_help_exits_0():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    assert "--models" in done.stdout and "wan-t2v" in done.stdout


def test_unknown_model_exits_2_naming_it():
    done = _run("--models", "nosuch")
    assert done.returncode == 2
    assert "nosuch" in done.stderr and "invalid choice" in done.stderr
    assert _run("--calls", "0").returncode == 2
