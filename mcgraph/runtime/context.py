"""Cache contexts for models compiled with `torch.compile(model, backend="mcgraph")`.

Such a model is the user's own module: it has no `cache_context` method of ours. Its cache runtime reads the
context (the CFG branch) from `mcgraph.cache_context(name)`, a context variable, at every call; and
`mcgraph.reset_cache()` starts a new generation in every live runtime. The sampler enters both these and the
model's own hooks, so any of the three runtimes is driven the same way.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref

_CONTEXT = contextvars.ContextVar("mcgraph_cache_context", default="default")
_RUNTIMES: weakref.WeakSet = weakref.WeakSet()


@contextlib.contextmanager
def cache_context(name: str):
    """Calls of backend-compiled models inside use (and update) the cache state of context `name`."""
    token = _CONTEXT.set(str(name))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> str:
    return _CONTEXT.get()


def register(runtime) -> None:
    """Track a runtime (it needs a `reset_cache()` method) so that `reset_cache()` reaches it."""
    _RUNTIMES.add(runtime)


def reset_cache() -> None:
    """Forget the cache state of every backend-compiled model (start of a new generation or window)."""
    for runtime in list(_RUNTIMES):
        runtime.reset_cache()


def _register_with_the_sampler() -> None:
    from mcgraph.video.hooks import register_global_hooks

    register_global_hooks(cache_context, reset_cache)


_register_with_the_sampler()
