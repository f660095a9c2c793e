"""Print the construct table (issue 13, items 5 and 6) as markdown: what mcgraph does today with one tiny video
DiT per architectural construct (`tests/construct_zoo.py`), measured by `tests/test_construct_table.measure`.

Columns: whether torch.export captures it (dynamic shapes, or mcgraph's static fallback); whether identity
(`NoCache`) is bit-exact vs eager over a 4-step denoising trajectory; MotionCache at threshold 0 (max error vs
eager, or refused); the token-subset stack vs the full stack's rows (what MotionCache runs at threshold > 0);
whether the layout's tokens can be subset in principle; the first line of each error, by stage; capture seconds.

    python tools/construct_table.py
    python tools/construct_table.py --constructs baseline flex_attention --calls 6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the zoo and the measurement live in the test package

from tests.construct_zoo import CONSTRUCTS, SUBSETTABLE
from tests.test_construct_table import SUBSET_TOL, TOL, Row, measure

HEADER = ("construct", "capture", "identity exact", "MotionCache thr 0", "subset stack", "subsettable",
          "refusal / error (first line)", "capture s")


def _identity(row: Row) -> str:
    if "identity" in row.errors:
        return "raised"
    if row.identity_exact is None:
        return "-"
    return "yes" if row.identity_exact else f"NO (max err {row.identity_err:.1e})"


def _motion(row: Row) -> str:
    if "optimize" in row.errors or "call" in row.errors:
        return "refused" if "optimize" in row.errors else "raised in call"
    if row.motion_err is None:
        return "-"
    return ("exact" if row.motion_err <= TOL else "INEXACT") + f" ({row.motion_err:.1e})"


def _subset(row: Row) -> str:
    raised = [stage.split()[-1] for stage in row.errors if stage.startswith("subset")]
    out = [] if row.subset_err is None else [("exact" if row.subset_err <= SUBSET_TOL else "WRONG")
                                             + f" ({row.subset_err:.1e})"]
    out += [f"raised on {'/'.join(raised)} of the tokens"] if raised else []
    return ", ".join(out) or "-"


def cells(row: Row, width: int) -> list[str]:
    capture = "refused" if row.opt is None else ("ok" if row.opt.captured.dynamic else "ok (static fallback)")
    errors = "; ".join(f"{stage}: {row.first_line(stage)[:width]}" for stage in row.errors)
    return [row.name, capture, _identity(row), _motion(row), _subset(row), "yes" if row.name in SUBSETTABLE
            else "no", errors.replace("|", "\\|"), f"{row.capture_s:.2f}"]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--constructs", nargs="+", choices=list(CONSTRUCTS), default=list(CONSTRUCTS),
                        metavar="NAME", help=f"constructs to run (default: all): {', '.join(CONSTRUCTS)}")
    parser.add_argument("--calls", type=int, default=4, help="denoising steps per trajectory (default 4)")
    parser.add_argument("--width", type=int, default=220, help="characters kept of each error's first line")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be >= 1")
    torch.set_num_threads(args.threads)
    start, rows = time.perf_counter(), []
    for name in args.constructs:
        rows.append(cells(measure(name, args.calls), args.width))
        print(f"measured {name}", file=sys.stderr, flush=True)
    print(markdown(rows))
    print(f"\n{len(rows)} constructs, torch {torch.__version__}, {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
