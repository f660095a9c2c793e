"""The benchmark's metrics on inputs with known answers: PSNR, SSIM, region masks, relative error, FLOPs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcgraph.eval import metrics


def _video(seed=0, frames=4, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, size, size, generator=g) * 2 - 1  # [-1, 1]


# ----------------------------------------------------------------------------------------------- PSNR
def test_psnr_identical_is_inf_and_ssim_one():
    v = _video()
    assert metrics.psnr(v, v) == math.inf
    assert metrics.ssim(v, v) == pytest.approx(1.0, abs=1e-12)
    assert torch.isinf(metrics.psnr_per_frame(v, v)).all()


@pytest.mark.parametrize("value_range, offset", [((-1, 1), 0.1), ((0, 1), 0.05), ((0, 255), 12.75)])
def test_psnr_of_known_mse(value_range, offset):
    lo, hi = value_range
    v = torch.full((3, 3, 8, 8), (lo + hi) / 2, dtype=torch.float64)
    w = v + offset  # uniform error: MSE on the [0, 1] scale = (offset / (hi - lo))^2
    expected = 10 * math.log10((hi - lo) ** 2 / offset**2)
    assert metrics.psnr(w, v, value_range) == pytest.approx(expected, rel=1e-9)


def test_psnr_known_value_and_symmetry():
    v = _video(1)
    w = v.clone()
    w[0, 0, 0, 0] += 0.5  # one pixel of one frame: MSE_f0 = (0.25)^2 / (3*32*32) on the [0,1] scale
    mse = 0.25**2 / (3 * 32 * 32)
    per_frame = metrics.psnr_per_frame(w, v)
    assert per_frame[0, 0].item() == pytest.approx(-10 * math.log10(mse))
    assert torch.isinf(per_frame[0, 1:]).all()
    # identical frames count as 100 dB in the mean once any frame differs
    assert metrics.psnr(w, v) == pytest.approx((-10 * math.log10(mse) + 3 * 100) / 4)
    assert metrics.psnr(v, w) == metrics.psnr(w, v)


def test_range_conventions_agree():
    v, w = _video(2), _video(3)
    unit_v, unit_w = (v + 1) / 2, (w + 1) / 2
    assert metrics.psnr(v, w) == pytest.approx(metrics.psnr(unit_v, unit_w, (0, 1)))
    assert metrics.ssim(v, w) == pytest.approx(metrics.ssim(unit_v, unit_w, (0, 1)))


def test_batch_and_numpy_inputs():
    v, w = _video(4), _video(5)
    assert metrics.psnr(v.numpy(), w.numpy()) == pytest.approx(metrics.psnr(v, w))
    assert metrics.psnr(v[None], w[None]) == pytest.approx(metrics.psnr(v, w))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(v, w[:2])
    with pytest.raises(ValueError, match="frames"):
        metrics.psnr(v[0, 0], w[0, 0])


# ----------------------------------------------------------------------------------------------- SSIM
def test_ssim_decreases_with_noise():
    v = torch.from_numpy(np.kron(np.random.default_rng(0).random((4, 3, 8, 8)), np.ones((1, 1, 4, 4)))).float()
    v = v * 2 - 1
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(v.shape, generator=g)
    values = [metrics.ssim((v + s * noise).clamp(-1, 1), v) for s in (0.0, 0.02, 0.1, 0.3, 0.8)]
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(values)), values
    assert values[-1] < 0.5


def test_ssim_matches_independent_formula_on_constant_frames():
    # constant frames: variances and covariance vanish, SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    a, b = 0.3, 0.7  # on the [0, 1] scale
    x = torch.full((2, 1, 16, 16), a, dtype=torch.float64)
    y = torch.full((2, 1, 16, 16), b, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim(x, y, (0, 1)) == pytest.approx(expected, rel=1e-9)


def test_ssim_map_uses_gaussian_window_valid_region():
    v, w = _video(6, size=32), _video(7, size=32)
    smap = metrics.ssim_map(v, w)
    assert smap.shape == (1, 4, 3, 22, 22)  # 11x11 window, 'valid'
    assert (smap <= 1 + 1e-9).all()
    small = metrics.ssim_map(v[..., :8, :8], w[..., :8, :8])  # smaller than the window: window = frame
    assert small.shape[-2:] == (1, 1)


# ---------------------------------------------------------------------------------------------- masks
def _moving_square_video(frames=5, size=32):
    v = torch.full((frames, 3, size, size), -0.5)
    for f in range(frames):
        v[f, :, 10:16, 4 + 3 * f : 10 + 3 * f] = 0.9
    return v


def test_motion_mask_from_frame_differences():
    v = _moving_square_video()
    m = metrics.motion_mask(v, radius=0)[0]
    assert m.shape == (5, 32, 32)
    # rows outside the square never change
    assert not m[:, :10].any() and not m[:, 16:].any()
    # frame 0 -> 1: the square moved from x=4..9 to x=7..12 -> changed columns 4..6 (left) and 10..12 (arrived)
    assert m[0, 12, 4:7].all() and m[0, 12, 10:13].all()
    assert not m[0, 12, 7:10].any()  # covered in both frames, unchanged
    # frame 1 is also compared with frame 2 (x=10..15): columns 7..9 are left and 13..15 reached then
    assert m[1, 12, 4:16].all() and not m[1, 12, 16:].any()
    assert not m[0, 12, 13:].any()
    dil = metrics.motion_mask(v, radius=1)[0]
    assert dil[:, 9].any() and dil.sum() > m.sum() and (dil | ~m).all()
    assert not metrics.motion_mask(v[:1]).any()  # one frame: nothing moves


def test_sprite_motion_mask_and_region_psnr():
    from mcgraph.zoo import scenes

    scene = scenes.Scene(0, 1, (scenes.Sprite(0, 2, 6, 5.0, 5.0, 0, 2), scenes.Sprite(1, 3, 6, 20.0, 20.0, -1, 0)))
    video, masks = scenes.render(scene, frames=6)
    moving = metrics.sprite_motion_mask(masks)  # [F, H, W]: every sprite (static one included)
    assert moving.shape == (6, 32, 32) and moving[:, 22, 22].all()
    per_sprite = np.stack([scenes.render(scenes.Scene(0, 1, (s,)), frames=6)[1] for s in scene.sprites])
    only_moving = metrics.sprite_motion_mask(per_sprite, moving=[True, False])
    assert not only_moving[:, 22, 22].any() and only_moving[0, 7, 7]
    # error only inside the moving region: static PSNR is inf, moving PSNR finite and equal to the direct value
    v = torch.from_numpy(video)
    w = v.clone()
    m = torch.as_tensor(only_moving)
    w[m[:, None].expand_as(w)] += 0.2
    assert metrics.masked_psnr(w, v, ~m) == math.inf
    expected = 10 * math.log10(1 / 0.1**2)  # error 0.2 on [-1, 1] = 0.1 on [0, 1]
    assert metrics.masked_psnr(w, v, m) == pytest.approx(expected)
    assert metrics.psnr(w, v) > expected  # diluted by the error-free pixels
    assert math.isnan(metrics.masked_psnr(w, v, torch.zeros_like(m)))
    r = metrics.region_metrics(w, v, m)
    assert r["psnr_moving"] == pytest.approx(expected) and r["psnr_static"] == math.inf
    assert r["ssim_static"] > r["ssim_moving"]
    assert 0 < r["moving_fraction"] < 1


def test_relative_error():
    x = torch.tensor([3.0, 4.0])
    assert metrics.relative_error(x, x) == 0
    assert metrics.relative_error(x * 1.1, x) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- FLOPs
def test_flops_of_linear_layer_is_2mnk():
    m, k, n = 7, 33, 19
    layer = torch.nn.Linear(k, n)
    count = metrics.count_flops(layer, torch.randn(m, k))
    assert count.total == 2 * m * n * k
    assert count.result.shape == (m, n)
    assert int(count) == count.total


def test_flops_of_attention_on_cpu_are_counted():
    b, h, lq, lk, d = 2, 3, 10, 24, 8
    q, kv = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d)
    count = metrics.count_flops(F.scaled_dot_product_attention, q, kv, kv)
    assert count.total == 4 * b * h * lq * lk * d  # QK^T and PV, 2 FLOPs per multiply-add
    masked = metrics.count_flops(F.scaled_dot_product_attention, q, kv, kv,
                                 attn_mask=torch.ones(lq, lk, dtype=torch.bool))
    assert masked.total == count.total  # dense count under a mask


def test_flops_scale_with_token_count_in_a_dit_block():
    """The reference model's cost grows with the tokens it processes: counting a 2x longer video doubles the
    linear FLOPs (and quadruples attention), so counts of cached subset calls reflect the skipped work."""
    from mcgraph.zoo.causal_dit import CausalDiTConfig, CausalVideoDiT

    cfg = CausalDiTConfig(in_channels=4, out_channels=4, dim=24, num_heads=2, num_layers=2, ffn_dim=32,
                          context_dim=8, freq_dim=16, causal_block_size=2)
    torch.manual_seed(0)
    model = CausalVideoDiT(cfg).eval()

    def call(frames):
        return model(torch.randn(1, 4, frames, 8, 8), torch.rand(1, frames) * 1000, torch.randn(1, 3, 8))

    small, big = metrics.count_flops(call, 2), metrics.count_flops(call, 4)
    attn = "aten._scaled_dot_product_flash_attention_for_cpu"
    assert attn in small.by_op
    assert big.by_op["aten.addmm"] > 1.9 * small.by_op["aten.addmm"]
    # self-attention grows 4x (queries and keys double), cross-attention to the fixed context 2x
    assert 2 * small.by_op[attn] < big.by_op[attn] <= 4 * small.by_op[attn]
