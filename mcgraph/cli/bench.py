"""`mcgraph bench`: the command line of `mcgraph.bench` (registration is cheap; torch is imported on run): the
policy sweep's options and run, --from-json; the peer comparison's options and --peers-only are in
`mcgraph.cli.bench_peers`, the runtime benchmark's (--runtimes) in `mcgraph.cli.bench_runtimes`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from mcgraph.bench.settings import BENCH_POLICIES, MOTION_SOURCES
from mcgraph.cli.bench_args import csv_list, given_options, threads_list, threshold_spec
from mcgraph.cli.bench_peers import (
    add_peer_options,
    peer_option_args,
    run_peers_command,
)
from mcgraph.cli.bench_runtimes import add_runtime_options, run_runtime_bench_command
from mcgraph.cli.bench_settings import bench_settings
from mcgraph.cli.common import (
    UsageError,
    add_command,
    existing_file,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    prepare_output_dir,
)

__all__ = ["add_bench_command", "run_bench_command"]


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
    parts += given_options(args, ("repeats", "steps", "frames", "window", "overlap", "ar_step", "guidance", "shift",
                             "addnoise", "weights"))
    parts += peer_option_args(args)
    if args.peers:
        parts.append("--peers")
    parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


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
            "hooks and mcgraph's policies (--peers-only: that alone, into DIR/peers.json and DIR/peers.md). "
            "--from-json regenerates the reports and plots from an existing JSON."
        ),
    )
    _add_sweep_options(p)
    add_peer_options(p)
    _add_output_options(p)
    add_runtime_options(p)
    p.set_defaults(func=run_bench_command)


def _add_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="tiny sweep for CI (1 seed, 16 steps, 12 frames, one threshold per policy; < 2 minutes)")
    p.add_argument("--seeds", type=csv_list(nonnegative_int, name="seed"), default=None, metavar="S1,S2,...",
                   help="seeds (scene and noise); default 0,...,7 (quick: 0)")
    p.add_argument("--policies", type=csv_list(str, BENCH_POLICIES, "policy"), default=None, metavar="P1,P2,...",
                   help="policies to run: " + ", ".join(BENCH_POLICIES) + " (default: all; placebo: MotionCache's "
                        "thresholds with the first motion source and permuted motion weights; oracle: see "
                        "--oracle-fractions)")
    p.add_argument("--oracle-fractions", type=csv_list(fraction, name="fraction"), default=None, metavar="F1,F2,...",
                   help="token fractions the oracle refreshes (default 0.2,0.3,0.45,0.6; quick: 0.2,0.6)")
    p.add_argument("--match-fractions", type=csv_list(fraction, name="fraction"), default=None, metavar="F1,F2,...",
                   help="computed-token fractions of the matched-compute PSNR table (default 0.3,0.45,0.6)")
    p.add_argument("--thresholds", type=threshold_spec, action="append", default=None, metavar="POLICY=T1,T2",
                   help="threshold sweep of one policy (repeatable), e.g. --thresholds motioncache=0.05,0.1,0.2; "
                        "default teacache=0.02,0.05,0.1,0.4, flowcache=0.02,0.05,0.1,0.2, motioncache (and placebo)="
                        "0.02,0.05,0.1,0.2 (quick: 0.1 each)")
    p.add_argument("--motion-sources", type=csv_list(str, MOTION_SOURCES, "motion source"), default=None,
                   metavar="SRC,...", help="MotionCache motion_source values to compare: " + ", ".join(MOTION_SOURCES)
                        + " (default: all; quick: hidden)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed generations per run and thread count; the "
                                                             "median is reported (default 1)")
    p.add_argument("--threads", type=threads_list, default=None, metavar="N,...",
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


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--from-json", type=existing_file, default=None, metavar="FILE",
                   help="do not run: rewrite report.md, results.md and the plots (no strip) from FILE into --out")
    p.add_argument("--readme", action="store_true", help="print the README 'Results' section when done")
    p.add_argument("--readme-plots-dir", default=None, metavar="PATH",
                   help="where the README finds the plots (relative to it); default: --out as given")


def run_bench_command(args: argparse.Namespace) -> int:
    prepare_output_dir(args.out, "--out")  # now: the reports are written only after the whole sweep
    if args.peers_only:
        return run_peers_command(args)
    if args.from_json is not None:
        return _rewrite_from_json(args)
    if args.runtimes is not None:
        return run_runtime_bench_command(args)
    if args.compile_backend is not None or args.buckets is not None:
        raise UsageError("--compile-backend and --buckets apply to the runtime benchmark (--runtimes) only")

    import torch

    from mcgraph.bench.report import write_outputs
    from mcgraph.bench.run import run_bench

    settings = bench_settings(args)
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
