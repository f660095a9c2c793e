"""The torch.compile backend "mcgraph": `torch.compile(model, backend="mcgraph", options={...})`.

Registered through the `torch_dynamo_backends` entry point (and on import of this module). Dynamo hands
us its graph of the user's model with the weights as inputs; we

1. lower it into mcgraph's IR: a module that owns the weights and replays dynamo's graph node by node under
   `preserve_node_meta`, captured by `mcgraph.compiler.capture` (non-strict export). Dynamo's `nn_module_stack`
   survives on every ATen node, normalised from `L['self'].__dict__['_modules']['blocks'].0` to `blocks.0`,
   so the same analyses find the blocks;
2. run the same passes as `mcgraph.optimize` (one `OptimizedModule`);
3. compile its cache-aware call (`StepGraph`: decision and path inside the graph) with the inner backend
   (`options["backend"]`, default "inductor"), `fullgraph=True`.

The returned callable holds the cache state. The CFG branch comes from `mcgraph.cache_context(name)` and
`mcgraph.reset_cache()` starts a new generation (the sampler does both).

Options: `config` (a CacheConfig or its `to_dict()`, default `MotionCacheConfig()`), `backend` (inner
torch.compile backend), `dump_dir` (graphs before/after every pass).
"""

from __future__ import annotations

import re
import warnings
import weakref
from typing import Any

import torch
import torch._guards
import torch.fx
import torch.fx.traceback as fx_traceback

from mcgraph.runtime import context as runtime_context
from mcgraph.config import CacheConfig, MotionCacheConfig, ReuseConfig
from mcgraph.errors import ConfigError

_MODULES = re.compile(r"\.__dict__\['_modules'\]\['([^']+)'\]")
_ITEM = re.compile(r"\['([^']+)'\]|\[(\d+)\]")
_ROOT = re.compile(r"^L\.[A-Za-z_]\w*\.?")

KNOWN_OPTIONS = ("config", "backend", "dump_dir")


def normalise_module_path(path: str) -> str:
    """Dynamo's source path of a submodule ("L['self'].__dict__['_modules']['blocks'].0") -> "blocks.0"."""
    path = _MODULES.sub(r".\1", str(path))
    path = _ITEM.sub(lambda m: "." + (m.group(1) or m.group(2)), path)
    return _ROOT.sub("", path).strip(".")


def _is_module_state(name: str, value: Any) -> bool:
    # dynamo names the compiled module's attributes l_self_...: weights, buffers, and (with dynamic=True)
    # float attributes such as norm eps lifted to 0-d tensors; globals are g_...
    return isinstance(value, torch.nn.Parameter) or name.startswith(("l_self_", "g_"))


class DynamoGraphModule(torch.nn.Module):
    """Dynamo's graph as a module that owns the weights and takes only the user's tensor inputs (by name);
    the symbolic sizes dynamo passes as extra inputs are read off those tensors' shapes."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list):
        super().__init__()
        self.gm = gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise ConfigError(f"dynamo graph has {len(placeholders)} inputs but {len(example_inputs)} examples")
        dims = {}  # symbol name -> (input name, dim): where each symbolic size can be read
        for node in placeholders:
            fake = node.meta.get("example_value")
            if isinstance(fake, torch.Tensor) and not _is_module_state(node.name, fake):
                for d, size in enumerate(fake.shape):
                    if isinstance(size, torch.SymInt):
                        dims.setdefault(str(size), (node.name, d))
        self.slots: list[tuple[str, Any]] = []  # ("weight", attr) | ("input", name) | ("size", (input, dim))
        for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
            if isinstance(value, torch.SymInt) or (isinstance(value, int) and not isinstance(value, bool)):
                symbol = str(node.meta.get("example_value", value))
                if symbol not in dims:
                    raise ConfigError(f"backend 'mcgraph': dynamo input {node.name!r} is a size ({symbol}) that no "
                                      "tensor input's shape carries")
                self.slots.append(("size", dims[symbol]))
            elif isinstance(value, torch.Tensor) and _is_module_state(node.name, value):
                attr = f"w{i}"
                if isinstance(value, torch.nn.Parameter):
                    self.register_parameter(attr, value)
                else:
                    self.register_buffer(attr, value, persistent=False)
                self.slots.append(("weight", attr))
            elif isinstance(value, torch.Tensor):
                self.slots.append(("input", node.name))
            else:
                raise ConfigError(f"backend 'mcgraph': unsupported dynamo graph input {node.name!r} "
                                  f"({type(value).__name__})")
        self.input_names = [name for kind, name in self.slots if kind == "input"]
        self._fold_scalar_attributes(placeholders, example_inputs)
        if not dims:
            raise ConfigError("backend 'mcgraph' needs symbolic shapes to find the token axis: call "
                              "torch.compile(model, backend='mcgraph', dynamic=True)")

    def _fold_scalar_attributes(self, placeholders, example_inputs) -> None:
        """dynamic=True lifts float attributes (norm eps) to 0-d tensor inputs read with .item(); export would
        see a data-dependent value there. They are constants of the module: put the value back."""
        for node, value in zip(placeholders, example_inputs):
            if not (isinstance(value, torch.Tensor) and value.dim() == 0 and _is_module_state(node.name, value)
                    and not isinstance(value, torch.nn.Parameter)):
                continue
            for user in list(node.users):
                if user.op == "call_method" and user.target == "item":
                    user.replace_all_uses_with(value.item())
                    self.gm.graph.erase_node(user)
        self.gm.recompile()

    def replay(self, *inputs):
        given = dict(zip(self.input_names, inputs))
        args = []
        for kind, ref in self.slots:
            if kind == "weight":
                args.append(getattr(self, ref))
            elif kind == "input":
                args.append(given[ref])
            else:
                args.append(given[ref[0]].shape[ref[1]])
        with fx_traceback.preserve_node_meta():  # the exporter copies each dynamo node's module stack
            return torch.fx.Interpreter(self.gm).run(*args)


def lower(gm: torch.fx.GraphModule, example_inputs: list) -> tuple[torch.nn.Module, dict]:
    """(module with a named-argument forward, example keyword inputs) for `mcgraph.optimize`."""
    base = DynamoGraphModule(gm, example_inputs)
    names = base.input_names
    namespace: dict[str, Any] = {}
    # export binds inputs by the forward's signature: give it dynamo's input names as parameters
    exec(f"def forward(self, {', '.join(names)}):\n    return self.replay({', '.join(names)})", namespace)
    cls = type("DynamoGraph", (DynamoGraphModule,), {"forward": namespace["forward"]})
    module = cls.__new__(cls)
    module.__dict__.update(base.__dict__)
    user = iter(v for (kind, _), v in zip(base.slots, example_inputs) if kind == "input")
    # copies: capturing marks its example tensors' dims dynamic, and these are the caller's tensors, which
    # dynamo guards right after this backend returns
    return module, {name: next(user).detach().clone() for name in names}


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


class BackendRuntime:
    """What dynamo calls in place of its graph. Binds the user's tensors, keeps the cache state per context
    (`mcgraph.cache_context`), and runs the StepGraph compiled by the inner backend with the state as explicit
    inputs: one compiled graph serves every context and every call, the first one included (its initial
    state is made here, eagerly). `optimized` is the `OptimizedModule` the graph came from."""

    def __init__(self, optimized, lowered: DynamoGraphModule, inner_backend: str):
        self.optimized = optimized
        # dynamo calls us with all its graph inputs (weights and sizes too): keep the user's tensors
        self.inputs = [(i, name) for i, (kind, name) in enumerate(lowered.slots) if kind == "input"]
        spec = optimized.__dict__["_specialisations"][-1]
        self.spec = spec
        self.graph = spec.graph
        target = spec.graph if spec.graph is not None else optimized
        self.compiled = torch.compile(target, backend=inner_backend, fullgraph=True, dynamic=False)
        # dynamo compiles a model call again when a guard fails (e.g. an input starts to require grad); every
        # runtime built for the same weights must see one cache state, or the contexts would split between them
        weights = [getattr(lowered, name) for kind, name in lowered.slots if kind == "weight"]
        self._states: dict[str, tuple] = _shared_states(weights[0]) if weights else {}
        self.record = False
        self.decision_records: list = []
        runtime_context.register(self)

    def __call__(self, *args):
        kwargs = {name: args[i] for i, name in self.inputs}
        if self.graph is None:
            return self.compiled(**kwargs)
        import torch.fx._pytree as fx_pytree
        import torch.utils._pytree as pytree

        from mcgraph.runtime.step import StepRecord, execution_path

        spec, graph = self.spec, self.graph
        flat = fx_pytree.tree_flatten_spec(((), kwargs), spec.in_spec)
        latent = kwargs.get(spec.structure.grid.latent_input)
        if isinstance(latent, torch.Tensor) and torch.isnan(latent).any():
            raise ValueError(f"input {spec.structure.grid.latent_input!r} contains NaN")
        context = runtime_context.current_context()
        signature = tuple((tuple(x.shape), x.dtype) for x in flat if isinstance(x, torch.Tensor))
        entry = self._states.get(context)
        if entry is not None and entry[0] != signature:
            warnings.warn(f"mcgraph backend: input shapes/dtype changed mid-generation in cache context "
                          f"{context!r}; its cache was reset", stacklevel=2)
            entry = None
        state = entry[1] if entry is not None else graph.initial_state(flat)
        with torch.no_grad():  # an inference cache: nothing to differentiate, and no recompile on requires_grad
            results = self.compiled(*[x.detach() if isinstance(x, torch.Tensor) else x for x in flat], *state)
        n = graph.num_outputs
        self._states[context] = (signature, list(results[n + 2:]))
        if self.record:
            executed, tokens = int(results[n + 1]), results[n].shape[1]
            self.decision_records.append(StepRecord(context, results[n].cpu(), executed, tokens,
                                                    spec.step._geometry(flat)[0], execution_path(executed, tokens)))
        return pytree.tree_unflatten(list(results[:n]), spec.out_spec)

    def record_decisions(self, on: bool = True) -> list:
        self.record = on
        return self.decision_records

    def reset_cache(self) -> None:
        self._states.clear()


def _check_options(options: dict) -> None:
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ConfigError(f"backend 'mcgraph': unknown option(s) {unknown}; known: {list(KNOWN_OPTIONS)}")


def _lower_and_optimize(gm, example_inputs, config, options):
    from mcgraph.compiler.capture import capture
    from mcgraph.runtime.optimized import OptimizedModule, specialise_captured

    module, example = lower(gm, example_inputs)
    # a fresh tracing context: otherwise export's shape guards land in the frame dynamo is compiling
    with torch._guards.tracing(None), torch._guards.compile_context(None):
        captured = capture(module, (), example)
    gm = captured.graph_module
    for node in list(gm.graph.nodes):
        # export's input guard re-checks dynamo's own shape guards, written against dynamo's sources (L[...]),
        # which do not exist here; dynamo keeps guarding the call itself
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    gm.recompile()
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {k: (normalise_module_path(p), c) for k, (p, c) in stack.items()}
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
