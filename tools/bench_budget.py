"""Static token budgets against data-dependent token counts, on the bundled reference model (CPU, one thread).

For each seed (the bench's random sprite scene and its label, the sampler's noise) the same video is generated
by diffusion forcing (`mcgraph.video.sampler.sample`, the bench's schedule `ScheduleSettings`, here 16 frames =
one window by default) uncached (the eager model) and through `mcgraph.optimize` with: MotionCache at each of
`--thresholds` (exact token counts, the default runtime: the "τ sweep"); MotionCache with `token_budget` each of
`--budgets` (threshold 0.1, whose selection ranks first); FlowCache with `token_budget` each of `--flow-budgets`.

Timed generations are interleaved with the uncached one (uncached, A, uncached, B, ...); per seed the wall
time is the median over `--repeats`, the speedup the median uncached time over it. Tokens: executed / tokens
over every call (`opt.record_decisions()`), and over the calls after each context's first call per window
(what the budget fixes). Quality: PSNR (dB) of the decoded video against the uncached one of the same seed
(`mcgraph.eval.metrics.psnr`, as `mcgraph bench`). Budget rows are also read against the τ sweep at their own
token fraction (per seed, `mcgraph.bench.matched.interpolate_at`): PSNR difference and speedup ratio. Means
and 95 % t-intervals over seeds (`t_interval`).

    python tools/bench_budget.py [--seeds 0,1,2] [--steps 50] [--frames 16] [--repeats 1] [--json out.json]

Exit code 0, or 1 on an error (settings, weights) or when the uncached generation did not reproduce itself.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

Candidate = collections.namedtuple("Candidate", "id label config budget")  # config: an mcgraph cache config


class Marked:
    """The optimised model as the sampler sees it, noting where each window starts (its `reset_cache`) in the
    decision records, so that each context's first call of a window (always the full stack) can be told apart."""

    def __init__(self, opt):
        self.opt, self.starts = opt, []
        self.cache_context = opt.cache_context
        opt.record_decisions(True)

    def __call__(self, *args, **kwargs):
        return self.opt(*args, **kwargs)

    def reset_cache(self):
        self.starts.append(len(self.opt.decision_records))
        self.opt.reset_cache()

    def clear(self):
        self.opt.decision_records.clear()
        self.starts = []

    def fractions(self) -> dict:
        records, later, seen = list(self.opt.decision_records), [], set()
        for i, r in enumerate(records):
            seen = set() if i in self.starts else seen
            later += [r] if r.context in seen else []
            seen.add(r.context)
        frac = lambda rs: sum(r.executed for r in rs) / sum(r.tokens for r in rs) if rs else None
        return {"token_fraction": frac(records), "token_fraction_after_first": frac(later), "calls": len(records),
                "full_calls_after_first": sum(r.path == "full" for r in later)}


def parse_args(argv):
    from mcgraph.bench.settings import ScheduleSettings

    d, floats = ScheduleSettings(), lambda text: tuple(float(x) for x in text.split(",") if x.strip())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")), default=(0, 1, 2))
    p.add_argument("--steps", type=int, default=d.steps, help=f"denoising steps per chunk (bench: {d.steps})")
    p.add_argument("--frames", type=int, default=16, help=f"latent frames (bench: {d.frames}; 16 = one window)")
    p.add_argument("--repeats", type=int, default=1, help="timed generations per configuration and seed")
    p.add_argument("--thresholds", type=floats, default=(0.02, 0.05, 0.1, 0.2, 0.4), help="MotionCache τ sweep")
    p.add_argument("--budgets", type=floats, default=(0.5, 0.3, 0.15), help="MotionCache token budgets")
    p.add_argument("--flow-budgets", type=floats, default=(0.3,), help="FlowCache token budgets")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--weights", default=None, help="reference weights (default: the bundled ones)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--progress", action="store_true", help="a line per generation on stderr")
    return p.parse_args(argv)


def candidates(args) -> list[Candidate]:
    from mcgraph.bench.settings import ScheduleSettings, make_cache_config

    def config(policy, threshold=None):  # final_timestep from the schedule, as `mcgraph bench`
        return make_cache_config(policy, steps=args.steps, shift=ScheduleSettings().shift, threshold=threshold)

    out = [Candidate(f"motioncache-t{t:g}", f"MotionCache τ={t:g}", config("motioncache", threshold=t), None)
           for t in args.thresholds]
    for policy, name, budgets in (("motioncache", "MotionCache", args.budgets),
                                  ("flowcache", "FlowCache", args.flow_budgets)):
        for b in budgets:
            c = dataclasses.replace(config(policy), token_budget=b)
            out.append(Candidate(f"{policy}-b{b:g}", f"{name} budget {b:g} (τ={c.threshold:g})", c, b))
    return out


def prepare(args, cands, log):
    """(model, encoder, sampler kwargs, latent shape, {id: Marked}, capture seconds): one capture, shared by
    every configuration (`with_config`), each warmed up on every window length (not timed)."""
    import mcgraph
    from mcgraph.bench.run import LATENT_SIZE
    from mcgraph.bench.runtimes import reference_example, window_lengths
    from mcgraph.bench.settings import ScheduleSettings
    from mcgraph.video.sampler import SamplerConfig
    from mcgraph.zoo.weights import load_reference

    schedule = ScheduleSettings(steps=args.steps, frames=args.frames)
    model, encoder = load_reference(args.weights)
    skw = schedule.sampler_kwargs(model.config.causal_block_size)
    SamplerConfig(**skw)  # validate
    shape = (1, model.config.in_channels, args.frames, LATENT_SIZE, LATENT_SIZE)
    lengths = window_lengths(args.frames, schedule.window_frames, schedule.overlap_frames)
    with torch.no_grad():
        context = encoder(torch.zeros(1, model.config.label_length, dtype=torch.long))
    t0 = time.perf_counter()
    example = lambda n: reference_example(model, n, context, latent_hw=shape[3:])
    base = mcgraph.optimize(model, cands[0].config, (), example(lengths[0]))
    modules = {}
    for c in cands:
        opt = base.with_config(c.config)
        with torch.no_grad():
            for length in lengths:
                with opt.cache_context("warmup"):
                    opt(**example(length))
                opt.reset_cache()
        modules[c.id] = Marked(opt)
    capture_s = time.perf_counter() - t0
    log(f"captured {len(modules)} configurations in {capture_s:.1f} s; window lengths {lengths}")
    return model, encoder, skw, shape, modules, capture_s


def run_seed(args, bench, seed: int, log) -> tuple[dict, bool]:
    """{candidate id: per-seed record}, and whether every uncached generation gave the same latent."""
    from mcgraph.eval.metrics import psnr, relative_error
    from mcgraph.video.sampler import sample
    from mcgraph.zoo import scenes
    from mcgraph.zoo.latent import latent_to_video

    model, encoder, skw, shape, modules, _ = bench
    scene = scenes.random_scene(np.random.default_rng(seed))
    with torch.no_grad():
        cond = encoder(torch.from_numpy(scene.label())[None])
        neg = encoder(torch.from_numpy(scenes.null_label(1)))

    def timed(m):  # (wall s, process CPU s: what other jobs on the machine do not inflate, latent)
        t0, c0 = time.perf_counter(), time.process_time()
        res = sample(m, shape, cond, neg, seed=seed, **skw)
        return time.perf_counter() - t0, time.process_time() - c0, res.latent

    ref, reproducible, recs = None, True, {}
    for rep in range(args.repeats):
        for cid, m in modules.items():
            t_u, c_u, lat_u = timed(model)
            if ref is None:
                ref, ref_video = lat_u, latent_to_video(lat_u)[0].clamp(-1, 1)
            reproducible &= bool(torch.equal(lat_u, ref))
            m.clear()
            t_c, c_c, lat = timed(m)
            rec = recs.setdefault(cid, {"seed": seed, "uncached_s": [], "cached_s": [], "uncached_cpu_s": [],
                                        "cached_cpu_s": []})
            for key, value in zip(("uncached_s", "cached_s", "uncached_cpu_s", "cached_cpu_s"), (t_u, t_c, c_u, c_c)):
                rec[key].append(value)
            if rep == 0:
                rec.update(m.fractions(), latent_rel_error=relative_error(lat, ref),
                           psnr=psnr(latent_to_video(lat)[0].clamp(-1, 1), ref_video))
            if args.progress:
                log(f"seed {seed} repeat {rep} {cid}: uncached {t_u:.2f} s, cached {t_c:.2f} s")
    for rec in recs.values():
        rec["wall_s"] = statistics.median(rec["cached_s"])
        rec["speedup"] = statistics.median(rec["uncached_s"]) / rec["wall_s"]
        rec["cpu_speedup"] = statistics.median(rec["uncached_cpu_s"]) / statistics.median(rec["cached_cpu_s"])
    return recs, reproducible


def stat(values) -> dict:
    """Mean and 95 % t-interval over seeds; an identical video (inf dB) counts as 100 dB unless all are."""
    from mcgraph.bench.matched import DB_CAP, t_interval

    values = [float(v) for v in values if v is not None]
    if values and all(math.isinf(v) for v in values):
        return {"mean": math.inf, "lo": None, "hi": None, "n": len(values)}
    return t_interval(min(v, DB_CAP) for v in values)


def against_sweep(rows: list[dict]) -> None:
    """Each budget row against the τ sweep read at the row's own token fraction, per seed: PSNR budget - sweep
    (dB), speedups budget / sweep; None where the seed's sweep does not bracket the fraction."""
    from mcgraph.bench.matched import DB_CAP, interpolate_at, t_interval

    sweep = [r for r in rows if r["token_budget"] is None]
    for r in rows:
        if r["token_budget"] is None:
            continue
        ratio = lambda a, b: a / b
        for key, compare in (("psnr", lambda a, b: min(a, DB_CAP) - b), ("speedup", ratio), ("cpu_speedup", ratio)):
            values = []
            for s in r["per_seed"]:
                pts = [(t["token_fraction"], t[key]) for q in sweep for t in q["per_seed"] if t["seed"] == s["seed"]]
                s[f"sweep_{key}"] = y = interpolate_at(pts, s["token_fraction"])
                values += [] if y is None else [compare(s[key], y)]
            r[f"vs_sweep_{key}"] = t_interval(values)


def summarise(cands, per_seed: dict) -> list[dict]:
    rows = []
    for c in cands:
        seeds = per_seed[c.id]
        rows.append({"id": c.id, "label": c.label, "policy": c.config.policy, "threshold": c.config.threshold,
                     "token_budget": c.budget, "config": c.config.to_dict(), "per_seed": seeds,
                     **{k: stat([s[k] for s in seeds]) for k in
                        ("token_fraction", "token_fraction_after_first", "wall_s", "speedup", "cpu_speedup",
                         "psnr", "latent_rel_error")},
                     "full_calls_after_first": sum(s["full_calls_after_first"] for s in seeds)})
    against_sweep(rows)
    return rows


def fmt(s: dict | None, scale=1.0, digits=2, ci=True) -> str:
    """mean [lo, hi] (the interval with >= 3 seeds), "inf", or "—" (no value)."""
    if s is None or s["mean"] is None:
        return "—"
    text = "inf" if math.isinf(s["mean"]) else f"{s['mean'] * scale:.{digits}f}"
    if ci and s["n"] >= 3 and s["lo"] is not None:
        text += f" [{s['lo'] * scale:.{digits}f}, {s['hi'] * scale:.{digits}f}]"
    return text


def table(result: dict) -> str:
    head = ["configuration", "tokens % (all calls)", "tokens % (after 1st call)", "wall s", "speedup",
            "CPU-time speedup", "PSNR dB", "ΔPSNR dB vs τ sweep at equal tokens", "CPU speedup / τ sweep's there"]
    rows = [[r["label"], fmt(r["token_fraction"], 100, 1, False), fmt(r["token_fraction_after_first"], 100, 1, False),
             fmt(r["wall_s"], ci=False), fmt(r["speedup"]), fmt(r["cpu_speedup"]), fmt(r["psnr"]),
             fmt(r.get("vs_sweep_psnr")), fmt(r.get("vs_sweep_cpu_speedup"))] for r in result["rows"]]
    base = ["uncached (eager)", "100.0", "100.0", fmt(result["uncached"]["wall_s"], ci=False), "1", "1", "inf", "", ""]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), base, *rows])


def run(args, log) -> dict:
    from mcgraph.bench.environment import bench_environment
    from mcgraph.zoo.weights import BUNDLED_WEIGHTS

    cands = candidates(args)  # invalid thresholds / budgets fail here, before the model loads
    if args.repeats < 1 or args.threads < 1 or not args.seeds or not cands:
        raise ValueError("repeats and threads must be >= 1, with a seed and a threshold or budget at least")
    torch.set_num_threads(args.threads)
    env = bench_environment([args.threads], Path(args.weights) if args.weights else BUNDLED_WEIGHTS)
    started = time.perf_counter()
    bench = prepare(args, cands, log)
    per_seed, uncached, reproducible = {c.id: [] for c in cands}, [], True
    for seed in args.seeds:
        recs, ok = run_seed(args, bench, seed, log)
        reproducible &= ok
        uncached.append(statistics.median([t for r in recs.values() for t in r["uncached_s"]]))
        for cid, rec in recs.items():
            per_seed[cid].append(rec)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python tools/bench_budget.py " + " ".join(sys.argv[1:]) if __name__ == "__main__" else None,
            "environment": {**env, "load_average_end": list(os.getloadavg())},
            "settings": settings, "sampler": bench[2], "latent_shape": list(bench[3]), "capture_s": bench[5],
            "uncached": {"wall_s": stat(uncached), "per_seed_s": uncached}, "rows": summarise(cands, per_seed),
            "reproducible": reproducible, "elapsed_s": time.perf_counter() - started}


def main(argv=None, log=print) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else 1
    try:
        result = run(args, log)
    except (ValueError, OSError, RuntimeError) as e:  # SettingsError, ConfigError, WeightsError, ...
        log(f"error: {type(e).__name__}: {e}")
        return 1
    log(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
        log(f"wrote {args.json}")
    if not result["reproducible"]:
        log("error: the uncached generation did not reproduce itself: the comparisons are not of one computation")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
