"""The cached half of `mcgraph demo --cache`: capture the model with the cache config (every window shape),
generate uncached and cached from the same seed, optionally on another runtime (torch.compile, ONNX
Runtime) against the eager model with the same buckets, and compare: wall and CPU times, PSNR, tokens
computed, heat maps of the recomputed tokens (`mcgraph.eval.heatmap`)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcgraph.bench.settings import describe_config
from mcgraph.eval.metrics import psnr
from mcgraph.eval.video_io import to_uint8_frames
from mcgraph.video.sampler import RowInfo, SamplerConfig, sample
from mcgraph.zoo.latent import latent_to_video

__all__ = ["CacheComparison", "RowCollector", "compare_with_cache", "setup_runtime"]

ARG_NAMES = ("hidden_states", "timesteps", "context")


@dataclass

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


class RowCollector:
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


class _Examples:
    """Random call inputs per window length (one generator: the order of the calls fixes the values)."""

    def __init__(self, shape: tuple, cond: torch.Tensor, config: SamplerConfig):
        from mcgraph.bench.runtimes import window_lengths

        self.shape, self.cond = shape, cond
        self.gen = torch.Generator().manual_seed(12345)
        self.lengths = window_lengths(shape[2], config.window_frames, config.overlap_frames)

    def __call__(self, length: int) -> tuple:
        batch, channels, _, h, w = self.shape
        return (torch.randn(batch, channels, length, h, w, generator=self.gen),
                torch.rand(batch, length, generator=self.gen) * 1000, self.cond)


def _capture(model, cache_config, examples: _Examples, log):
    """(optimised model, seconds): `mcgraph.optimize`, then every other window shape captured now, not inside
    the timed runs."""
    import mcgraph

    start = time.perf_counter()
    opt = mcgraph.optimize(model, cache_config, (), dict(zip(ARG_NAMES, examples(examples.lengths[0]))))
    with torch.no_grad():
        for length in examples.lengths:
            with opt.cache_context("warmup"):
                opt(*examples(length))
            opt.reset_cache()
    seconds = time.perf_counter() - start
    log(f"cache: {describe_config(cache_config)}; capture and rewrite {seconds:.1f} s "
        f"({len(examples.lengths)} window shape(s), not timed below)")
    return opt, seconds


def _timed(generate, m, collector: RowCollector | None = None):
    """(result, wall seconds, CPU seconds) of one generation, without the time `collector` spent."""
    cpu = time.process_time()
    result = generate(m, on_row=collector)
    cpu_seconds = time.process_time() - cpu - (collector.cpu_seconds if collector is not None else 0.0)
    return result, result.wall_time_s - (collector.seconds if collector is not None else 0.0), cpu_seconds


def _computed_fraction(records) -> float:
    return sum(r.executed for r in records) / sum(r.tokens for r in records) if records else 1.0


def compare_with_cache(model, cache_config, shape, cond, uncond, config: SamplerConfig, seed: int, progress,
                       heatmap_dir: Path | None, log, runtime: str = "eager", compile_backend: str = "inductor",
                       export_dir: Path | None = None):
    """Capture `model` with `cache_config` (every window shape), then generate uncached and cached; with
    `runtime` "compile" / "onnx" also set that runtime up (not timed) and generate with it.
    Returns (the cached generation's result, its video, a CacheComparison)."""
    _, ph, pw = model.config.patch_size
    grid_hw = (shape[3] // ph, shape[4] // pw)
    contexts = ["cond", "uncond"] if uncond is not None and config.guidance_scale != 1.0 else ["cond"]
    examples = _Examples(shape, cond, config)
    opt, capture_time = _capture(model, cache_config, examples, log)

    def generate(m, on_row=None):
        return sample(m, shape, cond, uncond, config=config, seed=seed, progress=progress, on_row=on_row)

    runner, setup = None, None
    if runtime != "eager":
        runner, setup = setup_runtime(runtime, opt, cache_config, compile_backend, examples, contexts, generate,
                                      export_dir, log)
    opt.record_decisions()
    collector = RowCollector(opt, contexts, grid_hw, keep_frames=heatmap_dir is not None)
    base, _, base_cpu = _timed(generate, model)
    result, cached_time, cached_cpu = _timed(generate, opt, collector)
    eager = None
    if runner is not None:
        from mcgraph.bench.runtimes import compiled_graphs

        graphs = compiled_graphs()
        eager = (result, cached_time, cached_cpu, _computed_fraction(collector.records))
        if runtime == "onnx":  # decisions come from the graph's outputs: heat maps from the runtime itself
            runner.record_decisions()
            collector = RowCollector(runner, contexts, grid_hw, keep_frames=heatmap_dir is not None)
        # compiled calls record nothing: the heat maps show the eager run's (identical) decisions
        result, cached_time, cached_cpu = _timed(generate, runner, collector if runtime == "onnx" else None)
        if runtime == "compile" and compiled_graphs() != graphs:
            log(f"warning: {compiled_graphs() - graphs} graph(s) compiled during the timed generation "
                "(its time includes compiling)")

    video = latent_to_video(result.latent)[0].clamp(-1, 1)
    base_video = latent_to_video(base.latent)[0].clamp(-1, 1)
    records = collector.records
    comparison = CacheComparison(
        config=cache_config, uncached_video=base_video, uncached_wall_time_s=base.wall_time_s,
        cached_wall_time_s=cached_time, uncached_cpu_time_s=base_cpu, cached_cpu_time_s=cached_cpu,
        capture_time_s=capture_time, psnr_db=psnr(video, base_video),
        max_abs_diff=(result.latent - base.latent).abs().max().item(), computed_fraction=_computed_fraction(records),
        decided_fraction=(sum(int(r.computed.sum()) for r in records) / sum(r.computed.numel() for r in records)
                          if records else 1.0),
        calls_by_path=dict(Counter(r.path for r in records)) if records else {"full": result.model_calls},
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
        _write_heatmaps(comparison, collector, heatmap_dir, video, base_video)
    return result, video, comparison


def _write_heatmaps(comparison: CacheComparison, collector: RowCollector, heatmap_dir: Path, video, base_video):
    from mcgraph.eval.heatmap import write_heatmap_gif, write_summary_png

    where = "" if comparison.runtime == "eager" else f" ({comparison.runtime})"
    title = (f"{describe_config(comparison.config)}{where}: {100 * comparison.computed_fraction:.1f}% of tokens "
             f"computed, PSNR {comparison.psnr_db:.2f} dB vs uncached, wall-time speedup "
             f"{comparison.speedup:.2f}x")
    comparison.heatmap_gif = write_heatmap_gif(collector.steps, heatmap_dir / "demo_heatmap.gif", scale=2,
                                               fps=4.0, frame_size=tuple(video.shape[2:]))
    comparison.heatmap_png = write_summary_png(
        collector.steps, heatmap_dir / "demo_heatmap.png", video=to_uint8_frames(video),
        reference=to_uint8_frames(base_video), scale=2, title=title, calls=collector.calls)


def setup_runtime(runtime, opt, cache_config, compile_backend, examples: _Examples, contexts, generate,
                  export_dir, log):
    """(runner, {"seconds", "note", "exported"}): the compiled model after a warm-up generation, or the
    exported ONNX files (one per window shape) open in ONNX Runtime after one warm-up call per context."""
    from mcgraph.bench.runtimes import compile_model, compiled_graphs, export_cached

    start = time.perf_counter()
    if runtime == "compile":
        log(f"runtime: torch.compile (backend {compile_backend}, fullgraph, static shapes): compiling during an "
            "untimed warm-up generation" + (" (Inductor: minutes on a CPU)" if compile_backend == "inductor" else ""))
        runner = compile_model(opt.with_config(cache_config), compile_backend)
        graphs = compiled_graphs()
        with torch.no_grad():
            warm = generate(runner)
        seconds = time.perf_counter() - start
        note = (f"torch.compile backend {compile_backend}: warm-up generation {seconds:.1f} s "
                f"({compiled_graphs() - graphs} graphs compiled; the warm-up's own generation included)")
        del warm
        return runner, {"seconds": seconds, "note": note}
    lengths = examples.lengths
    call_kwargs = {length: dict(zip(ARG_NAMES, examples(length))) for length in lengths}
    directory = Path(export_dir) if export_dir is not None else Path(".")
    runner = export_cached(opt, call_kwargs, directory, stem="demo_cached", threads=torch.get_num_threads(),
                           log=lambda s: log(f"runtime: {s}"))
    with torch.no_grad():  # first runs (ONNX Runtime allocates on first use); decisions not kept
        for length in lengths:
            for name in contexts:
                with runner.cache_context(name):
                    runner(*examples(length))
            runner.reset_cache()
    runner.decision_records.clear()
    seconds = time.perf_counter() - start
    export = runner.export_seconds
    note = (f"ONNX export {export:.1f} s ({len(runner.files)} file(s): "
            f"{', '.join(Path(f.path).name for f in runner.files)}), sessions and warm-up calls "
            f"{seconds - export:.1f} s")
    return runner, {"seconds": seconds, "note": note, "exported": runner.files}
