"""Measuring tools shared by the sweep (`run`), the peer comparison (`peers`) and the runtime benchmark:
a progress bar, torch's thread count, medians, a probe for the cache-state size, decision records."""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Sequence

__all__ = ["CacheProbe", "Progress", "median", "per_row_fraction", "ratio", "record_summary", "recorded_decisions",
           "set_threads"]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


class Progress:
    """A tqdm bar on stderr counting generations (nothing when not `enabled`)."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="gen", leave=True, file=sys.stderr, dynamic_ncols=True)

    def step(self, note: str = "") -> None:
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class CacheProbe:
    """Wraps a cached module for the counted run: keeps the peak cache-state size after every call. Forwards
    the cache protocol."""

    def __init__(self, module):
        self.module = module
        self.peak_bytes = 0
        has_state = hasattr(module, "cache_state_bytes")
        self._bytes = module.cache_state_bytes if has_state else (lambda: 0)
        if hasattr(module, "cache_context"):
            self.cache_context = module.cache_context
        if hasattr(module, "reset_cache"):
            self.reset_cache = module.reset_cache

    def __call__(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self.peak_bytes = max(self.peak_bytes, int(self._bytes()))
        return out


@contextlib.contextmanager
def recorded_decisions(module):
    """Record `module`'s decisions (an OptimizedModule's StepRecords) inside the block; the list yielded holds
    them afterwards, and the module's own records are emptied again. `module` None: records nothing."""
    records: list = []
    if module is None:
        yield records
        return
    module.record_decisions(True)
    module.decision_records.clear()
    try:
        yield records
    finally:
        records.extend(module.decision_records)
        module.record_decisions(False)
        module.decision_records.clear()


def record_summary(records) -> dict:
    """Fractions of tokens computed from decision records (one per model call)."""
    if not records:
        return {"executed_fraction": 1.0, "decided_fraction": 1.0, "calls": 0,
                "paths": {"full": 0, "subset": 0, "skip": 0}}
    executed = sum(r.executed for r in records)
    tokens = sum(r.tokens for r in records)
    decided = sum(float(r.computed.float().mean()) * r.tokens for r in records)
    paths = {"full": 0, "subset": 0, "skip": 0}
    for r in records:
        paths[r.path] = paths.get(r.path, 0) + 1
    return {"executed_fraction": executed / tokens, "decided_fraction": decided / tokens, "calls": len(records),
            "paths": paths}


def per_row_fraction(records, calls_per_row: int) -> list[float]:
    """Executed fraction per schedule row (mean over the row's cond/uncond calls)."""
    vals = [r.executed / r.tokens for r in records]
    return [float(sum(vals[i : i + calls_per_row]) / len(vals[i : i + calls_per_row]))
            for i in range(0, len(vals), calls_per_row)]
