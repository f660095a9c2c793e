"""The benchmark's plots: ``pareto.png`` (speedup vs PSNR with a Pareto front per policy; timed runs only),
``tokens_psnr.png`` (PSNR vs tokens computed per series, with the matched-compute means and intervals),
``computed_fraction.png`` (tokens computed per row) and ``strip.png`` (uncached / FlowCache / MotionCache
frames at about equal speed). matplotlib is optional: without it no plot is written."""

from __future__ import annotations

import math
from pathlib import Path

from mcgraph.bench.summary import db_value, equal_speed_pair, pareto_front, psnr_cell

__all__ = ["write_plots"]


def _series_style(series: str) -> dict:
    colours = {"none": "black", "teacache": "tab:orange", "flowcache": "tab:blue", "motioncache[hidden]": "tab:red",
               "motioncache[latent]": "tab:green", "motioncache[clean]": "tab:purple",
               "motioncache[residual]": "tab:brown", "oracle": "gold"}
    markers = {"none": "x", "teacache": "s", "flowcache": "o", "oracle": "*"}
    if series.startswith("placebo["):
        return {"color": "gray", "marker": "v"}
    return {"color": colours.get(series, "gray"), "marker": markers.get(series, "^")}


def write_plots(data: dict, out: Path, videos: dict | None = None) -> list[str]:
    """pareto.png, computed_fraction.png and (with videos) strip.png; returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = [_pareto_plot(plt, data, out)]
    written += _tokens_plot(plt, data, out)
    written += _fraction_plot(plt, data, out)
    written += _strip_plot(plt, data, out, videos)
    return written


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _pareto_plot(plt, data: dict, out: Path) -> str:
    """Speedup vs PSNR with a Pareto front per series."""
    t = str(data["generation"]["primary_threads"])
    runs = [r for r in data["runs"] if r["summary"]["speedup"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [v for v in (db_value(r["summary"]["psnr"]) for r in runs) if math.isfinite(v)]
    cap = (max(finite) + 3) if finite else 60.0
    for series in dict.fromkeys(r["series"] for r in runs):
        rs = [r for r in runs if r["series"] == series]
        xs = [r["summary"]["speedup"][t] for r in rs]
        ys = [min(cap, db_value(r["summary"]["psnr"])) for r in rs]
        st = _series_style(series)
        ax.scatter(xs, ys, label=series, color=st["color"], marker=st["marker"], zorder=3)
        front = pareto_front(list(zip(xs, ys)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color=st["color"], alpha=0.6, zorder=2)
        for r, x, y in zip(rs, xs, ys):
            if r["threshold"] is not None:
                ax.annotate(f"{r['threshold']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7,
                            color=st["color"])
    ax.scatter([1.0], [cap], color="black", marker="*", s=80, label="uncached", zorder=3)
    ax.set_xlabel(f"wall-time speedup vs uncached ({t} thread{'s' if t != '1' else ''})")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title("Speed vs fidelity (Pareto front per policy; labels: threshold)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out / "pareto.png")


def _tokens_plot(plt, data: dict, out: Path) -> list[str]:
    """PSNR vs tokens computed (mean over seeds) per series; matched-compute means with 95 % intervals."""
    runs = [r for r in data["runs"] if r["policy"] != "none" and r["summary"]["executed_fraction"] is not None]
    if not runs:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for series in dict.fromkeys(r["series"] for r in runs):
        rs = sorted((r for r in runs if r["series"] == series), key=lambda r: r["summary"]["executed_fraction"])
        st = _series_style(series)
        xs = [r["summary"]["executed_fraction"] for r in rs]
        ys = [min(100.0, db_value(r["summary"]["psnr"])) for r in rs]
        ax.plot(xs, ys, color=st["color"], marker=st["marker"], lw=1, alpha=0.7, label=series)
        match = next((s for s in (data.get("matched_compute") or {}).get("series", []) if s["series"] == series),
                     None)
        for p in (match or {}).get("points", []):
            ps = p["psnr"]
            if ps["mean"] is not None and ps["lo"] is not None:
                ax.errorbar([p["target"]], [ps["mean"]], yerr=[[ps["mean"] - ps["lo"]], [ps["hi"] - ps["mean"]]],
                            color=st["color"], capsize=3, lw=1.5)
    for t in (data.get("matched_compute") or {}).get("targets", []):
        ax.axvline(t, color="gray", lw=0.6, ls=":")
    ax.set_xlabel("tokens computed (fraction, mean over seeds)")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title("Fidelity vs compute (bars: matched-compute mean, 95 % interval)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [_save(plt, fig, out / "tokens_psnr.png")]


def _fraction_plot(plt, data: dict, out: Path) -> list[str]:
    """Computed fraction per row, one panel per series, one line per threshold."""
    runs = data["runs"]
    series_list = [s for s in dict.fromkeys(r["series"] for r in runs) if s != "none"]
    if not series_list:
        return []
    n = len(series_list)
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n + 0.6), sharex=True, squeeze=False)
    active = data["generation"].get("per_row_active_fraction") or []
    for ax, series in zip(axes[:, 0], series_list):
        rs = [r for r in runs if r["series"] == series]
        for r in rs:
            ys = r["per_row_executed_fraction"]
            tag = f"τ={r['threshold']:g}" if r["threshold"] is not None else f"f={r.get('fraction') or 0:g}"
            ax.plot(range(len(ys)), ys, lw=1, label=tag)
        if active:
            ax.plot(range(len(active)), active, color="gray", ls="--", lw=0.8, label="frames stepped")
        ax.set_ylabel("computed")
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(series, fontsize=9, loc="left")
        ax.legend(fontsize=7, ncol=6, loc="lower right")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(f"schedule row (seed {data['settings']['seeds'][0]}; windows one after another)")
    fig.suptitle("Fraction of window tokens run through the blocks per row (mean of cond/uncond)", fontsize=10)
    return [_save(plt, fig, out / "computed_fraction.png")]


def _strip_plot(plt, data: dict, out: Path, videos: dict | None) -> list[str]:
    """Frame strip: uncached / FlowCache / MotionCache at about equal speed (needs the videos)."""
    pair = equal_speed_pair(data)
    if not (videos and pair and "uncached" in videos):
        return []
    import numpy as np

    from mcgraph.eval.video_io import to_uint8_frames

    t = str(data["generation"]["primary_threads"])
    f, m = pair

    def name(r):
        su = r["summary"]
        return (f"{r['label']}\n{su['speedup'][t]:.2f}× ({su['flop_speedup']:.2f}× FLOPs)\n"
                f"{psnr_cell(su)} dB")

    rows = [("uncached", videos["uncached"]), (name(f), videos[f["id"]]), (name(m), videos[m["id"]])]
    frames = to_uint8_frames(videos["uncached"]).shape[0]
    keep = np.unique(np.linspace(0, frames - 1, min(frames, 14)).round().astype(int))
    fig, axes = plt.subplots(len(rows), len(keep), figsize=(len(keep) * 0.9 + 1.6, len(rows) * 1.0 + 0.5),
                             squeeze=False)
    for i, (label, video) in enumerate(rows):
        imgs = to_uint8_frames(video)
        for j, k in enumerate(keep):
            ax = axes[i, j]
            ax.imshow(imgs[k], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"f{k}", fontsize=7)
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"seed {data['settings']['seeds'][0]}: uncached / FlowCache / MotionCache at about equal speed",
                 fontsize=9)
    return [_save(plt, fig, out / "strip.png")]
