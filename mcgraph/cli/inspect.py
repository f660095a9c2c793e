"""`mcgraph inspect`: print the structure the compiler finds in a model (or say what it could not find)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from mcgraph.cli.common import UsageError, add_command


def add_inspect_command(subparsers) -> None:
    from mcgraph.zoo.subjects import SUBJECT_NAMES

    p = add_command(
        subparsers, "inspect",
        help="show the blocks, token grid, attention sites and token-axis values found in a model",
        description=(
            "Capture a model with torch.export (symbolic shapes) and run mcgraph's structural analyses on it. "
            "Prints the discovered structure, or a clear error naming what could not be found and where. "
            "Built-in subjects: " + ", ".join(SUBJECT_NAMES) + ". Your own model: --factory module:function, "
            "where the function returns (model, example_kwargs)."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="reference", choices=SUBJECT_NAMES, help="built-in subject to inspect")
    src.add_argument("--factory", default=None, metavar="MODULE:FUNC",
                     help="import MODULE and call FUNC() -> (model, example_kwargs)")
    p.add_argument("--json", action="store_true", help="print the structure as JSON")
    p.add_argument("--dump", type=Path, default=None, metavar="DIR",
                   help="write the graph before/after every analysis pass to DIR")
    p.set_defaults(func=run_inspect_command)


def _load_factory(spec: str):
    if ":" not in spec:
        raise UsageError(f"--factory must look like module:function, got {spec!r}")
    module, func = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load --factory {spec!r}: {exc}") from None
    model, kwargs = fn()
    return model, kwargs


def run_inspect_command(args: argparse.Namespace) -> int:
    from mcgraph.compiler.analysis import inspect
    from mcgraph.zoo.subjects import SUBJECTS

    if args.factory:
        model, kwargs = _load_factory(args.factory)
    else:
        subject = SUBJECTS[args.model]()
        model, kwargs = subject.model, subject.kwargs
    structure = inspect(model, (), kwargs, dump_dir=args.dump)
    if args.json:
        print(json.dumps(structure.to_dict(), indent=2, default=str))
    else:
        print(structure.report())
    return 0
