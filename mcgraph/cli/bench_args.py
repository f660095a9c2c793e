"""Argument types of `mcgraph bench` (comma-separated lists, thread counts, POLICY=T1,T2 threshold sweeps) and
`given_options`, which writes options back as a command line."""

from __future__ import annotations

import argparse
import os

__all__ = ["csv_list", "given_options", "threads_list", "threshold_spec"]


def csv_list(kind, choices=None, name="value"):
    """An argparse type: a comma-separated list of `kind` (each one of `choices` if given) -> tuple."""
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


def threads_list(text: str):
    """'1,all' -> torch thread counts (1, os.cpu_count()), duplicates dropped."""
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


def threshold_spec(text: str):
    """POLICY=T1,T2,... (e.g. motioncache=0.05,0.1)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected POLICY=T1,T2,..., got {text!r}")
    policy, values = text.split("=", 1)
    policy = policy.strip()
    if policy not in ("teacache", "flowcache", "motioncache"):
        raise argparse.ArgumentTypeError(f"thresholds are for teacache, flowcache or motioncache, got {policy!r}")
    vals = csv_list(float, name="threshold")(values)
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"thresholds must be >= 0, got {vals}")
    return policy, vals



def given_options(args: argparse.Namespace, names) -> list[str]:
    """["--name", value, ...] for the options of `names` that were given."""
    parts = []
    for opt in names:
        value = getattr(args, opt)
        if value is not None:
            parts += ["--" + opt.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    return parts
