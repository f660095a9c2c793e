"""`mcgraph bench --runtimes eager,compile,onnx`: the same cached generation on each runtime, side by side.

On the reference model, one policy at one threshold (default MotionCache 0.1), one seed, in one process with
a fixed thread count (default 1), every run is a whole diffusion-forcing generation with CFG timed by the
sampler (median of `repeats`, the runs interleaved repeat by repeat):

    eager uncached               the original model
    eager cached (exact K)       mcgraph.optimize, capacity_buckets None (exactly the selected tokens)
    eager cached (buckets)       the same with static capacity buckets (DEFAULT_GRAPH_BUCKETS by default)
    compiled cached              torch.compile(that model, fullgraph=True, dynamic=False), after an untimed
                                 warm-up generation that compiles its graphs
    ORT uncached                 plain torch.onnx.export of the original model, run by ONNX Runtime
    ORT cached                   mcgraph.export.onnx of the bucketed model, run by mcgraph.export.OrtSession

and reports times, speedups (eager: uncached / cached; compile: eager cached with buckets / compiled; ORT:
ORT uncached / ORT cached; and ORT speedup / eager speedup, whose target is >= 0.8), parity (largest
difference of the final latents between the bucketed eager, compiled and ORT cached runs: the same
computation, so float noise only), compile and export times, ONNX node counts and file sizes. The tables
and DIR/runtime_bench.json, DIR/runtime_report.md are written by `mcgraph.bench.runtime_report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcgraph.bench.environment import runtime_environment
from mcgraph.bench.measure import Progress, median, ratio
from mcgraph.bench.settings import RuntimeBenchSettings

__all__ = ["LABELS", "NOISE_FACTOR", "ORT_TARGET", "PARITY_TOL", "run_runtime_bench"]

ORT_TARGET = 0.8  # ORT speedup / eager speedup should be at least this
PARITY_TOL = 1e-4  # relative to max(1, max |latent|)
NOISE_FACTOR = 4.0  # times the uncached ORT-vs-eager difference (the float noise of a whole generation)

# run ids, in table order
EAGER_UNCACHED, EAGER_EXACT, EAGER_BUCKETS = "eager_uncached", "eager_cached_exact", "eager_cached_buckets"
COMPILED, ORT_UNCACHED, ORT_CACHED = "compiled_cached", "ort_uncached", "ort_cached"
LABELS = {
    EAGER_UNCACHED: "eager uncached",
    EAGER_EXACT: "eager cached (exact K)",
    EAGER_BUCKETS: "eager cached (buckets)",
    COMPILED: "compiled cached",
    ORT_UNCACHED: "ORT uncached",
    ORT_CACHED: "ORT cached",
}


# ------------------------------------------------------------------------------------------ the runs
@dataclass
class _Setup:
    """The model, the conditioning, the window examples and the two cache configs (exact K, bucketed)."""

    settings: RuntimeBenchSettings
    weights: Path
    model: Any
    shape: tuple
    cond: Any
    neg: Any
    sampler_config: Any
    lengths: list
    examples: dict
    exact: Any
    bucketed: Any

    def generate(self, m):
        from mcgraph.video.sampler import sample

        return sample(m, self.shape, self.cond, self.neg, config=self.sampler_config, seed=self.settings.seed)


def _load(settings: RuntimeBenchSettings) -> _Setup:
    import numpy as np
    import torch

    from mcgraph.bench.runtimes import graph_config, reference_example, window_lengths
    from mcgraph.bench.settings import make_cache_config
    from mcgraph.video.sampler import SamplerConfig
    from mcgraph.zoo import scenes
    from mcgraph.zoo.weights import BUNDLED_WEIGHTS, load_reference

    weights = Path(settings.weights) if settings.weights else BUNDLED_WEIGHTS
    model, encoder = load_reference(weights)
    mcfg = model.config
    sampler_config = SamplerConfig(**settings.sampler_kwargs(mcfg.causal_block_size))
    shape = (1, mcfg.in_channels, settings.frames, 16, 16)
    scene = scenes.random_scene(np.random.default_rng(settings.seed))
    with torch.no_grad():
        cond = encoder(torch.from_numpy(scene.label())[None])
        neg = encoder(torch.from_numpy(scenes.null_label(1)))
    lengths = window_lengths(settings.frames, settings.window_frames, settings.overlap_frames)
    examples = {n: reference_example(model, n, cond) for n in lengths}
    exact = make_cache_config(settings.policy, steps=settings.steps, shift=settings.shift,
                              threshold=settings.threshold, motion_source=settings.motion_source)
    return _Setup(settings, weights, model, shape, cond, neg, sampler_config, lengths, examples, exact,
                  graph_config(exact, settings.buckets))


def _capture(setup: _Setup, log: Callable[[str], None]) -> tuple[Any, Any, float]:
    """(exact-K model, bucketed model, seconds): captured on every window shape before anything is timed."""
    import torch

    import mcgraph

    def capture_all(opt):
        with torch.no_grad():
            for kwargs in setup.examples.values():
                with opt.cache_context("warmup"):
                    opt(**kwargs)
                opt.reset_cache()
        return opt

    s = setup.settings
    t0 = time.perf_counter()
    opt_exact = capture_all(mcgraph.optimize(setup.model, setup.exact, (), setup.examples[setup.lengths[0]]))
    opt_buckets = capture_all(opt_exact.with_config(setup.bucketed))
    capture_s = time.perf_counter() - t0
    buckets_text = ",".join(f"{b:g}" for b in setup.bucketed.capacity_buckets)
    log(f"model: {setup.weights}; {s.policy} threshold {s.threshold:g}, buckets {buckets_text}; "
        f"{s.frames} frames (windows {setup.lengths}), {s.steps} steps, {s.threads} thread(s); "
        f"captured in {capture_s:.1f} s")
    return opt_exact, opt_buckets, capture_s


def _add_compiled(setup: _Setup, opt_exact, runners: dict, info: dict, log: Callable[[str], None]) -> None:
    from mcgraph.bench.runtimes import compile_model, compiled_graphs

    backend = setup.settings.compile_backend
    log(f"compile: torch.compile(backend={backend}, fullgraph=True, dynamic=False), "
        "compiling during a warm-up generation ...")
    compiled = compile_model(opt_exact.with_config(setup.bucketed), backend)
    graphs = compiled_graphs()
    t0 = time.perf_counter()
    first = setup.generate(compiled)
    info[COMPILED] = {"backend": backend, "first_generation_s": time.perf_counter() - t0,
                      "graphs": compiled_graphs() - graphs, "first_generation_latent": first.latent}
    runners[COMPILED] = compiled
    log(f"compile: first generation {info[COMPILED]['first_generation_s']:.1f} s ({info[COMPILED]['graphs']} graphs)")


def _add_onnx(setup: _Setup, opt_buckets, out_dir: Path, runners: dict, info: dict,
              log: Callable[[str], None]) -> None:
    from mcgraph.bench.runtimes import export_cached, export_uncached

    onnx_dir = out_dir / "onnx"
    threads = setup.settings.threads
    log(f"onnx: exporting to {onnx_dir} ...")
    ort_uncached = export_uncached(setup.model, setup.examples, onnx_dir, stem="uncached", threads=threads,
                                   log=lambda s: log(f"onnx: {s}"))
    ort_cached = export_cached(opt_buckets, setup.examples, onnx_dir, stem="cached", threads=threads,
                               log=lambda s: log(f"onnx: {s}"))
    for rid, runner in ((ORT_UNCACHED, ort_uncached), (ORT_CACHED, ort_cached)):
        t0 = time.perf_counter()
        setup.generate(runner)  # warm-up: ONNX Runtime allocates on first use
        info[rid] = {"export_s": runner.export_seconds, "session_s": runner.session_seconds,
                     "first_generation_s": time.perf_counter() - t0,
                     "files": [{"path": f.path, "latent_shape": list(f.latent_shape), "seconds": f.seconds,
                                "bytes": f.bytes, "nodes": f.nodes} for f in runner.files]}
        runners[rid] = runner


@dataclass
class _Timings:
    times: dict  # run id -> seconds per repeat
    latents: dict  # run id -> the last generation's latent
    computed: dict  # run id -> computed fraction of the last generation
    decisions: dict  # run id -> the last generation's StepRecords
    recompiled: int  # graphs compiled during the timed runs


def _timed_runs(setup: _Setup, runners: dict, progress: bool) -> _Timings:
    """`repeats` rounds over every runner; records the decisions of the cached eager and ORT runs."""
    from mcgraph.bench.runtimes import compiled_graphs

    recorders = {rid: r for rid, r in runners.items() if rid in (EAGER_EXACT, EAGER_BUCKETS, ORT_CACHED)}
    for r in recorders.values():
        r.record_decisions()
    out = _Timings({rid: [] for rid in runners}, {}, {}, {}, 0)
    bar = Progress(setup.settings.repeats * len(runners), progress, "runtimes")
    try:
        for _ in range(setup.settings.repeats):
            for rid, runner in runners.items():
                start = len(runner.decision_records) if rid in recorders else 0
                graphs = compiled_graphs()
                result = setup.generate(runner)
                if rid == COMPILED:
                    out.recompiled += compiled_graphs() - graphs
                out.times[rid].append(result.wall_time_s)
                out.latents[rid] = result.latent
                if rid in recorders:
                    recs = runner.decision_records[start:]
                    out.decisions[rid] = recs
                    out.computed[rid] = sum(r.executed for r in recs) / max(1, sum(r.tokens for r in recs))
                bar.step(f"{LABELS[rid]} {result.wall_time_s:.2f} s")
    finally:
        bar.close()
    out.computed[EAGER_UNCACHED] = 1.0
    if ORT_UNCACHED in runners:
        out.computed[ORT_UNCACHED] = 1.0
    if COMPILED in runners:
        out.computed[COMPILED] = out.computed[EAGER_BUCKETS]  # same decisions (parity); compiled calls record none
    return out


def run_runtime_bench(settings: RuntimeBenchSettings, out_dir: str | Path, *, progress: bool = True,
                      log: Callable[[str], None] = print, command: str | None = None) -> dict:
    """Run the benchmark described by `settings` (ONNX files go to `out_dir`/onnx); return the result dict."""
    import torch

    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    setup = _load(settings)
    opt_exact, opt_buckets, capture_s = _capture(setup, log)
    runners: dict[str, object] = {EAGER_UNCACHED: setup.model, EAGER_EXACT: opt_exact, EAGER_BUCKETS: opt_buckets}
    info: dict[str, dict] = {}
    if "compile" in settings.runtimes:
        _add_compiled(setup, opt_exact, runners, info, log)
    if "onnx" in settings.runtimes:
        _add_onnx(setup, opt_buckets, Path(out_dir), runners, info, log)
    timings = _timed_runs(setup, runners, progress)
    medians = {rid: median(t) for rid, t in timings.times.items()}
    return {
        "kind": "mcgraph runtime benchmark",
        "command": command,
        "settings": settings.to_json(),
        "graph_buckets": list(setup.bucketed.capacity_buckets),
        "config": setup.exact.to_dict(),
        "environment": runtime_environment(settings.threads, setup.weights),
        "windows": setup.lengths,
        "model_calls": len(runners[EAGER_EXACT].decision_records) // settings.repeats,  # per generation
        "runs": _runs(settings, runners, timings, medians),
        "ratios": _ratios(medians),
        "parity": _parity(timings),
        "compile": _compile_info(info, timings, medians),
        "onnx": _onnx_info(info),
        "capture_s": capture_s,
        "elapsed_s": time.perf_counter() - started,
    }


# ------------------------------------------------------------------------------------------ the figures
def _runs(settings: RuntimeBenchSettings, runners: dict, timings: _Timings, medians: dict) -> list[dict]:
    from mcgraph.eval.metrics import psnr
    from mcgraph.zoo.latent import latent_to_video

    base_video = latent_to_video(timings.latents[EAGER_UNCACHED])[0].clamp(-1, 1)
    runs = []
    for rid in runners:
        video = latent_to_video(timings.latents[rid])[0].clamp(-1, 1)
        p = psnr(video, base_video)
        runs.append({"id": rid, "label": LABELS[rid] + (f" ({settings.compile_backend})" if rid == COMPILED else ""),
                     "runtime": "eager" if rid.startswith("eager") else ("compile" if rid == COMPILED else "onnx"),
                     "cached": rid not in (EAGER_UNCACHED, ORT_UNCACHED), "median_s": medians[rid],
                     "times_s": timings.times[rid], "computed_fraction": timings.computed.get(rid),
                     "psnr_vs_eager_uncached_db": None if p == float("inf") else p,
                     "identical_to_eager_uncached": p == float("inf")})
    return runs


def _parity(timings: _Timings) -> dict:
    """Largest differences of the final latents between runtimes, and whether they are float noise.

    Every model call's float noise (kernels summing in another order) is carried through all the rows of the
    generation, so the final latents of two runtimes differ by more than one call's outputs do: the uncached
    ORT run differs from the uncached eager run by about as much as the cached runs differ from each other.
    The tolerance is therefore max(PARITY_TOL * max(1, max |latent|), NOISE_FACTOR * that uncached difference);
    a different decision anywhere would show as a difference of the order of the latents themselves."""
    latents, decisions = timings.latents, timings.decisions

    def diff(a, b):
        if a not in latents or b not in latents:
            return None
        return float((latents[a] - latents[b]).abs().max())

    scale = max(1.0, float(latents[EAGER_BUCKETS].abs().max()))
    parity = {
        "compiled_vs_eager_buckets": diff(COMPILED, EAGER_BUCKETS),
        "ort_cached_vs_eager_buckets": diff(ORT_CACHED, EAGER_BUCKETS),
        "ort_cached_vs_compiled": diff(ORT_CACHED, COMPILED),
        "ort_uncached_vs_eager_uncached": diff(ORT_UNCACHED, EAGER_UNCACHED),
    }
    checked = [v for v in parity.values() if v is not None]
    noise = parity["ort_uncached_vs_eager_uncached"]
    parity["latent_abs_max"] = scale
    parity["tolerance"] = max(PARITY_TOL * scale, NOISE_FACTOR * noise if noise is not None else 0.0)
    parity["max_abs_diff"] = max(checked, default=0.0)
    parity["ort_decisions_identical"] = (_same_decisions(decisions[ORT_CACHED], decisions[EAGER_BUCKETS])
                                         if ORT_CACHED in decisions else None)
    parity["ok"] = parity["max_abs_diff"] <= parity["tolerance"] and parity["ort_decisions_identical"] is not False
    parity["eager_exact_vs_buckets"] = diff(EAGER_EXACT, EAGER_BUCKETS)  # not parity: buckets compute more
    return parity


def _same_decisions(a: list, b: list) -> bool:
    """Whether two generations' StepRecords chose the same tokens and paths, call by call."""
    return len(a) == len(b) and all(
        x.context == y.context and x.executed == y.executed and bool((x.computed == y.computed).all())
        for x, y in zip(a, b))


def _ratios(medians: dict) -> dict:
    eager_speedup = ratio(medians[EAGER_UNCACHED], medians[EAGER_EXACT])
    eager_speedup_buckets = ratio(medians[EAGER_UNCACHED], medians[EAGER_BUCKETS])
    ort_speedup = ratio(medians.get(ORT_UNCACHED), medians.get(ORT_CACHED))
    ratios = {
        "eager_speedup": eager_speedup,
        "eager_speedup_buckets": eager_speedup_buckets,
        "compile_speedup": ratio(medians[EAGER_BUCKETS], medians.get(COMPILED)),
        "compile_speedup_vs_eager_uncached": ratio(medians[EAGER_UNCACHED], medians.get(COMPILED)),
        "ort_speedup": ort_speedup,
        "ort_over_eager_speedup": ratio(ort_speedup, eager_speedup),
        "ort_over_eager_speedup_buckets": ratio(ort_speedup, eager_speedup_buckets),
        "ort_uncached_vs_eager_uncached": ratio(medians[EAGER_UNCACHED], medians.get(ORT_UNCACHED)),
        "ort_cached_vs_eager_buckets": ratio(medians[EAGER_BUCKETS], medians.get(ORT_CACHED)),
        "ort_target": ORT_TARGET,
    }
    r = ratios["ort_over_eager_speedup"]
    ratios["ort_target_met"] = None if r is None else bool(r >= ORT_TARGET)
    return ratios


def _compile_info(info: dict, timings: _Timings, medians: dict) -> dict | None:
    if COMPILED not in info:
        return None
    s = info[COMPILED]
    first_diff = float((s.pop("first_generation_latent") - timings.latents[EAGER_BUCKETS]).abs().max())
    return {**s, "compile_s_estimate": max(0.0, s["first_generation_s"] - medians[COMPILED]),
            "graphs_compiled_in_timed_runs": timings.recompiled, "first_generation_max_abs_diff": first_diff}


def _onnx_info(info: dict) -> dict | None:
    if ORT_CACHED not in info:
        return None
    onnx_info = {"cached": info[ORT_CACHED], "uncached": info[ORT_UNCACHED]}
    for key in ("cached", "uncached"):
        files = onnx_info[key]["files"]
        onnx_info[key]["nodes"] = sum(f["nodes"] for f in files)
        onnx_info[key]["bytes"] = sum(f["bytes"] for f in files)
    return onnx_info
