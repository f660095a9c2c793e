"""Fidelity and cost metrics for cached generation: PSNR and SSIM on videos (whole frame or per region),
moving/static region masks, relative error of latents, and FLOPs of real (cached) model calls.

Conventions
-----------
Videos are tensors or arrays laid out ``[frames, channels, H, W]`` or ``[batch, frames, channels, H, W]``
(what `mcgraph.zoo.latent.latent_to_video` returns, with the batch). Pixel values live in
``value_range`` = ``(lo, hi)``; the default ``(-1, 1)`` is the range the reference model's videos use, pass
``(0, 1)`` for [0, 1] videos. The peak signal (PSNR's MAX, SSIM's L) is ``hi - lo`` and SSIM is computed
after mapping both videos to [0, 1], so the two conventions give identical numbers for the same picture.

Every per-video figure is the mean over frames (and batch samples) of the per-frame figure, as video
caching papers report them (TeaCache, FlowCache, MotionCache evaluate PSNR/SSIM frame by frame against the
uncached video of the same seed).

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the ops actually dispatched, so a cached
call that runs the blocks on a token subset, or skips them, is counted with what it really computes. The
counter covers matmuls, convolutions and attention (the arithmetic that dominates a DiT); element-wise
work (norms, activations, the cache's own bookkeeping) is not counted, as in every FLOP table of the
caching papers. PyTorch's table lacks the CPU attention kernel, so `flop_counter` adds it (same formula
as the CUDA kernels: 4 * B * H * Lq * Lk * d, dense even under a mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FlopCount",
    "as_video",
    "count_flops",
    "dilate",
    "flop_counter",
    "masked_psnr",
    "masked_ssim",
    "motion_mask",
    "mse_per_frame",
    "psnr",
    "psnr_per_frame",
    "region_metrics",
    "relative_error",
    "sprite_motion_mask",
    "ssim",
    "ssim_map",
    "ssim_per_frame",
    "to_unit",
]

DEFAULT_RANGE = (-1.0, 1.0)


# --------------------------------------------------------------------------------------------- inputs
def as_video(x) -> torch.Tensor:
    """Array/tensor [F, C, H, W] or [B, F, C, H, W] -> float64 tensor [B, F, C, H, W] (a copy on the CPU)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 4:
        t = t[None]
    if t.dim() != 5:
        raise ValueError(f"video must be [frames, C, H, W] or [B, frames, C, H, W], got shape {tuple(t.shape)}")
    return t


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_video(a), as_video(b)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def to_unit(video: torch.Tensor, value_range=DEFAULT_RANGE) -> torch.Tensor:
    """Map values from `value_range` to [0, 1] (no clipping)."""
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
    return (video - lo) / (hi - lo)


def _mask(mask, video: torch.Tensor) -> torch.Tensor:
    """Mask [F, H, W] / [B, F, H, W] / [B, F, 1|C, H, W] -> bool [B, F, 1|C, H, W] broadcastable to the video."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to("cpu").bool()
    if m.dim() == 3:
        m = m[None, :, None]
    elif m.dim() == 4:
        m = m[:, :, None]
    if m.dim() != 5:
        raise ValueError(f"mask must be [F, H, W], [B, F, H, W] or [B, F, C, H, W], got shape {tuple(m.shape)}")
    b, f, _, h, w = video.shape
    if m.shape[1] != f or m.shape[-2:] != (h, w) or m.shape[0] not in (1, b):
        raise ValueError(f"mask shape {tuple(m.shape)} does not fit video shape {tuple(video.shape)}")
    return m


# ----------------------------------------------------------------------------------------------- PSNR
def mse_per_frame(a, b, value_range=DEFAULT_RANGE) -> torch.Tensor:
    """[B, F] mean squared error per frame, on the [0, 1] scale."""
    a, b = _pair(a, b)
    return ((to_unit(a, value_range) - to_unit(b, value_range)) ** 2).mean(dim=(2, 3, 4))


def _psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))


def psnr_per_frame(a, b, value_range=DEFAULT_RANGE) -> torch.Tensor:
    """[B, F] PSNR in dB per frame: 10 log10(MAX^2 / MSE) with MAX = hi - lo; inf for an identical frame."""
    return _psnr_from_mse(mse_per_frame(a, b, value_range))


def _mean_db(values: torch.Tensor, max_db: float) -> float:
    """Mean of per-frame dB values; identical frames count as `max_db`, unless every frame is identical (inf)."""
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return math.nan
    if torch.isinf(values).all():
        return math.inf
    return float(values.clamp(max=max_db).mean())


def psnr(a, b, value_range=DEFAULT_RANGE, max_db: float = 100.0) -> float:
    """Mean over frames of the per-frame PSNR (dB) of `a` against `b`.

    Identical videos give ``inf``. Within a video that differs somewhere, a frame that is identical counts as
    `max_db` (so one untouched frame does not make the mean infinite)."""
    return _mean_db(psnr_per_frame(a, b, value_range), max_db)


def masked_psnr(a, b, mask, value_range=DEFAULT_RANGE, max_db: float = 100.0) -> float:
    """PSNR restricted to the pixels where `mask` is true (all channels), per frame, averaged over the frames
    that have any masked pixel. NaN when the mask is empty everywhere."""
    a, b = _pair(a, b)
    m = _mask(mask, a).expand_as(a).to(torch.float64)
    err = (to_unit(a, value_range) - to_unit(b, value_range)) ** 2
    count = m.sum(dim=(2, 3, 4))
    mse = (err * m).sum(dim=(2, 3, 4)) / count.clamp_min(1)
    db = _psnr_from_mse(mse)
    db = torch.where(count > 0, db, torch.full_like(db, math.nan))
    return _mean_db(db, max_db)


# ----------------------------------------------------------------------------------------------- SSIM
def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_map(a, b, value_range=DEFAULT_RANGE, window: int = 11, sigma: float = 1.5, k1: float = 0.01,
             k2: float = 0.03) -> torch.Tensor:
    """Local SSIM [B, F, C, H - window + 1, W - window + 1] (Wang et al. 2004, Gaussian window 11 / sigma 1.5,
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 1 after mapping to [0, 1]; 'valid' filtering, as the reference
    MATLAB implementation). Frames smaller than the window use a window of the frame's size."""
    a, b = _pair(a, b)
    a, b = to_unit(a, value_range), to_unit(b, value_range)
    bsz, f, c, h, w = a.shape
    size = min(window, h, w)
    kernel = _gaussian_window(size, sigma)[None, None]  # [1, 1, k, k]
    x = a.reshape(bsz * f * c, 1, h, w)
    y = b.reshape(bsz * f * c, 1, h, w)

    def filt(z):
        return F.conv2d(z, kernel)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.reshape(bsz, f, c, s.shape[-2], s.shape[-1])


def ssim_per_frame(a, b, value_range=DEFAULT_RANGE, **kwargs) -> torch.Tensor:
    """[B, F] mean SSIM per frame (over channels and window positions)."""
    return ssim_map(a, b, value_range, **kwargs).mean(dim=(2, 3, 4))


def ssim(a, b, value_range=DEFAULT_RANGE, **kwargs) -> float:
    """Mean over frames of the per-frame SSIM of `a` against `b` (1 for identical videos)."""
    return float(ssim_per_frame(a, b, value_range, **kwargs).mean())


def masked_ssim(a, b, mask, value_range=DEFAULT_RANGE, window: int = 11, **kwargs) -> float:
    """SSIM averaged over the window positions whose centre pixel is in `mask` (per frame, then over the frames
    with any such position). NaN when no window centre is masked."""
    a, b = _pair(a, b)
    smap = ssim_map(a, b, value_range, window=window, **kwargs)  # [B, F, C, h', w']
    m = _mask(mask, a).expand(a.shape[0], -1, -1, -1, -1)
    h, w = a.shape[-2:]
    hh, ww = smap.shape[-2:]
    top, left = (h - hh) // 2, (w - ww) // 2
    m = m[..., top : top + hh, left : left + ww].expand_as(smap).to(torch.float64)
    count = m.sum(dim=(2, 3, 4))
    per_frame = (smap * m).sum(dim=(2, 3, 4)) / count.clamp_min(1)
    per_frame = per_frame[count > 0]
    return float(per_frame.mean()) if per_frame.numel() else math.nan


# ---------------------------------------------------------------------------------------------- masks
def dilate(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Binary dilation of [..., H, W] masks by a (2 radius + 1)^2 square."""
    if radius <= 0:
        return mask.bool()
    m = mask.bool()
    shape = m.shape
    x = m.reshape(-1, 1, *shape[-2:]).float()
    x = F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)
    return x.reshape(shape) > 0


def motion_mask(video, threshold: float = 0.1, value_range=DEFAULT_RANGE, radius: int = 1) -> torch.Tensor:
    """Moving-region mask [B, F, H, W] from frame differences of a (reference, e.g. uncached) video.

    A pixel is moving in frame f if it changes by more than `threshold` (on the [0, 1] scale, max over
    channels) from frame f-1 or to frame f+1 (so both where an object leaves and where it arrives count),
    dilated by `radius` pixels. The static region is the complement."""
    v = to_unit(as_video(video), value_range)
    if v.shape[1] < 2:
        return torch.zeros(v.shape[0], v.shape[1], *v.shape[-2:], dtype=torch.bool)
    d = (v[:, 1:] - v[:, :-1]).abs().amax(dim=2) > threshold  # [B, F-1, H, W]
    moving = torch.zeros(v.shape[0], v.shape[1], *v.shape[-2:], dtype=torch.bool)
    moving[:, 1:] |= d
    moving[:, :-1] |= d
    return dilate(moving, radius)


def sprite_motion_mask(sprite_masks, moving: list[bool] | None = None, radius: int = 0) -> torch.Tensor:
    """Moving-region mask [F, H, W] from a renderer's sprite masks.

    `sprite_masks` is [F, H, W] (all sprites, as `mcgraph.zoo.scenes.render` returns) or [S, F, H, W] (one per
    sprite, with `moving` naming which sprites move). A pixel is moving in frame f when a moving sprite
    covers it in frame f-1, f or f+1 (its trail and its arrival), dilated by `radius`."""
    m = torch.as_tensor(np.asarray(sprite_masks)).bool()
    if m.dim() == 4:
        keep = [i for i in range(m.shape[0]) if moving is None or moving[i]]
        m = m[keep].any(0) if keep else torch.zeros_like(m[0])
    if m.dim() != 3:
        raise ValueError(f"sprite masks must be [F, H, W] or [S, F, H, W], got {tuple(m.shape)}")
    out = m.clone()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    return dilate(out, radius)


# ------------------------------------------------------------------------------------ combined figures
def relative_error(x, ref) -> float:
    """||x - ref||_2 / ||ref||_2 over all elements (0 for identical)."""
    x = torch.as_tensor(x).detach().double().cpu()
    ref = torch.as_tensor(ref).detach().double().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def region_metrics(video, reference, moving=None, value_range=DEFAULT_RANGE) -> dict[str, float]:
    """PSNR and SSIM of `video` against `reference`: whole frame, moving and static regions.

    `moving` is a moving-region mask (default: `motion_mask(reference)`). NaN for an empty region."""
    if moving is None:
        moving = motion_mask(reference, value_range=value_range)
    moving = torch.as_tensor(moving).bool()
    return {
        "psnr": psnr(video, reference, value_range),
        "psnr_moving": masked_psnr(video, reference, moving, value_range),
        "psnr_static": masked_psnr(video, reference, ~moving, value_range),
        "ssim": ssim(video, reference, value_range),
        "ssim_moving": masked_ssim(video, reference, moving, value_range),
        "ssim_static": masked_ssim(video, reference, ~moving, value_range),
        "moving_fraction": float(moving.float().mean()),
    }


# ---------------------------------------------------------------------------------------------- FLOPs
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict:
    extra = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            extra[packet] = _cpu_attention_flops
    return extra


def flop_counter(display: bool = False, depth: int | None = None):
    """A `FlopCounterMode` that also counts PyTorch's CPU attention kernel (see module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    extra = {k: v for k, v in _extra_formulas().items() if k not in flop_registry}
    return FlopCounterMode(display=display, depth=depth, custom_mapping=extra)


class FlopCount:
    """Result of `count_flops`: total FLOPs, per-op breakdown and the call's return value."""

    def __init__(self, total: int, by_op: dict[str, int], result: Any):
        self.total = int(total)
        self.by_op = by_op
        self.result = result

    def __int__(self) -> int:
        return self.total

    def __repr__(self) -> str:
        return f"FlopCount(total={self.total:.4g}, by_op={self.by_op})"


def count_flops(fn: Callable, *args, **kwargs) -> FlopCount:
    """Run ``fn(*args, **kwargs)`` under `flop_counter` (without autograd) and return its FLOPs.

    Pass the cached model's call (or a whole sampling loop) as `fn` to count what it really computes."""
    counter = flop_counter()
    with torch.no_grad(), counter:
        result = fn(*args, **kwargs)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(counter.get_total_flops(), by_op, result)
