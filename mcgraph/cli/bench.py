"""`mcgraph bench`: the command line of `mcgraph.bench` (registration is cheap; torch is imported on run)."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from mcgraph.bench.settings import BENCH_POLICIES, MOTION_SOURCES, RUNTIMES
from mcgraph.cli.common import (
    SCHEDULE_OPTIONS,
    UsageError,
    add_command,
    buckets,
    existing_file,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    prepare_output_dir,
    schedule_overrides,
)

__all__ = ["add_bench_command", "run_bench_command", "run_runtime_bench_command"]

# options copied into the settings when given (argparse dest -> settings field)
_SCHEDULE_AND_PEERS = SCHEDULE_OPTIONS + (("peer_model", "peer_model"), ("peer_steps", "peer_steps"))
_SCHEDULE_AND_RUNTIME = SCHEDULE_OPTIONS + (("repeats", "repeats"), ("compile_backend", "compile_backend"),
                                            ("buckets", "buckets"))


def _csv(kind, choices=None, name="value"):
    def parse(text: str):
        parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {name}s")
        out = []
        for p in parts:
            if choices is not None and p not in choices:
                raise argparse.ArgumentTypeError(f"unknown {name} {p!r}; choose from {', '.join(choices)}")
            try:
                out.append(kind(p))
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a valid {name}: {p!r}") from None
            except argparse.ArgumentTypeError as e:  # a range check of `kind`
                raise argparse.ArgumentTypeError(f"{name} {p}: {e}") from None
        return tuple(out)

    return parse


def _threads(text: str):
    out = []
    for p in (x.strip() for x in text.split(",")):
        if not p:
            continue
        if p == "all":
            out.append(os.cpu_count() or 1)
            continue
        try:
            n = int(p)
        except ValueError:
            raise argparse.ArgumentTypeError(f"thread counts are integers or 'all', got {p!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {n}")
        out.append(n)
    if not out:
        raise argparse.ArgumentTypeError("no thread count given")
    return tuple(dict.fromkeys(out))


def _threshold_spec(text: str):
    """POLICY=T1,T2,... (e.g. motioncache=0.05,0.1)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected POLICY=T1,T2,..., got {text!r}")
    policy, values = text.split("=", 1)
    policy = policy.strip()
    if policy not in ("teacache", "flowcache", "motioncache"):
        raise argparse.ArgumentTypeError(f"thresholds are for teacache, flowcache or motioncache, got {policy!r}")
    vals = _csv(float, name="threshold")(values)
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"thresholds must be >= 0, got {vals}")
    return policy, vals


def _options(args: argparse.Namespace, names) -> list[str]:
    """["--name", value, ...] for the options of `names` that were given."""
    parts = []
    for opt in names:
        value = getattr(args, opt)
        if value is not None:
            parts += ["--" + opt.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    return parts


def _command_line(args: argparse.Namespace) -> str:
    """The options given, as a command line that reproduces the run."""
    parts = ["mcgraph", "bench"]
    if args.quick:
        parts.append("--quick")

    def joined(v):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)

    for opt in ("seeds", "policies", "motion_sources", "threads", "oracle_fractions", "match_fractions"):
        value = getattr(args, opt)
        if value is not None:
            parts += ["--" + opt.replace("_", "-"), joined(value)]
    for policy, values in args.thresholds or ():
        parts += ["--thresholds", f"{policy}={joined(values)}"]
    parts += _options(args, ("repeats", "steps", "frames", "window", "overlap", "ar_step", "guidance", "shift",
                             "addnoise", "weights", "peer_model", "peer_steps"))
    if args.peers:
        parts.append("--peers")
    parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


def _check_sampler_settings(settings) -> None:
    """Raise ValueError now if the settings make no valid sampler (with the weights' causal block size)."""
    from mcgraph.video.sampler import SamplerConfig
    from mcgraph.zoo.weights import BUNDLED_WEIGHTS, read_metadata

    weights = Path(settings.weights) if settings.weights else BUNDLED_WEIGHTS
    try:
        cbs = int(read_metadata(weights)["config"]["causal_block_size"])
    except Exception:  # missing/invalid weights: load_reference reports it clearly later
        cbs = 1
    SamplerConfig(**settings.sampler_kwargs(cbs))


def add_bench_command(subparsers) -> None:
    p = add_command(
        subparsers, "bench",
        help="benchmark speed, FLOPs and fidelity of every cache policy (JSON, Markdown, plots)",
        description=(
            "Generate videos with the bundled reference model by diffusion forcing, uncached and under each cache "
            "policy over a threshold sweep, for several seeds; measure wall time (median of repeats, side by side "
            "with the uncached run), FLOPs (torch.utils.flop_counter over the real cached calls), tokens computed, "
            "PSNR/SSIM vs the uncached video (whole, moving and static regions), cache memory and the model-quality "
            "gate numbers of every video vs the real clip of its scene; with two controls, the placebo (MotionCache "
            "with permuted motion weights) and the oracle (refreshes the tokens that truly changed most), and PSNR at "
            "matched compute (interpolated over each sweep; mean and 95% CI over seeds). Writes "
            "DIR/bench.json (validated against mcgraph/bench/schema.json), DIR/report.md, DIR/results.md (README "
            "'Results' section) and PNG plots. --peers adds diffusers' Wan transformer under diffusers' own cache "
            "hooks and mcgraph's policies. --from-json regenerates the reports and plots from an existing JSON."
        ),
    )
    _add_sweep_options(p)
    _add_runtime_options(p)
    p.set_defaults(func=run_bench_command)


def _add_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="tiny sweep for CI (1 seed, 16 steps, 12 frames, one threshold per policy; < 2 minutes)")
    p.add_argument("--seeds", type=_csv(nonnegative_int, name="seed"), default=None, metavar="S1,S2,...",
                   help="seeds (scene and noise); default 0,...,7 (quick: 0)")
    p.add_argument("--policies", type=_csv(str, BENCH_POLICIES, "policy"), default=None, metavar="P1,P2,...",
                   help="policies to run: " + ", ".join(BENCH_POLICIES) + " (default: all; placebo: MotionCache's "
                        "thresholds with the first motion source and permuted motion weights; oracle: see "
                        "--oracle-fractions)")
    p.add_argument("--oracle-fractions", type=_csv(fraction, name="fraction"), default=None, metavar="F1,F2,...",
                   help="token fractions the oracle refreshes (default 0.2,0.3,0.45,0.6; quick: 0.2,0.6)")
    p.add_argument("--match-fractions", type=_csv(fraction, name="fraction"), default=None, metavar="F1,F2,...",
                   help="computed-token fractions of the matched-compute PSNR table (default 0.3,0.45,0.6)")
    p.add_argument("--thresholds", type=_threshold_spec, action="append", default=None, metavar="POLICY=T1,T2",
                   help="threshold sweep of one policy (repeatable), e.g. --thresholds motioncache=0.05,0.1,0.2; "
                        "default teacache=0.02,0.05,0.1,0.4, flowcache=0.02,0.05,0.1,0.2, motioncache (and placebo)="
                        "0.02,0.05,0.1,0.2 (quick: 0.1 each)")
    p.add_argument("--motion-sources", type=_csv(str, MOTION_SOURCES, "motion source"), default=None,
                   metavar="SRC,...", help="MotionCache motion_source values to compare: " + ", ".join(MOTION_SOURCES)
                        + " (default: all; quick: hidden)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed generations per run and thread count; the "
                                                             "median is reported (default 1)")
    p.add_argument("--threads", type=_threads, default=None, metavar="N,...",
                   help="torch thread counts to time with, e.g. 1,all (default 1)")
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps per chunk (default 50; quick 16)")
    p.add_argument("--frames", type=positive_int, default=None, help="frames per video (default 28; quick 12)")
    p.add_argument("--window", type=positive_int, default=None, metavar="FRAMES",
                   help="frames per window (default 16; quick 8)")
    p.add_argument("--overlap", type=nonnegative_int, default=None, metavar="FRAMES", help="history frames (default 4)")
    p.add_argument("--ar-step", type=nonnegative_int, default=None,
                   help="rows by which each chunk lags the previous (default 4)")
    p.add_argument("--guidance", type=nonnegative_float, default=None, help="classifier-free guidance scale (default 4)")
    p.add_argument("--shift", type=positive_float, default=None, help="timestep shift (default 2)")
    p.add_argument("--addnoise", type=nonnegative_float, default=None, metavar="T",
                   help="re-noise the history frames to timestep T (SkyReels-V2 addnoise_condition; default 20; "
                        "0: off)")
    p.add_argument("--weights", type=existing_file, default=None, metavar="FILE",
                   help="reference weights (default: bundled)")
    p.add_argument("--peers", action="store_true",
                   help="also compare on diffusers' WanTransformer3DModel: FirstBlockCache, PyramidAttentionBroadcast, "
                        "TaylorSeer vs mcgraph's policies")
    p.add_argument("--peer-model", choices=("wan-tiny", "wan-bench"), default=None,
                   help="peer model size (default wan-bench: 4 layers, dim 128, 512 tokens; quick: wan-tiny)")
    p.add_argument("--peer-steps", type=positive_int, default=None, help="steps of the peer sampling loop (default 50)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--from-json", type=existing_file, default=None, metavar="FILE",
                   help="do not run: rewrite report.md, results.md and the plots (no strip) from FILE into --out")
    p.add_argument("--readme", action="store_true", help="print the README 'Results' section when done")
    p.add_argument("--readme-plots-dir", default=None, metavar="PATH",
                   help="where the README finds the plots (relative to it); default: --out as given")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "runtime benchmark (--runtimes)",
        "Instead of the policy sweep: the same cached generation (one policy at one threshold, default "
        "--thresholds motioncache=0.1; one seed; one thread count, default 1) on each runtime, side by side: "
        "eager uncached / cached (exact K) / cached (capacity buckets); torch.compile of the bucketed model "
        "(after a warm-up generation); ONNX Runtime uncached (torch.onnx.export) / cached (mcgraph.export.onnx). "
        "Prints times and speedups (incl. ORT speedup / eager speedup, target >= 0.8), parity of the final "
        "latents, compile and export times, ONNX node counts and sizes; writes DIR/runtime_bench.json and "
        "DIR/runtime_report.md (ONNX files in DIR/onnx). --quick: 8 frames, 8 steps, buckets 0.5,1, aot_eager.")
    g.add_argument("--runtimes", type=_csv(str, RUNTIMES, "runtime"), default=None, metavar="R1,R2,...",
                   help="run the runtime benchmark with these runtimes: " + ", ".join(RUNTIMES)
                        + " (eager is always measured: it is the baseline)")
    g.add_argument("--compile-backend", choices=("inductor", "aot_eager", "eager"), default=None,
                   help="torch.compile backend of the compiled run (default inductor; quick: aot_eager)")
    g.add_argument("--buckets", type=buckets, default=None, metavar="F1,F2,...",
                   help="capacity buckets of the bucketed, compiled and ONNX runs (default "
                        "0.125,0.25,0.375,0.5,0.75,1; quick: 0.5,1)")


def run_bench_command(args: argparse.Namespace) -> int:
    prepare_output_dir(args.out, "--out")  # now: the reports are written only after the whole sweep
    if args.from_json is not None:
        return _rewrite_from_json(args)
    if args.runtimes is not None:
        return run_runtime_bench_command(args)
    if args.compile_backend is not None or args.buckets is not None:
        raise UsageError("--compile-backend and --buckets apply to the runtime benchmark (--runtimes) only")

    import torch

    from mcgraph.bench.report import write_outputs
    from mcgraph.bench.run import run_bench

    settings = _bench_settings(args)
    torch.set_num_threads(settings.threads[0])
    command = _command_line(args)
    data = run_bench(settings, progress=not args.no_progress, command=command)
    arts = write_outputs(data, args.out, plots=not args.no_plots,
                         readme_plots_dir=args.readme_plots_dir or str(args.out))
    print(f"wrote {arts['json']}, {arts['report']}, {arts['results']}"
          + (f" and {len(arts['plots'])} plots" if arts["plots"] else ""))
    print(f"elapsed {data['elapsed_s']:.1f} s")
    if args.readme:
        print((Path(arts["results"])).read_text())
    return 0


def _rewrite_from_json(args: argparse.Namespace) -> int:
    """--from-json: report.md, results.md and the plots again from a bench.json."""
    import json

    from mcgraph.bench.plots import write_plots
    from mcgraph.bench.report import markdown_report, results_section, validate

    data = json.loads(args.from_json.read_text())
    validate(data)
    args.out.mkdir(parents=True, exist_ok=True)
    arts = data.setdefault("artifacts", {})
    if not args.no_plots:
        plots = write_plots(data, args.out)  # the frame strip needs the videos: kept if already there
        strip = args.out / "strip.png"
        if strip.is_file() and str(strip) not in plots:
            plots.append(str(strip))
        arts["plots"] = plots or arts.get("plots", [])
    (args.out / "report.md").write_text(markdown_report(data) + "\n")
    section = results_section(data, args.readme_plots_dir or str(args.out))
    (args.out / "results.md").write_text(section + "\n")
    print(f"wrote {args.out / 'report.md'} and {args.out / 'results.md'}")
    if args.readme:
        print(section)
    return 0


def _bench_settings(args: argparse.Namespace):
    """The BenchSettings of the options given; UsageError for invalid ones."""
    from mcgraph.bench.settings import BenchSettings, quick_settings

    over = {}
    for name in ("seeds", "policies", "motion_sources", "repeats", "threads", "oracle_fractions", "match_fractions"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    over.update(schedule_overrides(args, _SCHEDULE_AND_PEERS))
    if args.weights is not None:
        over["weights"] = str(args.weights)
    over["peers"] = bool(args.peers)
    try:
        settings = quick_settings(**over) if args.quick else BenchSettings(**over)
        if args.thresholds:
            th = dict(settings.thresholds)
            for policy, values in args.thresholds:
                th[policy] = values
            settings.thresholds = {k: tuple(v) for k, v in th.items()}
            settings.__post_init__()
        _check_sampler_settings(settings)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return settings


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
    parts += _options(args, ("compile_backend", "repeats", "steps", "frames", "window", "overlap", "ar_step",
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
                        ("--peer-model", args.peer_model is not None), ("--peer-steps", args.peer_steps is not None)):
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
        _check_sampler_settings(settings)
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
