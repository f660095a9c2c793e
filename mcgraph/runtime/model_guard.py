"""Guards on what a capture baked in from the model's Python state.

`torch.export` runs `forward` once and keeps the result: every Python attribute it read (an int, a flag, a
`config` field, which submodule or attention processor sits where) is a constant in the graph. Changing one
after `optimize` would silently be ignored, so a `ModelSnapshot` taken at capture is compared on every call.

Matches: every module of the model tree. Reads, per module, the values of its plain attributes (numbers,
strings, bools, None, dtypes, enums, tuples of those, and the same inside dict attributes such as diffusers'
`config` and inside dataclass configs), the identity of every other attribute, parameter, buffer and child
module, and the number of hooks.
Guarantees: any rebinding of those is seen (`changes()` names them); a mutation inside a non-plain object
(e.g. a list of tensors changed in place) is not. Parameters updated in place (`load_state_dict`,
optimiser steps) are not a change: the graphs share those tensors.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import torch

_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
# nn.Module bookkeeping: the tensors and children are compared by identity; hook dicts by their size
_BY_IDENTITY = ("_parameters", "_buffers", "_modules")
# bookkeeping no capture reads: state-dict hooks, and what torch.compile marks on a module it compiles (compiling the
# original model after optimize must not recapture it)
_SKIPPED = ("_non_persistent_buffers_set", "_state_dict_hooks", "_state_dict_pre_hooks",
            "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_is_torch_compile", "_compiled_call_impl")


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN) or isinstance(value, enum.Enum):
        return True
    return isinstance(value, (tuple, list)) and len(value) <= 64 and all(
        isinstance(v, _PLAIN) or isinstance(v, enum.Enum) for v in value)


def _fingerprint(value: Any) -> Any:
    """What a value is compared by: plain values by value (lists as tuples), anything else by identity."""
    if _is_plain(value):
        return tuple(value) if isinstance(value, list) else value
    return ("object", type(value).__name__, id(value))


def _read_module(prefix: str, module: torch.nn.Module, out: dict) -> None:
    for key, value in module.__dict__.items():
        name = f"{prefix}{key}"
        if key in _SKIPPED:
            continue
        if key in _BY_IDENTITY:
            for child, item in value.items():
                out[f"{prefix}{child}"] = ("object", type(item).__name__, id(item))
        elif key.endswith("hooks") and isinstance(value, dict):
            out[name] = ("hooks", len(value))
        elif isinstance(value, dict) and not key.startswith("__"):
            for k, v in value.items():
                out[f"{name}[{k!r}]"] = _fingerprint(v)
        elif _is_record(value):
            out[name] = _fingerprint(value)
            for k, v in vars(value).items():
                out[f"{name}.{k}"] = _fingerprint(v)
        else:
            out[name] = _fingerprint(value)


def _is_record(value: Any) -> bool:
    """A plain-data object (a dataclass config): its fields are read like attributes."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "__dict__")


def _shallow_copy(module: torch.nn.Module) -> dict:
    # containers are copied one level deep, so that what is rebound inside them (a parameter, a child module,
    # a config field, a hook) compares unequal; everything else is held as is and compared by identity first
    return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for k, v in module.__dict__.items()}


class ModelSnapshot:
    """The model's Python state as the capture saw it (see module docstring)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._modules = [(f"{name}." if name else "", m) for name, m in model.named_modules(remove_duplicate=False)]
        self._take_copies()
        self.values = self._read()

    def _take_copies(self) -> None:
        copies = [(m.__dict__, _shallow_copy(m)) for _, m in self._modules]
        # fields of dataclass configs held by a module, compared like the module's own attributes
        copies += [(vars(v), dict(vars(v))) for _, m in self._modules for v in m.__dict__.values() if _is_record(v)]
        # two lists compared in one `==`: the per-item loop runs in C (a generator over ~100 modules cost as much
        # as the comparisons on a small model)
        self._live = [live for live, _ in copies]
        self._copied = [copy for _, copy in copies]

    def _read(self) -> dict:
        out: dict = {}
        for prefix, module in self._modules:
            _read_module(prefix, module, out)
        return out

    def matches(self) -> bool:
        """True when nothing the snapshot covers changed since it was taken. Fast (dict comparisons in C,
        which compare identical objects without calling their `__eq__`): it runs on every call."""
        try:
            if self._copied == self._live:
                return True
        except Exception:  # noqa: BLE001 - a rebound tensor attribute compared by value: look closer
            pass
        if self.changes(limit=1):
            return False
        self._take_copies()  # only bookkeeping no capture reads changed (e.g. torch.compile's mark): accept it
        return True

    def changes(self, limit: int = 5) -> list[str]:
        """`'name': before -> after` for what changed (at most `limit`), for warnings and errors."""
        now = self._read()
        keys = [k for k in self.values.keys() | now.keys() if self.values.get(k, "<absent>") != now.get(k, "<absent>")]
        return [f"{k!r}: {_show(self.values.get(k, '<absent>'))} -> {_show(now.get(k, '<absent>'))}"
                for k in sorted(keys)[:limit]]


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value[:1] == ("object",):
        return f"<{value[1]} object>"
    if isinstance(value, tuple) and value[:1] == ("hooks",):
        return f"{value[1]} hooks"
    return repr(value)
