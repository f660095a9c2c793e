import pytest
import torch

from mcgraph.zoo.causal_dit import CausalVideoDiT, LabelEncoder


@pytest.fixture
def model(tiny_dit_config):
    torch.manual_seed(0)
    return CausalVideoDiT(tiny_dit_config).eval()


def inputs(cfg, batch=2, frames=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, frames, size, size, generator=g)
    t = torch.rand(batch, frames, generator=g) * 1000
    ctx = torch.randn(batch, 3, cfg.context_dim, generator=g)
    return x, t, ctx


@pytest.mark.parametrize("frames", [6, 5])  # 5: the last chunk is shorter than causal_block_size
def test_output_shape_equals_input(model, tiny_dit_config, frames):
    x, t, ctx = inputs(tiny_dit_config, frames=frames)
    with torch.no_grad():
        out = model(x, t, ctx)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("bad", [(2,), (2, 5), (1, 6), (2, 6, 1)])
def test_wrong_timesteps_shape_is_a_clear_error(model, tiny_dit_config, bad):
    x, _, ctx = inputs(tiny_dit_config)
    with pytest.raises(ValueError, match=r"timesteps must be \[batch, frames\] = \[2, 6\]"):
        model(x, torch.zeros(bad), ctx)


def test_block_causal(model, tiny_dit_config):
    """Changing a later chunk (its latent or its timestep) leaves earlier chunks' outputs unchanged."""
    cbs = tiny_dit_config.causal_block_size
    x, t, ctx = inputs(tiny_dit_config, frames=3 * cbs)
    with torch.no_grad():
        base = model(x, t, ctx)
        x2 = x.clone()
        x2[:, :, 2 * cbs :] += torch.randn_like(x2[:, :, 2 * cbs :])
        t2 = t.clone()
        t2[:, 2 * cbs :] = 3.0
        for xi, ti in ((x2, t), (x, t2)):
            out = model(xi, ti, ctx)
            assert torch.allclose(out[:, :, : 2 * cbs], base[:, :, : 2 * cbs], atol=1e-6)
            assert not torch.allclose(out[:, :, 2 * cbs :], base[:, :, 2 * cbs :], atol=1e-3)
        # ... while an earlier chunk does influence later ones
        x3 = x.clone()
        x3[:, :, :cbs] += 1.0
        assert not torch.allclose(model(x3, t, ctx)[:, :, cbs:], base[:, :, cbs:], atol=1e-3)


def test_per_frame_timesteps_modulate_their_own_frames(model, tiny_dit_config):
    x, t, ctx = inputs(tiny_dit_config, batch=1)
    with torch.no_grad():
        base = model(x, t, ctx)
        t2 = t.clone()
        t2[:, 0] += 100
        out = model(x, t2, ctx)
    assert not torch.allclose(out[:, :, 0], base[:, :, 0], atol=1e-4)


def test_label_encoder_shapes():
    enc = LabelEncoder(vocab_size=10, length=4, context_dim=8)
    assert enc(torch.zeros(3, 4, dtype=torch.long)).shape == (3, 4, 8)
