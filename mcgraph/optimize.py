"""`mcgraph.optimize`: capture, analyse and rewrite a model; return a drop-in replacement.

The returned `OptimizedModule` is called exactly like the original (same positional and keyword
arguments, same return structure) and forwards attribute access (`config`, `dtype`, methods, ...) to it.
Inputs whose shapes the captured graph was not specialised for (e.g. another batch size) are captured
again and kept as another specialisation, never run through a graph built for other shapes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from .analysis import analyze
from .capture import CapturedGraph, bind_call, capture, static_key
from .config import CacheConfig, NoCache
from .errors import CaptureError, ConfigError
from .structure import ModelStructure

MAX_SPECIALISATIONS = 8


def _is_guard_failure(exc: BaseException) -> bool:
    return isinstance(exc, AssertionError) and str(exc).startswith("Guard failed")


class OptimizedModule(torch.nn.Module):
    """A cache-aware stand-in for `original`; see module docstring."""

    def __init__(self, original: torch.nn.Module, config: CacheConfig, first: CapturedGraph,
                 structure: ModelStructure, dump_dir: str | Path | None = None):
        super().__init__()
        # kept out of the module tree so parameters are not registered twice; the graphs share its tensors
        self.__dict__["_original"] = original
        self.__dict__["_specialisations"] = [(first, structure)]
        self.__dict__["_dump_dir"] = dump_dir
        self.mcgraph_config = config

    @property
    def original_module(self) -> torch.nn.Module:
        return self.__dict__["_original"]

    @property
    def structure(self) -> ModelStructure:
        """What the analyses found in the most recently captured specialisation."""
        return self.__dict__["_specialisations"][-1][1]

    @property
    def captured(self) -> CapturedGraph:
        return self.__dict__["_specialisations"][-1][0]

    @property
    def specialisations(self) -> int:
        return len(self.__dict__["_specialisations"])

    def forward(self, *args, **kwargs):
        specs = self.__dict__["_specialisations"]
        bound = bind_call(self.original_module, args, kwargs)
        key = static_key(bound)
        guard_errors = []
        for captured, _ in reversed(specs):
            if captured.static_key != key:
                guard_errors.append(f"captured with {dict(captured.static_key)}, called with {dict(key)}")
                continue
            try:
                return captured(bound)
            except AssertionError as exc:
                if not _is_guard_failure(exc):
                    raise
                guard_errors.append(str(exc))
        if len(specs) >= MAX_SPECIALISATIONS:
            warnings.warn(f"mcgraph: {len(specs)} shape specialisations of {self.captured.model_class} captured; "
                          "inputs keep changing shape", stacklevel=2)
        try:
            captured, structure = _capture_and_analyse(self.original_module, args, kwargs,
                                                       self.__dict__["_dump_dir"])
        except CaptureError as exc:
            raise CaptureError(f"inputs match no captured specialisation of {self.captured.model_class} "
                               f"({guard_errors[0]}) and capturing them failed: {exc}") from exc
        specs.append((captured, structure))
        return captured(bound)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"], name)


def _capture_and_analyse(model, args, kwargs, dump_dir) -> tuple[CapturedGraph, ModelStructure]:
    captured = capture(model, args, kwargs)
    structure = analyze(captured, dump_dir=dump_dir)
    return captured, structure


def optimize(
    model: torch.nn.Module,
    config: CacheConfig | None = None,
    example_args: tuple = (),
    example_kwargs: dict | None = None,
    *,
    dump_dir: str | Path | None = None,
) -> OptimizedModule:
    """Capture `model` on example inputs, analyse it, apply `config`'s rewrites; return a drop-in module.

    `dump_dir` writes the graph before/after every pass (debugging).
    """
    config = config if config is not None else NoCache()
    if not isinstance(config, CacheConfig):
        raise ConfigError(f"config must be a mcgraph CacheConfig (e.g. mcgraph.NoCache()), got {type(config).__name__}")
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    captured, structure = _capture_and_analyse(model, example_args, example_kwargs, dump_dir)
    return OptimizedModule(model, config, captured, structure, dump_dir)
