"""`mcgraph demo`: generate a sprite video with the bundled reference model and the diffusion-forcing sampler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .sampler import SamplerConfig, sample
from .video_io import save_gif, save_strip
from .zoo import scenes
from .zoo.latent import latent_to_video
from .zoo.weights import BUNDLED_WEIGHTS, load_reference, read_metadata

__all__ = ["DemoResult", "DemoSettingsError", "parse_label", "run_demo"]


class DemoSettingsError(ValueError):
    """An invalid demo setting (the CLI reports it as a usage error)."""


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


def parse_label(text: str) -> np.ndarray:
    """Comma/space separated label ids -> [LABEL_LENGTH] int64 (padded with 0, the "no label" id)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise DemoSettingsError(f"label must be integers separated by commas, got {text!r}") from None
    if not ids or len(ids) > scenes.LABEL_LENGTH:
        raise DemoSettingsError(f"label must have 1 to {scenes.LABEL_LENGTH} ids, got {len(ids)}")
    bad = [i for i in ids if not 0 <= i < scenes.LABEL_VOCAB_SIZE]
    if bad:
        raise DemoSettingsError(f"label ids must be in [0, {scenes.LABEL_VOCAB_SIZE}), got {bad}")
    out = np.zeros(scenes.LABEL_LENGTH, dtype=np.int64)
    out[: len(ids)] = ids
    return out


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
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Generate one video and write ``demo.gif`` and ``demo_strip.png`` into `out_dir`.

    The scene comes from `label` (ids) or, without one, from ``scenes.random_scene`` seeded with `seed`; in
    that case the strip's second row is a rendering of the same scene for comparison. `seed` also seeds the
    sampler's noise. Raises `mcgraph.zoo.weights.WeightsError` when the weights are missing or invalid and
    `DemoSettingsError` (a ValueError) for invalid settings. `causal_block_size` defaults to the model's.
    """

    def make_config(cbs: int) -> SamplerConfig:
        try:
            return SamplerConfig(
                steps=steps, shift=shift, guidance_scale=guidance_scale, causal_block_size=cbs, ar_step=ar_step,
                window_frames=window_frames, overlap_frames=overlap_frames, addnoise_condition=addnoise_condition,
            )
        except ValueError as e:
            raise DemoSettingsError(str(e)) from None

    make_config(causal_block_size or 1)  # fail fast, before the (slower) model load
    if frames < 1:
        raise DemoSettingsError(f"frames must be >= 1, got {frames}")
    if size < 2 or size % 2:
        raise DemoSettingsError(f"size must be an even number >= 2, got {size}")

    reference = None
    if label is None:
        scene = scenes.random_scene(np.random.default_rng(seed), size=size)
        ids = scene.label()
        description = scene.describe()
        reference, _ = scenes.render(scene, frames=frames, size=size, seed=seed)
    else:
        ids = parse_label(" ".join(str(int(i)) for i in label))
        description = "label " + ",".join(str(int(i)) for i in ids)

    path = Path(weights) if weights is not None else BUNDLED_WEIGHTS
    model, encoder = load_reference(path)
    info = read_metadata(path).get("info", {})
    cfg = model.config
    cbs = causal_block_size or cfg.causal_block_size
    config = make_config(cbs)
    step_note = f", trained {info['step']} steps" if "step" in info else ""
    log(f"model: {path}{step_note}")
    log(f"scene: {description}")

    with torch.no_grad():
        cond = encoder(torch.from_numpy(ids)[None])
        uncond = encoder(torch.from_numpy(scenes.null_label(1)))
    latent_size = size // 2
    shape = (1, cfg.in_channels, frames, latent_size, latent_size)
    result = sample(model, shape, cond, uncond, config=config, seed=seed, progress=progress)
    video = latent_to_video(result.latent)[0].clamp(-1, 1)

    out_dir = Path(out_dir)
    gif = save_gif(video, out_dir / "demo.gif", scale=gif_scale, fps=fps)
    rows = [video] if reference is None else [video, torch.from_numpy(reference)]
    strip = save_strip(rows, out_dir / "demo_strip.png", scale=2)
    return DemoResult(
        gif=gif, strip=strip, video=video, label=ids, description=description, frames=frames,
        segments=len(result.segments), rows=result.rows, model_calls=result.model_calls,
        wall_time_s=result.wall_time_s,
    )
