"""Cache hooks the sampler enters around every model call, registered by whoever provides them.

The sampler opens a model's own `cache_context(name)` / `reset_cache()` when it has them. Models compiled by a
backend have no methods of ours, so a runtime registers global hooks here (`mcgraph.runtime.context` does on
import). The video package thus drives any cache without knowing the compiler or the runtime.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

_GLOBAL_HOOKS: list[tuple[Callable[[str], Any], Callable[[], None]]] = []


def register_global_hooks(context: Callable[[str], Any], reset: Callable[[], None]) -> None:
    """`context(name)`: a context manager entered around each call of branch `name`; `reset()`: new generation."""
    if (context, reset) not in _GLOBAL_HOOKS:
        _GLOBAL_HOOKS.append((context, reset))


def model_hooks(model) -> tuple[Callable[[str], Any], Callable[[], None]]:
    """(context(name), reset()) combining the model's own cache hooks with every registered global one."""
    own_ctx = getattr(model, "cache_context", None)
    own_reset = getattr(model, "reset_cache", None)

    @contextlib.contextmanager
    def context(name):
        with contextlib.ExitStack() as stack:
            if callable(own_ctx):
                stack.enter_context(own_ctx(name))
            for global_ctx, _ in _GLOBAL_HOOKS:
                stack.enter_context(global_ctx(name))
            yield

    def reset_all():
        if callable(own_reset):
            own_reset()
        for _, global_reset in _GLOBAL_HOOKS:
            global_reset()

    return context, reset_all
