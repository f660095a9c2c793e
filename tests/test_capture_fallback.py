"""Capture does not give up early: a failed dynamic-shape capture falls back to a static one on fresh tensors
(whatever the error type), and a final failure says whose it is (the model's own, or torch.export's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mcgraph


class IntOnly(nn.Module):
    """Refuses symbolic sizes with a TypeError, as models that check `isinstance(n, int)` do."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        if not isinstance(x.shape[1], int):
            raise TypeError("the token count must be a Python int")
        return self.proj(x)


class Picky(nn.Module):
    def forward(self, x):
        raise ValueError("Picky wants a different input")


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: runs eagerly, cannot be exported."""

    def forward(self, x):
        return x * 2 if float(x.sum()) > 0 else x


def test_a_type_error_under_symbolic_shapes_falls_back_to_a_static_capture():
    x = torch.randn(2, 5, 8)
    model = IntOnly().eval()
    with pytest.warns(UserWarning, match="dynamic capture of IntOnly failed .*TypeError"):
        opt = mcgraph.optimize(model, example_args=(x,))
    assert not opt.captured.dynamic
    assert torch.equal(opt(x), model(x))
    assert not getattr(x, "_has_dynamo_dim_marking", False), "the caller's tensor was left marked dynamic"


def test_the_model_own_error_is_named_as_such():
    with pytest.warns(UserWarning), pytest.raises(mcgraph.CaptureError, match="fails on the example inputs when run "
                                                                             "eagerly.*Picky wants"):
        mcgraph.optimize(Picky(), example_args=(torch.randn(2, 3),))


def test_an_export_limitation_is_named_as_such():
    with pytest.warns(UserWarning), pytest.raises(mcgraph.CaptureError, match="runs eagerly on the example inputs"):
        mcgraph.optimize(DataDependent(), example_args=(torch.randn(2, 3),))
