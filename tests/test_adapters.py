"""The unmodified diffusers SkyReels-V2 DF transformer (tiny, random weights, offline) under our sampler."""

import pytest
import torch

pytest.importorskip("diffusers")

from mcgraph.video.adapters import (
    SkyReelsV2Adapter,
    build_tiny_skyreels_v2,
    tiny_skyreels_v2_config,
)
from mcgraph.video.sampler import SamplerConfig, expected_rows, sample

CBS = tiny_skyreels_v2_config()["num_frame_per_block"]


@pytest.fixture(scope="module")
def transformer():
    return build_tiny_skyreels_v2(seed=0)


def text(seed, batch=1):
    return torch.randn(batch, 5, tiny_skyreels_v2_config()["text_dim"], generator=torch.Generator().manual_seed(seed))


def test_tiny_model_is_deterministic_per_seed():
    a, b = build_tiny_skyreels_v2(seed=0), build_tiny_skyreels_v2(seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert sum(p.numel() for p in a.parameters()) < 100_000


def test_sampler_drives_diffusers_skyreels_v2(transformer):
    adapter = SkyReelsV2Adapter(transformer)
    cfg = SamplerConfig(steps=3, causal_block_size=CBS, ar_step=1, guidance_scale=5.0, shift=3.0,
                        window_frames=6, overlap_frames=2)
    shape = (1, 4, 10, 8, 8)
    r1 = sample(adapter, shape, text(1), text(2), config=cfg, seed=3)
    r2 = sample(adapter, shape, text(1), text(2), config=cfg, seed=3)
    assert r1.latent.shape == shape and torch.isfinite(r1.latent).all()
    assert torch.equal(r1.latent, r2.latent)
    assert r1.model_calls == 2 * r1.rows == 2 * expected_rows(10, cfg)
    assert len(r1.segments) == 2


def test_adapter_makes_the_pipelines_per_frame_call(transformer):
    """Uniform per-frame timesteps through the diffusion-forcing path equal diffusers' scalar-timestep path."""
    adapter = SkyReelsV2Adapter(transformer)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    with torch.no_grad():
        ours = adapter(x, torch.full((2, 4), 700.0), text(1, batch=2))
        plain = transformer(hidden_states=x, timestep=torch.full((2,), 700.0), encoder_hidden_states=text(1, batch=2),
                            return_dict=False)[0]
    assert ours.shape == x.shape
    assert torch.allclose(ours, plain, atol=1e-5)


def test_adapter_per_frame_timesteps_and_block_causality(transformer):
    adapter = SkyReelsV2Adapter(transformer)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3 * CBS, 8, 8, generator=g)
    t = torch.tensor([[900.0] * CBS + [500.0] * CBS + [100.0] * CBS])
    with torch.no_grad():
        base = adapter(x, t, text(1))
        t2 = t.clone()
        t2[:, 2 * CBS :] = 999.0
        x2 = x.clone()
        x2[:, :, 2 * CBS :] = 0
        for xi, ti in ((x, t2), (x2, t)):
            out = adapter(xi, ti, text(1))
            assert torch.allclose(out[:, :, : 2 * CBS], base[:, :, : 2 * CBS], atol=1e-6)
            assert not torch.allclose(out[:, :, 2 * CBS :], base[:, :, 2 * CBS :], atol=1e-4)


def test_adapter_errors_and_hooks(transformer):
    adapter = SkyReelsV2Adapter(transformer)
    x = torch.randn(1, 4, 2 * CBS, 8, 8)
    with pytest.raises(ValueError, match="timesteps must be"):
        adapter(x, torch.zeros(1), text(1))
    with pytest.raises(ValueError, match="num_frame_per_block"):
        adapter(torch.randn(1, 4, 2 * CBS + 1, 8, 8), torch.zeros(1, 2 * CBS + 1), text(1))
    with adapter.cache_context("cond"):  # forwarded to diffusers' own cache context
        pass
    adapter.reset_cache()
    assert adapter.causal_block_size == CBS
