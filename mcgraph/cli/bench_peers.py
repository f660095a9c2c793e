"""The peer comparison's part of `mcgraph bench`: its options (`add_peer_options`: --peers, --peers-only,
--peer-size, --peer-steps, --peer-thresholds), how they are parsed and written back, and `run_peers_command`
(`--peers-only`: the comparison alone, `mcgraph.bench.peers`)."""

from __future__ import annotations

import argparse
import shlex

from mcgraph.bench.peer_settings import (
    PEER_METHODS,
    PEER_MODELS,
    normalise_peer_thresholds,
)
from mcgraph.cli.bench_args import given_options
from mcgraph.cli.bench_settings import bench_settings
from mcgraph.cli.common import UsageError, positive_int

__all__ = ["add_peer_options", "peer_option_args", "peer_threshold_spec", "peer_values", "peers_command_line",
           "run_peers_command"]


def add_peer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", action="store_true",
                   help="also compare on diffusers' WanTransformer3DModel: FirstBlockCache, PyramidAttentionBroadcast, "
                        "TaylorSeer vs mcgraph's policies")
    p.add_argument("--peers-only", action="store_true",
                   help="run only the peer comparison (no policy sweep); writes DIR/peers.json and DIR/peers.md")
    p.add_argument("--peer-size", "--peer-model", dest="peer_model", choices=PEER_MODELS, default=None,
                   help="peer model size: wan-384 (default; issue 14's setting: 4 blocks, hidden 384 = 6 heads x 64, "
                        "ffn 1536, 1024 video + 512 text tokens; about 55 s per uncached 50-step generation on one "
                        "thread), wan-bench (4 blocks, hidden 128, 512 video + 7 text tokens) or wan-tiny (diffusers' "
                        "test size, 60 tokens; the default with --quick)")
    p.add_argument("--peer-steps", type=positive_int, default=None,
                   help="steps of the peer sampling loop (default 50; quick 10)")
    p.add_argument("--peer-thresholds", type=peer_threshold_spec, action="append", default=None,
                   metavar="METHOD=V1,V2",
                   help="the values of one kind of peer row (repeatable): " + ", ".join(PEER_METHODS) + ". "
                        "Thresholds; PAB: skip range; taylorseer: cache interval K or K:MAX_ORDER; "
                        "motioncache_budget: token budgets (MotionCache τ=0.1). Default first_block_cache=0.12,0.15,0.2 "
                        "pyramid_attention_broadcast=2,3 taylorseer=4,5,5:2 teacache=0.1,0.2 flowcache=0.1,0.2 "
                        "motioncache=0.1,0.2 motioncache_budget=0.5,0.3; a kind not given keeps its default, one "
                        "given without values (METHOD=) has no rows")


def peer_threshold_spec(text: str):
    """METHOD=V1,V2,... of the peer comparison (e.g. first_block_cache=0.05,0.1, taylorseer=4,5:2)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected METHOD=V1,V2,..., got {text!r}")
    method, values = (x.strip() for x in text.split("=", 1))
    if method not in PEER_METHODS:
        raise argparse.ArgumentTypeError(f"unknown peer method {method!r}; choose from {', '.join(PEER_METHODS)}")
    parts = [v.strip() for v in values.split(",") if v.strip()]  # none: no rows of that kind
    try:
        vals = tuple(tuple(float(x) for x in v.split(":")) if ":" in v else float(v) for v in parts)
        return method, normalise_peer_thresholds({method: vals})[method]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def peer_values(values) -> str:
    """Peer values as given on the command line (TaylorSeer's (K, order) as K:ORDER)."""
    return ",".join(":".join(str(x) for x in v) if isinstance(v, tuple) else f"{v:g}" for v in values)


def peer_option_args(args: argparse.Namespace) -> list[str]:
    """The peer options given (but --peers / --peers-only), as command-line arguments."""
    parts = []
    if args.peer_model is not None:
        parts += ["--peer-size", args.peer_model]
    if args.peer_steps is not None:
        parts += ["--peer-steps", str(args.peer_steps)]
    for method, values in args.peer_thresholds or ():
        parts += ["--peer-thresholds", f"{method}={peer_values(values)}"]
    return parts


def peers_command_line(args: argparse.Namespace) -> str:
    """The command line of a --peers-only run."""
    parts = ["mcgraph", "bench", "--peers-only"]
    if args.quick:
        parts.append("--quick")
    if args.threads is not None:
        parts += ["--threads", ",".join(str(t) for t in args.threads)]
    parts += given_options(args, ("repeats", "guidance")) + peer_option_args(args)
    parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


_NOT_FOR_PEERS = ("from_json", "runtimes", "seeds", "policies", "oracle_fractions", "match_fractions", "thresholds",
                  "motion_sources", "steps", "frames", "window", "overlap", "ar_step", "shift", "addnoise", "weights",
                  "readme_plots_dir", "compile_backend", "buckets")


def run_peers_command(args: argparse.Namespace) -> int:
    """`mcgraph bench --peers-only`: the peer comparison alone (`mcgraph.bench.peers`)."""
    given = [n for n in _NOT_FOR_PEERS if getattr(args, n) is not None] + (["readme"] if args.readme else []) + \
        (["peers"] if args.peers else [])
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} does not apply to --peers-only (the peer comparison "
                         f"takes --peer-size, --peer-steps, --peer-thresholds, --repeats, --threads, --guidance, "
                         f"--quick)")
    import torch

    from mcgraph.bench.peer_report import peers_markdown_table, write_peers_outputs
    from mcgraph.bench.peers import run_peers_only

    settings = bench_settings(args)
    torch.set_num_threads(settings.threads[0])
    doc = run_peers_only(settings, progress=not args.no_progress, command=peers_command_line(args))
    paths = write_peers_outputs(doc, args.out)
    print(peers_markdown_table(doc))
    print(f"wrote {paths['json']} and {paths['report']}")
    print(f"elapsed {doc['elapsed_s']:.1f} s")
    return 0
