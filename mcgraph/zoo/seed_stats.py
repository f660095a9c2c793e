"""Statistics over seeds for the quality gates: the mean and 95 % t-interval of every per-video number
(`Stat`), and `aggregate`, which also pools the changing-pixel ratio over seeds.

Kept apart from `mcgraph.zoo.gates` so that module stays about the gates themselves; `gates` re-exports these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # only for the annotation: gates imports this module
    from mcgraph.zoo.gates import VideoGates

# Two-sided 95 % Student t quantiles by degrees of freedom (a table, so the zoo needs no scipy); between
# listed values the next larger df is used (slightly narrower interval), beyond 120 the normal 1.96.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
         19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def _t975(df: int) -> float:
    keys = sorted(_T975)
    for k in keys:
        if df <= k:
            return _T975[k]
    return 1.96


@dataclass
class Stat:
    mean: float
    lo: float  # 95 % t-interval over seeds (NaN values count as failures upstream, excluded here)
    hi: float
    n: int

    @classmethod
    def of(cls, values) -> Stat:
        x = np.asarray([v for v in values if v is not None], float)
        x = x[np.isfinite(x)]
        if len(x) == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        m = float(x.mean())
        if len(x) < 2:
            return cls(m, math.nan, math.nan, 1)
        h = _t975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
        return cls(m, m - h, m + h, len(x))


AGG_FIELDS = ("changing_fraction", "changing_fraction_real", "outside_fraction", "background_error",
              "background_flicker", "background_pixels", "count_match", "count_match_worst_window", "count_std",
              "velocity_error", "label_colours")


def aggregate(videos: list[VideoGates]) -> dict[str, Any]:
    """Mean and 95 % CI over seeds of every number, the pooled changing ratio (mean generated / mean real
    changing fraction; its CI by a deterministic bootstrap over seeds) and the count of missing numbers."""
    out: dict[str, Any] = {}
    for name in AGG_FIELDS:
        if name == "count_match_worst_window":
            vals = [min(v.count_match_windows) for v in videos]
        else:
            vals = [getattr(v, name) for v in videos]
        out[name] = Stat.of(vals)
    gen = np.array([v.changing_fraction for v in videos])
    real = np.array([v.changing_fraction_real for v in videos])
    ratio = float(gen.mean() / real.mean()) if real.mean() > 0 else math.inf
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(2000):
        i = rng.integers(0, len(videos), len(videos))
        if real[i].mean() > 0:
            boots.append(gen[i].mean() / real[i].mean())
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots else (math.nan, math.nan))
    out["changing_ratio"] = Stat(ratio, float(lo), float(hi), len(videos))
    out["velocity_missing"] = sum(not math.isfinite(v.velocity_error) for v in videos)
    out["background_missing"] = sum(not math.isfinite(v.background_error) for v in videos)
    return out

