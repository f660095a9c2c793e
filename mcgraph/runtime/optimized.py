"""`mcgraph.optimize`: capture, analyse and rewrite a model; return a drop-in replacement.

The returned `OptimizedModule` is called exactly like the original (same positional and keyword
arguments, same return structure) and forwards attribute access (`config`, `dtype`, methods, ...) to it.
Inputs whose shapes the captured graph was not specialised for (e.g. another batch size) are captured
again and kept as another specialisation, never run through a graph built for other shapes.

With a caching config, the module also holds the cache state between calls: one state per context
(`with model.cache_context("cond"):`, the CFG branch), reset by `reset_cache()` (the sampler calls it per
generation segment), and reset with a warning when a context's input shapes or dtype change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mcgraph.compiler.analysis import analyze
from mcgraph.compiler.capture import CapturedGraph, bind_call, static_key
from mcgraph.compiler.structure import ModelStructure
from mcgraph.config import CacheConfig, NoCache
from mcgraph.errors import CaptureError, ConfigError
from mcgraph.runtime.memory import CacheMemoryReport, describe, warn_if_large
from mcgraph.runtime.plain_export import refuse_plain_export, under_plain_export
from mcgraph.runtime.model_guard import ModelSnapshot
from mcgraph.runtime.session import CacheSession, SessionControls, assert_finite_in_graph
from mcgraph.runtime.specialisations import (
    Specialisation,
    SpecialisationSet,
    specialise,
    specialise_captured,
)
from mcgraph.runtime.step import CacheStep
from mcgraph.runtime.step_graph import StepGraph


def _is_guard_failure(exc: BaseException) -> bool:
    return isinstance(exc, AssertionError) and str(exc).startswith("Guard failed")


class EagerRunner:
    """The eager mode of the step, for the session."""

    def __init__(self, step: CacheStep):
        self.step = step

    def run(self, flat, state):
        return self.step(flat, state)

    def state_bytes(self, flat) -> int:
        return self.step.state_bytes_for(flat)


class TracedRunner(EagerRunner):
    """The traced mode (what torch.compile of an optimised module traces): buckets and torch.cond."""

    def __init__(self, graph: StepGraph):
        super().__init__(graph.step)
        self.graph = graph

    def run(self, flat, state):
        assert_finite_in_graph(self.step.graphs.input_names, flat)  # the session skips its check when traced
        return self.step(flat, state, traced=True, buckets=self.graph.buckets)


class OptimizedModule(SessionControls, torch.nn.Module):
    """A cache-aware stand-in for `original`; see module docstring."""

    def __init__(self, original: torch.nn.Module, config: CacheConfig, first: Specialisation,
                 dump_dir: str | Path | None = None, session: CacheSession | None = None,
                 snapshot: ModelSnapshot | None = None):
        super().__init__()
        # kept out of the module tree so parameters are not registered twice; the graphs share its tensors
        self.__dict__["_original"] = original
        self.__dict__["_specs"] = SpecialisationSet(
            original, first, lambda bound: specialise(original, (), bound, config, dump_dir),
            type(original).__name__, snapshot)
        self.__dict__["_dump_dir"] = dump_dir
        self.__dict__["_parameters_spec"] = _parameter_spec(original)
        self.__dict__["cache_session"] = session or CacheSession(
            type(original).__name__, [n.name for n in first.captured.graph_module.graph.nodes if n.op == "placeholder"],
            max_cache_bytes=getattr(config, "max_cache_bytes", None))
        self.mcgraph_config = config
        self.training = original.training

    def train(self, mode: bool = True) -> OptimizedModule:
        """Sets the original's mode (what the graphs were captured from; a change there is captured again)."""
        self.original_module.train(mode)
        return super().train(mode)

    # ------------------------------------------------------------------------------------ introspection
    @property
    def original_module(self) -> torch.nn.Module:
        return self.__dict__["_original"]

    @property
    def latest(self) -> Specialisation:
        """The most recently captured specialisation."""
        return self.__dict__["_specs"].items[-1]

    @property
    def structure(self) -> ModelStructure:
        """What the analyses found in the most recently captured specialisation (analysed now if the config
        did not need it: identity runs the captured graph without any structure)."""
        spec = self.latest
        if spec.structure is None:
            spec.structure = analyze(spec.captured, dump_dir=self.__dict__["_dump_dir"])
        return spec.structure

    @property
    def captured(self) -> CapturedGraph:
        return self.latest.captured

    @property
    def specialisations(self) -> int:
        return len(self.__dict__["_specs"].items)

    @property
    def step(self) -> CacheStep | None:
        return self.latest.step

    def cache_bytes_per_context(self, *args, **kwargs) -> int:
        """Bytes of one cache context's state for a call with these inputs (default: the capture's example),
        computed before anything is allocated; 0 without a caching config. CFG needs two contexts."""
        spec, flat = self._spec_and_flat(args, kwargs)
        return spec.step.state_bytes_for(flat) if spec.step is not None else 0

    def cache_memory_report(self, *args, **kwargs) -> CacheMemoryReport | None:
        """What one cache context holds for a call with these inputs (default: the capture's example): every
        state tensor, bytes per context and per token, the ratio to the weights; None without caching."""
        spec, flat = self._spec_and_flat(args, kwargs)
        if spec.step is None:
            return None
        return describe(spec.step, flat, self.original_module, getattr(self.mcgraph_config, "max_cache_bytes", None))

    def _spec_and_flat(self, args: tuple, kwargs: dict) -> tuple[Specialisation, list]:
        if args or kwargs:
            spec, _, flat = self.specialisation_for(*args, **kwargs)
            return spec, flat
        spec = self.latest  # the capture's own example: no guard check (a model call) needed
        return spec, spec.flatten(spec.captured.example_bound)

    def with_config(self, config: CacheConfig) -> OptimizedModule:
        """The same captured graphs under another cache config (e.g. a threshold sweep), with fresh state.
        Capture and analysis are not repeated; only the cheap cache-aware step is rebuilt."""
        _check_config(config)
        self._check_model()
        first = self.__dict__["_specs"].items[0]
        spec = specialise_captured(self.original_module, first.captured, config, self.__dict__["_dump_dir"],
                                   reuse=first)
        return OptimizedModule(self.original_module, config, spec, self.__dict__["_dump_dir"],
                               snapshot=self.__dict__["_specs"].snapshot)

    # ------------------------------------------------------------------------------------ introspection
    def stack_inputs(self, *args, **kwargs) -> list:
        """Run the prologue on a call's inputs and return what the block stack reads (stack / subset_stack
        arguments), for benchmarks and tests that drive the step's graphs by hand."""
        spec = self.latest
        if spec.step is None:
            raise ConfigError("stack_inputs needs a caching config (the stack is only split out for caching)")
        flat = spec.flatten(bind_call(self.original_module, args, kwargs))
        with torch.no_grad():
            return spec.step.front(flat).stack_in

    def specialisation_for(self, *args, **kwargs) -> tuple[Specialisation, dict, list]:
        """(specialisation, bound inputs, flat graph inputs) serving a call with these inputs, captured anew
        if none fits; runs the captured graph once to check its guards (no cache state is touched)."""
        self._check_model()
        bound = bind_call(self.original_module, args, kwargs)
        key = static_key(bound)
        for spec in reversed(self.__dict__["_specs"].items):
            if spec.captured.static_key != key:
                continue
            try:
                with torch.no_grad():
                    spec.captured(bound)
            except AssertionError as exc:
                if not _is_guard_failure(exc):
                    raise
                continue
            break
        else:
            spec = self.__dict__["_specs"].add_for(bound, key, [])
        return spec, bound, spec.flatten(bound)

    # ------------------------------------------------------------------------------------------- call
    def forward(self, *args, **kwargs):
        if under_plain_export():
            refuse_plain_export(self)
        if torch.compiler.is_compiling():
            return self._forward_traced(args, kwargs)
        self._check_model()
        specs = self.__dict__["_specs"]
        bound = bind_call(self.original_module, args, kwargs)
        key = static_key(bound)
        guard_errors = []
        for spec in reversed(specs.items):
            if spec.captured.static_key != key:
                guard_errors.append(f"captured with {dict(spec.captured.static_key)}, called with {dict(key)}")
                continue
            try:
                return self._run(spec, bound)
            except AssertionError as exc:
                if not _is_guard_failure(exc):
                    raise
                guard_errors.append(str(exc))
        return self._run(specs.add_for(bound, key, guard_errors), bound)

    def _check_model(self) -> None:
        """Capture again (and reset the cache state) if the model changed since it was captured."""
        if self.__dict__["_specs"].model_changed():
            self.cache_session.reset_cache()

    def _forward_traced(self, args, kwargs):
        """The call as torch.compile traces it: the same session and step, in the step's traced mode (no
        Python branch on data; finiteness asserted in the graph; records kept as tensors); the state is read
        from and written back to the session (dynamo replays the dict update after the graph)."""
        bound = _bind_static(self.__dict__["_parameters_spec"], args, kwargs)
        key = static_key(bound)
        matching = [s for s in self.__dict__["_specs"].items if s.captured.static_key == key]
        if not matching:
            raise CaptureError(f"no captured specialisation of {self.captured.model_class} takes these arguments "
                               f"({dict(key)}); call the optimised model once without torch.compile to capture it")
        spec = matching[-1]  # shapes: the capture is symbolic, and dynamo guards the sizes it specialised
        if spec.step is None:
            return spec.captured(bound)
        flat = spec.flatten(bound)
        return spec.unflatten(self.cache_session.call(flat, TracedRunner(spec.graph), traced=True))

    def _run(self, spec: Specialisation, bound: dict):
        if spec.step is None:
            return spec.captured(bound)
        return spec.unflatten(self.cache_session.call(spec.flatten(bound), EagerRunner(spec.step)))

    # parameters and buffers are the original's (the graphs share them): delegate so that optimisers,
    # state_dict round trips and `.to()` behave as on the original model
    def parameters(self, recurse: bool = True):
        return self.original_module.parameters(recurse)

    def named_parameters(self, *args, **kwargs):
        return self.original_module.named_parameters(*args, **kwargs)

    def buffers(self, recurse: bool = True):
        return self.original_module.buffers(recurse)

    def named_buffers(self, *args, **kwargs):
        return self.original_module.named_buffers(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.original_module.load_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self.original_module._apply(fn, recurse)
        return self

    def __reduce_ex__(self, protocol):
        """pickle and copy.deepcopy: the original model, the config and the example inputs, captured again
        when loaded (the captured graphs hold closures that do not pickle); the copy's cache state is fresh."""
        first = self.__dict__["_specs"].items[0].captured
        return _rebuild, (self.original_module, self.mcgraph_config, first.example_bound)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        # the original's parameters and buffers are presented as this module's (named_parameters): setting one
        # by name (as torch.export does, swapping fake tensors in) must reach the original, not shadow it here
        original = self.__dict__.get("_original")
        if original is not None and (name in original._parameters or name in original._buffers):
            setattr(original, name, value)
        else:
            super().__setattr__(name, value)


def _rebuild(model: torch.nn.Module, config: CacheConfig, example_kwargs: dict) -> OptimizedModule:
    return optimize(model, config, (), example_kwargs)



def _check_config(config) -> None:
    if not isinstance(config, CacheConfig):
        raise ConfigError(f"config must be a mcgraph CacheConfig (e.g. mcgraph.NoCache()), got {type(config).__name__}")
    config.check_concrete()


def _parameter_spec(model: torch.nn.Module) -> list[tuple[str, str, Any]]:
    """(name, kind, default) of `model.forward`'s parameters, read once: binding under torch.compile must not
    call inspect.signature (dynamo would trace into it)."""
    import inspect

    return [(p.name, p.kind.name, p.default) for p in inspect.signature(model.forward).parameters.values()]


def _bind_static(params: list, args: tuple, kwargs: dict) -> dict:
    """`bind_call` for traced calls, from the precomputed parameter list (same result for valid calls)."""
    out = {}
    positional = list(args)
    for name, kind, default in params:
        if kind == "VAR_KEYWORD":
            out.update({k: v for k, v in kwargs.items() if k not in out})
        elif kind == "VAR_POSITIONAL":
            continue
        elif positional and kind != "KEYWORD_ONLY":
            out[name] = positional.pop(0)
        elif name in kwargs:
            out[name] = kwargs[name]
        else:
            out[name] = default
    return out


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
    _check_config(config)
    if isinstance(model, OptimizedModule):
        raise ConfigError("this model is already an mcgraph.optimize result; optimise the original "
                          "(`model.original_module`) or use `model.with_config(config)` for another config")
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    spec = specialise(model, example_args, example_kwargs, config, dump_dir)
    module = OptimizedModule(model, config, spec, dump_dir)
    if config.caches:
        warn_if_large(module.cache_memory_report(), stacklevel=3)
    return module
