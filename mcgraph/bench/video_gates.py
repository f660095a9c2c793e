"""Does a cache make the video less like the data? The reference model's quality gates (`mcgraph.zoo.gates`,
free generation: the bench generates from the label alone) on every video of the sweep, against the real clip
of the same scene (``render(random_scene(default_rng(seed)), frames, seed=seed)``), next to the uncached
video's numbers. numpy on [frames, 3, 32, 32] videos: well under a second per video."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mcgraph.bench.summary import finite, fmt

__all__ = ["GATE_KEYS", "SeedGates", "gates_intro", "gates_table", "summarise_gates"]

# per-video numbers kept (`mcgraph.zoo.gates.VideoGates`; the per-window count match as its worst window)
GATE_KEYS = ("changing_fraction", "changing_fraction_real", "changing_ratio", "outside_fraction",
             "background_error", "background_flicker", "background_pixels", "count_match",
             "count_match_worst_window", "count_std", "velocity_error", "label_colours")


class SeedGates:
    """One seed's real clip, sprite masks and sampler windows; `score(video)` -> the gate numbers."""

    def __init__(self, scene, seed: int, frames: int, window_frames: int, overlap_frames: int, size: int = 32):
        from mcgraph.video.sampler import plan_segments
        from mcgraph.zoo.scenes import render

        self.scene, self.seed = scene, seed
        self.real, self.masks = render(scene, frames=frames, size=size, seed=seed)
        self.windows = [(s.start + s.prefix, s.end) for s in plan_segments(frames, window_frames, overlap_frames)]

    def score(self, video) -> dict:
        """Gate numbers of `video` [frames, 3, H, W] (unclamped) vs the real clip (free-generation mode)."""
        from mcgraph.zoo import gates

        g = gates.score_video(video, self.real, self.masks, self.scene, mode="free", seed=self.seed,
                              windows=self.windows)
        out = {k: getattr(g, k) for k in GATE_KEYS if k not in ("changing_ratio", "count_match_worst_window")}
        out["changing_ratio"] = g.changing_ratio
        out["count_match_worst_window"] = min(g.count_match_windows)
        return {k: finite(out[k]) for k in GATE_KEYS}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarise_gates(per_seed: Sequence[dict | None]) -> dict | None:
    """Means over seeds; the changing-pixel ratio pooled (mean generated / mean real changing fraction, as the
    model gate); `velocity_missing` / `background_missing`: seeds without that number. None without gates."""
    recs = [g for g in per_seed if g]
    if not recs:
        return None
    out = {k: _mean(g[k] for g in recs) for k in GATE_KEYS}
    gen, real = out["changing_fraction"], out["changing_fraction_real"]
    out["changing_ratio"] = finite(gen / real) if gen is not None and real else None
    out["velocity_missing"] = sum(g["velocity_error"] is None for g in recs)
    out["background_missing"] = sum(g["background_error"] is None for g in recs)
    out["n"] = len(recs)
    return out


def _thresholds() -> list[str]:
    from mcgraph.zoo import gates

    lo, hi = gates.CHANGING_RATIO_RANGE
    return [f"[{lo:g}, {hi:g}]", f"< {100 * gates.OUTSIDE_MAX:g}%", f"< {gates.BACKGROUND_COLOUR_MAX:g}",
            f"< {gates.BACKGROUND_FLICKER_MAX:g}", f">= {gates.COUNT_MATCH_MIN:g}", f"< {gates.VELOCITY_ERROR_MAX:g}",
            f">= {gates.LABEL_COLOURS_MIN:g}"]


def _cells(g: dict | None) -> list[str]:
    if not g:
        return ["—"] * 7
    outside = fmt(100 * g["outside_fraction"], ".2f") + "%" if g["outside_fraction"] is not None else "—"
    return [fmt(g["changing_ratio"]), outside, fmt(g["background_error"], ".3f"), fmt(g["background_flicker"], ".3f"),
            fmt(g["count_match_worst_window"]), fmt(g["velocity_error"]), fmt(g["label_colours"])]


def gates_table(data: dict) -> str:
    """Markdown: the gate numbers (means over seeds) of the uncached video and of every run."""
    head = ["video", "changing-pixel ratio", "values outside ±1.05", "background colour err", "background flicker",
            "count match (worst window)", "velocity err px/f", "label colours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| *gate (model)* | " + " | ".join(_thresholds()) + " |",
             "| uncached | " + " | ".join(_cells(data["baseline"]["summary"].get("gates"))) + " |"]
    for r in data["runs"]:
        lines.append(f"| {r['label']} | " + " | ".join(_cells(r["summary"].get("gates"))) + " |")
    return "\n".join(lines)


def gates_intro(data: dict) -> str:
    n = len(data["settings"]["seeds"])
    return ("The reference model's quality gates (`mcgraph.zoo.gates`, free-generation mode) of each video against "
            f"the real clip of its scene, mean over {n} seed(s); the changing-pixel ratio is pooled (mean generated "
            "/ mean real changing fraction). A cache that leaves these where the uncached video has them keeps "
            "the video as much like the data as the model makes it; the gate row is the model's bar (decided on "
            "the model's own samples, without CFG), for scale.")
