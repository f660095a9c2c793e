"""The sweep's figures in JSON form: numbers JSON can hold, means across seeds, Pareto fronts, and the
FlowCache / MotionCache pair at about equal speed, table cells (used by the report and the plots)."""

from __future__ import annotations

import math

__all__ = ["DB_KEYS", "db", "db_value", "equal_speed_pair", "finite", "fmt", "json_seed", "mark_pareto", "pareto_front",
           "psnr_cell", "summarise", "summarise_baseline"]

DB_KEYS = ("psnr", "psnr_moving", "psnr_static")


def finite(x) -> float | None:
    """JSON-safe number: NaN and inf become null (inf PSNR means identical to the uncached output)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def db(x) -> float | str | None:
    """JSON form of a PSNR: a number of dB, "inf" (identical to the uncached output) or null (empty region)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, str) or math.isinf(x):
        return "inf"
    return float(x)


def db_value(x) -> float:
    """Back from the JSON form: "inf" -> inf, null -> nan."""
    if x is None:
        return math.nan
    return math.inf if x == "inf" else float(x)


def json_seed(rec: dict) -> dict:
    out = {}
    for k, v in rec.items():
        if k in DB_KEYS:
            out[k] = db(v)
        elif isinstance(v, float):
            out[k] = finite(v)
        elif isinstance(v, dict):
            out[k] = {kk: (finite(vv) if isinstance(vv, float) else vv) for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def _mean_db(values: list[float]) -> float:
    """Mean dB over seeds; a seed identical to uncached counts as 100 dB unless all are (inf); nan if none."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    if all(math.isinf(v) for v in vals):
        return math.inf
    return float(sum(min(v, 100.0) for v in vals) / len(vals))


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else None


def summarise_baseline(seeds: list[dict]) -> dict:
    keys = seeds[0]["wall_s"].keys()
    return {"wall_s": {k: sum(s["wall_s"][k] for s in seeds) / len(seeds) for k in keys},
            "flops": sum(s["flops"] for s in seeds) / len(seeds),
            "model_calls": seeds[0]["model_calls"]}


def _timing(seeds: list[dict], baseline: list[dict], flop_speedup: float) -> dict:
    """Wall time, speedup (ratio of totals), efficiency, per-seed speedup range; all None for an untimed run."""
    if any(not s.get("wall_s") for s in seeds):
        return dict.fromkeys(("wall_s", "speedup", "efficiency", "speedup_min", "speedup_max"))
    keys = seeds[0]["wall_s"].keys()
    speedup = {k: sum(b["wall_s"][k] for b in baseline) / sum(s["wall_s"][k] for s in seeds) for k in keys}
    return {"wall_s": {k: sum(s["wall_s"][k] for s in seeds) / len(seeds) for k in keys}, "speedup": speedup,
            "efficiency": {k: v / flop_speedup for k, v in speedup.items()},
            "speedup_min": {k: min(s["speedup"][k] for s in seeds) for k in keys},
            "speedup_max": {k: max(s["speedup"][k] for s in seeds) for k in keys}}


def summarise(seeds: list[dict], baseline: list[dict]) -> dict:
    """Across seeds: time and FLOP ratios of totals (so long and short runs weigh by their cost), quality
    means (PSNR in dB, identical seeds counted as 100 dB unless all are identical: null), gate means."""
    from mcgraph.bench.video_gates import summarise_gates

    flops = sum(s["flops"] for s in seeds) / len(seeds)
    flop_speedup = sum(b["flops"] for b in baseline) / max(1, sum(s["flops"] for s in seeds))
    out = {
        **_timing(seeds, baseline, flop_speedup), "flops": flops, "flop_speedup": flop_speedup,
        "executed_fraction": _mean([s["executed_fraction"] for s in seeds]),
        "decided_fraction": _mean([s["decided_fraction"] for s in seeds]),
        "psnr": _mean_db([db_value(s["psnr"]) for s in seeds]),
        "psnr_moving": _mean_db([db_value(s["psnr_moving"]) for s in seeds]),
        "psnr_static": _mean_db([db_value(s["psnr_static"]) for s in seeds]),
        "ssim": _mean([s["ssim"] for s in seeds]),
        "ssim_moving": _mean([s["ssim_moving"] for s in seeds]),
        "ssim_static": _mean([s["ssim_static"] for s in seeds]),
        "latent_rel_error": _mean([s["latent_rel_error"] for s in seeds]),
        "peak_cache_bytes": max(s["peak_cache_bytes"] for s in seeds),
        "identical": all(db_value(s["psnr"]) == math.inf for s in seeds),
        "reproducible": all(s.get("reproducible", True) for s in seeds),
        "gates": summarise_gates([s.get("gates") for s in seeds]),
    }
    return {k: (db(v) if k in DB_KEYS else finite(v) if isinstance(v, float) else v) for k, v in out.items()}


def _quality_key(summary: dict) -> float:
    v = db_value(summary.get("psnr"))
    return -math.inf if math.isnan(v) else v


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated by another (higher-or-equal in both coordinates, better in one),
    sorted by the first coordinate."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def mark_pareto(runs: list[dict], threads: str) -> None:
    """Flag each run on its series' (speedup, PSNR) Pareto front, and on the front of all runs together
    (untimed runs, the oracle, are on no front)."""
    def pts(rs):
        return [(r["summary"]["speedup"][threads], _quality_key(r["summary"])) for r in rs]

    for r in runs:
        r["pareto"] = False
        r["pareto_overall"] = False
    timed = [r for r in runs if r["summary"]["speedup"]]
    for series in {r["series"] for r in timed}:
        rs = [r for r in timed if r["series"] == series]
        for i in pareto_front(pts(rs)):
            rs[i]["pareto"] = True
    for i in pareto_front(pts(timed)):
        timed[i]["pareto_overall"] = True


def equal_speed_pair(data: dict, flow_series="flowcache", motion_series=None) -> tuple[dict, dict] | None:
    """The (FlowCache run, MotionCache run) closest in speed, or None when either series is missing."""
    t = str(data["generation"]["primary_threads"])
    runs = data["runs"]
    flows = [r for r in runs if r["series"] == flow_series]
    if motion_series is None:
        srcs = data["settings"]["motion_sources"]
        motion_series = f"motioncache[{srcs[0]}]" if srcs else "motioncache[hidden]"
    motions = [r for r in runs if r["series"] == motion_series]
    if not flows or not motions:
        return None
    def same(f, m):  # MotionCache that never left its chunk-wise phase 1 reproduces FlowCache exactly
        return f["summary"]["psnr"] == m["summary"]["psnr"] and f["summary"]["flops"] == m["summary"]["flops"]

    # matched on the FLOP speedup (deterministic; wall time on a shared machine is not), then on wall speed
    best = min(((f, m) for f in flows for m in motions),
               key=lambda p: (same(*p), round(abs(math.log(p[0]["summary"]["flop_speedup"]
                                                            / p[1]["summary"]["flop_speedup"])), 2),
                              abs(math.log(p[0]["summary"]["speedup"][t] / p[1]["summary"]["speedup"][t])),
                              -p[0]["summary"]["speedup"][t]))
    return best


def fmt(v, spec=".2f", none="—") -> str:
    """A figure for a table: `spec` format, ∞ for inf, `none` for a missing value."""
    if v is None:
        return none
    if v == "inf" or (isinstance(v, float) and math.isinf(v)):
        return "∞"
    return format(v, spec)


def psnr_cell(summary: dict, key: str = "psnr") -> str:
    """dB with 2 decimals; ∞ where identical to uncached; — for an empty region."""
    return fmt(summary.get(key), ".2f")


