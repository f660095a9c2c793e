"""The cache session: everything a user experiences between calls, in one object for every runtime.

A session holds one cache state per context (the CFG branch: `cache_context("cond")`), and on every call:
refuses non-finite input before the state is touched, resets a context whose input signature (shapes,
dtypes, devices) changed (with a warning), refuses a state larger than the memory budget before allocating
it, runs the step, stores the new state and keeps a decision record when asked.

The runtimes are thin adapters that hand it a `StepRunner` (how to run one step on their state
representation): eager `OptimizedModule` (a `CacheStep`), the torch.compile backend (the compiled
`StepGraph`), and ONNX Runtime (`mcgraph.export.OrtSession`, numpy state). The state itself is opaque here.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.utils._pytree as pytree

from mcgraph.errors import McGraphError
from mcgraph.runtime import context as global_context
from mcgraph.runtime.step import StepResult, execution_path


class CacheMemoryError(McGraphError, MemoryError):
    """The cache state would exceed the configured budget; nothing was allocated."""


class ConcurrentContextError(McGraphError, RuntimeError):
    """Two threads hold different cache contexts of one module that torch.compile traced (dynamo reads the
    context as a plain attribute: it cannot read context variables)."""


class NonFiniteInputError(McGraphError, ValueError):
    """An input holds NaN or Inf; the call was refused before the cache state was touched."""


@dataclass
class StepRecord:
    """What one call decided (kept when recording is on): for plots, heat maps and tests."""

    context: str
    computed: torch.Tensor  # [B, L] bool: tokens the policy chose (before the union over the batch)
    executed: int  # tokens actually run through the blocks (union over the batch, or a capacity bucket)
    tokens: int
    frames: int
    path: str  # "full" | "subset" | "skip"


class StepRunner(Protocol):
    """How one runtime runs the step on its own state representation."""

    def run(self, flat: list, state: Any | None) -> StepResult: ...

    def state_bytes(self, flat: list) -> int: ...


_SESSION_IDS = itertools.count()


def signature_of(flat) -> tuple:
    return tuple((tuple(x.shape), x.dtype, x.device) for x in flat if isinstance(x, torch.Tensor))


def _sig_str(sig) -> str:
    return ", ".join(f"{list(s)}:{str(d).replace('torch.', '')}" for s, d, _ in sig)


def _refused_non_finite(name: str) -> str:
    return f"input {name!r} contains NaN or Inf; the call was refused before the cache state was touched"


def _floating_inputs(names, flat):
    return [(n, v) for n, v in zip(names, flat) if isinstance(v, torch.Tensor) and v.is_floating_point()]


def check_finite(names, flat, owner: str) -> None:
    """NonFiniteInputError naming the first floating-point input with NaN or Inf."""
    for name, value in _floating_inputs(names, flat):
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteInputError(f"{owner}: {_refused_non_finite(name)}")


def assert_finite_in_graph(names, flat) -> None:
    """`check_finite` inside a traced step: a compiled module cannot raise from Python, so the check is an
    assertion in the graph (RuntimeError with the same message; dynamo never writes the state back then)."""
    for name, value in _floating_inputs(names, flat):
        torch._assert_async(torch.isfinite(value).all(), f"mcgraph: {_refused_non_finite(name)}")


class CacheSession:
    """See module docstring. `owner`: the model's name for messages; `input_names`: flat input names;
    `global_contexts`: read the context from `mcgraph.cache_context` (backend-compiled models have no
    method of ours to enter) and answer `mcgraph.reset_cache()`."""

    def __init__(self, owner: str, input_names: list[str], max_cache_bytes: int | None = None,
                 global_contexts: bool = False, states: dict | None = None):
        self.owner = owner
        self.input_names = list(input_names)
        self.max_cache_bytes = max_cache_bytes
        self.global_contexts = global_contexts
        self.states: dict[str, tuple] = states if states is not None else {}  # context -> (signature, state)
        self._init_context()
        self.recording = False
        self._records: list = []
        self._pending: list = []  # records made under tracing (tensors), turned into StepRecords when read
        if global_contexts:
            global_context.register(self)

    # ---------------------------------------------------------------------------------------- control
    def _init_context(self) -> None:
        # the active context per thread / asyncio task: two requests served concurrently never share a state
        self._context_var = contextvars.ContextVar(f"mcgraph_context_{next(_SESSION_IDS)}", default="default")
        # torch.compile of an optimised module cannot read a context variable (dynamo: unsupported), so traced
        # calls read this plain mirror, which dynamo guards on; `_holders` lets cache_context refuse the one
        # situation the mirror cannot serve: two threads in different contexts of a traced module
        self._traced_context = "default"
        self.traced_in_use = False
        self._holders: dict[int, str] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_context_var", "_traced_context", "_holders", "_lock"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_context()
        if self.global_contexts:
            global_context.register(self)

    @contextlib.contextmanager
    def cache_context(self, name: str, **step_info):
        """Calls inside use (and update) the cache state of context `name`, e.g. "cond" / "uncond"; per thread
        and per asyncio task. `step_info`: what diffusers' hooks pass (e.g. the step index); accepted for the
        protocol, not needed here."""
        name = str(name)
        thread = threading.get_ident()
        with self._lock:
            others = {c for t, c in self._holders.items() if t != thread and c != name}
            if self.traced_in_use and others:
                raise ConcurrentContextError(
                    f"{self.owner}: cache context {name!r} entered while another thread is in {sorted(others)}, "
                    "and this module runs under torch.compile, which reads the context as a plain attribute. "
                    "Serve concurrent requests with torch.compile(model, backend='mcgraph'), eager "
                    "mcgraph.optimize, ONNX Runtime, or one optimised module per thread")
            held, self._holders[thread] = self._holders.get(thread), name
            mirrored, self._traced_context = self._traced_context, name
        token = self._context_var.set(name)
        try:
            yield self
        finally:
            self._context_var.reset(token)
            with self._lock:
                self._traced_context = mirrored
                if held is None:
                    self._holders.pop(thread, None)
                else:
                    self._holders[thread] = held

    @property
    def context(self) -> str:
        if self.global_contexts:
            return global_context.current_context()
        if torch.compiler.is_compiling():
            self.traced_in_use = True
            return self._traced_context
        return self._context_var.get()

    def reset_cache(self, context: str | None = None) -> None:
        """Forget the cache state of `context`, or of every context (start of a new generation or segment)."""
        if context is None:
            self.states.clear()
        else:
            self.states.pop(str(context), None)

    def record_decisions(self, on: bool = True) -> list:
        """Keep a StepRecord per call; returns the list, which fills up live."""
        self.recording = on
        return self.decision_records

    @property
    def decision_records(self) -> list:
        for pending in self._pending:
            self._record(*pending)
        self._pending.clear()
        return self._records

    def _record(self, context: str, recomputed, executed, tokens: int, frames: int) -> None:
        executed = int(executed)
        self._records.append(StepRecord(context, recomputed.detach().cpu(), executed, tokens, frames,
                                        execution_path(executed, tokens)))

    def cache_state_bytes(self) -> int:
        """Bytes held by the cache state of all contexts now."""
        total = 0
        for _, state in self.states.values():
            for v in pytree.tree_leaves(state):
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
                elif isinstance(v, np.ndarray):
                    total += v.nbytes
        return total

    # ------------------------------------------------------------------------------------------- call
    def state_for(self, context: str, signature: tuple, need_bytes) -> Any | None:
        """The context's state for a call with this signature: None (fresh) on its first call or after its
        signature changed (warned); raises CacheMemoryError before a fresh state beyond the budget exists."""
        entry = self.states.get(context)
        if entry is not None and entry[0] == signature:
            return entry[1]
        if entry is not None and not torch.compiler.is_compiling():
            warnings.warn(f"mcgraph: input shapes/dtype changed mid-generation in cache context {context!r} of "
                          f"{self.owner} ({_sig_str(entry[0])} -> {_sig_str(signature)}); its cache was reset",
                          stacklevel=4)
        if entry is not None:
            del self.states[context]
        if self.max_cache_bytes is not None:
            need = need_bytes()
            if need > self.max_cache_bytes:
                raise CacheMemoryError(
                    f"cache state of {self.owner} for context {context!r} needs {need / 2**20:.2f} MiB for calls of "
                    f"this size ({_sig_str(signature)}), over max_cache_bytes = {self.max_cache_bytes} bytes "
                    f"({self.max_cache_bytes / 2**20:.2f} MiB); nothing was allocated")
        return None

    def call(self, flat: list, runner: StepRunner, *, traced: bool = False) -> list:
        """Run one step for the current context; returns the flat outputs. `traced`: inside torch.compile,
        where checks on data live in the graph (StepGraph asserts finiteness) and records stay tensors."""
        if not traced:
            check_finite(self.input_names, flat, self.owner)
        context = self.context
        signature = signature_of(flat)
        state = self.state_for(context, signature, lambda: runner.state_bytes(flat))
        result = runner.run(flat, state)
        self.states[context] = (signature, result.new_state)
        if self.recording:
            record = (context, result.recomputed, result.executed, result.tokens, result.frames)
            if traced and torch.compiler.is_compiling():
                self._pending.append(record)  # .cpu() / int() of graph values: made when read
            else:
                self._record(*record)
        return result.outputs


class SessionControls:
    """The cache protocol every runtime adapter exposes, delegated to its `cache_session` (one definition):
    `cache_context(name)`, `reset_cache()`, `record_decisions(on)`, `decision_records`, `cache_state_bytes()`.
    Also `_reset_stateful_cache()`, the name diffusers pipelines call after every generation."""

    cache_session: CacheSession

    def cache_context(self, name: str, **step_info):
        """Calls inside use (and update) the cache state of context `name`, e.g. "cond" / "uncond"."""
        return self.cache_session.cache_context(name, **step_info)

    def reset_cache(self, context: str | None = None) -> None:
        """Forget the cache state of `context`, or all of it (start of a new generation or segment)."""
        self.cache_session.reset_cache(context)

    def _reset_stateful_cache(self) -> None:
        self.reset_cache()

    def record_decisions(self, on: bool = True) -> list:
        """Keep a StepRecord per call (which tokens were recomputed); returns the list, which fills up live."""
        return self.cache_session.record_decisions(on)

    @property
    def decision_records(self) -> list:
        return self.cache_session.decision_records

    def cache_state_bytes(self) -> int:
        """Bytes held by the cache state of all contexts now."""
        return self.cache_session.cache_state_bytes()
