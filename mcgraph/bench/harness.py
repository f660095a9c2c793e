"""`mcgraph bench`: speed, FLOPs and fidelity of every caching policy, side by side, reproducibly.

For each seed (a random sprite scene of `mcgraph.zoo.scenes`, the label the bundled model is conditioned on,
and the sampler's noise), the benchmark generates the video with the bundled reference model by diffusion
forcing (the setting of the MotionCache paper's SkyReels-V2 run, scaled down: 50 steps per chunk, CFG,
chunks of `causal_block_size` frames started `ar_step` rows apart, a video longer than one window) once
uncached (the eager model: the baseline) and once per cache configuration (policy x threshold, and for
MotionCache each `motion_source`). Per run it records:

* wall time: the median of `repeats` timed generations per thread count, measured in the same process in
  interleaved rounds (baseline, then every configuration) so that drifting machine load hits all alike;
  speedup = baseline median / run median;
* FLOPs: counted by `torch.utils.flop_counter` (`mcgraph.eval.metrics.flop_counter`) over one whole generation,
  so cached calls count what they really compute; the ideal speedup they imply (FLOP ratio) and the
  efficiency = wall speedup / FLOP speedup (how much of what the skipped arithmetic allows is realised);
* the fraction of tokens run through the blocks per call (from `decision_records`), overall and per row;
* PSNR/SSIM of the decoded video against the uncached video of the same seed: whole frame, moving regions
  and static regions (mask from the uncached video's frame differences), and the latent's relative error;
* peak bytes of the cache state (`cache_state_bytes()` after every call).

The counted generation (untimed) is also the one whose output is scored; each timed generation is checked
to reproduce it exactly. With `peers`, a second section runs diffusers' `WanTransformer3DModel` (random
weights, built offline) in a standard flow-matching loop with CFG under diffusers' own cache hooks
(FirstBlockCache, PyramidAttentionBroadcast, TaylorSeer) and mcgraph's policies, and reports speedup vs the
relative error of the final latent.

Outputs (in `out`): ``bench.json`` (every figure plus the environment; validated against
``mcgraph/bench/schema.json``), ``report.md`` (tables), ``results.md`` (the README "Results" section),
``pareto.png`` (speedup vs PSNR with a Pareto front per policy), ``computed_fraction.png`` (tokens computed
per row) and ``strip.png`` (uncached / FlowCache / MotionCache frames at about equal speed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
POLICIES = ("none", "teacache", "flowcache", "motioncache")
CACHE_POLICIES = ("teacache", "flowcache", "motioncache")
DEFAULT_THRESHOLDS = {
    "teacache": (0.1, 0.4),
    "flowcache": (0.05, 0.1, 0.2),
    "motioncache": (0.05, 0.1, 0.2),
}
QUICK_THRESHOLDS = {"teacache": (0.1,), "flowcache": (0.1,), "motioncache": (0.1,)}
try:  # every motion source this mcgraph knows (config.py is a light import)
    from mcgraph.config import MOTION_SOURCES
except ImportError:  # pragma: no cover
    MOTION_SOURCES = ("hidden", "latent", "clean")
SCHEMA_PATH = Path(__file__).with_name("schema.json")

__all__ = [
    "SCHEMA_PATH",
    "BenchSettings",
    "load_schema",
    "markdown_report",
    "pareto_front",
    "quick_settings",
    "results_section",
    "run_bench",
    "validate",
    "write_outputs",
]


# ------------------------------------------------------------------------------------------- settings
@dataclass
class BenchSettings:
    """Everything that defines a benchmark run (stored verbatim in the JSON)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 50
    shift: float = 2.0
    guidance_scale: float = 4.0
    ar_step: int = 4
    frames: int = 28
    window_frames: int = 16
    overlap_frames: int = 4
    addnoise_condition: float = 20.0
    policies: tuple[str, ...] = POLICIES
    thresholds: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    motion_sources: tuple[str, ...] = MOTION_SOURCES
    repeats: int = 1
    threads: tuple[int, ...] = (1,)
    weights: str | None = None
    peers: bool = False
    peer_model: str = "wan-bench"  # "wan-tiny" (diffusers test size) or "wan-bench" (reference-model size)
    peer_steps: int = 50
    peer_thresholds: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "first_block_cache": (0.05, 0.1, 0.2), "pyramid_attention_broadcast": (2, 3), "taylorseer": (3, 5),
        "teacache": (0.1, 0.2), "flowcache": (0.1, 0.2), "motioncache": (0.1, 0.2)})
    quick: bool = False

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        self.policies = tuple(self.policies)
        self.motion_sources = tuple(self.motion_sources)
        self.threads = tuple(int(t) for t in self.threads)
        self.thresholds = {k: tuple(float(x) for x in v) for k, v in self.thresholds.items()}
        bad = [p for p in self.policies if p not in POLICIES]
        if bad:
            raise ValueError(f"unknown policies {bad}; known: {list(POLICIES)}")
        bad = [s for s in self.motion_sources if s not in MOTION_SOURCES]
        if bad:
            raise ValueError(f"unknown motion sources {bad}; known: {list(MOTION_SOURCES)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not self.threads or min(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        for policy, values in self.thresholds.items():
            if policy not in CACHE_POLICIES:
                raise ValueError(f"thresholds given for {policy!r}, which has none; policies with thresholds: "
                                 f"{list(CACHE_POLICIES)}")
            if any(v < 0 or not math.isfinite(v) for v in values):
                raise ValueError(f"thresholds of {policy} must be finite and >= 0, got {values}")
        if self.peer_model not in ("wan-tiny", "wan-bench"):
            raise ValueError(f"peer_model must be 'wan-tiny' or 'wan-bench', got {self.peer_model!r}")

    def sampler_kwargs(self, causal_block_size: int) -> dict:
        return dict(steps=self.steps, shift=self.shift, guidance_scale=self.guidance_scale,
                    causal_block_size=causal_block_size, ar_step=self.ar_step, window_frames=self.window_frames,
                    overlap_frames=self.overlap_frames, addnoise_condition=self.addnoise_condition)

    def to_json(self) -> dict:
        d = asdict(self)
        d["thresholds"] = {k: list(v) for k, v in self.thresholds.items()}
        d["peer_thresholds"] = {k: list(v) for k, v in self.peer_thresholds.items()}
        for k in ("seeds", "policies", "motion_sources", "threads"):
            d[k] = list(d[k])
        return d


def quick_settings(**overrides) -> BenchSettings:
    """A tiny sweep for CI smoke tests: one seed, 16 steps, 12 frames in two 8-frame windows, one threshold
    per policy, MotionCache with the "hidden" source, the tiny Wan for peers."""
    base = dict(seeds=(0,), steps=16, frames=12, window_frames=8, overlap_frames=4, thresholds=dict(QUICK_THRESHOLDS),
                motion_sources=("hidden",), repeats=1, peer_model="wan-tiny", peer_steps=10,
                peer_thresholds={"first_block_cache": (0.1,), "pyramid_attention_broadcast": (2,),
                                 "taylorseer": (3,), "flowcache": (0.1,), "motioncache": (0.1,)},
                quick=True)
    base.update(overrides)
    return BenchSettings(**base)


# ------------------------------------------------------------------------------------------- helpers
def _finite(x) -> float | None:
    """JSON-safe number: NaN and inf become null (inf PSNR means identical to the uncached output)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


DB_KEYS = ("psnr", "psnr_moving", "psnr_static")


def _db(x) -> float | str | None:
    """JSON form of a PSNR: a number of dB, "inf" (identical to the uncached output) or null (empty region)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, str) or math.isinf(x):
        return "inf"
    return float(x)


def _db_value(x) -> float:
    """Back from the JSON form: "inf" -> inf, null -> nan."""
    if x is None:
        return math.nan
    return math.inf if x == "inf" else float(x)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class _Progress:
    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="gen", leave=True, file=sys.stderr, dynamic_ncols=True)

    def step(self, note: str = "") -> None:
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)

    def add_total(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Probe:
    """Wraps a cached module for the counted run: keeps the peak cache-state size after every call and the
    sampler's per-row "frames that advanced" fraction. Forwards the cache protocol."""

    def __init__(self, module):
        self.module = module
        self.peak_bytes = 0
        has_state = hasattr(module, "cache_state_bytes")
        self._bytes = module.cache_state_bytes if has_state else (lambda: 0)
        if hasattr(module, "cache_context"):
            self.cache_context = module.cache_context
        if hasattr(module, "reset_cache"):
            self.reset_cache = module.reset_cache

    def __call__(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self.peak_bytes = max(self.peak_bytes, int(self._bytes()))
        return out


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


def _environment(settings: BenchSettings, weights_path: Path) -> dict:
    import numpy
    import torch

    from mcgraph.zoo.weights import read_metadata

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "mcgraph": _mcgraph_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "torch_default_threads": torch.get_num_threads(),
        "threads": list(settings.threads),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except Exception:  # optional
        env["diffusers"] = None
    info = {}
    try:
        info = read_metadata(weights_path).get("info", {})
    except Exception:
        pass
    env["checkpoint"] = {"path": str(weights_path), "step": info.get("step"),
                         "modified": datetime.fromtimestamp(weights_path.stat().st_mtime, timezone.utc).isoformat()
                         if weights_path.exists() else None}
    return env


def _mcgraph_version() -> str:
    from mcgraph import __version__

    return __version__


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    import subprocess

    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except Exception:
        pass
    return None


# --------------------------------------------------------------------------------- reference model part
@dataclass
class _Config:
    id: str
    policy: str
    threshold: float | None
    motion_source: str | None
    series: str
    label: str
    config: Any  # mcgraph CacheConfig


def _configs(settings: BenchSettings, final_t: float) -> list[_Config]:
    from mcgraph.config import FlowCacheConfig, MotionCacheConfig, NoCache, TeaCacheConfig

    out = []
    for policy in settings.policies:
        if policy == "none":
            out.append(_Config("none", "none", None, None, "none", "none (captured, no cache)", NoCache()))
            continue
        for tau in settings.thresholds.get(policy, DEFAULT_THRESHOLDS[policy]):
            if policy == "motioncache":
                for src in settings.motion_sources:
                    cfg = MotionCacheConfig(threshold=tau, final_timestep=final_t, motion_source=src)
                    out.append(_Config(f"motioncache-{src}-{tau:g}", policy, tau, src, f"motioncache[{src}]",
                                       f"motioncache[{src}] τ={tau:g}", cfg))
            else:
                cls = TeaCacheConfig if policy == "teacache" else FlowCacheConfig
                out.append(_Config(f"{policy}-{tau:g}", policy, tau, None, policy, f"{policy} τ={tau:g}",
                                   cls(threshold=tau, final_timestep=final_t)))
    return out


def _record_summary(records) -> dict:
    """Fractions of tokens computed from decision records (one per model call)."""
    if not records:
        return {"executed_fraction": 1.0, "decided_fraction": 1.0, "calls": 0,
                "paths": {"full": 0, "subset": 0, "skip": 0}}
    executed = sum(r.executed for r in records)
    tokens = sum(r.tokens for r in records)
    decided = sum(float(r.computed.float().mean()) * r.tokens for r in records)
    paths = {"full": 0, "subset": 0, "skip": 0}
    for r in records:
        paths[r.path] = paths.get(r.path, 0) + 1
    return {"executed_fraction": executed / tokens, "decided_fraction": decided / tokens, "calls": len(records),
            "paths": paths}


def _clear_records(module) -> None:
    """Empty the decision records of every specialisation of an OptimizedModule."""
    for spec in module.__dict__.get("_specialisations", []):
        if spec.step is not None:
            spec.step.records.clear()


def _per_row_fraction(records, calls_per_row: int) -> list[float]:
    """Executed fraction per schedule row (mean over the row's cond/uncond calls)."""
    vals = [r.executed / r.tokens for r in records]
    return [float(sum(vals[i : i + calls_per_row]) / len(vals[i : i + calls_per_row]))
            for i in range(0, len(vals), calls_per_row)]


def run_bench(settings: BenchSettings, *, progress: bool = True, log: Callable[[str], None] = print,
              command: str | None = None) -> dict:
    """Run the benchmark described by `settings`; return the JSON-ready result dict (see the schema)."""
    import numpy as np
    import torch

    import mcgraph

    from mcgraph.eval import metrics
    from mcgraph.config import MotionCacheConfig
    from mcgraph.video.flow_matching import final_timestep
    from mcgraph.video.sampler import SamplerConfig, expected_rows, sample
    from mcgraph.zoo import scenes
    from mcgraph.zoo.latent import latent_to_video
    from mcgraph.zoo.weights import BUNDLED_WEIGHTS, load_reference

    started = time.perf_counter()
    weights_path = Path(settings.weights) if settings.weights else BUNDLED_WEIGHTS
    _set_threads(settings.threads[0])
    env = _environment(settings, weights_path)
    model, encoder = load_reference(weights_path)
    mcfg = model.config
    cbs = mcfg.causal_block_size
    skw = settings.sampler_kwargs(cbs)
    SamplerConfig(**skw)  # validate early
    latent_size = 16
    shape = (1, mcfg.in_channels, settings.frames, latent_size, latent_size)
    final_t = final_timestep(settings.steps, settings.shift)
    configs = _configs(settings, final_t)
    rows = expected_rows(settings.frames, SamplerConfig(**skw))
    calls_per_row = 2 if settings.guidance_scale != 1.0 else 1

    # capture once on a window-sized example; every configuration reuses it (with_config)
    window = min(settings.window_frames, settings.frames)
    g = torch.Generator().manual_seed(0)
    example = dict(hidden_states=torch.randn(1, mcfg.in_channels, window, latent_size, latent_size, generator=g),
                   timesteps=torch.rand(1, window, generator=g) * 1000,
                   context=torch.randn(1, mcfg.label_length or 11, mcfg.context_dim, generator=g))
    t0 = time.perf_counter()
    base = mcgraph.optimize(model, MotionCacheConfig(threshold=0.0, final_timestep=final_t), (), example)
    capture_s = time.perf_counter() - t0
    log(f"model: {weights_path} (step {env['checkpoint']['step']}); captured in {capture_s:.1f} s; "
        f"{settings.frames} frames, {rows} rows x {calls_per_row} calls per generation")
    modules = {c.id: base.with_config(c.config) for c in configs}

    n_gen = len(settings.seeds) * (1 + len(configs)) * (1 + settings.repeats * len(settings.threads))
    bar = _Progress(n_gen, progress, "bench")
    per_seed: dict[str, list[dict]] = {c.id: [] for c in configs}
    baseline_seeds = []
    per_row: dict[str, list[float]] = {}
    active_rows: list[float] = []
    videos: dict[str, Any] = {}
    all_reproducible = True
    try:
        for si, seed in enumerate(settings.seeds):
            scene = scenes.random_scene(np.random.default_rng(seed))
            with torch.no_grad():
                cond = encoder(torch.from_numpy(scene.label())[None])
                neg = encoder(torch.from_numpy(scenes.null_label(1)))
            _set_threads(settings.threads[0])

            def generate(m, on_row=None, cond=cond, neg=neg, seed=seed):
                if hasattr(m, "reset_cache"):
                    m.reset_cache()
                return sample(m, shape, cond, neg, seed=seed, on_row=on_row, **skw)

            # counted (untimed) runs: outputs, FLOPs, decisions, cache size
            def on_row(info, first=si == 0):
                if first:
                    active_rows.append(float(info.update_mask.float().mean()))

            fc = metrics.count_flops(generate, model, on_row)
            ref_latent = fc.result.latent
            ref_video = latent_to_video(ref_latent)[0].clamp(-1, 1)
            moving = metrics.motion_mask(ref_video)[0]
            base_rec = {"seed": seed, "scene": scene.describe(), "flops": fc.total, "flops_by_op": fc.by_op,
                        "model_calls": fc.result.model_calls, "moving_fraction": float(moving.float().mean()),
                        "wall_repeats": {}, "wall_s": {}}
            bar.step(f"seed {seed} uncached (counted)")
            if si == 0:
                videos["uncached"] = ref_video
            outputs = {}
            for c in configs:
                m = modules[c.id]
                probe = _Probe(m)
                recording = getattr(m, "step", None) is not None
                if recording:
                    m.record_decisions(True)
                    _clear_records(m)
                cnt = metrics.count_flops(generate, probe)
                records = list(m.decision_records) if recording else []
                if recording:
                    m.record_decisions(False)
                    _clear_records(m)
                lat = cnt.result.latent
                outputs[c.id] = lat
                video = latent_to_video(lat)[0].clamp(-1, 1)
                quality = metrics.region_metrics(video, ref_video, moving)
                rec = {"seed": seed, "flops": cnt.total, "model_calls": cnt.result.model_calls,
                       "latent_rel_error": metrics.relative_error(lat, ref_latent),
                       "peak_cache_bytes": probe.peak_bytes, "specialisations": int(getattr(m, "specialisations", 1)),
                       **_record_summary(records), **quality, "wall_repeats": {}, "wall_s": {}}
                per_seed[c.id].append(rec)
                if si == 0:
                    videos[c.id] = video
                    per_row[c.id] = _per_row_fraction(records, calls_per_row) if records else [1.0] * rows
                bar.step(f"seed {seed} {c.label} (counted)")

            # timed runs: interleaved rounds (baseline, then every configuration), per thread count
            for threads in settings.threads:
                _set_threads(threads)
                key = str(threads)
                for _ in range(settings.repeats):
                    for c in [None] + configs:
                        m = model if c is None else modules[c.id]
                        t0 = time.perf_counter()
                        res = generate(m)
                        dt = time.perf_counter() - t0
                        target = base_rec if c is None else per_seed[c.id][-1]
                        target["wall_repeats"].setdefault(key, []).append(dt)
                        want = ref_latent if c is None else outputs[c.id]
                        same = bool(torch.equal(res.latent, want))
                        if not same:
                            all_reproducible = False
                            target["reproducible"] = False
                        bar.step(f"seed {seed} {'uncached' if c is None else c.label} {threads}t")
            for target in [base_rec] + [per_seed[c.id][-1] for c in configs]:
                target["wall_s"] = {k: _median(v) for k, v in target["wall_repeats"].items()}
                target.setdefault("reproducible", True)
            for c in configs:
                rec = per_seed[c.id][-1]
                rec["speedup"] = {k: base_rec["wall_s"][k] / rec["wall_s"][k] for k in rec["wall_s"]}
                rec["flop_speedup"] = base_rec["flops"] / max(1, rec["flops"])
                rec["efficiency"] = {k: v / rec["flop_speedup"] for k, v in rec["speedup"].items()}
            baseline_seeds.append(base_rec)
    finally:
        bar.close()
        _set_threads(settings.threads[0])

    primary = str(settings.threads[0])
    runs = []
    for c in configs:
        seeds = per_seed[c.id]
        runs.append({
            "id": c.id, "policy": c.policy, "threshold": c.threshold, "motion_source": c.motion_source,
            "series": c.series, "label": c.label, "config": c.config.to_dict(),
            "summary": _summarise(seeds, baseline_seeds),
            "per_seed": [_json_seed(s) for s in seeds],
            "per_row_executed_fraction": per_row.get(c.id, []),
        })
    _mark_pareto(runs, primary)
    result = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": env,
        "settings": settings.to_json(),
        "generation": {"rows": rows, "calls_per_row": calls_per_row, "latent_shape": list(shape),
                       "causal_block_size": cbs, "final_timestep": final_t, "capture_s": capture_s,
                       "segments": len(_segments(settings)), "primary_threads": int(primary),
                       "per_row_active_fraction": active_rows, "reproducible": all_reproducible},
        "baseline": {"policy": "eager (uncached)", "summary": _summarise_baseline(baseline_seeds),
                     "per_seed": [_json_seed(s) for s in baseline_seeds]},
        "runs": runs,
        "peers": None,
        "artifacts": {},
        "elapsed_s": None,
    }
    result["_videos"] = videos  # not serialised: for the frame strip
    if settings.peers:
        result["peers"] = run_peers(settings, progress=progress, log=log)
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _segments(settings: BenchSettings):
    from mcgraph.video.sampler import plan_segments

    return plan_segments(settings.frames, settings.window_frames, settings.overlap_frames)


def _json_seed(rec: dict) -> dict:
    out = {}
    for k, v in rec.items():
        if k in DB_KEYS:
            out[k] = _db(v)
        elif isinstance(v, float):
            out[k] = _finite(v)
        elif isinstance(v, dict):
            out[k] = {kk: (_finite(vv) if isinstance(vv, float) else vv) for kk, vv in v.items()}
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


def _summarise_baseline(seeds: list[dict]) -> dict:
    keys = seeds[0]["wall_s"].keys()
    return {"wall_s": {k: sum(s["wall_s"][k] for s in seeds) / len(seeds) for k in keys},
            "flops": sum(s["flops"] for s in seeds) / len(seeds),
            "model_calls": seeds[0]["model_calls"]}


def _summarise(seeds: list[dict], baseline: list[dict]) -> dict:
    """Across seeds: time and FLOP ratios of totals (so long and short runs weigh by their cost), quality
    means (PSNR in dB, identical seeds counted as 100 dB unless all are identical: null)."""
    keys = seeds[0]["wall_s"].keys()
    wall = {k: sum(s["wall_s"][k] for s in seeds) / len(seeds) for k in keys}
    speedup = {k: sum(b["wall_s"][k] for b in baseline) / sum(s["wall_s"][k] for s in seeds) for k in keys}
    flops = sum(s["flops"] for s in seeds) / len(seeds)
    flop_speedup = sum(b["flops"] for b in baseline) / max(1, sum(s["flops"] for s in seeds))
    out = {
        "wall_s": wall, "speedup": speedup, "flops": flops, "flop_speedup": flop_speedup,
        "efficiency": {k: v / flop_speedup for k, v in speedup.items()},
        "speedup_min": {k: min(s["speedup"][k] for s in seeds) for k in keys},
        "speedup_max": {k: max(s["speedup"][k] for s in seeds) for k in keys},
        "executed_fraction": _mean([s["executed_fraction"] for s in seeds]),
        "decided_fraction": _mean([s["decided_fraction"] for s in seeds]),
        "psnr": _mean_db([_db_value(s["psnr"]) for s in seeds]),
        "psnr_moving": _mean_db([_db_value(s["psnr_moving"]) for s in seeds]),
        "psnr_static": _mean_db([_db_value(s["psnr_static"]) for s in seeds]),
        "ssim": _mean([s["ssim"] for s in seeds]),
        "ssim_moving": _mean([s["ssim_moving"] for s in seeds]),
        "ssim_static": _mean([s["ssim_static"] for s in seeds]),
        "latent_rel_error": _mean([s["latent_rel_error"] for s in seeds]),
        "peak_cache_bytes": max(s["peak_cache_bytes"] for s in seeds),
        "identical": all(_db_value(s["psnr"]) == math.inf for s in seeds),
        "reproducible": all(s.get("reproducible", True) for s in seeds),
    }
    return {k: (_db(v) if k in DB_KEYS else _finite(v) if isinstance(v, float) else v) for k, v in out.items()}


def _quality_key(summary: dict) -> float:
    v = _db_value(summary.get("psnr"))
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


def _mark_pareto(runs: list[dict], threads: str) -> None:
    """Flag each run on its series' (speedup, PSNR) Pareto front, and on the front of all runs together."""
    def pts(rs):
        return [(r["summary"]["speedup"][threads], _quality_key(r["summary"])) for r in rs]

    for r in runs:
        r["pareto"] = False
        r["pareto_overall"] = False
    for series in {r["series"] for r in runs}:
        rs = [r for r in runs if r["series"] == series]
        for i in pareto_front(pts(rs)):
            rs[i]["pareto"] = True
    for i in pareto_front(pts(runs)):
        runs[i]["pareto_overall"] = True


# --------------------------------------------------------------------------------------- peer section
def _peer_model(size: str):
    import torch

    if size == "wan-tiny":
        from mcgraph.zoo.subjects import wan_subject

        s = wan_subject("tiny")
        model = s.model
        latent = tuple(s.kwargs["hidden_states"].shape)
        text = tuple(s.kwargs["encoder_hidden_states"].shape)
        cfg = dict(model.config)
    else:
        from diffusers import WanTransformer3DModel

        torch.manual_seed(0)
        cfg = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
                   out_channels=16, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, rope_max_seq_len=64)
        model = WanTransformer3DModel(**cfg).eval()
        latent, text = (1, 16, 8, 16, 16), (1, 7, 64)
    keep = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers")
    shown = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in keep}
    return model.eval(), latent, text, shown


def _wan_loop(model, noise, ctx, neg, steps: int, shift: float, guidance: float, contexts: str = "none",
              clock: dict | None = None):
    """Standard flow-matching Euler loop with CFG (diffusers' Wan pipeline order: cond, then uncond).

    contexts: "none" (plain model), "mcgraph" (cache_context(name)) or "diffusers" (cache_context(name, step
    info), which diffusers' stateful cache hooks need)."""
    import torch

    from mcgraph.video.flow_matching import sigma_schedule

    sig = sigma_schedule(steps, shift).float()
    x = noise.clone()
    with torch.no_grad():
        for i in range(steps):
            t = torch.tensor([float(sig[i] * 1000)])
            if clock is not None:
                clock["t"] = float(t)
            if contexts == "diffusers":
                kw = dict(step_index=i, num_inference_steps=steps, timestep=float(t), sigma=float(sig[i]))
                ctx_c, ctx_u = model.cache_context("cond", **kw), model.cache_context("uncond", **kw)
            elif contexts == "mcgraph":
                ctx_c, ctx_u = model.cache_context("cond"), model.cache_context("uncond")
            else:
                ctx_c = ctx_u = contextlib.nullcontext()
            with ctx_c:
                vc = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
            with ctx_u:
                vu = model(hidden_states=x, timestep=t, encoder_hidden_states=neg, return_dict=False)[0]
            x = x + (sig[i + 1] - sig[i]) * (vu + guidance * (vc - vu))
    return x


def _diffusers_methods(settings: BenchSettings, clock: dict) -> list[tuple[str, str, dict, Callable]]:
    import torch
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    th = settings.peer_thresholds
    out = []
    for tau in th.get("first_block_cache", ()):
        out.append(("first_block_cache", f"FirstBlockCache threshold={tau:g}", {"threshold": tau},
                    lambda tau=tau: FirstBlockCacheConfig(threshold=tau)))
    for k in th.get("pyramid_attention_broadcast", ()):
        k = int(k)
        out.append(("pyramid_attention_broadcast", f"PAB skip={k}",
                    {"spatial_attention_block_skip_range": k, "cross_attention_block_skip_range": k,
                     "timestep_skip_range": [100, 800]},
                    lambda k=k: PyramidAttentionBroadcastConfig(
                        spatial_attention_block_skip_range=k, cross_attention_block_skip_range=k,
                        spatial_attention_timestep_skip_range=(100, 800),
                        cross_attention_timestep_skip_range=(100, 800),
                        current_timestep_callback=lambda: clock["t"])))
    for k in th.get("taylorseer", ()):
        k = int(k)
        # diffusers' default identifiers ("^blocks.*attn", fullmatch) match no Wan module: cache whole blocks
        out.append(("taylorseer", f"TaylorSeer interval={k}",
                    {"cache_interval": k, "disable_cache_before_step": 3, "max_order": 1,
                     "cache_identifiers": [r"blocks\.\d+"]},
                    lambda k=k: TaylorSeerCacheConfig(cache_interval=k, disable_cache_before_step=3, max_order=1,
                                                      taylor_factors_dtype=torch.float32,
                                                      cache_identifiers=[r"blocks\.\d+"])))
    return out


def run_peers(settings: BenchSettings, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Diffusers' Wan transformer (random weights): diffusers' cache hooks vs mcgraph's policies."""
    import torch

    import mcgraph

    from mcgraph.eval import metrics
    from mcgraph.config import FlowCacheConfig, MotionCacheConfig, TeaCacheConfig
    from mcgraph.video.flow_matching import final_timestep

    model, latent_shape, text_shape, model_cfg = _peer_model(settings.peer_model)
    steps, shift, guidance = settings.peer_steps, 3.0, settings.guidance_scale
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(latent_shape, generator=g)
    ctx = torch.randn(text_shape, generator=g)
    neg = torch.zeros(text_shape)
    final_t = final_timestep(steps, shift)
    clock = {"t": 1000.0}

    entries: list[dict] = []  # framework, method, label, params, runner (() -> latent)

    def plain():
        return _wan_loop(model, noise, ctx, neg, steps, shift, guidance, "none", clock)

    # mcgraph: capture before any diffusers hook touches the model
    example = dict(hidden_states=noise.clone(), timestep=torch.tensor([500.0]), encoder_hidden_states=ctx,
                   return_dict=False)
    t0 = time.perf_counter()
    base = mcgraph.optimize(model, MotionCacheConfig(threshold=0.0, final_timestep=final_t), (), example)
    capture_s = time.perf_counter() - t0
    classes = {"teacache": TeaCacheConfig, "flowcache": FlowCacheConfig, "motioncache": MotionCacheConfig}
    for policy, cls in classes.items():
        for tau in settings.peer_thresholds.get(policy, ()):
            opt = base.with_config(cls(threshold=float(tau), final_timestep=final_t))

            def runner(opt=opt):
                opt.reset_cache()
                return _wan_loop(opt, noise, ctx, neg, steps, shift, guidance, "mcgraph", clock)

            entries.append({"framework": "mcgraph", "method": policy, "label": f"mcgraph {policy} τ={float(tau):g}",
                            "params": {"threshold": float(tau)}, "run": runner, "module": opt})
    for method, label, params, make in _diffusers_methods(settings, clock):
        def runner(make=make):
            # enable, run, disable: only one cache can be enabled at a time; state reset per generation
            model.enable_cache(make())
            try:
                model._reset_stateful_cache()
                return _wan_loop(model, noise, ctx, neg, steps, shift, guidance, "diffusers", clock)
            finally:
                model.disable_cache()

        entries.append({"framework": "diffusers", "method": method, "label": f"diffusers {label}", "params": params,
                        "run": runner, "module": None})

    n_gen = (1 + len(entries)) * (1 + settings.repeats * len(settings.threads))
    bar = _Progress(n_gen, progress, "peers")
    try:
        _set_threads(settings.threads[0])
        fc = metrics.count_flops(plain)
        ref = fc.result
        base_flops = fc.total
        bar.step("uncached (counted)")
        for e in entries:
            mod = e["module"]
            if mod is not None:
                mod.record_decisions(True)
                _clear_records(mod)
            cnt = metrics.count_flops(e["run"])
            if mod is not None:
                e["fractions"] = _record_summary(list(mod.decision_records))
                mod.record_decisions(False)
                _clear_records(mod)
            e["latent"] = cnt.result
            e["flops"] = cnt.total
            e["rel_error"] = metrics.relative_error(cnt.result, ref)
            e["times"] = {}
            bar.step(f"{e['label']} (counted)")
        base_times: dict[str, list[float]] = {}
        for threads in settings.threads:
            _set_threads(threads)
            key = str(threads)
            for _ in range(settings.repeats):
                for e in [None] + entries:
                    fn = plain if e is None else e["run"]
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    (base_times if e is None else e["times"]).setdefault(key, []).append(dt)
                    bar.step("uncached" if e is None else e["label"])
    finally:
        bar.close()
        _set_threads(settings.threads[0])

    base_wall = {k: _median(v) for k, v in base_times.items()}
    runs = []
    for e in entries:
        wall = {k: _median(v) for k, v in e["times"].items()}
        speedup = {k: base_wall[k] / wall[k] for k in wall}
        flop_speedup = base_flops / max(1, e["flops"])
        run = {"framework": e["framework"], "method": e["method"], "label": e["label"], "params": e["params"],
               "wall_s": wall, "wall_repeats": e["times"], "speedup": speedup, "flops": e["flops"],
               "flop_speedup": flop_speedup, "efficiency": {k: v / flop_speedup for k, v in speedup.items()},
               "rel_error": e["rel_error"],
               "executed_fraction": e.get("fractions", {}).get("executed_fraction")}
        runs.append(run)
    return {
        "model": {"class": "diffusers.WanTransformer3DModel", "name": settings.peer_model, "config": model_cfg,
                  "weights": "random (torch.manual_seed(0))", "latent_shape": list(latent_shape),
                  "text_shape": list(text_shape)},
        "loop": {"steps": steps, "shift": shift, "guidance_scale": guidance, "calls": 2 * steps,
                 "final_timestep": final_t},
        "capture_s": capture_s,
        "baseline": {"wall_s": base_wall, "wall_repeats": base_times, "flops": base_flops},
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------- outputs
def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(data: dict) -> None:
    """Raise jsonschema.ValidationError unless `data` (the loaded bench.json) matches the shipped schema."""
    import jsonschema

    jsonschema.validate(data, load_schema())


def _fmt(v, spec=".2f", none="—") -> str:
    if v is None:
        return none
    if v == "inf" or (isinstance(v, float) and math.isinf(v)):
        return "∞"
    return format(v, spec)


def _psnr_cell(summary: dict, key: str = "psnr") -> str:
    """dB with 2 decimals; ∞ where identical to uncached; — for an empty region."""
    return _fmt(summary.get(key), ".2f")


def _table_rows(data: dict) -> list[dict]:
    t = str(data["generation"]["primary_threads"])
    out = []
    for r in data["runs"]:
        s = r["summary"]
        out.append({"run": r, "speedup": s["speedup"][t], "flop_speedup": s["flop_speedup"],
                    "efficiency": s["efficiency"][t]})
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
        base_row += ["1.0000", "1.0000", "0", "0", _fmt(base["wall_s"][t], ".2f")]
    lines.append("| " + " | ".join(base_row) + " |")
    for row in _table_rows(data):
        r, s = row["run"], row["run"]["summary"]
        name = r["series"] + (" ★" if r.get("pareto_overall") else "")
        cells = [name, _fmt(r["threshold"], "g"), _fmt(row["speedup"], ".2f") + "×",
                 _fmt(row["flop_speedup"], ".2f") + "×", _fmt(row["efficiency"], ".2f"),
                 _fmt(100 * s["executed_fraction"], ".1f") + "%" if s["executed_fraction"] is not None else "—",
                 _psnr_cell(s), _psnr_cell(s, "psnr_moving"), _psnr_cell(s, "psnr_static"), _fmt(s["ssim"], ".4f")]
        if not compact:
            cells += [_fmt(s["ssim_moving"], ".4f"), _fmt(s["ssim_static"], ".4f"),
                      _fmt(s["latent_rel_error"], ".4f"), _fmt(s["peak_cache_bytes"] / 2**20, ".1f"),
                      _fmt(s["wall_s"][t], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peers_table(peers: dict) -> str:
    t = next(iter(peers["baseline"]["wall_s"]))
    head = ["framework", "method", f"speedup ({t} thr)", "FLOP speedup", "efficiency", "rel. error of final latent"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| — | uncached | 1.00× | 1.00× | — | 0 |"]
    for r in sorted(peers["runs"], key=lambda r: (r["framework"], r["method"], -r["speedup"][t])):
        cells = [r["framework"], r["label"].split(" ", 1)[1], _fmt(r["speedup"][t], ".2f") + "×",
                 _fmt(r["flop_speedup"], ".2f") + "×", _fmt(r["efficiency"][t], ".2f"), _fmt(r["rel_error"], ".4f")]
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


def _equal_speed_pair(data: dict, flow_series="flowcache", motion_series=None) -> tuple[dict, dict] | None:
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


def _highlights(data: dict) -> list[str]:
    """A few sentences computed from the numbers (no hand-written claims)."""
    t = str(data["generation"]["primary_threads"])
    out = []
    runs = data["runs"]
    cached = [r for r in runs if r["policy"] != "none"]
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
    pair = _equal_speed_pair(data)
    if pair:
        f, m = pair
        fs, ms = f["summary"], m["summary"]
        out.append(f"At about equal speed (matched on FLOP speedup: {fs['flop_speedup']:.2f}× vs "
                   f"{ms['flop_speedup']:.2f}×), {m['label']} ({ms['speedup'][t]:.2f}×) scores PSNR "
                   f"{_psnr_cell(ms)} dB "
                   f"(moving {_psnr_cell(ms, 'psnr_moving')}, static {_psnr_cell(ms, 'psnr_static')}) against "
                   f"{f['label']} ({fs['speedup'][t]:.2f}×) at {_psnr_cell(fs)} dB (moving "
                   f"{_psnr_cell(fs, 'psnr_moving')}, static {_psnr_cell(fs, 'psnr_static')}).")
    front = [r for r in runs if r.get("pareto_overall")]
    if front:
        out.append("Overall Pareto front (speedup vs PSNR): " + ", ".join(
            f"{r['label']} ({r['summary']['speedup'][t]:.2f}×, {_psnr_cell(r['summary'])} dB)" for r in front) + ".")
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
    parts += ["### Per seed", "", "| run | seed | speedup | FLOP speedup | PSNR | PSNR moving | PSNR static | SSIM |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        for s in r["per_seed"]:
            parts.append(f"| {r['label']} | {s['seed']} | {_fmt(s['speedup'][t])}× | {_fmt(s['flop_speedup'])}× | "
                         f"{_fmt(s['psnr'])} | {_fmt(s['psnr_moving'])} | "
                         f"{_fmt(s['psnr_static'])} | {_fmt(s['ssim'], '.4f')} |")
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
    if data.get("peers"):
        p = data["peers"]
        lines += ["### Peer comparison on diffusers' Wan transformer", "", _peers_intro(p), "", peers_table(p), ""]
    plots = arts.get("plots") or []
    if plots:
        lines += [f"![{Path(x).stem}]({plots_dir.rstrip('/')}/{Path(x).name})" for x in plots] + [""]
    return "\n".join(lines)


def _series_style(series: str) -> dict:
    colours = {"none": "black", "teacache": "tab:orange", "flowcache": "tab:blue", "motioncache[hidden]": "tab:red",
               "motioncache[latent]": "tab:green", "motioncache[clean]": "tab:purple",
               "motioncache[residual]": "tab:brown"}
    markers = {"none": "x", "teacache": "s", "flowcache": "o"}
    return {"color": colours.get(series, "gray"), "marker": markers.get(series, "^")}


def write_plots(data: dict, out: Path, videos: dict | None = None) -> list[str]:
    """pareto.png, computed_fraction.png and (with videos) strip.png; returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    t = str(data["generation"]["primary_threads"])
    written = []
    runs = data["runs"]

    # speedup vs PSNR with a Pareto front per series
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [v for v in (_db_value(r["summary"]["psnr"]) for r in runs) if math.isfinite(v)]
    cap = (max(finite) + 3) if finite else 60.0
    for series in dict.fromkeys(r["series"] for r in runs):
        rs = [r for r in runs if r["series"] == series]
        xs = [r["summary"]["speedup"][t] for r in rs]
        ys = [min(cap, _db_value(r["summary"]["psnr"])) for r in rs]
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
    fig.tight_layout()
    p = out / "pareto.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    written.append(str(p))

    # computed fraction per row, one panel per series, one line per threshold
    series_list = [s for s in dict.fromkeys(r["series"] for r in runs) if s != "none"]
    if series_list:
        n = len(series_list)
        fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n + 0.6), sharex=True, squeeze=False)
        active = data["generation"].get("per_row_active_fraction") or []
        for ax, series in zip(axes[:, 0], series_list):
            rs = [r for r in runs if r["series"] == series]
            for r in rs:
                ys = r["per_row_executed_fraction"]
                ax.plot(range(len(ys)), ys, lw=1, label=f"τ={r['threshold']:g}")
            if active:
                ax.plot(range(len(active)), active, color="gray", ls="--", lw=0.8, label="frames stepped")
            ax.set_ylabel("computed")
            ax.set_ylim(-0.02, 1.05)
            ax.set_title(series, fontsize=9, loc="left")
            ax.legend(fontsize=7, ncol=6, loc="lower right")
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel(f"schedule row (seed {data['settings']['seeds'][0]}; windows one after another)")
        fig.suptitle("Fraction of window tokens run through the blocks per row (mean of cond/uncond)", fontsize=10)
        fig.tight_layout()
        p = out / "computed_fraction.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(str(p))

    # frame strip: uncached / FlowCache / MotionCache at about equal speed
    pair = _equal_speed_pair(data)
    if videos and pair and "uncached" in videos:
        import numpy as np

        from mcgraph.eval.video_io import to_uint8_frames

        f, m = pair
        def name(r):
            su = r["summary"]
            return (f"{r['label']}\n{su['speedup'][t]:.2f}× ({su['flop_speedup']:.2f}× FLOPs)\n"
                    f"{_psnr_cell(su)} dB")

        rows = [("uncached", videos["uncached"]), (name(f), videos[f["id"]]), (name(m), videos[m["id"]])]
        frames = to_uint8_frames(videos["uncached"]).shape[0]
        keep = np.unique(np.linspace(0, frames - 1, min(frames, 14)).round().astype(int))
        fig, axes = plt.subplots(len(rows), len(keep), figsize=(len(keep) * 0.9 + 1.6, len(rows) * 1.0 + 0.5),
                                 squeeze=False)
        for i, (name, video) in enumerate(rows):
            imgs = to_uint8_frames(video)
            for j, k in enumerate(keep):
                ax = axes[i, j]
                ax.imshow(imgs[k], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"f{k}", fontsize=7)
            axes[i, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
        fig.suptitle(f"seed {data['settings']['seeds'][0]}: uncached / FlowCache / MotionCache at about equal speed",
                     fontsize=9)
        fig.tight_layout()
        p = out / "strip.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(str(p))
    return written


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
