"""What every `mcgraph` command shares: exit codes, `UsageError`, the help formatter, argument types and the
sampler-schedule options (the same names in `demo` and `bench`). Command modules import this, never
`mcgraph.cli.main`.

Every flag is checked before any work starts: numbers by their argparse ``type=`` (exit code 2 with the usage
line), input files by `existing_file`, output folders and files by `prepare_output_dir` / `prepare_output_file`
at the start of the command (they create the folder: argparse types should not write).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "SCHEDULE_OPTIONS", "HelpFormatter", "UsageError", "add_command",
           "buckets", "existing_file", "fraction", "nonnegative_float", "nonnegative_int", "positive_float",
           "positive_int", "prepare_output_dir", "prepare_output_file", "schedule_overrides"]

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


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def existing_file(text: str) -> Path:
    """An input file that exists (checked when parsing, before any work)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def prepare_output_dir(path: Path, flag: str) -> Path:
    """Create the output folder now and check that a file can be written in it; UsageError naming `flag`
    otherwise, so that a bad folder fails before the work, not after it."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def prepare_output_file(path: Path, flag: str) -> Path:
    """`prepare_output_dir` for the file's folder, and the file itself must not be a folder."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give the file to write, e.g. {path / 'model.onnx'}")
    prepare_output_dir(path.parent, f"{flag} {path}: its folder")
    return path


def buckets(text: str) -> tuple[float, ...]:
    """Capacity buckets, e.g. 0.25,0.5,1 (see `mcgraph.bench.settings.parse_buckets`)."""
    from mcgraph.bench.settings import parse_buckets

    try:
        return parse_buckets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
