"""`mcgraph demo`: generate a sprite video with the bundled reference model and the diffusion-forcing sampler.

With a cache policy (`cache=` "none", "teacache", "flowcache" or "motioncache") the same video (same seed,
same noise) is generated twice in this process, uncached (the original model, eager) and through
`mcgraph.optimize` with that policy; the result reports both wall times, the PSNR of the cached video
against the uncached one and the fraction of tokens the cache computed, and heat maps of the recomputed
tokens are written next to the frames (`mcgraph.eval.heatmap`).

With `runtime` "compile" (``torch.compile(opt, fullgraph=True, dynamic=False)``) or "onnx" (one
`mcgraph.export.onnx` file per window shape, run by ONNX Runtime) the cached video is made by that runtime,
with static capacity buckets (`mcgraph.runtime.step_graph.DEFAULT_GRAPH_BUCKETS` unless `buckets` is given); the
eager model with the same buckets runs too, as the reference the runtime must match (same decisions,
latents equal to float tolerance). Compile / export time is reported separately from the generation times.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcgraph.video.sampler import RowInfo, SamplerConfig, plan_segments, sample
from mcgraph.eval.video_io import save_gif, save_strip, to_uint8_frames
from mcgraph.zoo import scenes
from mcgraph.zoo.latent import latent_to_video
from mcgraph.zoo.weights import BUNDLED_WEIGHTS, load_reference, read_metadata

__all__ = ["CACHE_POLICIES", "CacheComparison", "DemoResult", "DemoSettingsError", "make_cache_config", "parse_label",
           "psnr", "run_demo"]

CACHE_POLICIES = ("none", "teacache", "flowcache", "motioncache")


class DemoSettingsError(ValueError):
    """An invalid demo setting (the CLI reports it as a usage error)."""


@dataclass
class CacheComparison:
    """The cached run against the uncached one (same seed, same process)."""

    config: object  # the mcgraph CacheConfig used
    uncached_video: torch.Tensor  # [frames, 3, H, W] in [-1, 1]
    uncached_wall_time_s: float  # the original model, eager
    cached_wall_time_s: float  # the optimised model (without capture and heat-map bookkeeping)
    uncached_cpu_time_s: float  # process CPU time of the same runs: unaffected by other jobs on the machine
    cached_cpu_time_s: float
    capture_time_s: float  # optimize() plus capturing every window shape; not part of the wall times
    psnr_db: float  # cached video vs uncached video (inf when identical)
    max_abs_diff: float  # of the latents
    computed_fraction: float  # tokens run through the block stack / tokens of all calls
    decided_fraction: float  # tokens the policy decided to recompute (per sample) / all
    calls_by_path: dict  # "full" / "subset" / "skip" -> number of calls
    heatmap_gif: Path | None = None
    heatmap_png: Path | None = None
    # runtime "compile" / "onnx" only: the eager model with the same capacity buckets, and the runtime's setup
    runtime: str = "eager"
    eager_wall_time_s: float | None = None  # eager cached, same buckets (the runtime's reference)
    eager_cpu_time_s: float | None = None
    eager_psnr_db: float | None = None  # eager cached (same buckets) vs uncached
    eager_max_abs_diff: float | None = None  # of the latents: the runtime vs eager cached with the same buckets
    eager_computed_fraction: float | None = None
    setup_time_s: float | None = None  # compile: the warm-up generation (compiles included); onnx: export etc.
    setup_note: str = ""  # what the setup time consists of, for the report
    exported: list | None = None  # onnx: mcgraph.bench.runtimes.ExportedFile per window shape

    @property
    def speedup(self) -> float:
        """Wall-time speedup of the cached generation over the uncached one."""
        t = self.cached_wall_time_s
        return self.uncached_wall_time_s / t if t > 0 else float("inf")

    @property
    def cpu_speedup(self) -> float:
        t = self.cached_cpu_time_s
        return self.uncached_cpu_time_s / t if t > 0 else float("inf")

    @property
    def speedup_vs_eager(self) -> float | None:
        """Wall-time speedup of the runtime over the eager cached model with the same buckets."""
        if self.eager_wall_time_s is None:
            return None
        t = self.cached_wall_time_s
        return self.eager_wall_time_s / t if t > 0 else float("inf")


@dataclass
class DemoResult:
    gif: Path
    strip: Path
    video: torch.Tensor  # [frames, 3, H, W] in [-1, 1]
    label: np.ndarray
    description: str
    frames: int
    segments: int
    rows: int
    model_calls: int
    wall_time_s: float
    cache: CacheComparison | None = None  # set when a cache policy was given


def psnr(video: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of `video` against `reference` ([frames, 3, H, W] in [-1, 1]), the mean of per-frame PSNRs as
    `mcgraph.eval.metrics.psnr` (and the caching papers) compute it: identical frames count as 100 dB, identical
    videos give inf."""
    try:
        from mcgraph.eval.metrics import psnr as metrics_psnr
    except ImportError:  # the same definition, standalone
        mse = (video.double() - reference.double()).pow(2).flatten(1).mean(1) / 4.0  # peak 2 -> scale [0, 1]
        if bool((mse == 0).all()):
            return float("inf")
        db = torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, 100.0))
        return float(db.clamp(max=100.0).mean())
    return metrics_psnr(video, reference)


def make_cache_config(policy: str, *, steps: int, shift: float, threshold: float | None = None,
                      motion_source: str | None = None, capacity_buckets: Sequence[float] | None = None):
    """The mcgraph config of `policy` for the demo's schedule: final_timestep from (steps, shift), other
    fields the policy's defaults unless given. Raises DemoSettingsError for invalid values."""
    from mcgraph.config import FlowCacheConfig, MotionCacheConfig, NoCache, TeaCacheConfig
    from mcgraph.errors import ConfigError
    from mcgraph.video.flow_matching import final_timestep

    if policy not in CACHE_POLICIES:
        raise DemoSettingsError(f"cache must be one of {', '.join(CACHE_POLICIES)}, got {policy!r}")
    if policy == "none":
        if threshold is not None:
            raise DemoSettingsError("threshold needs a caching policy (cache 'none' computes everything)")
        if motion_source is not None:
            raise DemoSettingsError("motion_source applies to the motioncache policy only")
        if capacity_buckets is not None:
            raise DemoSettingsError("capacity buckets need a caching policy (cache 'none' computes everything)")
        return NoCache()
    if motion_source is not None and policy != "motioncache":
        raise DemoSettingsError(f"motion_source applies to the motioncache policy only, not {policy}")
    cls = {"teacache": TeaCacheConfig, "flowcache": FlowCacheConfig, "motioncache": MotionCacheConfig}[policy]
    fields = {"final_timestep": final_timestep(steps, shift)}
    if threshold is not None:
        fields["threshold"] = threshold
    if motion_source is not None:
        fields["motion_source"] = motion_source
    if capacity_buckets is not None:
        fields["capacity_buckets"] = tuple(capacity_buckets)
    try:
        return cls(**fields)
    except ConfigError as e:
        raise DemoSettingsError(str(e)) from None


class _RowCollector:
    """`sample(on_row=...)`: after each row, the video and the decisions of that row's calls (new records)."""

    def __init__(self, opt, contexts: list[str], grid_hw: tuple[int, int], keep_frames: bool = True):
        self.opt = opt
        self.contexts = contexts
        self.grid_hw = grid_hw
        self.keep_frames = keep_frames
        self.steps = []  # HeatmapStep per row
        self.calls: list[tuple[str, float]] = []  # (context, executed fraction) per call
        self.records = []  # this generation's StepRecords in call order
        self.seconds = 0.0  # time spent here (subtracted from the cached wall time) ...
        self.cpu_seconds = 0.0  # ... and CPU time
        self.position = len(self._all_records())  # records before this generation are not ours

    def _all_records(self) -> list:
        return self.opt.decision_records if hasattr(self.opt, "decision_records") else []

    def __call__(self, info: RowInfo):
        from mcgraph.eval.heatmap import HeatmapStep, record_grid

        start, start_cpu = time.perf_counter(), time.process_time()
        frames = info.latent.shape[2]
        records = self._all_records()  # one live list, in call order, over all shape specialisations
        new = list(records[self.position :])
        self.position = len(records)
        computed, fractions = {}, {}
        if new:
            for r in new:
                computed[r.context] = record_grid(r.computed, r.frames, self.grid_hw)
                fractions[r.context] = r.executed / r.tokens
                self.calls.append((r.context, r.executed / r.tokens))
                self.records.append(r)
        else:  # no cache decisions (policy "none"): every token of every call is computed
            h, w = self.grid_hw
            for name in self.contexts:
                computed[name] = np.ones((frames, h, w), dtype=bool)
                fractions[name] = 1.0
                self.calls.append((name, 1.0))
        video = None
        if self.keep_frames:
            video = to_uint8_frames(latent_to_video(info.latent[:1].float())[0].clamp(-1, 1))
        seg = info.segment
        label = f"window {seg.index + 1} row {info.row + 1}/{info.rows}"
        self.steps.append(HeatmapStep(label, computed, video, seg.start, fractions))
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - start_cpu


def parse_label(text: str) -> np.ndarray:
    """Comma/space separated label ids -> [LABEL_LENGTH] int64 (padded with 0, the "no label" id)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise DemoSettingsError(f"label must be integers separated by commas, got {text!r}") from None
    if not ids or len(ids) > scenes.LABEL_LENGTH:
        raise DemoSettingsError(f"label must have 1 to {scenes.LABEL_LENGTH} ids, got {len(ids)}")
    bad = [i for i in ids if not 0 <= i < scenes.LABEL_VOCAB_SIZE]
    if bad:
        raise DemoSettingsError(f"label ids must be in [0, {scenes.LABEL_VOCAB_SIZE}), got {bad}")
    out = np.zeros(scenes.LABEL_LENGTH, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def run_demo(
    out_dir: str | Path = "out",
    *,
    seed: int = 0,
    label: Sequence[int] | np.ndarray | None = None,
    frames: int = 28,
    window_frames: int = 16,
    overlap_frames: int = 4,
    causal_block_size: int | None = None,
    ar_step: int = 4,
    steps: int = 50,
    guidance_scale: float = 4.0,
    shift: float = 2.0,
    addnoise_condition: float = 20.0,
    weights: str | Path | None = None,
    progress: bool = True,
    gif_scale: int = 4,
    fps: float = 8.0,
    size: int = 32,
    cache: str | None = None,
    threshold: float | None = None,
    motion_source: str | None = None,
    heatmap: bool = True,
    log: Callable[[str], None] = print,
    runtime: str = "eager",
    compile_backend: str | None = None,
    buckets: Sequence[float] | None = None,
) -> DemoResult:
    """Generate one video and write ``demo.gif`` and ``demo_strip.png`` into `out_dir`.

    The scene comes from `label` (ids) or, without one, from ``scenes.random_scene`` seeded with `seed`; in
    that case the strip's last row is a rendering of the same scene for comparison. `seed` also seeds the
    sampler's noise. Raises `mcgraph.zoo.weights.WeightsError` when the weights are missing or invalid and
    `DemoSettingsError` (a ValueError) for invalid settings. `causal_block_size` defaults to the model's.

    With `cache` (one of `CACHE_POLICIES`; `threshold` and `motion_source` override the policy's defaults,
    see `make_cache_config`) the video is generated twice from the same seed: uncached (the original model)
    and through ``mcgraph.optimize`` with that policy. The GIF shows the cached video, the strip has the
    cached then the uncached row, and `result.cache` (a `CacheComparison`) has the wall times, PSNR and
    computed-token fraction. With `heatmap`, ``demo_heatmap.gif`` (per schedule row: the window's frames and,
    per CFG branch, the tokens recomputed) and ``demo_heatmap.png`` (final frames, per-token recompute
    frequency, computed fraction per model call) are written too. Capturing (once per window shape) happens
    before either timed run and is reported separately.

    `runtime` ("eager", "compile", "onnx"; the last two need a caching policy) picks what makes the cached
    video; `compile_backend` (runtime "compile", default "inductor") is torch.compile's backend; `buckets`
    are the capacity buckets (fractions ending with 1; default none for eager, i.e. exactly the selected
    tokens, and `DEFAULT_GRAPH_BUCKETS` for the graph runtimes). See the module docstring. ONNX files are
    written into `out_dir` (``demo_cached_<frames>f.onnx``).
    """

    def make_config(cbs: int) -> SamplerConfig:
        try:
            return SamplerConfig(
                steps=steps, shift=shift, guidance_scale=guidance_scale, causal_block_size=cbs, ar_step=ar_step,
                window_frames=window_frames, overlap_frames=overlap_frames, addnoise_condition=addnoise_condition,
            )
        except ValueError as e:
            raise DemoSettingsError(str(e)) from None

    make_config(causal_block_size or 1)  # fail fast, before the (slower) model load
    from mcgraph.bench.runtimes import COMPILE_BACKENDS, RUNTIMES, graph_config

    if runtime not in RUNTIMES:
        raise DemoSettingsError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime != "eager" and cache in (None, "none"):
        raise DemoSettingsError(f"runtime {runtime!r} runs the cached model: it needs a caching policy "
                                f"(cache teacache, flowcache or motioncache)")
    if compile_backend is not None and runtime != "compile":
        raise DemoSettingsError("compile_backend applies to runtime 'compile' only")
    if compile_backend is not None and compile_backend not in COMPILE_BACKENDS:
        raise DemoSettingsError(f"compile_backend must be one of {', '.join(COMPILE_BACKENDS)}, "
                                f"got {compile_backend!r}")
    cache_config = None
    if cache is not None:
        cache_config = make_cache_config(cache, steps=steps, shift=shift, threshold=threshold,
                                         motion_source=motion_source, capacity_buckets=buckets)
        if runtime != "eager":
            cache_config = graph_config(cache_config)
    elif threshold is not None or motion_source is not None or buckets is not None:
        raise DemoSettingsError("threshold, motion_source and buckets need a cache policy")
    if frames < 1:
        raise DemoSettingsError(f"frames must be >= 1, got {frames}")
    if size < 2 or size % 2:
        raise DemoSettingsError(f"size must be an even number >= 2, got {size}")

    reference = None
    if label is None:
        scene = scenes.random_scene(np.random.default_rng(seed), size=size)
        ids = scene.label()
        description = scene.describe()
        reference, _ = scenes.render(scene, frames=frames, size=size, seed=seed)
    else:
        ids = parse_label(" ".join(str(int(i)) for i in label))
        description = "label " + ",".join(str(int(i)) for i in ids)

    path = Path(weights) if weights is not None else BUNDLED_WEIGHTS
    model, encoder = load_reference(path)
    info = read_metadata(path).get("info", {})
    cfg = model.config
    cbs = causal_block_size or cfg.causal_block_size
    config = make_config(cbs)
    step_note = f", trained {info['step']} steps" if "step" in info else ""
    log(f"model: {path}{step_note}")
    log(f"scene: {description}")

    with torch.no_grad():
        cond = encoder(torch.from_numpy(ids)[None])
        uncond = encoder(torch.from_numpy(scenes.null_label(1)))
    latent_size = size // 2
    shape = (1, cfg.in_channels, frames, latent_size, latent_size)
    out_dir = Path(out_dir)
    comparison = None
    if cache_config is None:
        result = sample(model, shape, cond, uncond, config=config, seed=seed, progress=progress)
        video = latent_to_video(result.latent)[0].clamp(-1, 1)
    else:
        result, video, comparison = _compare_with_cache(
            model, cache_config, shape, cond, uncond, config, seed, progress, out_dir if heatmap else None, log,
            runtime=runtime, compile_backend=compile_backend or "inductor", export_dir=out_dir)

    gif = save_gif(video, out_dir / "demo.gif", scale=gif_scale, fps=fps)
    rows = [video]
    if comparison is not None:
        rows.append(comparison.uncached_video)
    if reference is not None:
        rows.append(torch.from_numpy(reference))
    strip = save_strip(rows, out_dir / "demo_strip.png", scale=2)
    return DemoResult(
        gif=gif, strip=strip, video=video, label=ids, description=description, frames=frames,
        segments=len(result.segments), rows=result.rows, model_calls=result.model_calls,
        wall_time_s=result.wall_time_s if comparison is None else comparison.cached_wall_time_s, cache=comparison,
    )


def _compare_with_cache(model, cache_config, shape, cond, uncond, config: SamplerConfig, seed: int, progress,
                        heatmap_dir: Path | None, log, runtime: str = "eager", compile_backend: str = "inductor",
                        export_dir: Path | None = None):
    """Capture `model` with `cache_config` (every window shape), then generate uncached and cached; with
    `runtime` "compile" / "onnx" also set that runtime up (not timed) and generate with it."""
    import mcgraph

    batch, channels, frames, h, w = shape
    _, ph, pw = model.config.patch_size
    grid_hw = (h // ph, w // pw)
    use_cfg = uncond is not None and config.guidance_scale != 1.0
    contexts = ["cond", "uncond"] if use_cfg else ["cond"]

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(12345)
    lengths = list(dict.fromkeys(s.length for s in plan_segments(frames, config.window_frames,
                                                                 config.overlap_frames)))

    def example(length):
        return (torch.randn(batch, channels, length, h, w, generator=gen),
                torch.rand(batch, length, generator=gen) * 1000, cond)

    first = example(lengths[0])
    opt = mcgraph.optimize(model, cache_config, (), dict(zip(("hidden_states", "timesteps", "context"), first)))
    with torch.no_grad():
        for length in lengths:  # capture the other window shapes now, not inside the timed run
            with opt.cache_context("warmup"):
                opt(*example(length))
            opt.reset_cache()
    capture_time = time.perf_counter() - start
    log(f"cache: {_describe_config(cache_config)}; capture and rewrite {capture_time:.1f} s "
        f"({len(lengths)} window shape(s), not timed below)")

    def generate(m, on_row=None):
        return sample(m, shape, cond, uncond, config=config, seed=seed, progress=progress, on_row=on_row)

    runner, setup = None, None
    if runtime != "eager":
        runner, setup = _setup_runtime(runtime, opt, cache_config, compile_backend, lengths, example, contexts,
                                       generate, export_dir, log)

    opt.record_decisions()
    collector = _RowCollector(opt, contexts, grid_hw, keep_frames=heatmap_dir is not None)
    cpu = time.process_time()
    base = generate(model)
    base_cpu = time.process_time() - cpu
    cpu = time.process_time()
    result = generate(opt, on_row=collector)
    cached_cpu = time.process_time() - cpu - collector.cpu_seconds
    cached_time = result.wall_time_s - collector.seconds
    eager = None
    if runner is not None:
        graphs = _compiled_graphs()
        eager_records = list(collector.records)
        eager_computed = (sum(r.executed for r in eager_records) / sum(r.tokens for r in eager_records)
                          if eager_records else 1.0)
        eager = (result, cached_time, cached_cpu, eager_computed)
        if runtime == "onnx":  # decisions come from the graph's outputs: heat maps from the runtime itself
            runner.record_decisions()
            collector = _RowCollector(runner, contexts, grid_hw, keep_frames=heatmap_dir is not None)
            on_row = collector
        else:  # compiled calls record nothing: the heat maps show the eager run's (identical) decisions
            on_row = None
        cpu = time.process_time()
        result = generate(runner, on_row=on_row)
        overhead = collector.seconds if on_row is not None else 0.0
        overhead_cpu = collector.cpu_seconds if on_row is not None else 0.0
        cached_cpu = time.process_time() - cpu - overhead_cpu
        cached_time = result.wall_time_s - overhead
        if runtime == "compile" and _compiled_graphs() != graphs:
            log(f"warning: {_compiled_graphs() - graphs} graph(s) compiled during the timed generation "
                "(its time includes compiling)")

    video = latent_to_video(result.latent)[0].clamp(-1, 1)
    base_video = latent_to_video(base.latent)[0].clamp(-1, 1)
    records = collector.records
    if records:
        computed = sum(r.executed for r in records) / sum(r.tokens for r in records)
        decided = sum(int(r.computed.sum()) for r in records) / sum(r.computed.numel() for r in records)
        paths = dict(Counter(r.path for r in records))
    else:
        computed = decided = 1.0
        paths = {"full": result.model_calls}
    comparison = CacheComparison(
        config=cache_config, uncached_video=base_video, uncached_wall_time_s=base.wall_time_s,
        cached_wall_time_s=cached_time, uncached_cpu_time_s=base_cpu, cached_cpu_time_s=cached_cpu,
        capture_time_s=capture_time, psnr_db=psnr(video, base_video),
        max_abs_diff=(result.latent - base.latent).abs().max().item(), computed_fraction=computed,
        decided_fraction=decided, calls_by_path=paths,
    )
    if eager is not None:
        eager_result, eager_time, eager_cpu, comparison.eager_computed_fraction = eager
        comparison.runtime = runtime
        comparison.eager_wall_time_s, comparison.eager_cpu_time_s = eager_time, eager_cpu
        comparison.eager_psnr_db = psnr(latent_to_video(eager_result.latent)[0].clamp(-1, 1), base_video)
        comparison.eager_max_abs_diff = (result.latent - eager_result.latent).abs().max().item()
        comparison.setup_time_s, comparison.setup_note = setup["seconds"], setup["note"]
        comparison.exported = setup.get("exported")
    if heatmap_dir is not None:
        from mcgraph.eval.heatmap import write_heatmap_gif, write_summary_png

        where = "" if runtime == "eager" else f" ({runtime})"
        title = (f"{_describe_config(cache_config)}{where}: {100 * computed:.1f}% of tokens computed, "
                 f"PSNR {comparison.psnr_db:.2f} dB vs uncached, wall-time speedup "
                 f"{comparison.speedup:.2f}x")
        comparison.heatmap_gif = write_heatmap_gif(collector.steps, heatmap_dir / "demo_heatmap.gif", scale=2,
                                                   fps=4.0, frame_size=tuple(video.shape[2:]))
        comparison.heatmap_png = write_summary_png(
            collector.steps, heatmap_dir / "demo_heatmap.png", video=to_uint8_frames(video),
            reference=to_uint8_frames(base_video), scale=2, title=title, calls=collector.calls)
    return result, video, comparison


def _compiled_graphs() -> int:
    from mcgraph.bench.runtimes import compiled_graphs

    return compiled_graphs()


def _setup_runtime(runtime, opt, cache_config, compile_backend, lengths, example, contexts, generate,
                   export_dir, log):
    """(runner, {"seconds", "note", "exported"}): the compiled model after a warm-up generation, or the
    exported ONNX files (one per window shape) open in ONNX Runtime after one warm-up call per context."""
    from mcgraph.bench.runtimes import compile_model, export_cached

    start = time.perf_counter()
    if runtime == "compile":
        log(f"runtime: torch.compile (backend {compile_backend}, fullgraph, static shapes): compiling during an "
            "untimed warm-up generation" + (" (Inductor: minutes on a CPU)" if compile_backend == "inductor" else ""))
        runner = compile_model(opt.with_config(cache_config), compile_backend)
        graphs = _compiled_graphs()
        with torch.no_grad():
            warm = generate(runner)
        seconds = time.perf_counter() - start
        note = (f"torch.compile backend {compile_backend}: warm-up generation {seconds:.1f} s "
                f"({_compiled_graphs() - graphs} graphs compiled; the warm-up's own generation included)")
        del warm
        return runner, {"seconds": seconds, "note": note}
    examples = {length: dict(zip(("hidden_states", "timesteps", "context"), example(length)))
                for length in lengths}
    directory = Path(export_dir) if export_dir is not None else Path(".")
    runner = export_cached(opt, examples, directory, stem="demo_cached", threads=torch.get_num_threads(),
                           log=lambda s: log(f"runtime: {s}"))
    with torch.no_grad():  # first runs (ONNX Runtime allocates on first use); decisions not kept
        for length in lengths:
            for name in contexts:
                with runner.cache_context(name):
                    runner(*example(length))
            runner.reset_cache()
    runner.decision_records.clear()
    seconds = time.perf_counter() - start
    export = runner.export_seconds
    note = (f"ONNX export {export:.1f} s ({len(runner.files)} file(s): "
            f"{', '.join(Path(f.path).name for f in runner.files)}), sessions and warm-up calls "
            f"{seconds - export:.1f} s")
    return runner, {"seconds": seconds, "note": note, "exported": runner.files}


def _describe_config(config) -> str:
    policy = getattr(config, "policy", "none")
    if policy == "none":
        return "none (captured graph, no caching)"
    text = f"{policy} threshold {config.threshold:g}, final_timestep {config.final_timestep:.1f}"
    if policy == "motioncache":
        text += f", motion_source {config.motion_source}"
    if getattr(config, "capacity_buckets", None):
        text += ", capacity buckets " + ",".join(f"{b:g}" for b in config.capacity_buckets)
    return text
