"""The ``mcgraph`` command line.

Each subcommand lives in its own module (`mcgraph.cli.demo`, `.bench`, `.export`, `.inspect`) and is
registered by a small function ``add_<name>_command(subparsers)`` listed in `SUBCOMMANDS`; it adds its
parser and sets ``func`` (``args -> exit code``) as a default. To add one, write such a function (in a new
module importing what it shares from `mcgraph.cli.common`, never this one) and append it to `SUBCOMMANDS`.
Registration must stay cheap: import heavy modules (torch, onnx, diffusers) inside ``func``, never at the
top of a command module, so ``mcgraph --help`` is instant.

Exit codes: 0 success, 1 runtime error (a one-line message on stderr), 2 usage error (argparse's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from mcgraph.cli.bench import add_bench_command
from mcgraph.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, UsageError
from mcgraph.cli.demo import add_demo_command
from mcgraph.cli.export import add_export_command
from mcgraph.cli.inspect import add_inspect_command

__all__ = ["SUBCOMMANDS", "build_parser", "main", "version"]

SUBCOMMANDS: list[Callable] = [add_demo_command, add_inspect_command, add_bench_command, add_export_command]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("mcgraph")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcgraph",
        description="MotionCache as a graph compiler: motion-aware token caching for video diffusion transformers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prog = f"{parser.prog} {args.command}"
    try:
        return int(args.func(args) or EXIT_OK)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line message instead of a traceback; MCGRAPH_DEBUG=1 shows it
        import os

        if os.environ.get("MCGRAPH_DEBUG"):
            raise
        print(f"{prog}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
