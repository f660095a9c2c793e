"""`mcgraph demo`: the command line of `mcgraph.bench.demo_run` (registration is cheap; torch is imported on
run) and the side-by-side lines it prints."""

from __future__ import annotations

import argparse
from pathlib import Path

from mcgraph.cli.common import (
    EXIT_OK,
    UsageError,
    add_command,
    buckets,
    existing_file,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    prepare_output_dir,
    schedule_overrides,
)

__all__ = ["add_demo_command", "cache_report", "run_demo_command"]


def add_demo_command(subparsers) -> None:
    p = add_command(
        subparsers, "demo",
        help="generate a sprite video with the bundled reference model",
        description=(
            "Generate a video with the bundled reference DiT and the diffusion-forcing sampler (no cache), "
            "and write DIR/demo.gif and DIR/demo_strip.png (frames side by side; when the scene comes from "
            "--seed, a second row shows a rendering of that scene for comparison). The defaults make a "
            "28-frame video in two windows of 16 frames that overlap by 4. With --cache POLICY the same video "
            "(same seed and noise) is also generated through mcgraph.optimize with that caching policy, in the same "
            "process; the command prints the wall times side by side (speedup vs uncached), the PSNR of the "
            "cached video vs the uncached one and the fraction of tokens computed, and writes "
            "DIR/demo_heatmap.gif (per schedule row: the window's frames and, per CFG branch, which tokens were "
            "recomputed) and DIR/demo_heatmap.png (final frames, how often each token was recomputed, computed "
            "fraction per model call). The GIF then shows the cached video and the strip has the cached row "
            "above the uncached one."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("out"), metavar="DIR", help="output folder")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="scene (without --label) and noise seed")
    p.add_argument(
        "--label",
        default=None,
        metavar="IDS",
        help="condition on these label ids (comma separated, padded with 0) instead of a random scene from --seed",
    )
    _add_schedule_options(p)
    p.add_argument("--weights", type=existing_file, default=None, metavar="FILE",
                   help="weights file (default: bundled)")
    p.add_argument(
        "--threads", type=nonnegative_int, default=0,
        help="torch CPU threads (0: torch's default; use 1 when other jobs share the cores)",
    )
    _add_cache_options(p)
    p.add_argument("--gif-scale", type=positive_int, default=4, help="GIF upscale factor (nearest)")
    p.add_argument("--fps", type=positive_float, default=8.0, help="GIF frame rate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_demo_command)


def _add_schedule_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=positive_int, default=28, help="frames to generate")
    p.add_argument("--window", type=positive_int, default=16, metavar="FRAMES", help="frames per window")
    p.add_argument(
        "--overlap", type=nonnegative_int, default=4, metavar="FRAMES",
        help="history frames carried into the next window (a multiple of the model's causal block size)",
    )
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps per chunk")
    p.add_argument("--ar-step", type=nonnegative_int, default=4, help="rows by which each chunk lags the previous one")
    p.add_argument("--guidance", type=nonnegative_float, default=4.0,
                   help="classifier-free guidance scale (1: no CFG)")
    p.add_argument("--shift", type=positive_float, default=2.0, help="timestep shift")
    p.add_argument(
        "--addnoise", type=nonnegative_float, default=20.0, metavar="T",
        help="re-noise the history frames to timestep T (noise factor T/1000); 0 disables",
    )


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", choices=("none", "teacache", "flowcache", "motioncache"), default=None,
        help="also generate through mcgraph.optimize with this caching policy and compare with the uncached "
             "video ('none': the captured graph without caching)",
    )
    p.add_argument(
        "--threshold", type=nonnegative_float, default=None,
        help="reuse threshold of the cache policy (default: the policy's, 0.1; 0 recomputes every token)",
    )
    p.add_argument(
        "--motion-source", default=None, metavar="SOURCE",
        help="motioncache: where motion is measured, e.g. hidden (last block's output), latent (noisy latent), "
             "clean (predicted clean latent); see MotionCacheConfig.motion_source (default: the config's)",
    )
    p.add_argument("--no-heatmap", action="store_true", help="with --cache: do not write the heat maps")
    p.add_argument(
        "--runtime", choices=("eager", "compile", "onnx"), default="eager",
        help="with --cache: what runs the cached model. compile: torch.compile(fullgraph=True, dynamic=False) "
             "after an untimed warm-up generation; onnx: mcgraph.export.onnx (one file per window shape, written "
             "to DIR) run by ONNX Runtime. Both use static capacity buckets (--buckets) and are compared with "
             "the eager cached model with the same buckets; compile/export time is reported separately",
    )
    p.add_argument(
        "--compile-backend", choices=("inductor", "aot_eager", "eager"), default=None,
        help="--runtime compile: torch.compile backend (default: inductor; aot_eager compiles much faster)",
    )
    p.add_argument(
        "--buckets", type=buckets, default=None, metavar="F1,F2,...",
        help="with --cache: capacity buckets, fractions of the token count ending with 1, e.g. 0.25,0.5,1 "
             "(default: none for eager, i.e. exactly the selected tokens; for compile/onnx the graph's "
             "0.125,0.25,0.375,0.5,0.75,1)",
    )


def run_demo_command(args: argparse.Namespace) -> int:
    import torch

    from mcgraph.bench.demo_run import parse_label, run_demo
    from mcgraph.bench.settings import SettingsError

    prepare_output_dir(args.out, "--out")  # now: the files are written only after the generation
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        label = parse_label(args.label) if args.label is not None else None
        result = run_demo(
            args.out, seed=args.seed, label=label, **schedule_overrides(args), weights=args.weights,
            progress=not args.no_progress, gif_scale=args.gif_scale, fps=args.fps, cache=args.cache,
            threshold=args.threshold, motion_source=args.motion_source, heatmap=not args.no_heatmap,
            runtime=args.runtime, compile_backend=args.compile_backend, buckets=args.buckets,
        )
    except SettingsError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {result.gif} and {result.strip}")
    print(
        f"{result.frames} frames in {result.segments} window(s), {result.rows} rows, "
        f"{result.model_calls} model calls, wall time {result.wall_time_s:.2f} s"
    )
    if result.cache is not None:
        print(cache_report(args.cache, result.cache))
    return EXIT_OK


def _db(value: float) -> str:
    return "inf (identical)" if value == float("inf") else f"{value:.2f} dB"


def _paths(c) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.calls_by_path.items()))


def cache_report(policy: str, c) -> str:
    """The side-by-side lines printed by `mcgraph demo --cache` (c: a `CacheComparison`)."""
    if getattr(c, "runtime", "eager") != "eager":
        return _runtime_report(policy, c)
    lines = [
        f"{'':22}{'uncached':>12}{policy:>14}",
        f"{'wall time (s)':22}{c.uncached_wall_time_s:12.2f}{c.cached_wall_time_s:14.2f}",
        f"{'CPU time (s)':22}{c.uncached_cpu_time_s:12.2f}{c.cached_cpu_time_s:14.2f}",
        f"{'tokens computed':22}{'100.0%':>12}{100 * c.computed_fraction:13.1f}%",
        f"speedup vs uncached: {c.speedup:.2f}x wall ({c.cpu_speedup:.2f}x CPU time)   PSNR vs uncached: "
        f"{_db(c.psnr_db)}   max |latent diff|: {c.max_abs_diff:.3g}",
        f"model calls by path: {_paths(c)}; tokens decided per sample: {100 * c.decided_fraction:.1f}%",
    ]
    if c.heatmap_gif is not None:
        lines.append(f"wrote {c.heatmap_gif} and {c.heatmap_png}")
    return "\n".join(lines)


def _runtime_report(policy: str, c) -> str:
    """`mcgraph demo --cache P --runtime compile|onnx`: uncached eager, eager cached and the runtime."""
    name = f"{policy} {c.runtime}"
    lines = [
        f"{'':22}{'uncached':>12}{policy + ' eager':>22}{name:>22}",
        f"{'wall time (s)':22}{c.uncached_wall_time_s:12.2f}{c.eager_wall_time_s:22.2f}{c.cached_wall_time_s:22.2f}",
        f"{'CPU time (s)':22}{c.uncached_cpu_time_s:12.2f}{c.eager_cpu_time_s:22.2f}{c.cached_cpu_time_s:22.2f}",
        f"{'tokens computed':22}{'100.0%':>12}{100 * c.eager_computed_fraction:21.1f}%"
        f"{100 * c.computed_fraction:21.1f}%",
        f"speedup vs uncached: {c.speedup:.2f}x wall ({c.cpu_speedup:.2f}x CPU time); eager cached: "
        f"{c.uncached_wall_time_s / c.eager_wall_time_s:.2f}x; {c.runtime} vs eager cached: "
        f"{c.speedup_vs_eager:.2f}x",
        f"PSNR vs uncached: {_db(c.psnr_db)} ({c.runtime}), {_db(c.eager_psnr_db)} (eager, same buckets)   "
        f"max |latent diff| {c.runtime} vs eager cached: {c.eager_max_abs_diff:.3g}",
        f"model calls by path: {_paths(c)}; tokens decided per sample: {100 * c.decided_fraction:.1f}%",
        f"setup (not in the times above): {c.setup_note}",
    ]
    if c.heatmap_gif is not None:
        source = "" if c.runtime == "onnx" else " (decisions of the eager run: compiled calls record none)"
        lines.append(f"wrote {c.heatmap_gif} and {c.heatmap_png}{source}")
    return "\n".join(lines)
