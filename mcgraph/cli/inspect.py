"""`mcgraph inspect`: print the structure the compiler finds in a model (or say what it could not find)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from mcgraph.cli.common import UsageError, add_command, prepare_output_dir

CACHE_POLICIES = ("teacache", "flowcache", "motioncache")


def add_inspect_command(subparsers) -> None:
    from mcgraph.zoo.subjects import SUBJECT_NAMES

    p = add_command(
        subparsers, "inspect",
        help="show the blocks, token grid, attention sites and token-axis values found in a model",
        description=(
            "Capture a model with torch.export (symbolic shapes) and run mcgraph's structural analyses on it. "
            "Prints the discovered structure, or a clear error naming what could not be found and where. "
            "Built-in subjects: " + ", ".join(SUBJECT_NAMES) + ". Your own model: --factory module:function, "
            "where the function returns (model, example_kwargs). With --cache POLICY the model is also optimised "
            "with that caching policy (its default settings) and the cache memory one context holds at the example "
            "shape is printed: every state tensor, bytes per context and per token, the ratio to the weights."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="reference", choices=SUBJECT_NAMES, help="built-in subject to inspect")
    src.add_argument("--factory", default=None, metavar="MODULE:FUNC",
                     help="import MODULE and call FUNC() -> (model, example_kwargs)")
    p.add_argument("--cache", choices=CACHE_POLICIES, default=None,
                   help="also optimise with this caching policy and report the cache memory per context")
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

    if args.dump is not None:
        prepare_output_dir(args.dump, "--dump")
    if args.factory:
        model, kwargs = _load_factory(args.factory)
    else:
        subject = SUBJECTS[args.model]()
        model, kwargs = subject.model, subject.kwargs
    if args.cache:
        structure, memory = _optimise(model, kwargs, args.cache, args.dump)
    else:
        structure, memory = inspect(model, (), kwargs, dump_dir=args.dump), None
    if args.json:
        data = structure.to_dict()
        if memory is not None:
            data["cache_memory"] = memory.to_dict()
        print(json.dumps(data, indent=2, default=str))
    else:
        print(structure.report())
        if memory is not None:
            print(memory)
    return 0


def _optimise(model, kwargs: dict, policy: str, dump):
    """(structure, cache memory report) of `model` optimised with `policy`'s default config."""
    import warnings

    import mcgraph
    from mcgraph.config import FlowCacheConfig, MotionCacheConfig, TeaCacheConfig
    from mcgraph.runtime.memory import CacheMemoryWarning

    config = {"teacache": TeaCacheConfig, "flowcache": FlowCacheConfig, "motioncache": MotionCacheConfig}[policy]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheMemoryWarning)  # the report printed says the same
        opt = mcgraph.optimize(model, config, (), kwargs, dump_dir=dump)
    return opt.structure, opt.cache_memory_report()
