"""`mcgraph bench`: speed, FLOPs and fidelity of every caching policy, side by side, reproducibly.

For each seed (a random sprite scene of `mcgraph.zoo.scenes`, the label the bundled model is conditioned on,
and the sampler's noise), the benchmark generates the video with the bundled reference model by diffusion
forcing (the setting of the MotionCache paper's SkyReels-V2 run, scaled down: 50 steps per chunk, CFG,
chunks of `causal_block_size` frames started `ar_step` rows apart, a video longer than one window) once
uncached (the eager model: the baseline) and once per cache configuration (policy x threshold, and for
MotionCache each `motion_source`), plus two controls: the placebo (MotionCache with its motion weights permuted
within each frame) and the oracle (refreshes the tokens whose true residual changed most; it runs the full stack,
so it is not timed). Per run it records:

* wall time: the median of `repeats` timed generations per thread count, measured in the same process in
  interleaved rounds (baseline, then every configuration) so that drifting machine load hits all alike;
  speedup = baseline median / run median;
* FLOPs: counted by `torch.utils.flop_counter` (`mcgraph.eval.metrics.flop_counter`) over one whole generation,
  so cached calls count what they really compute; the ideal speedup they imply (FLOP ratio) and the
  efficiency = wall speedup / FLOP speedup (how much of what the skipped arithmetic allows is realised);
* the fraction of tokens run through the blocks per call (from `decision_records`), overall and per row;
* PSNR/SSIM of the decoded video against the uncached video of the same seed: whole frame, moving regions
  and static regions (mask from the uncached video's frame differences), and the latent's relative error;
* peak bytes of the cache state (`cache_state_bytes()` after every call);
* the model-quality gate numbers of the video vs the real clip of its scene (`mcgraph.bench.video_gates`),
  as for the uncached video.

Across runs, `mcgraph.bench.matched` reads each series' PSNR off its sweep at fixed computed-token fractions
(mean and 95 % t-interval over seeds): quality at matched compute.

The counted generation (untimed) is also the one whose output is scored; each timed generation is checked
to reproduce it exactly. With `peers`, `mcgraph.bench.peers` adds diffusers' own caches on Wan. The outputs
(bench.json, report.md, results.md, plots) are written by `mcgraph.bench.report.write_outputs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mcgraph.bench.environment import bench_environment
from mcgraph.bench.measure import (
    CacheProbe,
    Progress,
    median,
    per_row_fraction,
    record_summary,
    recorded_decisions,
    set_threads,
)
from mcgraph.bench.settings import BenchSettings, SweepConfig, sweep_configs
from mcgraph.bench.matched import matched_compute
from mcgraph.bench.summary import json_seed, mark_pareto, summarise, summarise_baseline
from mcgraph.bench.video_gates import SeedGates, summarise_gates

__all__ = ["SCHEMA_VERSION", "run_bench"]

SCHEMA_VERSION = 2
LATENT_SIZE = 16


@dataclass
class _Sweep:
    """What every seed's runs share: the model, its captured configurations, the sampler settings."""

    settings: BenchSettings
    env: dict
    model: Any
    encoder: Any
    configs: list[SweepConfig]
    modules: dict  # config id -> OptimizedModule
    sampler_kwargs: dict
    shape: tuple
    final_t: float
    rows: int
    calls_per_row: int
    capture_s: float


@dataclass
class _FirstSeed:
    """What only the first seed records: the rows' active fraction, per-row computed fractions, videos."""

    active_rows: list = field(default_factory=list)
    per_row: dict = field(default_factory=dict)
    videos: dict = field(default_factory=dict)


def _prepare(settings: BenchSettings, log: Callable[[str], None]) -> _Sweep:
    """Load the reference model and capture it once on a window-sized example; every configuration reuses
    that capture (`with_config`)."""
    import torch

    import mcgraph
    from mcgraph.config import MotionCacheConfig
    from mcgraph.video.flow_matching import final_timestep
    from mcgraph.video.sampler import SamplerConfig, expected_rows
    from mcgraph.zoo.weights import BUNDLED_WEIGHTS, load_reference

    weights_path = Path(settings.weights) if settings.weights else BUNDLED_WEIGHTS
    set_threads(settings.threads[0])
    env = bench_environment(settings.threads, weights_path)
    model, encoder = load_reference(weights_path)
    mcfg = model.config
    skw = settings.sampler_kwargs(mcfg.causal_block_size)
    SamplerConfig(**skw)  # validate early
    shape = (1, mcfg.in_channels, settings.frames, LATENT_SIZE, LATENT_SIZE)
    final_t = final_timestep(settings.steps, settings.shift)
    configs = sweep_configs(settings, final_t)
    rows = expected_rows(settings.frames, SamplerConfig(**skw))
    calls_per_row = 2 if settings.guidance_scale != 1.0 else 1

    window = min(settings.window_frames, settings.frames)
    g = torch.Generator().manual_seed(0)
    example = dict(hidden_states=torch.randn(1, mcfg.in_channels, window, LATENT_SIZE, LATENT_SIZE, generator=g),
                   timesteps=torch.rand(1, window, generator=g) * 1000,
                   context=torch.randn(1, mcfg.label_length or 11, mcfg.context_dim, generator=g))
    t0 = time.perf_counter()
    base = mcgraph.optimize(model, MotionCacheConfig(threshold=0.0, final_timestep=final_t), (), example)
    capture_s = time.perf_counter() - t0
    log(f"model: {weights_path} (step {env['checkpoint']['step']}); captured in {capture_s:.1f} s; "
        f"{settings.frames} frames, {rows} rows x {calls_per_row} calls per generation")
    modules = {c.id: base.with_config(c.config) for c in configs}
    return _Sweep(settings, env, model, encoder, configs, modules, skw, shape, final_t, rows, calls_per_row,
                  capture_s)


class _SeedRun:
    """One seed's scene, conditioning, real clip (for the gates) and `generate(module)`."""

    def __init__(self, sweep: _Sweep, seed: int):
        import numpy as np
        import torch

        from mcgraph.zoo import scenes

        self.sweep, self.seed = sweep, seed
        self.scene = scenes.random_scene(np.random.default_rng(seed))
        with torch.no_grad():
            self.cond = sweep.encoder(torch.from_numpy(self.scene.label())[None])
            self.neg = sweep.encoder(torch.from_numpy(scenes.null_label(1)))
        st = sweep.settings
        self.gates = SeedGates(self.scene, seed, st.frames, st.window_frames, st.overlap_frames, 2 * LATENT_SIZE)

    def generate(self, m, on_row=None):
        from mcgraph.video.sampler import sample

        if hasattr(m, "reset_cache"):
            m.reset_cache()
        return sample(m, self.sweep.shape, self.cond, self.neg, seed=self.seed, on_row=on_row,
                      **self.sweep.sampler_kwargs)


def _counted_runs(sweep: _Sweep, run: _SeedRun, first: _FirstSeed | None, bar: Progress):
    """The untimed runs whose FLOPs, decisions, cache size and outputs are recorded: the baseline record,
    one record per configuration (config id -> record) and each configuration's latent."""
    from mcgraph.eval import metrics
    from mcgraph.zoo.latent import latent_to_video

    def on_row(info):
        if first is not None:
            first.active_rows.append(float(info.update_mask.float().mean()))

    fc = metrics.count_flops(run.generate, sweep.model, on_row)
    ref_latent = fc.result.latent
    ref_raw = latent_to_video(ref_latent)[0]
    ref_video = ref_raw.clamp(-1, 1)
    moving = metrics.motion_mask(ref_video)[0]
    base_rec = {"seed": run.seed, "scene": run.scene.describe(), "flops": fc.total, "flops_by_op": fc.by_op,
                "model_calls": fc.result.model_calls, "moving_fraction": float(moving.float().mean()),
                "gates": run.gates.score(ref_raw), "wall_repeats": {}, "wall_s": {}}
    bar.step(f"seed {run.seed} uncached (counted)")
    if first is not None:
        first.videos["uncached"] = ref_video
    recs, outputs = {}, {"uncached": ref_latent}
    for c in sweep.configs:
        m = sweep.modules[c.id]
        probe = CacheProbe(m)
        with recorded_decisions(m if getattr(m, "step", None) is not None else None) as records:
            cnt = metrics.count_flops(run.generate, probe)
        lat = cnt.result.latent
        outputs[c.id] = lat
        raw = latent_to_video(lat)[0]
        video = raw.clamp(-1, 1)
        quality = metrics.region_metrics(video, ref_video, moving)
        recs[c.id] = {"seed": run.seed, "flops": cnt.total, "model_calls": cnt.result.model_calls,
                      "latent_rel_error": metrics.relative_error(lat, ref_latent),
                      "peak_cache_bytes": probe.peak_bytes, "specialisations": int(getattr(m, "specialisations", 1)),
                      **record_summary(records), **quality, "gates": run.gates.score(raw),
                      "wall_repeats": {}, "wall_s": {}}
        if first is not None:
            first.videos[c.id] = video
            first.per_row[c.id] = (per_row_fraction(records, sweep.calls_per_row) if records
                                   else [1.0] * sweep.rows)
        bar.step(f"seed {run.seed} {c.label} (counted)")
    return base_rec, recs, outputs


def _timed_runs(sweep: _Sweep, run: _SeedRun, base_rec: dict, recs: dict, outputs: dict, bar: Progress) -> bool:
    """Interleaved rounds (baseline, then every timed configuration) per thread count; each timed generation
    must reproduce the counted one exactly (returns whether all did). Untimed ones (the oracle) get no wall
    time, speedup or efficiency (None)."""
    import torch

    reproducible = True
    timed = [c for c in sweep.configs if c.timed]
    for threads in sweep.settings.threads:
        set_threads(threads)
        key = str(threads)
        for _ in range(sweep.settings.repeats):
            for c in [None] + timed:
                m = sweep.model if c is None else sweep.modules[c.id]
                t0 = time.perf_counter()
                res = run.generate(m)
                dt = time.perf_counter() - t0
                target = base_rec if c is None else recs[c.id]
                target["wall_repeats"].setdefault(key, []).append(dt)
                if not bool(torch.equal(res.latent, outputs["uncached" if c is None else c.id])):
                    reproducible = False
                    target["reproducible"] = False
                bar.step(f"seed {run.seed} {'uncached' if c is None else c.label} {threads}t")
    for target in [base_rec, *recs.values()]:
        target["wall_s"] = {k: median(v) for k, v in target["wall_repeats"].items()}
        target.setdefault("reproducible", True)
    for c in sweep.configs:
        rec = recs[c.id]
        rec["flop_speedup"] = base_rec["flops"] / max(1, rec["flops"])
        if not c.timed:
            rec["wall_repeats"] = rec["wall_s"] = rec["speedup"] = rec["efficiency"] = None
            continue
        rec["speedup"] = {k: base_rec["wall_s"][k] / rec["wall_s"][k] for k in rec["wall_s"]}
        rec["efficiency"] = {k: v / rec["flop_speedup"] for k, v in rec["speedup"].items()}
    return reproducible


def run_bench(settings: BenchSettings, *, progress: bool = True, log: Callable[[str], None] = print,
              command: str | None = None) -> dict:
    """Run the benchmark described by `settings`; return the JSON-ready result dict (see the schema)."""
    started = time.perf_counter()
    sweep = _prepare(settings, log)
    timed = 1 + sum(c.timed for c in sweep.configs)
    n_gen = len(settings.seeds) * (1 + len(sweep.configs) + timed * settings.repeats * len(settings.threads))
    bar = Progress(n_gen, progress, "bench")
    per_seed: dict[str, list[dict]] = {c.id: [] for c in sweep.configs}
    baseline_seeds = []
    first = _FirstSeed()
    all_reproducible = True
    try:
        for si, seed in enumerate(settings.seeds):
            run = _SeedRun(sweep, seed)
            set_threads(settings.threads[0])
            base_rec, recs, outputs = _counted_runs(sweep, run, first if si == 0 else None, bar)
            all_reproducible &= _timed_runs(sweep, run, base_rec, recs, outputs, bar)
            for c in sweep.configs:
                per_seed[c.id].append(recs[c.id])
            baseline_seeds.append(base_rec)
    finally:
        bar.close()
        set_threads(settings.threads[0])
    result = _result(sweep, per_seed, baseline_seeds, first, all_reproducible, command)
    if settings.peers:
        from mcgraph.bench.peers import run_peers

        result["peers"] = run_peers(settings, progress=progress, log=log)
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _result(sweep: _Sweep, per_seed: dict, baseline_seeds: list, first: _FirstSeed, reproducible: bool,
            command: str | None) -> dict:
    from mcgraph.video.sampler import plan_segments

    settings = sweep.settings
    primary = str(settings.threads[0])
    runs = []
    for c in sweep.configs:
        seeds = per_seed[c.id]
        runs.append({
            "id": c.id, "policy": c.policy, "threshold": c.threshold, "fraction": c.fraction,
            "motion_source": c.motion_source, "timed": c.timed,
            "series": c.series, "label": c.label, "config": c.config.to_dict(),
            "summary": summarise(seeds, baseline_seeds),
            "per_seed": [json_seed(s) for s in seeds],
            "per_row_executed_fraction": first.per_row.get(c.id, []),
        })
    mark_pareto(runs, primary)
    segments = plan_segments(settings.frames, settings.window_frames, settings.overlap_frames)
    result = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": sweep.env,
        "settings": settings.to_json(),
        "generation": {"rows": sweep.rows, "calls_per_row": sweep.calls_per_row, "latent_shape": list(sweep.shape),
                       "causal_block_size": sweep.model.config.causal_block_size, "final_timestep": sweep.final_t,
                       "capture_s": sweep.capture_s, "segments": len(segments), "primary_threads": int(primary),
                       "per_row_active_fraction": first.active_rows, "reproducible": reproducible},
        "baseline": {"policy": "eager (uncached)",
                     "summary": {**summarise_baseline(baseline_seeds),
                                 "gates": summarise_gates([s.get("gates") for s in baseline_seeds])},
                     "per_seed": [json_seed(s) for s in baseline_seeds]},
        "runs": runs,
        "matched_compute": matched_compute(runs, settings.match_fractions, settings.seeds),
        "peers": None,
        "artifacts": {},
        "elapsed_s": None,
    }
    result["_videos"] = first.videos  # not serialised: for the frame strip
    return result
