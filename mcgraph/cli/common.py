"""What every `mcgraph` command shares: exit codes, `UsageError`, the help formatter, argument types and the
sampler-schedule options (the same names in `demo` and `bench`). Command modules import this, never
`mcgraph.cli.main`."""

from __future__ import annotations

import argparse

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "SCHEDULE_OPTIONS", "HelpFormatter", "UsageError", "add_command",
           "buckets", "nonnegative_float", "nonnegative_int", "positive_int", "schedule_overrides"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# command-line option (argparse dest) -> settings field of the sampler schedule (`ScheduleSettings`, `run_demo`)
SCHEDULE_OPTIONS = (("steps", "steps"), ("frames", "frames"), ("window", "window_frames"),
                    ("overlap", "overlap_frames"), ("ar_step", "ar_step"), ("guidance", "guidance_scale"),
                    ("shift", "shift"), ("addnoise", "addnoise_condition"))


class UsageError(Exception):
    """Raised by a subcommand for invalid option values found after parsing (exit code 2)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" except where there is nothing useful to show (None, flags)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_command(subparsers, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser, with the shared help formatter."""
    return subparsers.add_parser(name, help=help, description=description, formatter_class=HelpFormatter)


def schedule_overrides(args: argparse.Namespace, options=SCHEDULE_OPTIONS) -> dict:
    """{settings field: value} of the schedule options given on the command line (None: not given)."""
    return {attr: getattr(args, name) for name, attr in options if getattr(args, name) is not None}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def buckets(text: str) -> tuple[float, ...]:
    """Capacity buckets, e.g. 0.25,0.5,1 (see `mcgraph.bench.settings.parse_buckets`)."""
    from mcgraph.bench.settings import parse_buckets

    try:
        return parse_buckets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
