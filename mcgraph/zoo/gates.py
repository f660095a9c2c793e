"""Model-quality gates of the reference model ("Reference model v2"): numbers a checkpoint must reach.

For each seed, the scene ``random_scene(default_rng(seed))`` is rendered (the *real* clip, ``render(scene,
frames, seed=seed)``) and the model generates, in one batched sampler call per mode:

* **free**: a video from the scene's label alone (the null label is passed as the negative conditioning, used
  when guidance != 1);
* **continuation**: the rest of the real clip, given its first chunk (``causal_block_size`` frames) as history.

Per video (`VideoGates`), against the real clip of the same scene and seed, over the frames the model made
(continuation: the history frames are excluded; frame pairs start at the history -> generated transition):

``changing_fraction``  pixels whose value changes by > 0.1 (any channel) between consecutive frames; the gate
                       is on the ratio generated / real pooled over seeds (a clip whose sprites are all static
                       changes nothing, so a per-video ratio can be 0/0).
``outside_fraction``   values (pixels x channels, before any clamping) outside [-1.05, 1.05].
``background_error``   continuation: mean |generated - real| over static background (no sprite of the real clip
                       within `BACKGROUND_MARGIN` px in any frame, and no sprite-coloured pixel of the generated
                       frame within that margin). Free: the generated background is invented (the label fixes
                       the colour and pattern, the seed the phase and period), so it is compared by statistics:
                       mean over channels of |mean background colour generated - real|.
``background_flicker`` mean |frame - temporal median| over the same background pixels (the background is static:
                       0 in every real clip).
``count_match``        fraction of frames whose connected components of sprite-coloured pixels (per label colour,
                       >= `MIN_COMPONENT` px, colour within `COLOUR_TOL` of the PALETTE colour) number exactly the
                       label's sprites of that colour; ``count_match_windows`` is the same per sampler window
                       (frames each window generated) and the gate takes the worst window (sprites dissolving in
                       later windows was v1's failure).
``velocity_error``     mean |v_generated - v_reference| (pixels/frame, L2) of per-sprite centroid velocities.
                       Continuation: the reference is the real clip's centroid track (it has the bounces). Free:
                       the label's direction * speed, with a bounce (sign flip per axis) accepted whenever the
                       sprite is within one step of that border; the sign then follows the observed motion.
``label_colours``      fraction of the label's sprite colours present (a component of that colour) in at least
                       half of the frames.

`evaluate` returns a `GateReport`: the per-video numbers, per mode the mean and 95 % t-interval over seeds, and
the `Gate` decisions against the thresholds below (decided on the means; the CI is reported with them).

Batching: the sampler draws its noise from one generator over [B, ...] tensors, so sample i of a batched call
is not the same as a separate call seeded with seed i. What does carry over exactly (up to float rounding of
batched matmuls) is sample 0's first window in free mode: its initial noise is the first numbers of the
stream, and no prefix re-noising draws happen before the window ends. `tests/test_reference_gates.py` checks
that; everything after depends on the batch size, which is why gate numbers are quoted with their seed list.

The zoo never imports the compiler or the runtime: only `mcgraph.video` and `mcgraph.zoo`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mcgraph.video.sampler import SamplerConfig, plan_segments, sample
from mcgraph.zoo.latent import latent_to_video, video_to_latent
from mcgraph.zoo.scenes import DIRECTIONS, PALETTE, Scene, null_label, random_scene, render
from mcgraph.zoo.seed_stats import AGG_FIELDS, Stat, aggregate
from mcgraph.zoo.video_stats import (
    BACKGROUND_MARGIN, CHANGE_DELTA, COLOUR_TOL, MIN_COMPONENT, VALUE_LIMIT, Blob, as_frames, background_colour,
    background_error, background_flicker, background_masks, blobs, colour_masks, component_counts,
    connected_components, count_match, changing_fraction, dilate, label_colours_present, outside_fraction,
    same_label_colour_spread, sprite_blobs, sprite_tracks, texture_loss_error, velocity_error_vs_label,
    velocity_error_vs_tracks,
)

# The measurements (`video_stats`) and the statistics over seeds (`seed_stats`) moved out of this module; it
# still exports them (the names below it does not use itself included) so `mcgraph.zoo.gates.<name>` keeps
# working for tools/reference_gates.py, the tests and the benchmarks.
__all__ = [
    # this module
    "BACKGROUND_COLOUR_MAX", "BACKGROUND_ERROR_MAX", "BACKGROUND_FLICKER_MAX", "CHANGING_RATIO_RANGE",
    "COUNT_MATCH_MIN", "DEFAULT_FRAMES", "DEFAULT_SEEDS", "LABEL_COLOURS_MIN", "MODES", "OUTSIDE_MAX",
    "VELOCITY_ERROR_MAX", "Gate", "GateReport", "VideoGates", "default_sampler_config", "evaluate", "gates_for",
    "generate", "real_clips", "score_video",
    # seed_stats
    "AGG_FIELDS", "Stat", "aggregate",
    # video_stats
    "BACKGROUND_MARGIN", "CHANGE_DELTA", "COLOUR_TOL", "MIN_COMPONENT", "VALUE_LIMIT", "Blob", "background_colour",
    "background_error", "background_flicker", "background_masks", "blobs", "changing_fraction", "colour_masks",
    "component_counts", "connected_components", "count_match", "dilate", "label_colours_present",
    "outside_fraction", "same_label_colour_spread", "sprite_blobs", "sprite_tracks", "texture_loss_error",
    "velocity_error_vs_label", "velocity_error_vs_tracks",
    # scenes (were importable from here before the split)
    "DIRECTIONS", "PALETTE", "Scene",
]

# ---- run settings ----------------------------------------------------------------------------------------
DEFAULT_FRAMES = 28  # longer than one 16-frame window: the second window is where v1 broke down
DEFAULT_SEEDS = tuple(range(8))

# ---- thresholds (the issue's, plus the two background bounds set here) ----------------------------------
CHANGING_RATIO_RANGE = (0.5, 2.0)  # generated / real changing-pixel fraction, pooled over the seeds
OUTSIDE_MAX = 0.01  # < 1 % of values outside [-1.05, 1.05]
# Continuation background: the model is given the exact background (it is static) in the history, so the
# data allows 0. The yardstick is what losing the texture costs: replacing each real background by its own
# mean colour gives a mean abs error of 0.03-0.19 (mean 0.10, 5th percentile 0.04; 300 random scenes, see
# `texture_loss_error`). The bound is half the mean: a pass means the model keeps most of the pattern.
BACKGROUND_ERROR_MAX = 0.05
# Free generation background colour: two renderings of the same label differ only by the pattern's phase and
# period (and the blobs' layout); their mean background colours differ by 0.009 on average (mean over
# channels; 95th percentile 0.026, max 0.052; 300 labels, see `same_label_colour_spread`), while the nearest
# wrong background colour (another PALETTE entry) is >= 0.147 away. Bound 0.06: above anything the right colour
# gives, well below the nearest wrong one.
BACKGROUND_COLOUR_MAX = 0.06
# Background flicker (frame vs temporal median over background): 0 in real clips; the change threshold is 0.1,
# so a mean of 0.03 is far below what the changing-pixel count would see, and is still well clear of a static
# background. Reported for both modes, gated for both.
BACKGROUND_FLICKER_MAX = 0.03
# Count stability: real clips match the label's per-colour sprite count in every frame of seeds 0-7 (sprites of
# one colour touching, or one occluding another, are the rare misses). 0.8 in the worst window.
COUNT_MATCH_MIN = 0.8
VELOCITY_ERROR_MAX = 1.0  # pixels / frame, the issue's
LABEL_COLOURS_MIN = 1.0  # every label colour present in every video (mean over seeds must be 1)

MODES = ("free", "continuation")


def default_sampler_config(model) -> SamplerConfig:
    """The settings the gates generate with. Steps (50), guidance (1.0: no CFG, as `zoo.quality` and
    `tools/sample_strip.py` judge the model) and the prefix re-noising are `SamplerConfig()`'s defaults. Its
    other defaults (one window, block size 1, no chunk lag, shift 1) describe no causal model, so these come
    from the model and the demo (`mcgraph demo`): chunks of the model's `causal_block_size`, ``ar_step`` = one
    chunk, 16-frame windows overlapping by one chunk, shift 2 (the training shift)."""
    cbs = model.config.causal_block_size
    return SamplerConfig(shift=2.0, causal_block_size=cbs, ar_step=cbs, window_frames=16, overlap_frames=cbs)


# ---- per video -------------------------------------------------------------------------------------------

@dataclass
class VideoGates:
    seed: int
    mode: str  # "free", "continuation" or "real" (the real clip scored as if generated)
    sprites: int
    changing_fraction: float
    changing_fraction_real: float
    outside_fraction: float
    background_error: float  # continuation: vs real pixels; free: mean colour vs the real clip's
    background_flicker: float
    background_pixels: float  # fraction of pixels (frames >= start) the background numbers cover
    count_match: float
    count_match_windows: list[float]
    count_std: float
    velocity_error: float
    label_colours: float

    @property
    def changing_ratio(self) -> float:
        if self.changing_fraction_real > 0:
            return self.changing_fraction / self.changing_fraction_real
        return 1.0 if self.changing_fraction == 0 else math.inf


def score_video(generated, real, real_masks, scene: Scene, *, mode: str, seed: int = 0, start: int = 0,
                windows: list[tuple[int, int]] | None = None) -> VideoGates:
    """All per-video numbers for `generated` [frames, 3, H, W] (unclamped) vs the `real` clip and its sprite
    masks. `start`: first generated frame (continuation: the history length). `mode` "free" compares the
    background by colour statistics and motion with the label; anything else by pixels and the real track.
    `windows`: (start, end) frame ranges for the per-window count match (default: one, [start, frames))."""
    g, r = as_frames(generated), as_frames(real)
    frames = g.shape[0]
    pair_start = max(start - 1, 0)
    windows = windows or [(start, frames)]
    bg = background_masks(real_masks, g)
    bg_pixels = float(bg[start:].mean())
    if mode == "free":
        bg_real = background_masks(real_masks)
        bg_err = float(np.abs(background_colour(g, bg, start) - background_colour(r, bg_real, start)).mean())
        vel = velocity_error_vs_label(g, scene, start)
    else:
        bg_err = background_error(g, r, bg, start)
        vel = velocity_error_vs_tracks(g, r, scene, start)
    matches = count_match(g, scene)
    counts = component_counts(g, scene)
    return VideoGates(
        seed=seed, mode=mode, sprites=len(scene.sprites),
        changing_fraction=changing_fraction(g, pair_start),
        changing_fraction_real=changing_fraction(r, pair_start),
        outside_fraction=outside_fraction(g, start),
        background_error=bg_err,
        background_flicker=background_flicker(g, bg, start),
        background_pixels=bg_pixels,
        count_match=float(matches[start:].mean()),
        count_match_windows=[float(matches[a:b].mean()) for a, b in windows],
        count_std=float(counts[start:].std()),
        velocity_error=vel,
        label_colours=label_colours_present(g, scene, start),
    )


# ---- gates (aggregation over seeds: `seed_stats`) ---------------------------------------------------------

@dataclass
class Gate:
    name: str
    mode: str
    value: float
    lo: float
    hi: float
    threshold: str
    passed: bool


def _fmt_range(r):
    return f"in [{r[0]}, {r[1]}]"


def gates_for(mode: str, agg: dict[str, Any]) -> list[Gate]:
    """Pass/fail per gate for one mode's aggregate (decided on the mean over seeds; a missing number fails)."""

    def g(name, key, ok, threshold):
        s = agg[key]
        return Gate(name, mode, s.mean, s.lo, s.hi, threshold, bool(math.isfinite(s.mean) and ok(s.mean)))

    out = [
        g("changing-pixel ratio", "changing_ratio",
          lambda x: CHANGING_RATIO_RANGE[0] <= x <= CHANGING_RATIO_RANGE[1], _fmt_range(CHANGING_RATIO_RANGE)),
        g("values outside +-1.05", "outside_fraction", lambda x: x < OUTSIDE_MAX, f"< {OUTSIDE_MAX}"),
        g("background colour error" if mode == "free" else "background error", "background_error",
          lambda x: x < (BACKGROUND_COLOUR_MAX if mode == "free" else BACKGROUND_ERROR_MAX),
          f"< {BACKGROUND_COLOUR_MAX if mode == 'free' else BACKGROUND_ERROR_MAX}"),
        g("background flicker", "background_flicker", lambda x: x < BACKGROUND_FLICKER_MAX,
          f"< {BACKGROUND_FLICKER_MAX}"),
        g("count match (worst window)", "count_match_worst_window", lambda x: x >= COUNT_MATCH_MIN,
          f">= {COUNT_MATCH_MIN}"),
        g("velocity error px/frame", "velocity_error", lambda x: x < VELOCITY_ERROR_MAX, f"< {VELOCITY_ERROR_MAX}"),
        g("label colours present", "label_colours", lambda x: x >= LABEL_COLOURS_MIN, f">= {LABEL_COLOURS_MIN}"),
    ]
    # a sprite never tracked (velocity NaN) or no background left is a failure, not a skipped seed
    if agg["velocity_missing"]:
        out[5].passed = False
    if agg["background_missing"]:
        out[2].passed = False
    return out


@dataclass
class GateReport:
    seeds: list[int]
    frames: int
    settings: dict
    videos: list[VideoGates]
    aggregates: dict[str, dict[str, Any]]
    gates: list[Gate]
    wall_time_s: float
    samples: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # mode -> [B, frames, 3, H, W]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_json(self) -> dict:
        def stat(v):
            return asdict(v) if isinstance(v, Stat) else v

        return {
            "seeds": self.seeds, "frames": self.frames, "settings": self.settings,
            "wall_time_s": self.wall_time_s, "passed": self.passed,
            "gates": [asdict(g) for g in self.gates],
            "aggregates": {m: {k: stat(v) for k, v in a.items()} for m, a in self.aggregates.items()},
            "videos": [dict(asdict(v), changing_ratio=v.changing_ratio) for v in self.videos],
        }


def real_clips(seeds, frames: int = DEFAULT_FRAMES, size: int = 32):
    """(scenes, videos [B, frames, 3, H, W], masks [B, frames, H, W]) rendered from each seed."""
    scenes = [random_scene(np.random.default_rng(s), size) for s in seeds]
    rendered = [render(sc, frames=frames, size=size, seed=s) for sc, s in zip(scenes, seeds)]
    return scenes, np.stack([v for v, _ in rendered]), np.stack([m for _, m in rendered])


def generate(model, encoder, scenes, mode: str, frames: int, config: SamplerConfig, seed: int,
             real: torch.Tensor | None = None) -> torch.Tensor:
    """One batched sampler call for all scenes: videos [B, frames, 3, H, W] (not clamped). Continuation takes
    the first chunk of `real` [B, >= chunk, 3, H, W] as history; free generation is 32 x 32 unless `real` is
    given (then its size)."""
    b = len(scenes)
    labels = torch.from_numpy(np.stack([sc.label() for sc in scenes]))
    with torch.no_grad():
        ctx = encoder(labels)
        neg = encoder(torch.from_numpy(null_label(b)))
    c = model.config.in_channels
    size = 32 if real is None else real.shape[-1]
    hist = None
    if mode == "continuation":
        if real is None:
            raise ValueError("continuation needs the real clips (their first chunk is the history)")
        hist = video_to_latent(real)[:, :, : config.causal_block_size]
    shape = (b, c, frames, size // 2, size // 2)
    out = sample(model, shape, ctx, neg, config=config, seed=seed, history=hist)
    return latent_to_video(out.latent)


def evaluate(model, encoder, seeds=DEFAULT_SEEDS, frames: int = DEFAULT_FRAMES, config: SamplerConfig | None = None,
             modes=MODES, keep_samples: bool = False, **overrides) -> GateReport:
    """Generate (one batched call per mode, noise seeded with ``seeds[0]``) and score every seed's videos.

    `config` defaults to `default_sampler_config(model)`; keyword `overrides` (SamplerConfig field names, e.g.
    ``steps=8``) replace its fields. With `keep_samples`, `report.samples` holds the real and generated videos.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds")
    config = config or default_sampler_config(model)
    if overrides:
        config = replace(config, **overrides)
    t0 = time.perf_counter()
    scenes, real_np, masks = real_clips(seeds, frames)
    real = torch.from_numpy(real_np)
    cbs = config.causal_block_size
    videos, aggregates, gates, samples = [], {}, [], {"real": real}
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        gen = generate(model, encoder, scenes, mode, frames, config, seeds[0], real)
        start = cbs if mode == "continuation" else 0
        segs = plan_segments(frames, config.window_frames, config.overlap_frames, start)
        windows = [(s.start + s.prefix, s.end) for s in segs]
        mode_videos = [
            score_video(gen[i], real_np[i], masks[i], sc, mode=mode, seed=s, start=start, windows=windows)
            for i, (sc, s) in enumerate(zip(scenes, seeds))
        ]
        videos += mode_videos
        aggregates[mode] = aggregate(mode_videos)
        gates += gates_for(mode, aggregates[mode])
        samples[mode] = gen
    settings = dict(asdict(config), frames=frames, noise_seed=seeds[0])
    return GateReport(seeds, frames, settings, videos, aggregates, gates, time.perf_counter() - t0,
                      samples if keep_samples else {})

