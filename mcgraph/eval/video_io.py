"""Writing videos to look at: animated GIF and PNG frame strips (Pillow only).

Videos are [frames, 3, H, W] in [-1, 1] (torch tensors or numpy arrays), the layout of
`mcgraph.zoo.latent.latent_to_video` without its batch axis. Our videos are tiny (32 x 32), so both
writers upscale with nearest-neighbour sampling to keep the pixels crisp.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["save_gif", "save_strip", "to_uint8_frames"]


def as_frames(video) -> np.ndarray:
    """`video` (tensor or array) as a float32 numpy [frames, 3, H, W]; anything else is a ValueError."""
    if hasattr(video, "detach"):
        video = video.detach().float().cpu().numpy()
    video = np.asarray(video, dtype=np.float32)
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [frames, 3, height, width], got shape {video.shape}")
    return video


def to_uint8_frames(video) -> np.ndarray:
    """[frames, 3, H, W] in [-1, 1] -> uint8 [frames, H, W, 3] (values outside [-1, 1] are clipped)."""
    video = as_frames(video)
    pixels = np.clip((video + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return pixels.transpose(0, 2, 3, 1)


def _upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame


def _check_scale(scale: int) -> int:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def save_gif(video, path: str | Path, *, scale: int = 4, fps: float = 8.0, loop: int = 0) -> Path:
    """Write an animated GIF, each pixel upscaled to `scale` x `scale`. Returns the path."""
    scale = _check_scale(scale)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frames = [Image.fromarray(_upscale(f, scale)) for f in to_uint8_frames(video)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        path,
        save_all=True,
        append_images=frames[1:],
        duration=max(20, int(round(1000 / fps))),
        loop=loop,
        optimize=False,
    )
    return path


def save_strip(
    videos,
    path: str | Path,
    *,
    scale: int = 2,
    gap: int = 2,
    max_frames: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Path:
    """Write frames side by side as one PNG; one row per video when given several (for comparisons).

    `videos` is one video [frames, 3, H, W], a batch [N, frames, 3, H, W], or a sequence of videos (their
    frame counts may differ; all must share H and W). `max_frames` keeps that many frames per row, evenly
    spaced. `gap` pixels (after upscaling) of `background` separate frames and rows.
    """
    scale = _check_scale(scale)
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    if hasattr(videos, "dim") or isinstance(videos, np.ndarray):
        rows = [videos] if videos.ndim == 4 else list(videos)
    elif isinstance(videos, Sequence):
        rows = list(videos)
    else:
        raise ValueError(f"videos must be a tensor, an array or a sequence of videos, got {type(videos)}")
    if not rows:
        raise ValueError("no videos to write")
    rows = [to_uint8_frames(v) for v in rows]
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        rows = [
            r[np.unique(np.linspace(0, len(r) - 1, min(max_frames, len(r))).round().astype(int))] for r in rows
        ]
    h, w = rows[0].shape[1:3]
    if any(r.shape[1:3] != (h, w) for r in rows):
        raise ValueError(f"all videos must have the same frame size, got {[r.shape[1:3] for r in rows]}")
    fh, fw = h * scale, w * scale
    cols = max(len(r) for r in rows)
    canvas = np.empty((len(rows) * fh + (len(rows) - 1) * gap, cols * fw + (cols - 1) * gap, 3), np.uint8)
    canvas[:] = np.asarray(background, np.uint8)
    for i, r in enumerate(rows):
        y = i * (fh + gap)
        for j, frame in enumerate(r):
            x = j * (fw + gap)
            canvas[y : y + fh, x : x + fw] = _upscale(frame, scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
