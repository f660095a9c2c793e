"""ONNX export of the cache-aware step: one file, explicit state, the decision in the graph.

Parity: whole generations run by ONNX Runtime (through `OrtSession`, driven by the same sampler) match the
eager cache with the same capacity buckets to <= 1e-4, with the same decisions, on the reference model and
on diffusers' SkyReels-V2 and Wan transformers. State: a second identical call takes the skip path, which
it could not if the state were frozen into the file.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import mcgraph
import mcgraph.export
from mcgraph.config import MotionCacheConfig, NoCache
from mcgraph.errors import ConfigError, McGraphError
from mcgraph.export.onnx_export import META_KEY

from .cached import cached
from .generations import (
    reference_call_kwargs,
    reference_generation,
    skyreels_call_kwargs,
    skyreels_generation,
    wan_call_kwargs,
    wan_generation,
)

TOL = 1e-4
BUCKETS = (0.5, 1.0)  # few branches keep the export quick; the tree of conds is the same for more
CONFIG = MotionCacheConfig(threshold=0.15, warmup_steps=2, phase1_computes=1, capacity_buckets=BUCKETS)

CASES = {
    "reference-untrained": (reference_generation, reference_call_kwargs, lambda m: m),
    "skyreels-tiny": (skyreels_generation, lambda m: skyreels_call_kwargs(), lambda m: m),
    "wan-tiny": (wan_generation, lambda m: wan_call_kwargs(), lambda m: m),
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    name = request.param
    generate, example, _ = CASES[name]
    subject, opt = cached(name, CONFIG)
    opt.reset_cache()
    records = opt.record_decisions()
    want = generate(opt)
    eager_records = list(records)
    opt.record_decisions(False)
    path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
    info = mcgraph.export.onnx(opt, path, example_kwargs=example(subject.model))
    return name, opt, want, eager_records, info


def test_ort_generation_matches_eager_cache(exported):
    name, _, want, eager_records, info = exported
    generate = CASES[name][0]
    session = mcgraph.export.OrtSession(info.path, threads=1)
    records = session.record_decisions()
    got = generate(session)
    assert (got - want).abs().max().item() <= TOL
    assert [r.executed for r in records] == [r.executed for r in eager_records]
    assert all(torch.equal(a.computed, b.computed) for a, b in zip(records, eager_records))
    # the generation exercised the cache, not only the full path
    paths = {r.path for r in records}
    assert "full" in paths and paths & {"subset", "skip"}, paths


def test_export_is_one_checked_model_with_the_decision_inside(exported):
    _, _, _, _, info = exported
    onnx.checker.check_model(info.path)
    assert info.op_counts.get("If", 0) >= 2  # skip / bucket / full tree
    assert info.op_counts.get("TopK", 0) >= 1  # the bucket's token selection
    assert info.op_counts.get("ScatterND", 0) + info.op_counts.get("ScatterElements", 0) >= 1  # K/V and residual rows
    model = onnx.load(info.path)
    inputs = {i.name: i for i in model.graph.input}
    for name in info.state:
        assert f"state_{name}" in inputs and inputs[f"state_{name}"].doc_string
        assert f"new_state_{name}" in {o.name for o in model.graph.output}
    meta = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])
    assert meta["config"]["policy"] == "motioncache" and meta["buckets"] == list(BUCKETS)
    assert info.bytes < 50 * 2**20  # per-node stack traces are stripped (they made the file 60x larger)


def test_state_flows_through_the_session(tmp_path):
    """Identical second call: reuse (skip) in the same context; a fresh session (or context) computes all."""
    subject, opt = cached("reference-untrained", CONFIG)
    kwargs = reference_call_kwargs(subject.model)
    kwargs["timesteps"] = torch.full((1, 12), 500.0)
    info = mcgraph.export.onnx(opt, tmp_path / "ref.onnx", example_kwargs=kwargs)
    session = mcgraph.export.OrtSession(info.path, threads=1)
    records = session.record_decisions()
    first = session(**kwargs)
    second = session(**kwargs)
    with session.cache_context("other"):
        other = session(**kwargs)
    fresh = mcgraph.export.OrtSession(info.path, threads=1)
    fresh_records = fresh.record_decisions()
    fresh(**kwargs)
    assert [r.path for r in records] == ["full", "skip", "full"]
    assert records[1].executed == 0 and not records[1].computed.any()
    assert fresh_records[0].path == "full" and fresh_records[0].computed.all()
    assert (second - first).abs().max().item() <= TOL  # the skip reuses the residual of the first call
    assert torch.allclose(other, first, atol=TOL)
    assert session.cache_state_bytes() > 0
    session.reset_cache()
    session(**kwargs)
    assert records[-1].path == "full"


def test_session_rejects_bad_input(tmp_path):
    subject, opt = cached("reference-untrained", CONFIG)
    kwargs = reference_call_kwargs(subject.model)
    info = mcgraph.export.onnx(opt, tmp_path / "ref.onnx", example_kwargs=kwargs)
    session = mcgraph.export.OrtSession(info.path, threads=1)
    session(**kwargs)
    state_before = [a.copy() for a in session.cache_session.states["default"][1]]
    bad = dict(kwargs, hidden_states=torch.randn(1, 12, 8, 16, 16), timesteps=torch.rand(1, 8))
    with pytest.raises(McGraphError, match="hidden_states.*exported"):
        session(**bad)
    nan = dict(kwargs, hidden_states=torch.full_like(kwargs["hidden_states"], float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        session(**nan)
    with pytest.raises(TypeError, match="unexpected argument"):
        session(**kwargs, extra=1)
    # nothing was lost: the state is untouched by the rejected calls
    assert all(np.array_equal(a, b) for a, b in zip(state_before, session.cache_session.states["default"][1]))


def test_export_refuses_models_without_a_cache(tmp_path):
    subject, _ = cached("reference-untrained", CONFIG)
    plain = mcgraph.optimize(subject.model, NoCache(), (), subject.kwargs)
    with pytest.raises(ConfigError, match="caching config"):
        mcgraph.export.onnx(plain, tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="mcgraph.optimize"):
        mcgraph.export.onnx(subject.model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_not_an_mcgraph_file(tmp_path):
    lin = torch.nn.Linear(3, 2)
    torch.onnx.export(lin, (torch.randn(1, 3),), str(tmp_path / "lin.onnx"), dynamo=True, verbose=False)
    with pytest.raises(McGraphError, match="not written by mcgraph"):
        mcgraph.export.OrtSession(tmp_path / "lin.onnx")


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage-not-a-model" * 3], ids=["empty", "corrupt"])
def test_unreadable_onnx_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(McGraphError, match="broken.onnx"):
        mcgraph.export.OrtSession(path)
    with pytest.raises(McGraphError, match="no such ONNX file"):
        mcgraph.export.OrtSession(tmp_path / "missing.onnx")


def test_optimising_an_optimised_module_is_refused():
    subject, opt = cached("reference-untrained", CONFIG)
    with pytest.raises(ConfigError, match="already an mcgraph.optimize result"):
        mcgraph.optimize(opt, CONFIG, (), subject.kwargs)
