"""The torch.compile backend "mcgraph": `torch.compile(model, backend="mcgraph", options={...})`.

Registered through the `torch_dynamo_backends` entry point (and on import of this module). Dynamo hands
us its graph of the user's model with the weights as inputs; we

1. lower it into mcgraph's IR (`mcgraph.compiler.dynamo_lowering`), so the same analyses find the blocks;
2. run the same passes as `mcgraph.optimize` (one `OptimizedModule`);
3. compile its traced step (`StepGraph`: decision and path inside the graph) with the inner backend
   (`options["backend"]`, default "inductor"), `fullgraph=True`, every graph it hands the inner backend
   checked by the verifier first.

The returned callable is a thin adapter over the optimised module's `CacheSession` (state per context,
checks, budget, records). The CFG branch comes from `mcgraph.cache_context(name)` and `mcgraph.reset_cache()`
starts a new generation (the sampler does both).

Options: `config` (a CacheConfig or its `to_dict()`, default `MotionCacheConfig()`), `backend` (inner
torch.compile backend), `dump_dir` (graphs before/after every pass).
"""

from __future__ import annotations

import re
import warnings
import weakref

import torch
import torch._guards
import torch.fx

from mcgraph.compiler.dynamo_lowering import DynamoGraphModule, capture_lowered
from mcgraph.compiler.verifier import verify_graph
from mcgraph.config import CacheConfig, MotionCacheConfig, ReuseConfig
from mcgraph.errors import ConfigError
from mcgraph.runtime.session import CacheSession, SessionControls
from mcgraph.runtime.step import StepResult

KNOWN_OPTIONS = ("config", "backend", "dump_dir")


def _config(options: dict) -> CacheConfig:
    config = options.get("config", MotionCacheConfig())
    if isinstance(config, dict):
        config = CacheConfig.from_dict(config)
    if not isinstance(config, CacheConfig):
        raise ConfigError(f"backend 'mcgraph': options['config'] must be a mcgraph CacheConfig or its to_dict(), "
                          f"got {type(config).__name__}")
    return config


# id of a model's first weight tensor -> context -> (signature, state); the entry goes when the tensor does
# (not a WeakKeyDictionary: it compares keys with ==, which for tensors is elementwise)
_SHARED_STATES: dict[int, dict] = {}


def _shared_states(weight: torch.Tensor) -> dict:
    key = id(weight)
    if key not in _SHARED_STATES:
        _SHARED_STATES[key] = {}
        weakref.finalize(weight, _SHARED_STATES.pop, key, None)
    return _SHARED_STATES[key]


def verified(inner: str):
    """The inner backend, behind the verifier: every graph dynamo hands it must be well formed."""
    from torch._dynamo.backends.registry import lookup_backend

    compile_fn = lookup_backend(inner)

    def backend(gm: torch.fx.GraphModule, example_inputs, **kwargs):
        # dynamo's graphs describe values in meta["example_value"] and keep unused size reads: checked are
        # well-formedness and every higher-order-op body
        verify_graph(gm, f"step_graph (dynamo, for {inner})", meta_key=None, dangling=False)
        return compile_fn(gm, example_inputs, **kwargs)

    return backend


class CompiledRunner:
    """The compiled StepGraph with its state as a flat list of tensors, for the session."""

    def __init__(self, graph, compiled):
        self.graph, self.compiled = graph, compiled

    def run(self, flat, state):
        graph = self.graph
        if state is None:
            state = graph.initial_state(flat)
        with torch.no_grad():  # an inference cache: nothing to differentiate, and no recompile on requires_grad
            results = self.compiled(*[x.detach() if isinstance(x, torch.Tensor) else x for x in flat], *state)
        n = graph.num_outputs
        return StepResult(list(results[:n]), results[n], results[n + 1], list(results[n + 2:]), graph.frames,
                          graph.tokens)

    def state_bytes(self, flat) -> int:
        return self.graph.step.state_bytes_for(flat)


class BackendRuntime(SessionControls):
    """What dynamo calls in place of its graph: binds the user's tensors and hands them to the session, which
    runs the compiled StepGraph with the state as explicit inputs (one compiled graph serves every context
    and every call, the first one included). `optimized` is the `OptimizedModule` the graph came from."""

    def __init__(self, optimized, lowered: DynamoGraphModule, inner_backend: str):
        self.optimized = optimized
        # dynamo calls us with all its graph inputs (weights and sizes too): keep the user's tensors
        self.inputs = [(i, name) for i, (kind, name) in enumerate(lowered.slots) if kind == "input"]
        self.spec = optimized.latest
        target = self.spec.graph if self.spec.graph is not None else optimized
        self.compiled = torch.compile(target, backend=verified(inner_backend), fullgraph=True, dynamic=False)
        # dynamo compiles a model call again when a guard fails (e.g. an input starts to require grad); every
        # runtime built for the same weights must see one cache state, or the contexts would split between them
        weights = [getattr(lowered, name) for kind, name in lowered.slots if kind == "weight"]
        config = optimized.mcgraph_config
        # dynamo names the user's inputs l_<name>_: messages use the argument names the user wrote
        names = [re.sub(r"^l_(.+)_$", r"\1", n) for n in (self.spec.step.graphs.input_names if self.spec.step else [])]
        self.cache_session = CacheSession(f"{type(lowered).__name__} (backend 'mcgraph')", names,
                                    max_cache_bytes=getattr(config, "max_cache_bytes", None), global_contexts=True,
                                    states=_shared_states(weights[0]) if weights else None)
        self.runner = CompiledRunner(self.spec.graph, self.compiled) if self.spec.graph is not None else None

    def __call__(self, *args):
        kwargs = {name: args[i] for i, name in self.inputs}
        if self.runner is None:
            return self.compiled(**kwargs)
        return self.spec.unflatten(self.cache_session.call(self.spec.flatten(kwargs), self.runner))


def _check_options(options: dict) -> None:
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ConfigError(f"backend 'mcgraph': unknown option(s) {unknown}; known: {list(KNOWN_OPTIONS)}")


def _lower_and_optimize(gm, example_inputs, config, options):
    from mcgraph.runtime.optimized import OptimizedModule
    from mcgraph.runtime.specialisations import specialise_captured

    module, captured = capture_lowered(gm, example_inputs)
    with torch._guards.tracing(None), torch._guards.compile_context(None):
        spec = specialise_captured(module, captured, config, options.get("dump_dir"))
    return OptimizedModule(module, config, spec, options.get("dump_dir")), module


def mcgraph_backend(gm: torch.fx.GraphModule, example_inputs: list, options: dict | None = None, **kwargs):
    """torch.compile backend entry point; see module docstring. torch.compile passes `options=` through."""
    options = {**(options or {}), **kwargs}
    _check_options(options)
    config = _config(options)
    if isinstance(config, ReuseConfig) and config.chunk_frames is None:
        # dynamo's graph does not carry the model's config (causal_block_size / num_frame_per_block)
        warnings.warn("mcgraph backend: config.chunk_frames is not set and the compiled graph cannot read the "
                      "model's causal block size; using 1 frame per chunk", stacklevel=2)
    optimized, lowered = _lower_and_optimize(gm, example_inputs, config, options)
    return BackendRuntime(optimized, lowered, options.get("backend", "inductor"))


def register() -> None:
    """Register under "mcgraph" unless dynamo is loading us through the entry point (it registers then)."""
    from torch._dynamo.backends.registry import (
        _BACKENDS,
        _COMPILER_FNS,
        register_backend,
    )

    if "mcgraph" not in _COMPILER_FNS and _BACKENDS.get("mcgraph") is None:
        register_backend(mcgraph_backend, name="mcgraph")


register()
