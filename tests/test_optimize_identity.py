"""Identity optimisation (caching disabled) is exact and a drop-in replacement, on every subject."""

from __future__ import annotations

import pytest
import torch

import mcgraph
from mcgraph.runtime.specialisations import Specialisation
from mcgraph.zoo.subjects import reference_subject

from .analysed import SUBJECT_LIST, analysed


@pytest.mark.parametrize("name", SUBJECT_LIST)
def test_identity_matches_eager(name):
    subject, captured, _ = analysed(name)
    opt = mcgraph.OptimizedModule(subject.model, mcgraph.NoCache(), Specialisation(captured, analysed(name)[2]))
    for seed in (1, 2):
        kwargs = subject.make_kwargs(seed=seed)
        with torch.no_grad():
            want = subject.output_index(subject.model(**kwargs))
            got = subject.output_index(opt(**kwargs))
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-6


def test_optimize_entry_point_and_drop_in_behaviour():
    s = reference_subject()
    opt = mcgraph.optimize(s.model, mcgraph.NoCache(), (), s.kwargs)
    # attribute access reaches the original model
    assert opt.config is s.model.config and opt.dtype == torch.float32 and opt.blocks is s.model.blocks
    # positional call works like the original
    args = tuple(s.kwargs.values())
    torch.testing.assert_close(opt(*args), s.model(*args), atol=1e-6, rtol=0)
    # another frame count reuses the symbolic graph: no new specialisation
    k12 = s.make_kwargs(frames=12, seed=3)
    torch.testing.assert_close(opt(**k12), s.model(**k12), atol=1e-6, rtol=0)
    assert opt.specialisations == 1
    # another batch size (batch 1 was specialised at capture) is captured again, never mis-run
    k2 = s.make_kwargs(batch=2, seed=4)
    torch.testing.assert_close(opt(**k2), s.model(**k2), atol=1e-6, rtol=0)
    assert opt.specialisations == 2
    # a wrong input is the model's own clear error, not a wrong answer
    bad = s.make_kwargs(seed=5)
    bad["timesteps"] = bad["timesteps"][:, :5]
    with pytest.raises(mcgraph.CaptureError, match="timesteps must be"):
        opt(**bad)


def test_weights_are_shared_with_the_original():
    s = reference_subject()
    opt = mcgraph.optimize(s.model, None, (), s.kwargs)
    with torch.no_grad():
        s.model.proj_out.bias.add_(1.0)
    torch.testing.assert_close(opt(**s.kwargs), s.model(**s.kwargs), atol=1e-6, rtol=0)


def test_config_errors_name_the_field():
    with pytest.raises(mcgraph.ConfigError, match="config must be a mcgraph CacheConfig"):
        mcgraph.optimize(torch.nn.Linear(2, 2), {"policy": "none"}, (torch.randn(2, 2),))
    cfg = mcgraph.CacheConfig.from_dict({"policy": "none"})
    assert isinstance(cfg, mcgraph.NoCache) and cfg.to_dict()["policy"] == "none"
    with pytest.raises(mcgraph.ConfigError, match="unknown policy 'bogus'"):
        mcgraph.CacheConfig.from_dict({"policy": "bogus"})
    with pytest.raises(mcgraph.ConfigError, match=r"unknown field\(s\) \['threshold'\]"):
        mcgraph.CacheConfig.from_dict({"policy": "none", "threshold": 1})


def test_identity_needs_no_structure():
    """NoCache runs the captured graph as is: a model the analyses cannot read (no attention, no timestep)
    still optimises and matches eager; a caching policy on it is refused by name."""
    from mcgraph.config import MotionCacheConfig
    from mcgraph.errors import McGraphError

    class NotADiT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, image):
            return self.head(torch.relu(self.conv(image)).mean((2, 3)))

    model = NotADiT().eval()
    x = torch.randn(2, 3, 8, 8)
    opt = mcgraph.optimize(model, mcgraph.NoCache(), (x,))
    assert opt.latest.structure is None  # no analysis ran
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x), atol=1e-6, rtol=0)
    with pytest.raises(McGraphError):
        mcgraph.optimize(model, MotionCacheConfig(), (x,))
