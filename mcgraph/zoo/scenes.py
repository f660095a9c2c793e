"""Procedural training and test videos: textured static backgrounds with 1-3 sprites, some moving.

Motion is local on purpose: most pixels never change, the sprites' pixels do. That is the premise
MotionCache exploits, so the bundled model and every benchmark are built on it.

Every video comes with its scene label (what the model is conditioned on) and per-frame sprite masks
(the ground truth for "moving region" metrics). Generation is pure numpy and deterministic per seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PALETTE = np.array(
    [
        [0.90, 0.20, 0.20],  # red
        [0.20, 0.80, 0.25],  # green
        [0.25, 0.35, 0.95],  # blue
        [0.95, 0.85, 0.15],  # yellow
        [0.85, 0.30, 0.85],  # magenta
        [0.15, 0.85, 0.85],  # cyan
    ],
    dtype=np.float32,
)
BACKGROUND_PATTERNS = ("vstripes", "hstripes", "checker", "blobs")
SPRITE_KINDS = ("square", "circle", "diamond")
# direction index -> unit step (dx, dy); 8 compass directions
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))
SPEEDS = (1, 2)
MAX_SPRITES = 3  # label slots (the label layout); scenes draw at most DEFAULT_SPRITES
# v2 data: at most two sprites per scene. Fewer, distinct objects keep motion local and make coherent
# motion learnable by a 1-2 M-parameter model in a few CPU hours (v1 drew up to three and generated flicker).
DEFAULT_SPRITES = 2

# Label layout: [bg_pattern, bg_colour, (kind, colour, motion) x MAX_SPRITES]; 0 is padding ("no label").
# Each field has its own id range so one embedding table serves all of them.
_FIELD_SIZES = (
    len(BACKGROUND_PATTERNS),
    len(PALETTE),
    len(SPRITE_KINDS),
    len(PALETTE),
    1 + len(DIRECTIONS) * len(SPEEDS),
)
_FIELD_OFFSETS = tuple(1 + int(x) for x in np.cumsum((0,) + _FIELD_SIZES[:-1]))
LABEL_VOCAB_SIZE = 1 + sum(_FIELD_SIZES)
LABEL_LENGTH = 2 + 3 * MAX_SPRITES


@dataclass(frozen=True)
class Sprite:
    kind: int  # index into SPRITE_KINDS
    colour: int  # index into PALETTE
    size: int  # pixels
    x: float  # top-left, pixels
    y: float
    direction: int  # -1 for static, else index into DIRECTIONS
    speed: int  # pixels per frame (0 when static)

    @property
    def motion_code(self) -> int:
        if self.direction < 0:
            return 0
        return 1 + self.direction * len(SPEEDS) + SPEEDS.index(self.speed)


@dataclass(frozen=True)
class Scene:
    pattern: int
    colour: int
    sprites: tuple[Sprite, ...]

    def label(self) -> np.ndarray:
        """Integer token ids [LABEL_LENGTH]; unused sprite slots are padding (0)."""
        ids = np.zeros(LABEL_LENGTH, dtype=np.int64)
        ids[0] = _FIELD_OFFSETS[0] + self.pattern
        ids[1] = _FIELD_OFFSETS[1] + self.colour
        for i, s in enumerate(self.sprites):
            ids[2 + 3 * i] = _FIELD_OFFSETS[2] + s.kind
            ids[3 + 3 * i] = _FIELD_OFFSETS[3] + s.colour
            ids[4 + 3 * i] = _FIELD_OFFSETS[4] + s.motion_code
        return ids

    def describe(self) -> str:
        parts = [f"{BACKGROUND_PATTERNS[self.pattern]} background"]
        for s in self.sprites:
            motion = "static" if s.direction < 0 else f"moving {DIRECTIONS[s.direction]} at {s.speed}px/f"
            parts.append(f"{SPRITE_KINDS[s.kind]} ({motion})")
        return ", ".join(parts)


def null_label(batch: int = 1) -> np.ndarray:
    """The unconditional label (all padding), used for classifier-free guidance."""
    return np.zeros((batch, LABEL_LENGTH), dtype=np.int64)


def random_scene(
    rng: np.random.Generator, size: int = 32, p_static: float = 0.3, max_sprites: int = DEFAULT_SPRITES
) -> Scene:
    if not 1 <= max_sprites <= MAX_SPRITES:
        raise ValueError(f"max_sprites must be in [1, {MAX_SPRITES}] (the label has {MAX_SPRITES} slots), got {max_sprites}")
    n = int(rng.integers(1, max_sprites + 1))
    sprites = []
    for _ in range(n):
        s = int(rng.integers(5, 9))
        static = rng.random() < p_static
        sprites.append(
            Sprite(
                kind=int(rng.integers(len(SPRITE_KINDS))),
                colour=int(rng.integers(len(PALETTE))),
                size=s,
                x=float(rng.integers(0, size - s + 1)),
                y=float(rng.integers(0, size - s + 1)),
                direction=-1 if static else int(rng.integers(len(DIRECTIONS))),
                speed=0 if static else int(rng.choice(SPEEDS)),
            )
        )
    return Scene(int(rng.integers(len(BACKGROUND_PATTERNS))), int(rng.integers(len(PALETTE))), tuple(sprites))


def _background(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pattern = BACKGROUND_PATTERNS[scene.pattern]
    period = float(rng.integers(6, 12))
    phase = float(rng.random() * 2 * np.pi)
    if pattern == "vstripes":
        m = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period + phase)
    elif pattern == "hstripes":
        m = 0.5 + 0.5 * np.sin(2 * np.pi * yy / period + phase)
    elif pattern == "checker":
        m = ((np.floor(xx / (period / 2)) + np.floor(yy / (period / 2))) % 2).astype(np.float32)
    else:
        m = np.zeros((size, size), np.float32)
        for _ in range(3):
            fx, fy = rng.uniform(0.5, 2.0, size=2) * 2 * np.pi / size
            m += np.sin(fx * xx + rng.random() * 6.3) * np.sin(fy * yy + rng.random() * 6.3)
        m = (m - m.min()) / (m.max() - m.min() + 1e-6)
    base = PALETTE[scene.colour] * 0.35  # dark so sprites stand out
    return (base[None, None, :] * (0.6 + 0.8 * m[..., None])).astype(np.float32)


def _sprite_mask(kind: int, s: int) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    c = s / 2
    if SPRITE_KINDS[kind] == "square":
        return np.ones((s, s), bool)
    if SPRITE_KINDS[kind] == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= c * c
    return np.abs(xx - c) + np.abs(yy - c) <= c


def _trajectory(sp: Sprite, frames: int, size: int) -> list[tuple[int, int]]:
    """Positions per frame; moving sprites bounce off the borders."""
    x, y = sp.x, sp.y
    if sp.direction < 0:
        return [(int(x), int(y))] * frames
    dx, dy = (d * sp.speed for d in DIRECTIONS[sp.direction])
    lim = size - sp.size
    out = []
    for _ in range(frames):
        out.append((int(round(x)), int(round(y))))
        x, y = x + dx, y + dy
        if x < 0 or x > lim:
            dx, x = -dx, min(max(x, 0), lim)
        if y < 0 or y > lim:
            dy, y = -dy, min(max(y, 0), lim)
    return out


def render(scene: Scene, frames: int = 16, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene: video [frames, 3, size, size] in [-1, 1] and sprite masks [frames, size, size]."""
    rng = np.random.default_rng(seed)
    bg = _background(scene, rng, size)
    video = np.repeat(bg[None], frames, axis=0)
    masks = np.zeros((frames, size, size), bool)
    for sp in scene.sprites:
        shape = _sprite_mask(sp.kind, sp.size)
        colour = PALETTE[sp.colour]
        for f, (x, y) in enumerate(_trajectory(sp, frames, size)):
            region = video[f, y : y + sp.size, x : x + sp.size]
            region[shape] = colour
            masks[f, y : y + sp.size, x : x + sp.size] |= shape
    video = video.transpose(0, 3, 1, 2) * 2.0 - 1.0
    return video.astype(np.float32), masks


def sample_batch(
    rng: np.random.Generator, batch: int, frames: int = 16, size: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of random scenes: videos [B, frames, 3, size, size], labels [B, L], masks [B, frames, size, size]."""
    vids, labels, masks = [], [], []
    for _ in range(batch):
        scene = random_scene(rng, size)
        v, m = render(scene, frames, size, seed=int(rng.integers(2**31)))
        vids.append(v)
        labels.append(scene.label())
        masks.append(m)
    return np.stack(vids), np.stack(labels), np.stack(masks)
