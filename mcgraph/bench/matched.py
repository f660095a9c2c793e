"""Quality at matched compute: each series' PSNR interpolated over its sweep at fixed computed-token fractions.

A threshold sweep gives, per seed, points (computed-token fraction, PSNR). Comparing policies run by run
compares them at different costs; here each series (MotionCache per motion source, the placebo, FlowCache,
TeaCache, the oracle) is read off at the same target fractions instead:

* per seed, PSNR (whole frame, moving and static region) is interpolated linearly between the two sweep points
  whose fractions bracket the target (`interpolate_at`); a target outside the seed's sweep gives no value;
* over the seeds that have a value: the mean and its 95 % Student-t confidence interval (`t_interval`; none
  for fewer than two seeds).

PSNR of a seed identical to the uncached video ("inf") counts as `DB_CAP` dB, as in the run summaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from mcgraph.bench.summary import DB_KEYS, db_value, fmt

__all__ = ["DB_CAP", "interpolate_at", "matched_compute", "matched_intro", "matched_table", "t_interval",
           "t_quantile_975"]

DB_CAP = 100.0

# two-sided 95 % quantiles of Student's t (0.975 one-sided), df 1..30; beyond: Cornish-Fisher (error < 1e-4)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (>= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def t_interval(values: Iterable[float | None]) -> dict:
    """Mean and 95 % t-interval of the finite values: {"mean", "lo", "hi", "n"}; lo/hi None when n < 2, mean
    None when n = 0."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(x)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = sum(x) / n
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    h = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - h, "hi": mean + h, "n": n}


def interpolate_at(points: Iterable[tuple[float | None, float | None]], target: float) -> float | None:
    """y at x = `target`, linear between the two points (sorted by x) that bracket it; None when no pair does
    (the target is outside the sweep) or no point is usable. Points with a missing or NaN coordinate are
    dropped; y = inf counts as `DB_CAP`. Several points at x = target: their mean."""
    pts = sorted((float(x), min(float(y), DB_CAP)) for x, y in points
                 if x is not None and y is not None and math.isfinite(float(x)) and not math.isnan(float(y)))
    exact = [y for x, y in pts if x == target]
    if exact:
        return sum(exact) / len(exact)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 < target < x1:
            return y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return None


def _series_runs(runs: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in runs:
        if r["policy"] != "none":
            out.setdefault(r["series"], []).append(r)
    return out


def matched_compute(runs: Sequence[dict], targets: Sequence[float], seeds: Sequence[int]) -> dict:
    """The matched-compute figures of the runs (bench.json's `runs`, JSON form): per series and target, per
    PSNR key the per-seed interpolated values and their mean and 95 % t-interval (see the module doc)."""
    series_out = []
    for series, rs in _series_runs(runs).items():
        points = []
        for target in targets:
            entry = {"target": float(target)}
            for key in DB_KEYS:
                per_seed = []
                for seed in seeds:
                    pts = [(s["executed_fraction"], db_value(s[key])) for r in rs for s in r["per_seed"]
                           if s["seed"] == seed]
                    per_seed.append((seed, interpolate_at(pts, target)))
                have = [(s, v) for s, v in per_seed if v is not None]
                entry[key] = {**t_interval(v for _, v in have), "seeds": [s for s, _ in have],
                              "values": [v for _, v in have]}
            points.append(entry)
        series_out.append({"series": series, "policy": rs[0]["policy"], "runs": [r["id"] for r in rs],
                           "points": points})
    return {"x": "executed_fraction", "targets": [float(t) for t in targets], "db_cap": DB_CAP,
            "series": series_out}


def _ci_cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "—"
    if stat["lo"] is None:
        return f"{fmt(stat['mean'])} (n=1)"
    return f"{fmt(stat['mean'])} [{fmt(stat['lo'])}, {fmt(stat['hi'])}]"


def matched_table(matched: dict) -> str:
    """Markdown: per target fraction, each series' PSNR (whole, moving, static): mean [95 % CI] over seeds."""
    head = ["tokens computed", "series", "PSNR dB", "PSNR moving", "PSNR static", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, target in enumerate(matched["targets"]):
        for s in matched["series"]:
            p = s["points"][i]
            n = p["psnr"]["n"]
            cells = [f"{100 * target:.0f}%", s["series"], _ci_cell(p["psnr"]), _ci_cell(p["psnr_moving"]),
                     _ci_cell(p["psnr_static"]), str(n) if n else "— (outside the sweep)"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matched_intro(matched: dict) -> str:
    return ("PSNR vs the uncached video at the same fraction of tokens computed: per seed, linear interpolation "
            "between the two runs of a series whose computed-token fractions bracket the target (no value where "
            "the seed's sweep does not reach it), then the mean over seeds and its 95 % t-interval [lo, hi] "
            f"(identical videos count as {matched['db_cap']:g} dB). The placebo is MotionCache with its motion "
            "weights permuted within each frame (same weights, wrong places); the oracle refreshes the tokens "
            "whose true block-stack residual changed most (it runs the full stack, so only its quality at its "
            "token fraction means anything): the headroom of any selection rule.")
