"""A plain torch.export / torch.onnx.export / torch.jit.trace of a caching module is refused, naming the
cache-aware export: traced once, its live cache state would become constants of the graph."""

from __future__ import annotations

import time

import pytest
import torch

import mcgraph
from mcgraph.config import MotionCacheConfig, NoCache
from mcgraph.errors import McGraphError
from mcgraph.zoo.subjects import SUBJECTS

from .cached import cached

RIGHT_API = "mcgraph.export.export_onnx"


@pytest.fixture(scope="module")
def plain():
    """plain-dit: a top-level parameter (`pos`), which non-strict export swaps by name before calling forward."""
    subject, opt = cached("plain-dit", MotionCacheConfig())
    return subject, opt


def _still_works(subject, opt):
    assert "pos" not in opt.__dict__ and opt.pos is subject.model.pos  # nothing left shadowing the original's
    opt.reset_cache()
    with torch.no_grad():
        torch.testing.assert_close(opt(**subject.kwargs), subject.model(**subject.kwargs), atol=1e-5, rtol=0)


def test_torch_export_is_refused_naming_the_right_api(plain):
    subject, opt = plain
    with pytest.raises(McGraphError, match=rf"PlainDiT optimised with MotionCacheConfig cannot be exported .*"
                                           rf"frozen into the graph as constants. Use {RIGHT_API}"):
        torch.export.export(opt, (), subject.kwargs)
    # strict export traces forward with dynamo, which reports our error as unsupported user code
    with pytest.raises(Exception, match=rf"McGraphError.*Use {RIGHT_API}"):
        torch.export.export(opt, (), subject.kwargs, strict=True)
    _still_works(subject, opt)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Exporting a model while it is in training mode")
def test_torch_onnx_export_is_refused_quickly(plain, tmp_path):
    subject, opt = plain
    start = time.perf_counter()
    # torch.onnx.export tries its capture strategies and re-raises the first error inside its own
    with pytest.raises(Exception, match=rf"McGraphError.*cannot be exported.*Use {RIGHT_API}"):
        torch.onnx.export(opt, (), tmp_path / "frozen.onnx", kwargs=subject.kwargs, dynamo=True, verbose=False)
    assert time.perf_counter() - start < 30  # it used to export the frozen model (about a minute here)
    with pytest.raises(McGraphError, match=RIGHT_API):  # the TorchScript exporter traces with torch.jit
        torch.onnx.export(opt, tuple(subject.kwargs.values()), str(tmp_path / "legacy.onnx"), dynamo=False)
    assert not list(tmp_path.iterdir())
    _still_works(subject, opt)


def test_identity_has_no_cache_to_freeze_and_exports():
    subject = SUBJECTS["plain-dit"]()
    opt = mcgraph.optimize(subject.model, NoCache(), (), subject.kwargs)
    program = torch.export.export(opt, (), subject.kwargs)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(**subject.kwargs), subject.model(**subject.kwargs))


def test_setting_a_parameter_of_the_original_reaches_it(plain):
    subject, opt = plain
    old = subject.model.pos
    new = torch.nn.Parameter(old.detach().clone())
    try:
        opt.pos = new
        assert subject.model.pos is new and "pos" not in opt.__dict__
    finally:
        subject.model.pos = old
