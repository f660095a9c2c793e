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

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree

from mcgraph.compiler.analysis import analyze
from mcgraph.compiler.capture import CapturedGraph, bind_call, capture, static_key
from mcgraph.config import CacheConfig, NoCache, ReuseConfig
from mcgraph.errors import CaptureError, ConfigError
from mcgraph.compiler.structure import ModelStructure

MAX_SPECIALISATIONS = 8


def _is_guard_failure(exc: BaseException) -> bool:
    return isinstance(exc, AssertionError) and str(exc).startswith("Guard failed")


@dataclass
class Specialisation:
    captured: CapturedGraph
    structure: ModelStructure
    step: Any = None  # CachedStep when caching, else None (the captured graph runs as is)
    graph: Any = None  # StepGraph over `step`: what torch.compile traces (decision and path inside the graph)

    def __post_init__(self):
        # read once: dynamo does not trace into GraphModule.graph
        info = self.captured.graph_module.graph._codegen.pytree_info
        self.in_spec, self.out_spec = info.in_spec, info.out_spec


class OptimizedModule(torch.nn.Module):
    """A cache-aware stand-in for `original`; see module docstring."""

    def __init__(self, original: torch.nn.Module, config: CacheConfig, first: Specialisation,
                 dump_dir: str | Path | None = None):
        super().__init__()
        # kept out of the module tree so parameters are not registered twice; the graphs share its tensors
        self.__dict__["_original"] = original
        self.__dict__["_specialisations"] = [first]
        self.__dict__["_dump_dir"] = dump_dir
        self.__dict__["_states"] = {}  # context -> (signature, state dict)
        self.__dict__["_context"] = "default"
        self.__dict__["_record"] = False
        self.__dict__["_records"] = []
        self.__dict__["_parameters_spec"] = _parameter_spec(original)
        self.mcgraph_config = config

    # ------------------------------------------------------------------------------------ introspection
    @property
    def original_module(self) -> torch.nn.Module:
        return self.__dict__["_original"]

    @property
    def structure(self) -> ModelStructure:
        """What the analyses found in the most recently captured specialisation."""
        return self.__dict__["_specialisations"][-1].structure

    @property
    def captured(self) -> CapturedGraph:
        return self.__dict__["_specialisations"][-1].captured

    @property
    def specialisations(self) -> int:
        return len(self.__dict__["_specialisations"])

    @property
    def step(self):
        return self.__dict__["_specialisations"][-1].step

    def with_config(self, config: CacheConfig) -> OptimizedModule:
        """The same captured graphs under another cache config (e.g. a threshold sweep), with fresh state.
        Capture and analysis are not repeated; only the cheap cache-aware step is rebuilt."""
        import dataclasses

        if not isinstance(config, CacheConfig):
            raise ConfigError(f"config must be a mcgraph CacheConfig, got {type(config).__name__}")
        first = self.__dict__["_specialisations"][0]
        if isinstance(config, ReuseConfig):
            if first.step is not None:
                step = dataclasses.replace(first.step, config=config, records=[], record=False,
                                           chunk_frames=_chunk_frames(self.original_module, config))
            else:
                from mcgraph.compiler.cache_build import build_cached_step

                step = build_cached_step(self.original_module, first.captured, first.structure, config,
                                         _chunk_frames(self.original_module, config), self.__dict__["_dump_dir"])
        else:
            step = None
        graph = _step_graph(step, first.captured) if step is not None else None
        return OptimizedModule(self.original_module, config,
                               Specialisation(first.captured, first.structure, step, graph), self.__dict__["_dump_dir"])

    # ------------------------------------------------------------------------------------ cache control
    @contextlib.contextmanager
    def cache_context(self, name: str):
        """Calls inside use (and update) the cache state of context `name`, e.g. "cond" / "uncond"."""
        previous = self.__dict__["_context"]
        self.__dict__["_context"] = str(name)
        try:
            yield self
        finally:
            self.__dict__["_context"] = previous

    def reset_cache(self) -> None:
        """Forget all cache state (start of a new generation or segment)."""
        self.__dict__["_states"].clear()

    def record_decisions(self, on: bool = True) -> list:
        """Keep a StepRecord per call (which tokens were recomputed); returns the list, which fills up live."""
        self.__dict__["_record"] = on
        for spec in self.__dict__["_specialisations"]:
            self._attach_records(spec)
        return self.decision_records

    def _attach_records(self, spec: Specialisation) -> None:
        if spec.step is not None:
            spec.step.record = self.__dict__["_record"]
            spec.step.records = self.__dict__["_records"]

    @property
    def decision_records(self) -> list:
        return self.__dict__["_records"]

    def cache_state_bytes(self) -> int:
        """Bytes held by the cache state of all contexts now."""
        total = 0
        for _, state in self.__dict__["_states"].values():
            for v in pytree.tree_leaves(state):
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
        return total

    def stack_inputs(self, *args, **kwargs) -> list:
        """Run the prologue on a call's inputs and return what the block stack reads (stack / subset_stack
        arguments), for benchmarks and tests that drive `self.step.stack` / `self.step.subset_stack` by hand."""
        spec = self.__dict__["_specialisations"][-1]
        if spec.step is None:
            raise ConfigError("stack_inputs needs a caching config (the stack is only split out for caching)")
        bound = bind_call(self.original_module, args, kwargs)
        flat = fx_pytree.tree_flatten_spec(((), bound), spec.captured.graph_module.graph._codegen.pytree_info.in_spec)
        values = dict(zip(spec.step.boundary, spec.step.prologue(*flat)[:-1]))
        return [values[n] for n in spec.step.stack_inputs]

    def specialisation_for(self, *args, **kwargs) -> tuple[Specialisation, dict, list]:
        """(specialisation, bound inputs, flat graph inputs) serving a call with these inputs, captured anew
        if none fits; runs the captured graph once to check its guards (no cache state is touched)."""
        bound = bind_call(self.original_module, args, kwargs)
        for spec in reversed(self.__dict__["_specialisations"]):
            if spec.captured.static_key != static_key(bound):
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
            spec = _specialise(self.original_module, (), bound, self.mcgraph_config, self.__dict__["_dump_dir"])
            self._attach_records(spec)
            self.__dict__["_specialisations"].append(spec)
        info = spec.captured.graph_module.graph._codegen.pytree_info
        return spec, bound, fx_pytree.tree_flatten_spec(((), bound), info.in_spec)

    # ------------------------------------------------------------------------------------------- call
    def forward(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return self._forward_traced(args, kwargs)
        specs = self.__dict__["_specialisations"]
        bound = bind_call(self.original_module, args, kwargs)
        key = static_key(bound)
        guard_errors = []
        for spec in reversed(specs):
            if spec.captured.static_key != key:
                guard_errors.append(f"captured with {dict(spec.captured.static_key)}, called with {dict(key)}")
                continue
            try:
                return self._run(spec, bound)
            except AssertionError as exc:
                if not _is_guard_failure(exc):
                    raise
                guard_errors.append(str(exc))
        if len(specs) >= MAX_SPECIALISATIONS:
            warnings.warn(f"mcgraph: {len(specs)} shape specialisations of {self.captured.model_class} captured; "
                          "inputs keep changing shape", stacklevel=2)
        try:
            spec = _specialise(self.original_module, (), bound, self.mcgraph_config, self.__dict__["_dump_dir"])
        except CaptureError as exc:
            raise CaptureError(f"inputs match no captured specialisation of {self.captured.model_class} "
                               f"({guard_errors[0]}) and capturing them failed: {exc}") from exc
        self._attach_records(spec)
        specs.append(spec)
        return self._run(spec, bound)

    def _forward_traced(self, args, kwargs):
        """The call as torch.compile traces it: no Python branch on data (the StepGraph decides and picks the
        path with torch.cond), the state read from and written back to this module (dynamo replays the
        dict update after the graph). Not checked here, unlike eager: NaN inputs (a data-dependent branch)
        and the specialisation's guards (dynamo guards the shapes itself); no decision records."""
        bound = _bind_static(self.__dict__["_parameters_spec"], args, kwargs)
        key = static_key(bound)
        matching = [s for s in self.__dict__["_specialisations"] if s.captured.static_key == key]
        if not matching:
            raise CaptureError(f"no captured specialisation of {self.captured.model_class} takes these arguments "
                               f"({dict(key)}); call the optimised model once without torch.compile to capture it")
        spec = matching[-1]  # shapes: the capture is symbolic, and dynamo guards the sizes it specialised
        if spec.step is None:
            return spec.captured(bound)
        flat = fx_pytree.tree_flatten_spec(((), bound), spec.in_spec)
        signature = tuple((tuple(x.shape), x.dtype, x.device) for x in flat if isinstance(x, torch.Tensor))
        context = self.__dict__["_context"]
        states = self.__dict__["_states"]
        entry = states.get(context)
        state = entry[1] if entry is not None and entry[0] == signature else None
        outputs, _, _, new_state = spec.graph.run(flat, state)
        states[context] = (signature, new_state)
        return pytree.tree_unflatten(list(outputs), spec.out_spec)

    def _run(self, spec: Specialisation, bound: dict):
        if spec.step is None:
            return spec.captured(bound)
        info = spec.captured.graph_module.graph._codegen.pytree_info
        flat = fx_pytree.tree_flatten_spec(((), bound), info.in_spec)
        signature = tuple((tuple(x.shape), x.dtype, x.device) for x in flat if isinstance(x, torch.Tensor))
        latent = flat[spec.step.input_names.index(spec.structure.grid.latent_input)]
        if torch.isnan(latent).any():
            raise ValueError(f"{spec.captured.model_class}: input {spec.structure.grid.latent_input!r} contains NaN")
        context = self.__dict__["_context"]
        states = self.__dict__["_states"]
        state = None
        if context in states:
            old_sig, old_state = states[context]
            if old_sig == signature:
                state = old_state
            else:
                warnings.warn(f"mcgraph: input shapes/dtype changed mid-generation in cache context {context!r} "
                              f"({_sig_str(old_sig)} -> {_sig_str(signature)}); its cache was reset", stacklevel=3)
        outputs, new_state = spec.step.run(flat, state, context)
        states[context] = (signature, new_state)
        return pytree.tree_unflatten(list(outputs), info.out_spec)

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

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"], name)


def _sig_str(sig) -> str:
    return ", ".join(f"{list(s)}:{str(d).replace('torch.', '')}" for s, d, _ in sig)


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


def _chunk_frames(model: torch.nn.Module, config: ReuseConfig) -> int:
    if config.chunk_frames is not None:
        return config.chunk_frames
    cfg = getattr(model, "config", None)
    for key in ("causal_block_size", "num_frame_per_block"):
        value = getattr(cfg, key, None) if cfg is not None else None
        if isinstance(value, int) and value >= 1:
            return value
    return 1


def _specialise(model, args, kwargs, config: CacheConfig, dump_dir) -> Specialisation:
    return specialise_captured(model, capture(model, args, kwargs), config, dump_dir)


def specialise_captured(model, captured: CapturedGraph, config: CacheConfig, dump_dir) -> Specialisation:
    """Analyse a captured graph and, for a caching config, build its cached step and step graph."""
    structure = analyze(captured, dump_dir=dump_dir)
    if not isinstance(config, ReuseConfig):
        return Specialisation(captured, structure)
    from mcgraph.compiler.cache_build import build_cached_step

    step = build_cached_step(model, captured, structure, config, _chunk_frames(model, config), dump_dir)
    return Specialisation(captured, structure, step, _step_graph(step, captured))


def _step_graph(step, captured: CapturedGraph):
    from mcgraph.runtime.step_graph import StepGraph

    info = captured.graph_module.graph._codegen.pytree_info
    return StepGraph(step, fx_pytree.tree_flatten_spec(((), captured.example_bound), info.in_spec))


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
    spec = _specialise(model, example_args, example_kwargs, config, dump_dir)
    return OptimizedModule(model, config, spec, dump_dir)
