"""Heat maps of which tokens a cache recomputed: per schedule row next to the video, and a summary.

A cache's decisions come as `mcgraph.runtime.step.StepRecord`s (``opt.record_decisions()``), one per model
call, each with a ``computed`` mask [B, L] over the frame-major token sequence (L = frames x h x w tokens).
This module turns them into pictures (Pillow and numpy only, no matplotlib):

- `mask_frames`: one record's mask as an RGB image per frame, each token a block of pixels the size of
  its patch in the video (`COMPUTED` where recomputed, `REUSED` elsewhere);
- `write_heatmap_gif`: an animated GIF, one frame per `HeatmapStep` (a schedule row): the video at that
  row on top, one heat-map row per cache context ("cond", "uncond") below it, with a caption;
- `write_summary_png`: the final video (and the uncached one), under it a per-token map of how often each
  token was recomputed (fraction of the calls that saw its frame, colour scale `colormap`), and a bar chart
  of the fraction of tokens computed at every model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COMPUTED",
    "REUSED",
    "HeatmapStep",
    "colormap",
    "mask_frames",
    "recompute_frequency",
    "record_grid",
    "write_heatmap_gif",
    "write_summary_png",
]

COMPUTED = (255, 112, 24)  # recomputed token (orange)
REUSED = (36, 40, 56)  # reused / skipped token (dark slate)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
CONTEXT_COLOURS = {"cond": (230, 97, 1), "uncond": (94, 60, 153)}
LABEL_WIDTH = 52  # left margin for row labels
GAP = 2

# a perceptually ordered ramp (dark blue -> teal -> yellow), sampled from viridis at 5 points
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


@dataclass
class HeatmapStep:
    """One picture of the GIF, usually one schedule row (its cond and uncond calls).

    frames: the window's video at this row, uint8 [F, H, W, 3] (None: heat maps only);
    computed: context -> bool [F, h, w] tokens recomputed by that context's call (union over the batch);
    start_frame: index of the window's first frame in the whole video (for `recompute_frequency`).
    """

    label: str
    computed: dict[str, np.ndarray]
    frames: np.ndarray | None = None
    start_frame: int = 0
    fractions: dict[str, float] = field(default_factory=dict)  # context -> fraction of tokens computed

    def __post_init__(self):
        for name, m in self.computed.items():
            m = np.asarray(m, dtype=bool)
            if m.ndim != 3:
                raise ValueError(f"computed[{name!r}] must be [frames, h, w], got shape {m.shape}")
            self.computed[name] = m
            self.fractions.setdefault(name, float(m.mean()) if m.size else 0.0)


def record_grid(computed, frames: int, grid_hw: tuple[int, int], sample: int | None = None) -> np.ndarray:
    """A record's [B, L] (or [L]) mask -> bool [F, h, w]; union over the batch unless `sample` picks one."""
    m = computed.detach().cpu().numpy() if hasattr(computed, "detach") else np.asarray(computed)
    m = m.astype(bool)
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2:
        raise ValueError(f"computed mask must be [B, L] or [L], got shape {m.shape}")
    h, w = grid_hw
    if m.shape[1] != frames * h * w:
        raise ValueError(f"mask has {m.shape[1]} tokens, expected frames x h x w = {frames} x {h} x {w}")
    m = m[sample] if sample is not None else m.any(0)
    return m.reshape(frames, h, w)


def _check_size(grid: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    h, w = grid.shape[-2:]
    H, W = size
    if H % h or W % w:
        raise ValueError(f"frame size {H}x{W} is not a multiple of the token grid {h}x{w}")
    return H // h, W // w


def mask_frames(mask: np.ndarray, size: tuple[int, int] | None = None, *, computed=COMPUTED,
                reused=REUSED) -> np.ndarray:
    """bool [F, h, w] -> uint8 [F, H, W, 3]: `computed` colour where True, `reused` elsewhere, each token
    upscaled to a (H/h) x (W/w) block (`size` (H, W) defaults to the token grid itself)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be [frames, h, w], got shape {mask.shape}")
    sy, sx = _check_size(mask, size) if size is not None else (1, 1)
    out = np.where(mask[..., None], np.asarray(computed, np.uint8), np.asarray(reused, np.uint8))
    return out.repeat(sy, axis=1).repeat(sx, axis=2)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN shows grey) -> uint8 RGB of the same shape + (3,)."""
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    x = np.clip(np.nan_to_num(v), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    t = (x - lo)[..., None]
    rgb = _RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t
    rgb[nan] = 128
    return rgb.round().astype(np.uint8)


def recompute_frequency(steps: Sequence[HeatmapStep], total_frames: int | None = None) -> np.ndarray:
    """float [total frames, h, w]: per token of the whole video, the fraction of model calls seeing its frame
    (all contexts and windows) that recomputed it. NaN for frames no step covered."""
    steps = [s for s in steps if s.computed]
    if not steps:
        raise ValueError("no decisions to summarise")
    h, w = next(iter(steps[0].computed.values())).shape[1:]
    end = max(s.start_frame + next(iter(s.computed.values())).shape[0] for s in steps)
    total = max(end, total_frames or 0)
    counts = np.zeros((total, h, w))
    seen = np.zeros(total)
    for s in steps:
        for m in s.computed.values():
            f = m.shape[0]
            counts[s.start_frame : s.start_frame + f] += m
            seen[s.start_frame : s.start_frame + f] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / seen[:, None, None]


# ---------------------------------------------------------------------------------------------- drawing


def _font():
    return ImageFont.load_default()


def _row(images: Sequence[np.ndarray], cols: int, fh: int, fw: int) -> np.ndarray:
    row = np.full((fh, cols * fw + (cols - 1) * GAP, 3), BACKGROUND, np.uint8)
    for j, img in enumerate(images):
        row[:, j * (fw + GAP) : j * (fw + GAP) + fw] = img
    return row


def _upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    return frames.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else frames


def _stack_rows(rows: list[tuple[str, np.ndarray]], caption: str | None, width: int) -> Image.Image:
    caption_h = 14 if caption else 0
    height = caption_h + sum(r.shape[0] for _, r in rows) + GAP * max(0, len(rows) - 1)
    canvas = Image.new("RGB", (LABEL_WIDTH + width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    if caption:
        draw.text((2, 1), caption, fill=TEXT, font=font)
    y = caption_h
    for label, r in rows:
        canvas.paste(Image.fromarray(r), (LABEL_WIDTH, y))
        draw.text((2, y + max(0, r.shape[0] // 2 - 6)), label, fill=TEXT, font=font)
        y += r.shape[0] + GAP
    return canvas


def _step_image(step: HeatmapStep, cols: int, fh: int, fw: int, contexts: Sequence[str], scale: int) -> Image.Image:
    rows = []
    if step.frames is not None:
        rows.append(("video", _row(_upscale(np.asarray(step.frames, np.uint8), scale), cols, fh, fw)))
    for name in contexts:
        m = step.computed.get(name)
        if m is None:  # this context made no call at this step: show nothing computed
            continue
        rows.append((name, _row(mask_frames(m, (fh, fw)), cols, fh, fw)))
    parts = [step.label] + [f"{name} {100 * step.fractions[name]:.0f}%" for name in contexts if name in step.fractions]
    return _stack_rows(rows, "   ".join(parts), cols * fw + (cols - 1) * GAP)


def _geometry(steps: Sequence[HeatmapStep], frame_size: tuple[int, int] | None, scale: int):
    # columns: frames of the widest window (video frames and token frames differ with a temporal patch > 1)
    cols = max(max([m.shape[0] for m in s.computed.values()] + [0 if s.frames is None else len(s.frames)])
               for s in steps)
    if frame_size is None:
        with_frames = [s.frames for s in steps if s.frames is not None]
        if with_frames:
            frame_size = tuple(np.asarray(with_frames[0]).shape[1:3])
        else:
            frame_size = next(iter(steps[0].computed.values())).shape[1:]
    fh, fw = frame_size[0] * scale, frame_size[1] * scale
    contexts = list(dict.fromkeys(name for s in steps for name in s.computed))
    return cols, fh, fw, contexts


def write_heatmap_gif(steps: Sequence[HeatmapStep], path: str | Path, *, scale: int = 2, fps: float = 4.0,
                      frame_size: tuple[int, int] | None = None) -> Path:
    """One GIF frame per step: video row (when the step has frames) and a heat-map row per context.

    Frames are upscaled by `scale`; the token grid is upscaled to the frame size (`frame_size` (H, W) in
    video pixels, default: the steps' video frames, else the token grid)."""
    if not steps:
        raise ValueError("no steps to draw")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    cols, fh, fw, contexts = _geometry(steps, frame_size, scale)
    images = [_step_image(s, cols, fh, fw, contexts, scale) for s in steps]
    width = max(i.width for i in images)
    height = max(i.height for i in images)
    frames = []
    for img in images:  # every GIF frame the same size (a shorter last window is padded)
        if img.size != (width, height):
            padded = Image.new("RGB", (width, height), BACKGROUND)
            padded.paste(img, (0, 0))
            img = padded
        frames.append(img)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=max(20, round(1000 / fps)), loop=0,
                   optimize=False)
    return path


def _bar_chart(calls: list[tuple[str, float]], width: int, height: int = 90) -> Image.Image:
    """Fraction of tokens computed per model call, coloured by context, with 0/50/100% guides."""
    font = _font()
    img = Image.new("RGB", (LABEL_WIDTH + width, height + 16), BACKGROUND)
    draw = ImageDraw.Draw(img)
    x0, y0, y1 = LABEL_WIDTH, 4, 4 + height
    for frac, text in ((0.0, "0%"), (0.5, "50%"), (1.0, "100%")):
        y = y1 - frac * (y1 - y0)
        draw.line([(x0, y), (x0 + width, y)], fill=(200, 200, 200))
        draw.text((2, y - 6), text, fill=TEXT, font=font)
    n = max(1, len(calls))
    bar = width / n
    for i, (ctx, frac) in enumerate(calls):
        colour = CONTEXT_COLOURS.get(ctx, (60, 60, 60))
        left = x0 + i * bar
        draw.rectangle([left, y1 - frac * (y1 - y0), max(left, left + bar - 1), y1], fill=colour)
    legend = "   ".join(f"{c}" for c in dict.fromkeys(c for c, _ in calls))
    draw.text((x0, y1 + 2), f"tokens computed per model call ({legend}; {len(calls)} calls)", fill=TEXT, font=font)
    return img


def _legend(width: int) -> Image.Image:
    font = _font()
    img = Image.new("RGB", (LABEL_WIDTH + width, 16), BACKGROUND)
    draw = ImageDraw.Draw(img)
    ramp = colormap(np.linspace(0, 1, 128))[None].repeat(8, axis=0)
    img.paste(Image.fromarray(ramp), (LABEL_WIDTH + 20, 4))
    draw.text((LABEL_WIDTH, 2), "0%", fill=TEXT, font=font)
    draw.text((LABEL_WIDTH + 152, 2), "100% of calls recomputed the token", fill=TEXT, font=font)
    return img


def write_summary_png(steps: Sequence[HeatmapStep], path: str | Path, *, video: np.ndarray | None = None,
                      reference: np.ndarray | None = None, scale: int = 2, title: str | None = None,
                      calls: list[tuple[str, float]] | None = None) -> Path:
    """The final `video` (uint8 [F, H, W, 3]) and `reference` (e.g. uncached) rows, the per-token recompute
    frequency of every frame under them, and the per-call computed fraction (`calls`: (context, fraction)
    in call order; default: from the steps)."""
    steps = [s for s in steps if s.computed]
    if not steps:
        raise ValueError("no decisions to summarise")
    total = None if video is None else len(video)
    freq = recompute_frequency(steps, total)
    f_total, h, w = freq.shape
    if video is not None:
        size = tuple(np.asarray(video).shape[1:3])
    else:
        size = (h, w)
    fh, fw = size[0] * scale, size[1] * scale
    cols = max(f_total, *(len(v) for v in (video, reference) if v is not None))
    width = cols * fw + (cols - 1) * GAP
    rows = []
    if video is not None:
        rows.append(("cached" if reference is not None else "video", _row(_upscale(np.asarray(video), scale), cols, fh, fw)))
    if reference is not None:
        rows.append(("uncached", _row(_upscale(np.asarray(reference), scale), cols, fh, fw)))
    sy, sx = fh // h, fw // w
    if fh % h or fw % w:
        raise ValueError(f"frame size {fh}x{fw} is not a multiple of the token grid {h}x{w}")
    freq_img = colormap(freq).repeat(sy, axis=1).repeat(sx, axis=2)
    rows.append(("recomp.", _row(freq_img, cols, fh, fw)))
    parts = [_stack_rows(rows, title, width), _legend(width)]
    if calls is None:
        calls = [(ctx, s.fractions[ctx]) for s in steps for ctx in s.computed]
    parts.append(_bar_chart(calls, width))
    canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts) + GAP * len(parts)), BACKGROUND)
    y = 0
    for p in parts:
        canvas.paste(p, (0, y))
        y += p.height + GAP
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
