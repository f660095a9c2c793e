"""`mcgraph demo`'s library: generate a sprite video with the bundled reference model and the
diffusion-forcing sampler (`run_demo`).

With a cache policy (`cache=` "none", "teacache", "flowcache" or "motioncache") the same video (same seed,
same noise) is generated twice in this process, uncached (the original model, eager) and through
`mcgraph.optimize` with that policy (`mcgraph.bench.demo_compare`); the result reports both wall times, the
PSNR of the cached video against the uncached one and the fraction of tokens the cache computed, and heat
maps of the recomputed tokens are written next to the frames (`mcgraph.eval.heatmap`).

With `runtime` "compile" (``torch.compile(opt, fullgraph=True, dynamic=False)``) or "onnx" (one
`mcgraph.export.onnx` file per window shape, run by ONNX Runtime) the cached video is made by that runtime,
with static capacity buckets (`mcgraph.runtime.step_graph.DEFAULT_GRAPH_BUCKETS` unless `buckets` is given); the
eager model with the same buckets runs too, as the reference the runtime must match (same decisions,
latents equal to float tolerance). Compile / export time is reported separately from the generation times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcgraph.bench.demo_compare import CacheComparison, compare_with_cache
from mcgraph.bench.settings import COMPILE_BACKENDS, RUNTIMES, SettingsError, make_cache_config
from mcgraph.eval.video_io import save_gif, save_strip
from mcgraph.video.sampler import SamplerConfig, sample
from mcgraph.zoo import scenes
from mcgraph.zoo.latent import latent_to_video
from mcgraph.zoo.weights import BUNDLED_WEIGHTS, load_reference, read_metadata

__all__ = ["DemoResult", "parse_label", "run_demo"]


@dataclass
class DemoResult:
    gif: Path
    strip: Path
    video: torch.Tensor  # [frames, 3, H, W] in [-1, 1]
    label: np.ndarray
    description: str
    frames: int
    segments: int
    rows: int
    model_calls: int
    wall_time_s: float
    cache: CacheComparison | None = None  # set when a cache policy was given


def parse_label(text: str) -> np.ndarray:
    """Comma/space separated label ids -> [LABEL_LENGTH] int64 (padded with 0, the "no label" id)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise SettingsError(f"label must be integers separated by commas, got {text!r}") from None
    if not ids or len(ids) > scenes.LABEL_LENGTH:
        raise SettingsError(f"label must have 1 to {scenes.LABEL_LENGTH} ids, got {len(ids)}")
    bad = [i for i in ids if not 0 <= i < scenes.LABEL_VOCAB_SIZE]
    if bad:
        raise SettingsError(f"label ids must be in [0, {scenes.LABEL_VOCAB_SIZE}), got {bad}")
    out = np.zeros(scenes.LABEL_LENGTH, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def _sampler_config(cbs: int, **schedule) -> SamplerConfig:
    try:
        return SamplerConfig(causal_block_size=cbs, **schedule)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def _cache_config(cache, threshold, motion_source, buckets, runtime, compile_backend, steps, shift):
    """The cache config of the demo's settings (None without a cache); SettingsError for invalid ones."""
    from mcgraph.bench.runtimes import graph_config

    if runtime not in RUNTIMES:
        raise SettingsError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime != "eager" and cache in (None, "none"):
        raise SettingsError(f"runtime {runtime!r} runs the cached model: it needs a caching policy "
                            f"(cache teacache, flowcache or motioncache)")
    if compile_backend is not None and runtime != "compile":
        raise SettingsError("compile_backend applies to runtime 'compile' only")
    if compile_backend is not None and compile_backend not in COMPILE_BACKENDS:
        raise SettingsError(f"compile_backend must be one of {', '.join(COMPILE_BACKENDS)}, "
                            f"got {compile_backend!r}")
    if cache is None:
        if threshold is not None or motion_source is not None or buckets is not None:
            raise SettingsError("threshold, motion_source and buckets need a cache policy")
        return None
    config = make_cache_config(cache, steps=steps, shift=shift, threshold=threshold, motion_source=motion_source,
                               capacity_buckets=buckets)
    return graph_config(config) if runtime != "eager" else config


def _scene(label, seed: int, frames: int, size: int):
    """(label ids, description, rendering of the scene or None): from `label`, else a random scene."""
    if label is None:
        scene = scenes.random_scene(np.random.default_rng(seed), size=size)
        ids, description = scene.label(), scene.describe()
        reference, _ = scenes.render(scene, frames=frames, size=size, seed=seed)
        return ids, description, reference
    ids = parse_label(" ".join(str(int(i)) for i in label))
    return ids, "label " + ",".join(str(int(i)) for i in ids), None


def run_demo(
    out_dir: str | Path = "out",
    *,
    seed: int = 0,
    label: Sequence[int] | np.ndarray | None = None,
    frames: int = 28,
    window_frames: int = 16,
    overlap_frames: int = 4,
    causal_block_size: int | None = None,
    ar_step: int = 4,
    steps: int = 50,
    guidance_scale: float = 4.0,
    shift: float = 2.0,
    addnoise_condition: float = 20.0,
    weights: str | Path | None = None,
    progress: bool = True,
    gif_scale: int = 4,
    fps: float = 8.0,
    size: int = 32,
    cache: str | None = None,
    threshold: float | None = None,
    motion_source: str | None = None,
    heatmap: bool = True,
    log: Callable[[str], None] = print,
    runtime: str = "eager",
    compile_backend: str | None = None,
    buckets: Sequence[float] | None = None,
) -> DemoResult:
    """Generate one video and write ``demo.gif`` and ``demo_strip.png`` into `out_dir` (see the module docstring).

    The scene comes from `label` (ids) or, without one, from ``scenes.random_scene`` seeded with `seed`; in
    that case the strip's last row is a rendering of the same scene. `seed` also seeds the sampler's noise.
    `causal_block_size` defaults to the model's. Raises `mcgraph.zoo.weights.WeightsError` when the weights
    are missing or invalid and `SettingsError` (a ValueError) for invalid settings.

    `cache` (one of `mcgraph.bench.settings.POLICIES`; `threshold`, `motion_source` and `buckets` override the
    policy's defaults, see `make_cache_config`): the video is also generated uncached, and `result.cache` (a
    `CacheComparison`) compares the two; the GIF shows the cached video, the strip the cached then the
    uncached row; with `heatmap`, ``demo_heatmap.gif`` and ``demo_heatmap.png`` are written too. `runtime`
    ("eager", "compile", "onnx"; the last two need a caching policy and default to `DEFAULT_GRAPH_BUCKETS`)
    picks what makes the cached video, `compile_backend` (default "inductor") torch.compile's backend; ONNX
    files are written into `out_dir` (``demo_cached_<frames>f.onnx``).
    """
    schedule = dict(steps=steps, shift=shift, guidance_scale=guidance_scale, ar_step=ar_step,
                    window_frames=window_frames, overlap_frames=overlap_frames, addnoise_condition=addnoise_condition)
    _sampler_config(causal_block_size or 1, **schedule)  # fail fast, before the (slower) model load
    cache_config = _cache_config(cache, threshold, motion_source, buckets, runtime, compile_backend, steps, shift)
    if frames < 1:
        raise SettingsError(f"frames must be >= 1, got {frames}")
    if size < 2 or size % 2:
        raise SettingsError(f"size must be an even number >= 2, got {size}")
    ids, description, reference = _scene(label, seed, frames, size)

    path = Path(weights) if weights is not None else BUNDLED_WEIGHTS
    model, encoder = load_reference(path)
    info = read_metadata(path).get("info", {})
    cfg = model.config
    config = _sampler_config(causal_block_size or cfg.causal_block_size, **schedule)
    log(f"model: {path}" + (f", trained {info['step']} steps" if "step" in info else ""))
    log(f"scene: {description}")

    with torch.no_grad():
        cond = encoder(torch.from_numpy(ids)[None])
        uncond = encoder(torch.from_numpy(scenes.null_label(1)))
    shape = (1, cfg.in_channels, frames, size // 2, size // 2)
    out_dir = Path(out_dir)
    comparison = None
    if cache_config is None:
        result = sample(model, shape, cond, uncond, config=config, seed=seed, progress=progress)
        video = latent_to_video(result.latent)[0].clamp(-1, 1)
    else:
        result, video, comparison = compare_with_cache(
            model, cache_config, shape, cond, uncond, config, seed, progress, out_dir if heatmap else None, log,
            runtime=runtime, compile_backend=compile_backend or "inductor", export_dir=out_dir)

    gif = save_gif(video, out_dir / "demo.gif", scale=gif_scale, fps=fps)
    rows = [video] + ([comparison.uncached_video] if comparison is not None else [])
    if reference is not None:
        rows.append(torch.from_numpy(reference))
    strip = save_strip(rows, out_dir / "demo_strip.png", scale=2)
    return DemoResult(
        gif=gif, strip=strip, video=video, label=ids, description=description, frames=frames,
        segments=len(result.segments), rows=result.rows, model_calls=result.model_calls,
        wall_time_s=result.wall_time_s if comparison is None else comparison.cached_wall_time_s, cache=comparison,
    )
