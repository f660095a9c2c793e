"""What a capture baked in is guarded: a model changed after `optimize` is captured again (warned, naming what
changed) instead of running the old graph; a Python argument that changes every call is named and bounded;
pickle and deepcopy of an optimised module work."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import mcgraph
from mcgraph.config import MotionCacheConfig
from mcgraph.runtime.specialisations import MAX_SPECIALISATIONS
from mcgraph.zoo.subjects import SUBJECTS


class Scaled(nn.Module):
    """Reads a Python attribute and a float argument in forward: both become constants of a capture."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.gain = 1.0

    def forward(self, x, scale: float = 1.0):
        return self.proj(x) * self.gain * scale


def _x(rows: int = 5) -> torch.Tensor:
    return torch.randn(2, rows, 8, generator=torch.Generator().manual_seed(rows))


def test_an_attribute_changed_after_capture_is_captured_again_and_named():
    model = Scaled().eval()
    opt = mcgraph.optimize(model, example_args=(_x(),))
    torch.testing.assert_close(opt(_x()), model(_x()), atol=0, rtol=0)
    model.gain = 3.0
    with pytest.warns(UserWarning, match=r"'gain': 1\.0 -> 3\.0"):
        got = opt(_x())
    assert torch.equal(got, model(_x()))  # the old graph would give a third of this
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unchanged since: no new capture, no warning
        assert torch.equal(opt(_x()), model(_x()))


def test_a_replaced_submodule_is_seen_and_in_place_weight_updates_need_no_capture():
    model = Scaled().eval()
    opt = mcgraph.optimize(model, example_args=(_x(),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model.proj.weight.mul_(2.0)  # shared with the graphs: seen without a capture
        assert torch.equal(opt(_x()), model(_x()))
    model.proj = nn.Linear(8, 8)
    with pytest.warns(UserWarning, match=r"'proj': <Linear object> -> <Linear object>"):
        assert torch.equal(opt(_x()), model(_x()))


def test_skyreels_set_ar_attention_after_optimize_is_not_ignored():
    """diffusers' DF pipeline calls `_set_ar_attention(n)` (a config field read in forward) after the model was
    optimised; the old capture would keep the old causal block size."""
    subject = SUBJECTS["skyreels-tiny"]()
    model, kwargs = subject.model, subject.kwargs
    opt = mcgraph.optimize(model, example_kwargs=kwargs)
    with torch.no_grad():
        before = model(**kwargs)[0]
        model._set_ar_attention(1)
        after = model(**kwargs)[0]
        assert (before - after).abs().max() > 1e-3  # the change matters
        with pytest.warns(UserWarning, match="num_frame_per_block"):
            got = opt(**kwargs)[0]
    torch.testing.assert_close(got, after, atol=1e-5, rtol=0)


def test_a_cached_model_changed_after_capture_starts_a_fresh_cache_state():
    subject = SUBJECTS["reference-untrained"]()
    opt = mcgraph.optimize(subject.model, MotionCacheConfig(threshold=0.05), example_kwargs=subject.kwargs)
    opt(**subject.kwargs)
    assert opt.cache_state_bytes() > 0
    subject.model.blocks[0].extra_flag = True
    records = opt.record_decisions()
    with pytest.warns(UserWarning, match="extra_flag"):
        opt(**subject.kwargs)
    assert records[-1].path == "full"  # the identical call would otherwise be skipped from the old state


def test_a_float_argument_that_keeps_changing_is_named_and_bounded():
    model = Scaled().eval()
    opt = mcgraph.optimize(model, example_args=(_x(),))
    with pytest.warns(UserWarning, match=r"argument 'scale' .* changed \(1\.0 -> 1\.5\).*pass it as a tensor"):
        assert torch.equal(opt(_x(), 1.5), model(_x(), 1.5))
    with pytest.raises(mcgraph.CaptureError, match=r"argument 'scale' .* took 9 different values"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(2, MAX_SPECIALISATIONS + 2):
                opt(_x(), 1.0 + i / 2)
    assert opt.specialisations <= MAX_SPECIALISATIONS


def test_shape_specialisations_are_bounded():
    """Sizes are symbolic in a capture; a new rank is not: each needs its own capture, and they are bounded."""
    model = Scaled().eval()
    opt = mcgraph.optimize(model, mcgraph.NoCache(), example_args=(_x(),))
    with pytest.warns(UserWarning, match="keep changing shape"):
        for rank in range(4, 4 + MAX_SPECIALISATIONS):
            x = torch.randn(*([2] * (rank - 1)), 8)
            assert torch.equal(opt(x), model(x))
    assert opt.specialisations <= MAX_SPECIALISATIONS


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_give_an_independent_working_copy(how):
    subject = SUBJECTS["reference-untrained"]()
    config = MotionCacheConfig(threshold=0.05)
    opt = mcgraph.optimize(subject.model, config, example_kwargs=subject.kwargs)
    want = opt(**subject.kwargs)
    copied = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
    assert type(copied) is mcgraph.OptimizedModule and copied.mcgraph_config == config
    assert copied.cache_state_bytes() == 0  # a copy starts fresh
    assert torch.equal(copied(**subject.kwargs), want)  # same first call as the original's
    with torch.no_grad():
        next(copied.original_module.parameters()).add_(1.0)  # independent weights
    assert torch.equal(opt.reset_cache() or opt(**subject.kwargs), want)


def test_compiling_the_original_model_is_not_a_change():
    """torch.compile marks the module it compiles (`_is_torch_compile`); no capture reads that, so the optimised
    module keeps its capture and cache (a recapture would warn and reset the cache state)."""
    model = Scaled().eval()
    opt = mcgraph.optimize(model, example_args=(_x(),))
    compiled = torch.compile(model, backend="eager")
    compiled(_x())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(opt(_x()), model(_x()))
    assert opt.__dict__["_specs"].model_changes == 0
