"""A model-agnostic diffusion-forcing sampler (SkyReels-V2 DF style) with rectified-flow Euler steps.

The model is any callable ``model(latent [B, C, F, H, W], timesteps [B, F] float, conditioning) ->
velocity [B, C, F, H, W]`` following `mcgraph.video.flow_matching` (v = noise - x0, t = 1000 * sigma).

Per row of the `mcgraph.video.schedule` matrix every frame of the window is fed to the model with its own
timestep: not-started chunks are pure noise at t = 1000, finished chunks are clean at t = 0, and the
clean prefix (overlap history) of a continuation window is re-noised slightly (``addnoise_condition``,
noise factor 0.001 * a at t = a) as SkyReels-V2 does. Only frames whose chunk advanced in that row take
the Euler step ``x += (sigma_next - sigma) * v``. With a negative conditioning and ``guidance_scale != 1``
each row makes a cond call and then an uncond call and uses ``v = v_u + g * (v_c - v_u)``.

Long videos are generated in windows of ``window_frames``: window k > 0 starts with the last
``overlap_frames`` frames of what is already generated as its clean prefix and generates the rest; the
last window may be shorter. Its prefix is kept as is in the output (only the new frames are appended).

Cache protocol (duck-typed, so caches plug in without the sampler knowing them): if the model has a
``cache_context(name)`` context manager, cond calls run inside ``cache_context("cond")`` and uncond calls
inside ``cache_context("uncond")``; if it has ``reset_cache()``, it is called at the start of every
window, because a new window is a new generation as far as any cached activation is concerned.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from mcgraph.video.hooks import model_hooks
from mcgraph.video.flow_matching import NUM_TRAIN_TIMESTEPS, sigma_schedule
from mcgraph.video.schedule import diffusion_forcing_schedule, num_rows

__all__ = ["RowInfo", "SampleResult", "SamplerConfig", "Segment", "expected_rows", "plan_segments", "sample"]


@dataclass(frozen=True)
class Segment:
    """One window of a (possibly long) video: frames [start, start + length), the first `prefix` given."""

    index: int
    start: int
    length: int
    prefix: int

    @property
    def end(self) -> int:
        return self.start + self.length


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class SamplerConfig:
    """Validated settings of `sample`. Every field can also be passed to `sample` as a keyword."""

    steps: int = 50  # Euler steps per chunk
    shift: float = 1.0  # SD3 / Wan timestep shift (> 1 spends more steps at high noise)
    guidance_scale: float = 1.0
    causal_block_size: int = 1  # frames per chunk
    ar_step: int = 0  # rows by which chunk i lags chunk i-1 (0: all chunks in sync)
    window_frames: int | None = None  # frames per window (None: the whole video in one window)
    overlap_frames: int = 0  # clean history frames carried into the next window (whole chunks)
    addnoise_condition: float = 20.0  # re-noise of the prefix: factor 0.001 * a, timestep a (0: off)

    def __post_init__(self):
        object.__setattr__(self, "steps", _check_int(self.steps, "steps", 1))
        object.__setattr__(self, "causal_block_size", _check_int(self.causal_block_size, "causal_block_size", 1))
        object.__setattr__(self, "ar_step", _check_int(self.ar_step, "ar_step", 0))
        object.__setattr__(self, "overlap_frames", _check_int(self.overlap_frames, "overlap_frames", 0))
        if self.window_frames is not None:
            object.__setattr__(self, "window_frames", _check_int(self.window_frames, "window_frames", 1))
        for name in ("shift", "guidance_scale", "addnoise_condition"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if not 0 <= self.addnoise_condition < NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"addnoise_condition must be in [0, {NUM_TRAIN_TIMESTEPS}), got {self.addnoise_condition}")
        if self.overlap_frames % self.causal_block_size:
            raise ValueError(
                f"overlap_frames={self.overlap_frames} must be a multiple of "
                f"causal_block_size={self.causal_block_size} (the prefix is whole chunks)"
            )
        if self.window_frames is not None and self.overlap_frames >= self.window_frames:
            raise ValueError(
                f"overlap_frames={self.overlap_frames} must be smaller than window_frames={self.window_frames}"
            )


def plan_segments(num_frames: int, window_frames: int | None, overlap_frames: int,
                  history_frames: int = 0) -> list[Segment]:
    """Windows covering `num_frames`: [0, W), then each next one starts `overlap_frames` before the end.
    With `history_frames` given frames, the first window starts with them as its clean prefix."""
    num_frames = _check_int(num_frames, "num_frames", 1)
    window = num_frames if window_frames is None else min(window_frames, num_frames)
    segments = [Segment(0, 0, window, history_frames)]
    while segments[-1].end < num_frames:
        start = segments[-1].end - overlap_frames
        end = min(start + window, num_frames)
        segments.append(Segment(len(segments), start, end - start, overlap_frames))
    return segments


@dataclass
class RowInfo:
    """Handed to ``on_row`` after each row's update. Tensors are the sampler's own: do not modify them."""

    segment: Segment
    row: int  # row within the segment
    rows: int  # rows in the segment
    latent: torch.Tensor  # [B, C, window frames, H, W] after this row's update
    timesteps: torch.Tensor  # [B, window frames] fed to the model in this row
    update_mask: torch.Tensor  # [window frames] bool: frames that took an Euler step
    sigma: torch.Tensor  # [window frames] float64: noise level of each frame after this row
    model_calls: int  # calls so far (whole run)


@dataclass
class SampleResult:
    latent: torch.Tensor  # [B, C, F, H, W]
    model_calls: int
    wall_time_s: float
    rows: int  # schedule rows over all segments
    segments: list[Segment]


def _resolve_config(config: SamplerConfig | None, overrides: dict) -> SamplerConfig:
    """`config` (default `SamplerConfig()`) with the keyword overrides applied; unknown keywords are an error."""
    config = config or SamplerConfig()
    unknown = set(overrides) - {f.name for f in fields(SamplerConfig)}
    if unknown:
        raise TypeError(f"sample() got unexpected keyword arguments {sorted(unknown)}")
    return replace(config, **overrides) if overrides else config


def _check_shape(shape) -> tuple[int, int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5 or min(shape) < 1:
        raise ValueError(f"shape must be [batch, channels, frames, height, width] with positive sizes, got {shape}")
    return shape


def _history_frames(history: torch.Tensor | None, shape: tuple[int, ...], config: SamplerConfig) -> int:
    """Frames of the clean `history` (0 without one), checked against the latent shape and the first window:
    it must be whole chunks (the schedule treats it as finished chunks) and leave the window something to make."""
    if history is None:
        return 0
    history_frames = history.shape[2]
    if (history.dim() != 5 or history.shape[0] != shape[0] or history.shape[1] != shape[1]
            or tuple(history.shape[3:]) != tuple(shape[3:])):
        raise ValueError(f"history must be [B, C, P, H, W] matching shape {tuple(shape)}, got {tuple(history.shape)}")
    num_frames = shape[2]
    window = num_frames if config.window_frames is None else min(config.window_frames, num_frames)
    if history_frames % config.causal_block_size or history_frames >= window:
        raise ValueError(f"history of {history_frames} frames must be whole chunks of causal_block_size="
                         f"{config.causal_block_size} and shorter than the window ({window})")
    return history_frames


def _progress_bar(progress: bool | Any, total_rows: int) -> tuple[Any, bool]:
    """(bar or None, whether `sample` created it and so must close it)."""
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total_rows, desc="denoise", unit="row", leave=False), True
    return (progress or None), False


@dataclass
class _Run:
    """What stays fixed over one `sample` call, plus its model-call counter (RowInfo reports the running total)."""

    model: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    conditioning: Any
    negative_conditioning: Any
    config: SamplerConfig
    shape: tuple[int, int, int, int, int]
    generator: torch.Generator
    device: torch.device
    dtype: torch.dtype
    context: Callable[[str], Any]
    sigmas: torch.Tensor  # float64 [steps + 1], 1 -> 0
    bar: Any
    on_row: Callable[[RowInfo], None] | None
    num_segments: int
    calls: int = 0

    @property
    def use_cfg(self) -> bool:
        return self.negative_conditioning is not None and self.config.guidance_scale != 1.0

    def noise(self, frames: int) -> torch.Tensor:
        """[B, C, frames, H, W] standard normal noise, drawn on the CPU (same numbers on every device)."""
        b, c, _, h, w = self.shape
        return torch.randn((b, c, frames, h, w), generator=self.generator, dtype=self.dtype).to(self.device)

    def velocity(self, model_in: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The model's velocity: the cond call, and with CFG the uncond call combined as v_u + g * (v_c - v_u)."""
        with self.context("cond"):
            v = self.model(model_in, timesteps, self.conditioning)
        self.calls += 1
        if self.use_cfg:
            with self.context("uncond"):
                v_u = self.model(model_in, timesteps, self.negative_conditioning)
            self.calls += 1
            v = v_u + self.config.guidance_scale * (v - v_u)
        return v


def _model_input(run: _Run, x: torch.Tensor, t: torch.Tensor, prefix: int) -> torch.Tensor:
    """What the model sees this row. The clean history is shown slightly noised and at a matching timestep
    (SkyReels-V2 addnoise_condition); `t` is updated in place and the stored prefix in `x` never changes."""
    if not prefix:
        return x
    a = run.config.addnoise_condition
    t[:prefix] = a
    if a <= 0:
        return x
    noise_factor = a / NUM_TRAIN_TIMESTEPS
    model_in = x.clone()
    eps = run.noise(prefix)
    model_in[:, :, :prefix] = x[:, :, :prefix] * (1 - noise_factor) + eps * noise_factor
    return model_in


def _window(run: _Run, seg: Segment, sched, out: torch.Tensor | None) -> torch.Tensor:
    """Denoise one window: fresh noise with the segment's clean prefix copied in from `out`, then every row of
    its schedule. Returns the window's latent [B, C, seg.length, H, W] (prefix included)."""
    frames, prefix = seg.length, seg.prefix
    x = run.noise(frames)
    if prefix:
        x[:, :, :prefix] = out[:, :, seg.start : seg.start + prefix]
    in_idx = sched.frame_input_index()  # [rows, frames]
    out_idx = sched.frame_step_index()
    upd = sched.frame_update_mask()
    if run.bar is not None and hasattr(run.bar, "set_postfix_str"):
        run.bar.set_postfix_str(f"window {seg.index + 1}/{run.num_segments}")
    for r in range(sched.num_rows):
        sig_in, sig_out = run.sigmas[in_idx[r]], run.sigmas[out_idx[r]]
        t = (NUM_TRAIN_TIMESTEPS * sig_in).to(torch.float32)
        model_in = _model_input(run, x, t, prefix)
        timesteps = t.to(run.device).expand(run.shape[0], frames)
        v = run.velocity(model_in, timesteps)
        if v.shape != x.shape:
            raise ValueError(f"model returned shape {tuple(v.shape)} for input {tuple(x.shape)}")
        # Euler step only for the frames whose chunk advanced in this row
        mask = upd[r].to(run.device)
        dsig = (sig_out - sig_in).to(device=run.device, dtype=run.dtype)
        x = torch.where(mask.view(1, 1, frames, 1, 1), x + dsig.view(1, 1, frames, 1, 1) * v.to(run.dtype), x)
        if run.bar is not None:
            run.bar.update(1)
        if run.on_row is not None:
            run.on_row(RowInfo(seg, r, sched.num_rows, x, timesteps, mask, sig_out, run.calls))
    return x


def sample(
    model: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    shape: tuple[int, int, int, int, int] | torch.Size,
    conditioning: Any,
    negative_conditioning: Any = None,
    *,
    config: SamplerConfig | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | Any = False,
    on_row: Callable[[RowInfo], None] | None = None,
    history: torch.Tensor | None = None,
    **overrides,
) -> SampleResult:
    """Generate a latent of `shape` [B, C, F, H, W] by diffusion forcing.

    Settings come from `config` (a `SamplerConfig`) updated by keyword `overrides` (its field names, e.g.
    ``steps=8, guidance_scale=4``). Noise is drawn on the CPU from `generator`, or from a fresh generator
    seeded with `seed`, so a seed gives the same result on every device. `progress` is True for a tqdm
    bar over rows (on stderr) or an existing tqdm-like object with ``update(n)``. `history` [B, C, P, H, W]:
    clean frames to continue from (whole chunks); they are the first window's prefix and the output's start.
    """
    config = _resolve_config(config, overrides)
    shape = _check_shape(shape)
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    device = torch.device(device) if device is not None else torch.device("cpu")
    context, reset = model_hooks(model)
    history_frames = _history_frames(history, shape, config)
    segments = plan_segments(shape[2], config.window_frames, config.overlap_frames, history_frames)
    schedules = [
        diffusion_forcing_schedule(s.length, config.causal_block_size, config.ar_step, config.steps, s.prefix)
        for s in segments
    ]
    total_rows = sum(s.num_rows for s in schedules)
    bar, own_bar = _progress_bar(progress, total_rows)
    run = _Run(model, conditioning, negative_conditioning, config, shape, generator, device, dtype, context,
               sigma_schedule(config.steps, config.shift), bar, on_row, len(segments))

    out: torch.Tensor | None = None if history is None else history.to(device=device, dtype=dtype)
    start_time = time.perf_counter()
    try:
        with torch.no_grad():
            for seg, sched in zip(segments, schedules):
                reset()  # a new window is a new generation for any cached activation
                x = _window(run, seg, sched, out)
                # the window's prefix is already in `out`: only its new frames are appended
                out = x if out is None else torch.cat([out, x[:, :, seg.prefix :]], dim=2)
    finally:
        if own_bar:
            bar.close()
    return SampleResult(
        latent=out,
        model_calls=run.calls,
        wall_time_s=time.perf_counter() - start_time,
        rows=total_rows,
        segments=segments,
    )


def expected_rows(num_frames: int, config: SamplerConfig) -> int:
    """Schedule rows `sample` runs for `num_frames` frames (model calls = rows, or 2 x rows with CFG)."""
    total = 0
    for seg in plan_segments(num_frames, config.window_frames, config.overlap_frames):
        chunks = -(-seg.length // config.causal_block_size) - seg.prefix // config.causal_block_size
        total += num_rows(chunks, config.ar_step, config.steps)
    return total
