"""The runtime benchmark's part of `mcgraph bench` (`--runtimes`): its options (`add_runtime_options`), the
RuntimeBenchSettings of the options given, and `run_runtime_bench_command` (`mcgraph.bench.runtime_bench`)."""

from __future__ import annotations

import argparse
import shlex

from mcgraph.bench.settings import RUNTIMES
from mcgraph.cli.bench_args import csv_list, given_options
from mcgraph.cli.bench_settings import check_sampler_settings
from mcgraph.cli.common import SCHEDULE_OPTIONS, UsageError, buckets, schedule_overrides

__all__ = ["add_runtime_options", "run_runtime_bench_command"]

# options copied into the settings when given (argparse dest -> settings field)
_SCHEDULE_AND_RUNTIME = SCHEDULE_OPTIONS + (("repeats", "repeats"), ("compile_backend", "compile_backend"),
                                            ("buckets", "buckets"))


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "runtime benchmark (--runtimes)",
        "Instead of the policy sweep: the same cached generation (one policy at one threshold, default "
        "--thresholds motioncache=0.1; one seed; one thread count, default 1) on each runtime, side by side: "
        "eager uncached / cached (exact K) / cached (capacity buckets); torch.compile of the bucketed model "
        "(after a warm-up generation); ONNX Runtime uncached (torch.onnx.export) / cached (mcgraph.export.onnx). "
        "Prints times and speedups (incl. ORT speedup / eager speedup, target >= 0.8), parity of the final "
        "latents, compile and export times, ONNX node counts and sizes; writes DIR/runtime_bench.json and "
        "DIR/runtime_report.md (ONNX files in DIR/onnx). --quick: 8 frames, 8 steps, buckets 0.5,1, aot_eager.")
    g.add_argument("--runtimes", type=csv_list(str, RUNTIMES, "runtime"), default=None, metavar="R1,R2,...",
                   help="run the runtime benchmark with these runtimes: " + ", ".join(RUNTIMES)
                        + " (eager is always measured: it is the baseline)")
    g.add_argument("--compile-backend", choices=("inductor", "aot_eager", "eager"), default=None,
                   help="torch.compile backend of the compiled run (default inductor; quick: aot_eager)")
    g.add_argument("--buckets", type=buckets, default=None, metavar="F1,F2,...",
                   help="capacity buckets of the bucketed, compiled and ONNX runs (default "
                        "0.125,0.25,0.375,0.5,0.75,1; quick: 0.5,1)")


def _runtime_command_line(args: argparse.Namespace, settings) -> str:
    parts = ["mcgraph", "bench", "--runtimes", ",".join(settings.runtimes)]
    if args.quick:
        parts.append("--quick")
    parts += ["--thresholds", f"{settings.policy}={settings.threshold:g}"]
    if settings.motion_source is not None:
        parts += ["--motion-sources", settings.motion_source]
    for opt in ("seeds", "threads"):
        value = getattr(args, opt)
        if value is not None:
            parts += ["--" + opt, ",".join(str(v) for v in value)]
    parts += given_options(args, ("compile_backend", "repeats", "steps", "frames", "window", "overlap", "ar_step",
                             "guidance", "shift", "addnoise", "weights"))
    if args.buckets is not None:
        parts += ["--buckets", ",".join(f"{b:g}" for b in args.buckets)]
    parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


def _runtime_settings(args: argparse.Namespace):
    """The RuntimeBenchSettings of the options given; UsageError for invalid ones or ones that do not apply."""
    from mcgraph.bench.settings import RuntimeBenchSettings, quick_runtime_settings

    for name, given in (("--from-json", args.from_json is not None), ("--peers", args.peers),
                        ("--policies", args.policies is not None), ("--readme", args.readme),
                        ("--oracle-fractions", args.oracle_fractions is not None),
                        ("--match-fractions", args.match_fractions is not None),
                        ("--peer-size", args.peer_model is not None), ("--peer-steps", args.peer_steps is not None),
                        ("--peer-thresholds", args.peer_thresholds is not None), ("--peers-only", args.peers_only)):
        if given:
            raise UsageError(f"{name} does not apply to the runtime benchmark (--runtimes); the policy and "
                             f"threshold come from --thresholds POLICY=T")
    over = {"runtimes": args.runtimes}
    if args.thresholds:
        if len(args.thresholds) != 1 or len(args.thresholds[0][1]) != 1:
            raise UsageError("the runtime benchmark runs one policy at one threshold: give --thresholds POLICY=T "
                             "once with one value")
        over["policy"], (over["threshold"],) = args.thresholds[0]
    for name, value in (("seed", args.seeds), ("thread count", args.threads), ("motion source", args.motion_sources)):
        if value is not None and len(value) != 1:
            raise UsageError(f"the runtime benchmark takes one {name}, got {', '.join(str(v) for v in value)}")
    if args.seeds is not None:
        over["seed"] = args.seeds[0]
    if args.threads is not None:
        over["threads"] = args.threads[0]
    if args.motion_sources is not None:
        if over.get("policy", "motioncache") != "motioncache":
            raise UsageError("--motion-sources applies to motioncache only")
        over["motion_source"] = args.motion_sources[0]
    over.update(schedule_overrides(args, _SCHEDULE_AND_RUNTIME))
    if args.weights is not None:
        over["weights"] = str(args.weights)
    try:
        settings = quick_runtime_settings(**over) if args.quick else RuntimeBenchSettings(**over)
        check_sampler_settings(settings)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return settings


def run_runtime_bench_command(args: argparse.Namespace) -> int:
    """`mcgraph bench --runtimes ...`: see `mcgraph.bench.runtime_bench`."""
    from mcgraph.bench.runtime_bench import run_runtime_bench
    from mcgraph.bench.runtime_report import ratio_table, runtime_table, write_runtime_outputs

    settings = _runtime_settings(args)
    if "onnx" in settings.runtimes:
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"--runtimes onnx needs the onnx extra (pip install 'mcgraph[onnx]'): {e}") from None
    data = run_runtime_bench(settings, args.out, progress=not args.no_progress,
                             command=_runtime_command_line(args, settings))
    paths = write_runtime_outputs(data, args.out)
    print(runtime_table(data))
    print()
    print(ratio_table(data))
    print(f"wrote {paths['json']} and {paths['report']}")
    print(f"elapsed {data['elapsed_s']:.1f} s")
    return 0
