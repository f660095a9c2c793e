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
computation, so float noise only), compile and export times, ONNX node counts and file sizes. Writes
DIR/runtime_bench.json and DIR/runtime_report.md.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["RUNTIME_NAMES", "RuntimeBenchSettings", "quick_runtime_settings", "run_runtime_bench",
           "runtime_markdown", "write_runtime_outputs"]

RUNTIME_NAMES = ("eager", "compile", "onnx")
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


@dataclass
class RuntimeBenchSettings:
    """Everything that defines a runtime benchmark (stored verbatim in the JSON)."""

    runtimes: tuple[str, ...] = RUNTIME_NAMES  # eager is always measured: it is every ratio's baseline
    policy: str = "motioncache"
    threshold: float = 0.1
    motion_source: str | None = None
    buckets: tuple[float, ...] | None = None  # None: DEFAULT_GRAPH_BUCKETS
    compile_backend: str = "inductor"
    seed: int = 0
    steps: int = 50
    shift: float = 2.0
    guidance_scale: float = 4.0
    ar_step: int = 4
    frames: int = 28
    window_frames: int = 16
    overlap_frames: int = 4
    addnoise_condition: float = 20.0
    repeats: int = 3
    threads: int = 1
    weights: str | None = None
    quick: bool = False

    def __post_init__(self):
        from mcgraph.bench.runtimes import COMPILE_BACKENDS

        self.runtimes = tuple(dict.fromkeys(self.runtimes))
        bad = [r for r in self.runtimes if r not in RUNTIME_NAMES]
        if bad or not self.runtimes:
            raise ValueError(f"runtimes must be some of {', '.join(RUNTIME_NAMES)}, got {list(self.runtimes)}")
        if self.policy not in ("teacache", "flowcache", "motioncache"):
            raise ValueError(f"the runtime benchmark needs a caching policy (teacache, flowcache, motioncache), "
                             f"got {self.policy!r}")
        if not (self.threshold >= 0 and math.isfinite(self.threshold)):
            raise ValueError(f"threshold must be finite and >= 0, got {self.threshold}")
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile backend must be one of {', '.join(COMPILE_BACKENDS)}, "
                             f"got {self.compile_backend!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.buckets is not None:
            from mcgraph.bench.runtimes import parse_buckets

            self.buckets = parse_buckets(",".join(str(b) for b in self.buckets))

    def sampler_kwargs(self, causal_block_size: int) -> dict:
        return dict(steps=self.steps, shift=self.shift, guidance_scale=self.guidance_scale,
                    causal_block_size=causal_block_size, ar_step=self.ar_step, window_frames=self.window_frames,
                    overlap_frames=self.overlap_frames, addnoise_condition=self.addnoise_condition)

    def to_json(self) -> dict:
        d = asdict(self)
        d["runtimes"] = list(self.runtimes)
        d["buckets"] = list(self.buckets) if self.buckets is not None else None
        return d


def quick_runtime_settings(**overrides) -> RuntimeBenchSettings:
    """CI settings (< 2 minutes with 1 thread on the bundled model): 8 frames in one window, 8 steps, one
    repeat, two capacity buckets (a smaller graph: faster compile and export), torch.compile with aot_eager
    instead of Inductor (a cold Inductor compile takes minutes on a CPU)."""
    base = dict(steps=8, frames=8, window_frames=8, overlap_frames=4, repeats=1, buckets=(0.5, 1.0),
                compile_backend="aot_eager", quick=True)
    base.update(overrides)
    return RuntimeBenchSettings(**base)


def _median(values) -> float:
    return float(statistics.median(values))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _environment(settings: RuntimeBenchSettings, weights: Path) -> dict:
    import torch

    from mcgraph.bench.harness import _cpu_model, _git_commit, _mcgraph_version

    env = {"python": platform.python_version(), "torch": torch.__version__, "mcgraph": _mcgraph_version(),
           "cpu": _cpu_model(), "threads": settings.threads, "git_commit": _git_commit(), "weights": str(weights)}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    return env


def run_runtime_bench(settings: RuntimeBenchSettings, out_dir: str | Path, *, progress: bool = True,
                      log: Callable[[str], None] = print, command: str | None = None) -> dict:
    """Run the benchmark described by `settings` (ONNX files go to `out_dir`/onnx); return the result dict."""
    import numpy as np
    import torch

    import mcgraph

    from mcgraph.cli.demo import make_cache_config, psnr
    from mcgraph.bench.runtimes import (
        compile_model,
        compiled_graphs,
        export_cached,
        export_uncached,
        graph_config,
        reference_example,
        window_lengths,
    )
    from mcgraph.video.sampler import SamplerConfig, sample
    from mcgraph.zoo import scenes
    from mcgraph.zoo.latent import latent_to_video
    from mcgraph.zoo.weights import BUNDLED_WEIGHTS, load_reference

    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    out_dir = Path(out_dir)
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
    bucketed = graph_config(exact, settings.buckets)

    def generate(m):
        return sample(m, shape, cond, neg, config=sampler_config, seed=settings.seed)

    def capture_all(opt):
        with torch.no_grad():
            for kwargs in examples.values():
                with opt.cache_context("warmup"):
                    opt(**kwargs)
                opt.reset_cache()
        return opt

    t0 = time.perf_counter()
    opt_exact = capture_all(mcgraph.optimize(model, exact, (), examples[lengths[0]]))
    opt_buckets = capture_all(opt_exact.with_config(bucketed))
    capture_s = time.perf_counter() - t0
    buckets_text = ",".join(f"{b:g}" for b in bucketed.capacity_buckets)
    log(f"model: {weights}; {settings.policy} threshold {settings.threshold:g}, buckets {buckets_text}; "
        f"{settings.frames} frames (windows {lengths}), {settings.steps} steps, {settings.threads} thread(s); "
        f"captured in {capture_s:.1f} s")

    runners: dict[str, object] = {EAGER_UNCACHED: model, EAGER_EXACT: opt_exact, EAGER_BUCKETS: opt_buckets}
    setup: dict[str, dict] = {}
    if "compile" in settings.runtimes:
        log(f"compile: torch.compile(backend={settings.compile_backend}, fullgraph=True, dynamic=False), "
            "compiling during a warm-up generation ...")
        compiled = compile_model(opt_exact.with_config(bucketed), settings.compile_backend)
        graphs = compiled_graphs()
        t0 = time.perf_counter()
        first = generate(compiled)
        setup[COMPILED] = {"backend": settings.compile_backend, "first_generation_s": time.perf_counter() - t0,
                           "graphs": compiled_graphs() - graphs, "first_generation_latent": first.latent}
        runners[COMPILED] = compiled
        log(f"compile: first generation {setup[COMPILED]['first_generation_s']:.1f} s "
            f"({setup[COMPILED]['graphs']} graphs)")
    if "onnx" in settings.runtimes:
        onnx_dir = out_dir / "onnx"
        log(f"onnx: exporting to {onnx_dir} ...")
        ort_uncached = export_uncached(model, examples, onnx_dir, stem="uncached", threads=settings.threads,
                                       log=lambda s: log(f"onnx: {s}"))
        ort_cached = export_cached(opt_buckets, examples, onnx_dir, stem="cached", threads=settings.threads,
                                   log=lambda s: log(f"onnx: {s}"))
        for rid, runner in ((ORT_UNCACHED, ort_uncached), (ORT_CACHED, ort_cached)):
            t0 = time.perf_counter()
            generate(runner)  # warm-up: ONNX Runtime allocates on first use
            setup[rid] = {"export_s": runner.export_seconds, "session_s": runner.session_seconds,
                          "first_generation_s": time.perf_counter() - t0,
                          "files": [{"path": f.path, "latent_shape": list(f.latent_shape), "seconds": f.seconds,
                                     "bytes": f.bytes, "nodes": f.nodes} for f in runner.files]}
            runners[rid] = runner

    recorders = {rid: r for rid, r in runners.items() if rid in (EAGER_EXACT, EAGER_BUCKETS, ORT_CACHED)}
    for r in recorders.values():
        r.record_decisions()
    times: dict[str, list[float]] = {rid: [] for rid in runners}
    latents: dict[str, torch.Tensor] = {}
    computed: dict[str, float] = {}
    decisions: dict[str, list] = {}  # the last generation's StepRecords
    recompiled = 0
    total = settings.repeats * len(runners)
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="runtimes", unit="gen", file=sys.stderr, dynamic_ncols=True)
    try:
        for _ in range(settings.repeats):
            for rid, runner in runners.items():
                start = len(runner.decision_records) if rid in recorders else 0
                graphs = compiled_graphs()
                result = generate(runner)
                if rid == COMPILED:
                    recompiled += compiled_graphs() - graphs
                times[rid].append(result.wall_time_s)
                latents[rid] = result.latent
                if rid in recorders:
                    recs = runner.decision_records[start:]
                    decisions[rid] = recs
                    computed[rid] = sum(r.executed for r in recs) / max(1, sum(r.tokens for r in recs))
                if bar is not None:
                    bar.set_postfix_str(f"{LABELS[rid]} {result.wall_time_s:.2f} s", refresh=False)
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    computed[EAGER_UNCACHED] = 1.0
    if ORT_UNCACHED in runners:
        computed[ORT_UNCACHED] = 1.0
    if COMPILED in runners:
        computed[COMPILED] = computed[EAGER_BUCKETS]  # same decisions (parity below); compiled calls record none

    base_video = latent_to_video(latents[EAGER_UNCACHED])[0].clamp(-1, 1)
    runs = []
    median = {rid: _median(t) for rid, t in times.items()}
    for rid in runners:
        video = latent_to_video(latents[rid])[0].clamp(-1, 1)
        p = psnr(video, base_video)
        runs.append({"id": rid, "label": LABELS[rid] + (f" ({settings.compile_backend})" if rid == COMPILED else ""),
                     "runtime": "eager" if rid.startswith("eager") else ("compile" if rid == COMPILED else "onnx"),
                     "cached": rid not in (EAGER_UNCACHED, ORT_UNCACHED), "median_s": median[rid],
                     "times_s": times[rid], "computed_fraction": computed.get(rid),
                     "psnr_vs_eager_uncached_db": None if p == float("inf") else p,
                     "identical_to_eager_uncached": p == float("inf")})

    def diff(a, b):
        if a not in latents or b not in latents:
            return None
        return float((latents[a] - latents[b]).abs().max())

    # Every model call's float noise (kernels summing in another order) is carried through all the rows of the
    # generation, so the final latents of two runtimes differ by more than one call's outputs do: the uncached
    # ORT run differs from the uncached eager run by about as much as the cached runs differ from each other.
    # The tolerance is therefore max(PARITY_TOL * max(1, max |latent|), NOISE_FACTOR * that uncached difference);
    # a different decision anywhere would show as a difference of the order of the latents themselves.
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

    eager_speedup = _ratio(median[EAGER_UNCACHED], median[EAGER_EXACT])
    eager_speedup_buckets = _ratio(median[EAGER_UNCACHED], median[EAGER_BUCKETS])
    ort_speedup = _ratio(median.get(ORT_UNCACHED), median.get(ORT_CACHED))
    ratios = {
        "eager_speedup": eager_speedup,
        "eager_speedup_buckets": eager_speedup_buckets,
        "compile_speedup": _ratio(median[EAGER_BUCKETS], median.get(COMPILED)),
        "compile_speedup_vs_eager_uncached": _ratio(median[EAGER_UNCACHED], median.get(COMPILED)),
        "ort_speedup": ort_speedup,
        "ort_over_eager_speedup": _ratio(ort_speedup, eager_speedup),
        "ort_over_eager_speedup_buckets": _ratio(ort_speedup, eager_speedup_buckets),
        "ort_uncached_vs_eager_uncached": _ratio(median[EAGER_UNCACHED], median.get(ORT_UNCACHED)),
        "ort_cached_vs_eager_buckets": _ratio(median[EAGER_BUCKETS], median.get(ORT_CACHED)),
        "ort_target": ORT_TARGET,
    }
    r = ratios["ort_over_eager_speedup"]
    ratios["ort_target_met"] = None if r is None else bool(r >= ORT_TARGET)

    compile_info = None
    if COMPILED in setup:
        s = setup[COMPILED]
        first_diff = float((s.pop("first_generation_latent") - latents[EAGER_BUCKETS]).abs().max())
        compile_info = {**s, "compile_s_estimate": max(0.0, s["first_generation_s"] - median[COMPILED]),
                        "graphs_compiled_in_timed_runs": recompiled, "first_generation_max_abs_diff": first_diff}
    onnx_info = None
    if ORT_CACHED in setup:
        onnx_info = {"cached": setup[ORT_CACHED], "uncached": setup[ORT_UNCACHED]}
        for key in ("cached", "uncached"):
            files = onnx_info[key]["files"]
            onnx_info[key]["nodes"] = sum(f["nodes"] for f in files)
            onnx_info[key]["bytes"] = sum(f["bytes"] for f in files)
    data = {
        "kind": "mcgraph runtime benchmark",
        "command": command,
        "settings": settings.to_json(),
        "graph_buckets": list(bucketed.capacity_buckets),
        "config": exact.to_dict(),
        "environment": _environment(settings, weights),
        "windows": lengths,
        "model_calls": len(runners[EAGER_EXACT].decision_records) // settings.repeats,  # per generation
        "runs": runs,
        "ratios": ratios,
        "parity": parity,
        "compile": compile_info,
        "onnx": onnx_info,
        "capture_s": capture_s,
        "elapsed_s": time.perf_counter() - started,
    }
    return data


def _same_decisions(a: list, b: list) -> bool:
    """Whether two generations' StepRecords chose the same tokens and paths, call by call."""
    return len(a) == len(b) and all(
        x.context == y.context and x.executed == y.executed and bool((x.computed == y.computed).all())
        for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------- reports
def _f(v, spec=".2f", none="—", suffix="") -> str:
    return none if v is None else f"{v:{spec}}{suffix}"


def runtime_table(data: dict) -> str:
    """The Markdown table of runs (times, speedups, tokens computed, PSNR)."""
    runs = {r["id"]: r for r in data["runs"]}
    base = runs[EAGER_UNCACHED]["median_s"]
    lines = ["| run | median s | speedup vs eager uncached | tokens computed | PSNR vs eager uncached |",
             "|---|---:|---:|---:|---:|"]
    for r in data["runs"]:
        p = "identical" if r["identical_to_eager_uncached"] else _f(r["psnr_vs_eager_uncached_db"], suffix=" dB")
        lines.append(f"| {r['label']} | {r['median_s']:.3f} | {base / r['median_s']:.2f}x | "
                     f"{_f(r['computed_fraction'] and 100 * r['computed_fraction'], '.1f', suffix='%')} | {p} |")
    return "\n".join(lines)


def ratio_table(data: dict) -> str:
    """Speedups and the ORT target, parity, setup costs (rows of runtimes that did not run are left out)."""
    q, p = data["ratios"], data["parity"]
    x = lambda v: _f(v, suffix="x")
    met = q["ort_target_met"]
    target = "" if met is None else (" (met)" if met else " (not met)")
    rows = [
        ("eager_speedup", "eager speedup = eager uncached / eager cached (exact K)", x(q["eager_speedup"])),
        ("eager_speedup_buckets", "eager speedup with buckets = eager uncached / eager cached (buckets)",
         x(q["eager_speedup_buckets"])),
        ("compile_speedup", "compile speedup = eager cached (buckets) / compiled cached", x(q["compile_speedup"])),
        ("ort_speedup", "ORT speedup = ORT uncached / ORT cached", x(q["ort_speedup"])),
        ("ort_over_eager_speedup", f"**ORT speedup / eager speedup** (target >= {q['ort_target']:g})",
         f"**{x(q['ort_over_eager_speedup'])}**{target}"),
        ("ort_over_eager_speedup_buckets", "ORT speedup / eager speedup with buckets",
         x(q["ort_over_eager_speedup_buckets"])),
        ("ort_uncached_vs_eager_uncached", "ORT uncached vs eager uncached (speedup)",
         x(q["ort_uncached_vs_eager_uncached"])),
        ("ort_cached_vs_eager_buckets", "ORT cached vs eager cached (buckets) (speedup)",
         x(q["ort_cached_vs_eager_buckets"])),
    ]
    lines = ["| ratio | value |", "|---|---:|"]
    lines += [f"| {label} | {value} |" for key, label, value in rows if q[key] is not None]
    lines += ["", "| parity: max abs diff of the final latents | value |", "|---|---:|"]
    for key, label in (("compiled_vs_eager_buckets", "compiled vs eager cached (buckets)"),
                       ("ort_cached_vs_eager_buckets", "ORT cached vs eager cached (buckets)"),
                       ("ort_cached_vs_compiled", "ORT cached vs compiled"),
                       ("ort_uncached_vs_eager_uncached", "ORT uncached vs eager uncached"),
                       ("eager_exact_vs_buckets", "eager exact K vs buckets (not parity: buckets compute more)")):
        if p[key] is not None:
            lines.append(f"| {label} | {p[key]:.3g} |")
    same = p["ort_decisions_identical"]
    if same is not None:
        lines.append(f"| ORT cached made the eager (buckets) decisions, call by call | {'yes' if same else 'NO'} |")
    lines.append(f"| tolerance: max({PARITY_TOL:g} x max(1, max abs latent {p['latent_abs_max']:.3g}), "
                 f"{NOISE_FACTOR:g} x ORT uncached vs eager uncached) | {p['tolerance']:.3g} |")
    lines.append(f"| parity ok (max abs diff {p['max_abs_diff']:.3g}) | {'yes' if p['ok'] else 'NO'} |")
    c, o = data.get("compile"), data.get("onnx")
    if c or o:
        lines += ["", "| setup | value |", "|---|---:|"]
    if c:
        lines += [f"| compile ({c['backend']}): first generation incl. compiling | {c['first_generation_s']:.1f} s |",
                  f"| compile time (first generation - median) | {c['compile_s_estimate']:.1f} s |",
                  f"| graphs compiled (warm-up / timed runs) | {c['graphs']} / {c['graphs_compiled_in_timed_runs']} |"]
    if o:
        for key, label in (("cached", "ORT cached (mcgraph.export.onnx)"), ("uncached", "ORT uncached (torch.onnx.export)")):
            s = o[key]
            lines += [f"| {label}: export | {s['export_s']:.1f} s |",
                      f"| {label}: nodes (incl. If branches), size | {s['nodes']}, {s['bytes'] / 2**20:.2f} MiB |"]
    return "\n".join(lines)


def runtime_markdown(data: dict) -> str:
    s = data["settings"]
    env = data["environment"]
    head = (f"# mcgraph runtime benchmark\n\n{s['policy']} threshold {s['threshold']:g}, capacity buckets "
            f"{','.join(f'{b:g}' for b in data['graph_buckets'])}; reference model ({env['weights']}), seed "
            f"{s['seed']}, {s['frames']} frames in windows {data['windows']}, {s['steps']} steps, CFG "
            f"{s['guidance_scale']:g}; {s['threads']} thread(s), median of {s['repeats']} generation(s); "
            f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {env['cpu']}.")
    if data.get("command"):
        head += f"\n\n`{data['command']}`"
    return f"{head}\n\n{runtime_table(data)}\n\n{ratio_table(data)}\n"


def write_runtime_outputs(data: dict, out: str | Path) -> dict:
    """Write DIR/runtime_bench.json and DIR/runtime_report.md; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(data, allow_nan=False, default=str))
    paths = {"json": str(out / "runtime_bench.json"), "report": str(out / "runtime_report.md")}
    Path(paths["json"]).write_text(json.dumps(clean, indent=1) + "\n")
    Path(paths["report"]).write_text(runtime_markdown(clean))
    return paths
