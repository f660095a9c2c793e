"""Per-video measurements behind the reference-model quality gates (`mcgraph.zoo.gates`), numpy only.

Changing and out-of-range pixels, sprite-coloured connected components (per frame), their centroid tracks and
velocities, and the static-background masks with the errors measured on them. Each function takes a video
[frames, 3, H, W] in [-1, 1] (tensor or array, not clamped) and, where sprites matter, the `Scene` it shows.
The thresholds these numbers are judged against, and why, live in `mcgraph.zoo.gates`; the two
background yardsticks at the end of this module are how two of those thresholds were chosen.

Like the rest of the zoo this imports only `mcgraph.zoo` (never the compiler or the runtime).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from mcgraph.eval.video_io import as_frames  # noqa: F401  (re-exported: gates and tests use it from here)
from mcgraph.zoo.scenes import DIRECTIONS, PALETTE, Scene, random_scene, render

# ---- measurement settings -------------------------------------------------------------------------------
CHANGE_DELTA = 0.1  # a pixel "changes" when some channel moves by more than this (as in zoo.quality)
VALUE_LIMIT = 1.05  # the data is in [-1, 1]; a little overshoot is harmless, more is a broken sample
# Colour tolerance (L-infinity, in [-1, 1] units) to call a pixel "sprite colour c". PALETTE colours are
# >= 0.6 apart in [0, 1] units (1.2 here) in some channel, and every background value is <= 0.4655 in [0, 1]
# (dark: 0.35 * colour * 1.4) while every palette colour has a channel >= 0.8, so 0.3 can never confuse two
# sprite colours or background with a sprite, and still accepts a blurred sprite.
COLOUR_TOL = 0.3
MIN_COMPONENT = 6  # pixels; the smallest sprite (5 px diamond) has 13, specks of generated noise a few
BACKGROUND_MARGIN = 2  # pixels of dilation around sprites before a pixel counts as background


# ---- small image tools (numpy only) -----------------------------------------------------------------------

def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of [..., H, W] masks by a (2r+1) square."""
    out = mask.copy()
    for _ in range(radius):
        m = out.copy()
        m[..., 1:, :] |= out[..., :-1, :]
        m[..., :-1, :] |= out[..., 1:, :]
        m[..., :, 1:] |= out[..., :, :-1]
        m[..., :, :-1] |= out[..., :, 1:]
        out = m
    return out


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a 2D bool mask: (labels [H, W] with 0 for off and 1..n, n). Min-label
    propagation in numpy (iterates at most over the longest component path; frames are 32 x 32)."""
    h, w = mask.shape
    big = h * w + 1
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        m = lab.copy()
        m[1:, :] = np.minimum(m[1:, :], lab[:-1, :])
        m[:-1, :] = np.minimum(m[:-1, :], lab[1:, :])
        m[:, 1:] = np.minimum(m[:, 1:], lab[:, :-1])
        m[:, :-1] = np.minimum(m[:, :-1], lab[:, 1:])
        m = np.where(mask, m, big)
        if np.array_equal(m, lab):
            break
        lab = m
    ids = np.unique(lab[mask])
    out = np.zeros((h, w), np.int64)
    if len(ids):
        remap = {int(v): i + 1 for i, v in enumerate(ids)}
        out[mask] = np.vectorize(remap.__getitem__)(lab[mask])
    return out, len(ids)


def colour_masks(video, colours) -> np.ndarray:
    """[len(colours), frames, H, W]: pixels within `COLOUR_TOL` (L-inf) of PALETTE[c] (in [-1, 1])."""
    v = as_frames(video)
    ref = PALETTE[np.asarray(list(colours), dtype=np.int64)] * 2.0 - 1.0  # [K, 3]
    if len(ref) == 0:
        return np.zeros((0, v.shape[0], v.shape[2], v.shape[3]), bool)
    d = np.abs(v[None] - ref[:, None, :, None, None]).max(axis=2)
    return d < COLOUR_TOL


@dataclass
class Blob:
    """One connected component: its size, centroid (y, x) and bounding box (inclusive)."""

    area: int
    cy: float
    cx: float
    y0: int
    y1: int
    x0: int
    x1: int


def blobs(mask: np.ndarray, min_size: int = MIN_COMPONENT) -> list[Blob]:
    """Components of one frame's mask with at least `min_size` pixels, largest first."""
    lab, n = connected_components(mask)
    out = []
    for i in range(1, n + 1):
        ys, xs = np.nonzero(lab == i)
        if len(ys) >= min_size:
            out.append(Blob(len(ys), float(ys.mean()), float(xs.mean()), int(ys.min()), int(ys.max()),
                            int(xs.min()), int(xs.max())))
    return sorted(out, key=lambda b: -b.area)


def sprite_blobs(video, scene: Scene) -> dict[int, list[list[Blob]]]:
    """Per label colour: per frame, its components."""
    colours = sorted({s.colour for s in scene.sprites})
    masks = colour_masks(video, colours)
    return {c: [blobs(masks[k, f]) for f in range(masks.shape[1])] for k, c in enumerate(colours)}


def _tracks(per_frame: list[list[Blob]], k: int) -> np.ndarray:
    """k centroid tracks [k, frames, 2] (y, x; NaN where missing) from per-frame blobs of one colour: the k
    largest blobs of each frame, assigned to the tracks by least total distance to their last positions."""
    frames = len(per_frame)
    out = np.full((k, frames, 2), np.nan)
    last = [None] * k
    for f, bl in enumerate(per_frame):
        pts = [np.array([b.cy, b.cx]) for b in bl[:k]]
        if not pts:
            continue
        best, best_cost = None, math.inf
        for perm in itertools.permutations(range(k), len(pts)):
            cost = sum(0.0 if last[t] is None else float(np.linalg.norm(pts[i] - last[t])) for i, t in enumerate(perm))
            if cost < best_cost:
                best, best_cost = perm, cost
        for i, t in enumerate(best):
            out[t, f] = pts[i]
            last[t] = pts[i]
    return out


def colour_groups(scene: Scene) -> dict[int, list[int]]:
    """Label colour -> indices of the scene's sprites of that colour."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(scene.sprites):
        groups.setdefault(s.colour, []).append(i)
    return groups


def sprite_tracks(video, scene: Scene) -> dict[int, np.ndarray]:
    """Per label colour, centroid tracks [n sprites of that colour, frames, 2] (unassigned to sprites)."""
    bl = sprite_blobs(video, scene)
    return {c: _tracks(bl[c], len(idx)) for c, idx in colour_groups(scene).items()}


# ---- metrics ----------------------------------------------------------------------------------------------

def changing_fraction(video, start: int = 0) -> float:
    """Fraction of pixels changing by > CHANGE_DELTA (any channel) over frame pairs (t, t+1), t >= start."""
    v = as_frames(video)
    d = np.abs(v[1:] - v[:-1]).max(axis=1) > CHANGE_DELTA
    d = d[start:]
    return float(d.mean()) if d.size else 0.0


def outside_fraction(video, start: int = 0) -> float:
    """Fraction of values outside [-VALUE_LIMIT, VALUE_LIMIT] in frames >= start."""
    v = as_frames(video)[start:]
    return float((np.abs(v) > VALUE_LIMIT).mean())


def background_masks(real_masks: np.ndarray, generated=None, margin: int = BACKGROUND_MARGIN) -> np.ndarray:
    """[frames, H, W] True where no real sprite is within `margin` px in any frame (the static background)
    and, with `generated`, that frame has no sprite-coloured (any PALETTE colour) pixel within `margin` px."""
    real_masks = np.asarray(real_masks, bool)
    static = ~dilate(real_masks.any(axis=0), margin)
    bg = np.broadcast_to(static, real_masks.shape).copy()
    if generated is not None:
        sprite_like = colour_masks(generated, range(len(PALETTE))).any(axis=0)
        bg &= ~dilate(sprite_like, margin)
    return bg


def background_error(generated, real, bg: np.ndarray, start: int = 0) -> float:
    """Mean |generated - real| over background pixels (all channels) of frames >= start."""
    g, r = as_frames(generated)[start:], as_frames(real)[start:]
    sel = bg[start:]
    if not sel.any():
        return math.nan
    return float(np.abs(g - r).mean(axis=1)[sel].mean())


def background_colour(video, bg: np.ndarray, start: int = 0) -> np.ndarray:
    """Mean colour [3] of the background pixels of frames >= start."""
    v, sel = as_frames(video)[start:], bg[start:]
    if not sel.any():
        return np.full(3, np.nan)
    return v.transpose(1, 0, 2, 3)[:, sel].mean(axis=1)


def background_flicker(video, bg: np.ndarray, start: int = 0) -> float:
    """Mean |frame - temporal median| over background pixels of frames >= start (0 for a static background)."""
    v, sel = as_frames(video)[start:], bg[start:]
    if not sel.any():
        return math.nan
    med = np.median(v, axis=0, keepdims=True)
    return float(np.abs(v - med).mean(axis=1)[sel].mean())


def count_match(video, scene: Scene) -> np.ndarray:
    """Per frame: True when every label colour has exactly as many components as the label has sprites of it."""
    bl = sprite_blobs(video, scene)
    groups = colour_groups(scene)
    frames = as_frames(video).shape[0]
    ok = np.ones(frames, bool)
    for c, idx in groups.items():
        ok &= np.array([len(bl[c][f]) == len(idx) for f in range(frames)])
    return ok


def component_counts(video, scene: Scene) -> np.ndarray:
    """Per frame, the total number of label-coloured components."""
    bl = sprite_blobs(video, scene)
    frames = as_frames(video).shape[0]
    return np.array([sum(len(bl[c][f]) for c in bl) for f in range(frames)])


def label_colours_present(video, scene: Scene, start: int = 0) -> float:
    """Fraction of the label's colours with a component in at least half of the frames >= start."""
    bl = sprite_blobs(video, scene)
    if not bl:
        return 1.0
    present = [np.mean([len(b) > 0 for b in per_frame[start:]]) >= 0.5 for per_frame in bl.values()]
    return float(np.mean(present))


def _velocities(track: np.ndarray) -> np.ndarray:
    return track[1:] - track[:-1]  # [frames-1, 2] (dy, dx), NaN where either end is missing


def velocity_error_vs_tracks(video, reference, scene: Scene, start: int = 0) -> float:
    """Mean L2 error (pixels/frame) of per-sprite centroid velocities of `video` vs those of `reference` (the
    real clip: its track has the bounces), over steps (t, t+1) with t >= start where both are detected.
    Tracks of one colour are paired by least distance at the first frame both have."""
    gt, rt = sprite_tracks(video, scene), sprite_tracks(reference, scene)
    errs = []
    for c in gt:
        g, r = gt[c], rt[c]
        k = len(g)
        best, best_cost = tuple(range(k)), math.inf
        for perm in itertools.permutations(range(k)):
            cost = 0.0
            for i, j in enumerate(perm):
                both = ~np.isnan(g[i, start:, 0]) & ~np.isnan(r[j, start:, 0])
                f = start + int(np.argmax(both)) if both.any() else None
                cost += 1e3 if f is None else float(np.linalg.norm(g[i, f] - r[j, f]))
            if cost < best_cost:
                best, best_cost = perm, cost
        for i, j in enumerate(best):
            d = np.linalg.norm(_velocities(g[i])[start:] - _velocities(r[j])[start:], axis=1)
            errs.extend(d[~np.isnan(d)].tolist())
    return float(np.mean(errs)) if errs else math.nan


def _label_velocity_errors(track: np.ndarray, sprite, size: int, extent: tuple[float, float]) -> list[float]:
    """Per step errors of one centroid track [frames, 2] vs the sprite's labelled motion, a bounce accepted per
    axis whenever the sprite's box (centroid +- half its extent) is within one step of that border."""
    if sprite.direction < 0:
        exp = np.zeros(2)
    else:
        dx, dy = DIRECTIONS[sprite.direction]
        exp = np.array([dy, dx], float) * sprite.speed
    errs = []
    for t in range(len(track) - 1):
        a, b = track[t], track[t + 1]
        if np.isnan(a[0]) or np.isnan(b[0]):
            continue
        v = b - a
        e = exp.copy()
        for ax in (0, 1):
            step = abs(exp[ax]) + 1.0
            lo = min(a[ax], b[ax]) - extent[ax]
            hi = max(a[ax], b[ax]) + extent[ax]
            if exp[ax] != 0 and (lo <= step or hi >= size - 1 - step):
                e[ax] = exp[ax] if abs(v[ax] - exp[ax]) <= abs(v[ax] + exp[ax]) else -exp[ax]
                if abs(v[ax]) > 0.5 and np.sign(v[ax]) != np.sign(exp[ax]):
                    exp[ax] = -exp[ax]  # bounced: the motion continues the other way
        errs.append(float(np.linalg.norm(v - e)))
    return errs


def velocity_error_vs_label(video, scene: Scene, start: int = 0) -> float:
    """Mean L2 error (pixels/frame) of per-sprite centroid velocities vs the label's direction * speed, with
    bounces at the borders (for free generation, whose positions are its own). Sprites of one colour are
    paired with tracks by least total error."""
    v = as_frames(video)
    size = v.shape[-1]
    tracks = sprite_tracks(v, scene)
    bl = sprite_blobs(v, scene)
    errs = []
    for c, idx in colour_groups(scene).items():
        tr = tracks[c][:, start:]
        # half extent of the colour's blobs (median over frames), for the near-border test
        spans = [((b.y1 - b.y0) / 2, (b.x1 - b.x0) / 2) for per in bl[c][start:] for b in per[: len(idx)]]
        extent = tuple(np.median(np.array(spans), axis=0)) if spans else (3.0, 3.0)
        best, best_mean = None, math.inf
        for perm in itertools.permutations(range(len(idx))):
            e = []
            for t_i, s_i in enumerate(perm):
                e += _label_velocity_errors(tr[t_i], scene.sprites[idx[s_i]], size, extent)
            m = float(np.mean(e)) if e else math.inf
            if m < best_mean:
                best, best_mean = e, m
        errs += best or []
    return float(np.mean(errs)) if errs else math.nan


# ---- yardsticks of the background thresholds (measured on real renders) -----------------------------

def texture_loss_error(scenes_n: int = 500, seed: int = 0) -> np.ndarray:
    """Per random scene: mean |real - its background's mean colour| over background pixels (what a model that
    keeps the colour but loses the pattern would score): the yardstick of
    `mcgraph.zoo.gates.BACKGROUND_ERROR_MAX`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(scenes_n):
        sc = random_scene(rng)
        v, m = render(sc, frames=1, seed=int(rng.integers(2**31)))
        bg = background_masks(m)
        mean = background_colour(v, bg)
        out.append(float(np.abs(v - mean[None, :, None, None]).mean(axis=1)[bg].mean()))
    return np.array(out)


def same_label_colour_spread(labels_n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per random label: mean over channels of |mean background colour| between two renderings (other seeds),
    and the same to the nearest other background colour: the yardsticks of
    `mcgraph.zoo.gates.BACKGROUND_COLOUR_MAX`."""
    rng = np.random.default_rng(seed)
    same, other = [], []
    for _ in range(labels_n):
        sc = random_scene(rng)
        cols = []
        for c in [sc.colour, sc.colour] + [c for c in range(len(PALETTE)) if c != sc.colour]:
            v, m = render(replace(sc, colour=c), frames=1, seed=int(rng.integers(2**31)))
            cols.append(background_colour(v, background_masks(m)))
        same.append(float(np.abs(cols[0] - cols[1]).mean()))
        other.append(min(float(np.abs(cols[0] - c).mean()) for c in cols[2:]))
    return np.array(same), np.array(other)
