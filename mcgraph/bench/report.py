"""The benchmark's outputs: ``bench.json`` (every figure plus the environment; validated against
``mcgraph/bench/schema.json``), ``report.md`` (tables), ``results.md`` (the README "Results" section) and
the plots (`mcgraph.bench.plots`), all generated from the result dict alone. The matched-compute table comes
from `mcgraph.bench.matched`, the cached-video gate table from `mcgraph.bench.video_gates`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mcgraph.bench.matched import matched_intro, matched_table
from mcgraph.bench.plots import write_plots
from mcgraph.bench.summary import equal_speed_pair, fmt, psnr_cell
from mcgraph.bench.video_gates import gates_intro, gates_table

__all__ = ["SCHEMA_PATH", "load_schema", "markdown_report", "markdown_table", "peers_table",
           "results_section", "validate", "write_outputs"]

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(data: dict) -> None:
    """Raise jsonschema.ValidationError unless `data` (the loaded bench.json) matches the shipped schema."""
    import jsonschema

    jsonschema.validate(data, load_schema())


def _at(d: dict | None, t: str):
    """d[t], or None for an untimed run (d None)."""
    return d[t] if d else None


def _times(v) -> str:
    """A ratio cell: 1.23× (— when missing)."""
    return fmt(v) + "×" if v is not None else "—"


def _table_rows(data: dict) -> list[dict]:
    t = str(data["generation"]["primary_threads"])
    out = []
    for r in data["runs"]:
        s = r["summary"]
        timed = r.get("timed", True)
        out.append({"run": r, "speedup": _at(s["speedup"], t), "flop_speedup": s["flop_speedup"] if timed else None,
                    "efficiency": _at(s["efficiency"], t)})
    return out


def markdown_table(data: dict, compact: bool = False) -> str:
    t = str(data["generation"]["primary_threads"])
    base = data["baseline"]["summary"]
    head = ["policy", "τ", f"speedup ({t} thr)", "FLOP speedup", "efficiency", "tokens computed", "PSNR dB",
            "PSNR moving", "PSNR static", "SSIM"]
    if not compact:
        head += ["SSIM moving", "SSIM static", "latent rel. err", "cache MiB", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_row = ["uncached (eager)", "—", "1.00×", "1.00×", "—", "100%", "∞", "∞", "∞", "1.0000"]
    if not compact:
        base_row += ["1.0000", "1.0000", "0", "0", fmt(base["wall_s"][t], ".2f")]
    lines.append("| " + " | ".join(base_row) + " |")
    for row in _table_rows(data):
        r, s = row["run"], row["run"]["summary"]
        name = r["series"] + (" ★" if r.get("pareto_overall") else "")
        tau = fmt(r["threshold"], "g") if r.get("fraction") is None else f"f={r['fraction']:g}"
        cells = [name, tau, _times(row["speedup"]), _times(row["flop_speedup"]), fmt(row["efficiency"], ".2f"),
                 fmt(100 * s["executed_fraction"], ".1f") + "%" if s["executed_fraction"] is not None else "—",
                 psnr_cell(s), psnr_cell(s, "psnr_moving"), psnr_cell(s, "psnr_static"), fmt(s["ssim"], ".4f")]
        if not compact:
            cells += [fmt(s["ssim_moving"], ".4f"), fmt(s["ssim_static"], ".4f"),
                      fmt(s["latent_rel_error"], ".4f"), fmt(s["peak_cache_bytes"] / 2**20, ".1f"),
                      fmt(_at(s["wall_s"], t), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peers_table(peers: dict) -> str:
    t = next(iter(peers["baseline"]["wall_s"]))
    head = ["framework", "method", f"speedup ({t} thr)", "FLOP speedup", "efficiency", "rel. error of final latent"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| — | uncached | 1.00× | 1.00× | — | 0 |"]
    for r in sorted(peers["runs"], key=lambda r: (r["framework"], r["method"], -r["speedup"][t])):
        cells = [r["framework"], r["label"].split(" ", 1)[1], fmt(r["speedup"][t], ".2f") + "×",
                 fmt(r["flop_speedup"], ".2f") + "×", fmt(r["efficiency"][t], ".2f"), fmt(r["rel_error"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setup_line(data: dict) -> str:
    s, env, gen = data["settings"], data["environment"], data["generation"]
    ck = env.get("checkpoint") or {}
    return (f"{len(s['seeds'])} seed(s) {s['seeds']}, {s['frames']} frames in windows of {s['window_frames']} "
            f"(overlap {s['overlap_frames']}), {s['steps']} steps per chunk, CFG {s['guidance_scale']:g}, chunks of "
            f"{gen['causal_block_size']} frames, ar_step {s['ar_step']}, shift {s['shift']:g}: {gen['rows']} rows x "
            f"{gen['calls_per_row']} calls per video. Reference model checkpoint step {ck.get('step')}; "
            f"{env['processor']} ({env['cpu_count']} cores), {gen['primary_threads']} torch thread(s), "
            f"torch {env['torch']}; median of {s['repeats']} timed run(s) per seed.")




def _highlights(data: dict) -> list[str]:
    """A few sentences computed from the numbers (no hand-written claims)."""
    t = str(data["generation"]["primary_threads"])
    out = []
    runs = data["runs"]
    cached = [r for r in runs if r["policy"] != "none" and r["summary"]["efficiency"]]
    if cached:
        eff = [r["summary"]["efficiency"][t] for r in cached]
        out.append(f"Efficiency (wall speedup / FLOP speedup) of the cached runs: {min(eff):.2f} to {max(eff):.2f}, "
                   f"median {statistics.median(eff):.2f}.")
    moving = [s["moving_fraction"] for s in data["baseline"]["per_seed"]]
    if moving:
        lo, hi = round(100 * min(moving)), round(100 * max(moving))
        share = f"{lo}%" if lo == hi else f"{lo}-{hi}%"
        note = " - the videos flicker, so the moving/static split says little here." if lo > 90 else "."
        out.append(f"Moving region (pixels changing by > 10% between frames of the uncached video, dilated 1 px): "
                   f"{share} of the pixels{note}")
    none = [r for r in runs if r["policy"] == "none"]
    if none:
        out.append(f"The captured graph without caching runs at {none[0]['summary']['speedup'][t]:.2f}× the eager "
                   f"model.")
    pair = equal_speed_pair(data)
    if pair:
        f, m = pair
        fs, ms = f["summary"], m["summary"]
        out.append(f"At about equal speed (matched on FLOP speedup: {fs['flop_speedup']:.2f}× vs "
                   f"{ms['flop_speedup']:.2f}×), {m['label']} ({ms['speedup'][t]:.2f}×) scores PSNR "
                   f"{psnr_cell(ms)} dB "
                   f"(moving {psnr_cell(ms, 'psnr_moving')}, static {psnr_cell(ms, 'psnr_static')}) against "
                   f"{f['label']} ({fs['speedup'][t]:.2f}×) at {psnr_cell(fs)} dB (moving "
                   f"{psnr_cell(fs, 'psnr_moving')}, static {psnr_cell(fs, 'psnr_static')}).")
    front = [r for r in runs if r.get("pareto_overall")]
    if front:
        out.append("Overall Pareto front (speedup vs PSNR): " + ", ".join(
            f"{r['label']} ({r['summary']['speedup'][t]:.2f}×, {psnr_cell(r['summary'])} dB)" for r in front) + ".")
    out += _matched_highlight(data)
    return out


def _matched_highlight(data: dict) -> list[str]:
    """One sentence per target fraction where MotionCache and its placebo both have a value."""
    m = data.get("matched_compute")
    if not m:
        return []
    by_series = {s["series"]: s for s in m["series"]}
    src = (data["settings"]["motion_sources"] or ["hidden"])[0]
    mc, pl, orc = (by_series.get(f"motioncache[{src}]"), by_series.get(f"placebo[{src}]"), by_series.get("oracle"))
    out = []
    for i, target in enumerate(m["targets"]):
        if not (mc and pl and mc["points"][i]["psnr"]["mean"] is not None
                and pl["points"][i]["psnr"]["mean"] is not None):
            continue
        a, b = mc["points"][i]["psnr"], pl["points"][i]["psnr"]
        text = (f"At {100 * target:.0f}% of tokens computed, MotionCache[{src}] scores {fmt(a['mean'])} dB PSNR "
                f"(n={a['n']}) and its placebo {fmt(b['mean'])} dB (n={b['n']})")
        if orc and orc["points"][i]["psnr"]["mean"] is not None:
            text += f"; the oracle {fmt(orc['points'][i]['psnr']['mean'])} dB"
        out.append(text + " (95 % intervals in the matched-compute table).")
    return out


def markdown_report(data: dict) -> str:
    """The full report (report.md): settings, environment, the table, the peer table, per-seed details."""
    env = data["environment"]
    t = str(data["generation"]["primary_threads"])
    parts = ["# mcgraph bench report", "", f"Created {data['created']}" + (f" by `{data['command']}`" if data.get(
        "command") else "") + ".", "", _setup_line(data), "",
        f"Environment: Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, diffusers "
        f"{env.get('diffusers')}, mcgraph {env['mcgraph']} ({env.get('git_commit')}), {env['platform']}, "
        f"load average at start {env.get('load_average')}.", "",
        "## Reference model, diffusion forcing", "",
        "Speedup: wall time of the uncached eager model / wall time of the run (same process, interleaved). "
        "FLOP speedup: counted FLOPs uncached / cached. Efficiency: speedup / FLOP speedup. Tokens computed: "
        "tokens run through the blocks / tokens in the window, over all calls. PSNR/SSIM: decoded video vs "
        "the uncached video of the same seed (moving = pixels changing between frames of the uncached video). "
        "★: on the Pareto front of all runs (speedup vs PSNR; per-policy fronts in pareto.png).", "",
        markdown_table(data), ""]
    parts += ["### Highlights", ""] + [f"- {h}" for h in _highlights(data)] + [""]
    if data.get("matched_compute"):
        parts += ["### Quality at matched compute", "", matched_intro(data["matched_compute"]), "",
                  matched_table(data["matched_compute"]), ""]
    if data["baseline"]["summary"].get("gates"):
        parts += ["### Cached-video gates", "", gates_intro(data), "", gates_table(data), ""]
    parts += ["### Per seed", "", "| run | seed | speedup | FLOP speedup | PSNR | PSNR moving | PSNR static | SSIM |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        for s in r["per_seed"]:
            parts.append(f"| {r['label']} | {s['seed']} | {_times(_at(s['speedup'], t))} | {_times(s['flop_speedup'] if r.get('timed', True) else None)} | "
                         f"{fmt(s['psnr'])} | {fmt(s['psnr_moving'])} | "
                         f"{fmt(s['psnr_static'])} | {fmt(s['ssim'], '.4f')} |")
    parts.append("")
    if data.get("peers"):
        p = data["peers"]
        parts += ["## Peer comparison: diffusers WanTransformer3DModel", "", _peers_intro(p), "", peers_table(p), ""]
    if data.get("artifacts", {}).get("plots"):
        parts += ["## Plots", ""] + [f"![{Path(x).stem}]({Path(x).name})" for x in data["artifacts"]["plots"]] + [""]
    return "\n".join(parts)


def _peers_intro(p: dict) -> str:
    m, loop = p["model"], p["loop"]
    return (f"`{m['class']}` ({m['name']}: {m['config']}, {m['weights']}), latent {m['latent_shape']}, a standard "
            f"flow-matching Euler loop, {loop['steps']} steps, shift {loop['shift']:g}, CFG {loop['guidance_scale']:g} "
            f"({loop['calls']} calls). diffusers' caches run through `model.enable_cache(...)` with "
            f"`cache_context('cond'/'uncond', step info)` and `_reset_stateful_cache()` per generation; mcgraph's "
            f"through `mcgraph.optimize`. Error: ||x - x_uncached|| / ||x_uncached|| of the final latent.")


def results_section(data: dict, plots_dir: str | None = None, command: str | None = None) -> str:
    """The README "Results" section, generated from a bench JSON. `plots_dir` is where the PNGs are, relative
    to the README (default: the JSON's artifacts folder as recorded)."""
    arts = data.get("artifacts", {})
    plots_dir = plots_dir if plots_dir is not None else arts.get("dir", ".")
    cmd = command or data.get("command") or "mcgraph bench"
    lines = ["## Results", "",
             "Speed and fidelity of each caching policy on the bundled reference model (diffusion forcing, CFG), "
             "against the uncached video of the same seed. " + _setup_line(data), "",
             "Reproduce with:", "", "```", cmd, "```", "",
             markdown_table(data, compact=True), "",
             "★: on the Pareto front of all runs (speedup vs PSNR). Speedup is measured wall time (same process, "
             "interleaved with the "
             "uncached run); FLOP speedup counts matmul/conv/attention FLOPs with `torch.utils.flop_counter` over "
             "the actual cached calls; efficiency = speedup / FLOP speedup.", ""]
    lines += [f"- {h}" for h in _highlights(data)] + [""]
    if data.get("matched_compute"):
        lines += ["### Quality at matched compute", "", matched_intro(data["matched_compute"]), "",
                  matched_table(data["matched_compute"]), ""]
    if data.get("peers"):
        p = data["peers"]
        lines += ["### Peer comparison on diffusers' Wan transformer", "", _peers_intro(p), "", peers_table(p), ""]
    plots = arts.get("plots") or []
    if plots:
        lines += [f"![{Path(x).stem}]({plots_dir.rstrip('/')}/{Path(x).name})" for x in plots] + [""]
    return "\n".join(lines)




def write_outputs(data: dict, out: str | Path, plots: bool = True, readme_plots_dir: str | None = None) -> dict:
    """Write bench.json (validated), report.md, results.md and the plots into `out`; return artifact paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    videos = data.pop("_videos", None)
    written = write_plots(data, out, videos) if plots else []
    data["artifacts"] = {"dir": str(out), "json": str(out / "bench.json"), "report": str(out / "report.md"),
                         "results": str(out / "results.md"), "plots": written}
    clean = json.loads(json.dumps(data, allow_nan=False, default=str))
    validate(clean)
    (out / "bench.json").write_text(json.dumps(clean, indent=1) + "\n")
    (out / "report.md").write_text(markdown_report(clean) + "\n")
    (out / "results.md").write_text(results_section(clean, readme_plots_dir) + "\n")
    return data["artifacts"]
