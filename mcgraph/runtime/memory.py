"""What one cache context holds, known from a call's inputs before anything is allocated.

`state_layout(step, flat)` lists every state tensor a `CacheStep` keeps per context (name, shape, dtype), in
the form `CacheStep.initial_state` allocates and every later call keeps; the memory budget
(`CacheStep.state_bytes_for`) and the report read this one definition. `CacheMemoryReport` says it for people:
bytes per context at a call's shape, per token, against the model's weights, and how it scales.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mcgraph.runtime.step import CacheStep

ACCUMULATOR_DTYPE = torch.float32  # acc, weights, timesteps and the policies' extras
COUNT_DTYPE = torch.int32  # computes
LARGE_STATE_RATIO = 2.0  # `optimize` warns when one context holds more than this many times the weights


class CacheMemoryWarning(UserWarning):
    """One cache context holds much more memory than the model's weights."""


@dataclass(frozen=True)
class StateTensor:
    """One tensor of a context's state. `per_token`: its size is linear in batch x tokens (False: a copy of a
    watched input such as the text conditioning, whose size does not depend on the token count)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    per_token: bool = True

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def token_state(step: CacheStep, batch: int, tokens: int, offset: int = 0, extra: int = 0) -> list[StateTensor]:
    """The state tensors linear in batch x tokens, as `CacheStep.initial_state` makes them: per grid token, the
    residual per stream row, K/V per attention row (`offset` + `extra` non-grid rows included)."""
    g = step.graphs
    b, n = batch, tokens
    rows = offset + tokens + extra if step.in_stream else tokens
    acc = ACCUMULATOR_DTYPE
    out = [StateTensor("indicator", (b, n, g.indicator_dim or g.stream_dim), g.indicator_dtype or g.kv_dtype),
           StateTensor("acc", (b, n), acc), StateTensor("computes", (b, n), COUNT_DTYPE),
           StateTensor("weights", (b, n), acc),
           StateTensor("residual", (b, rows, g.stream_dim), g.stream_dtype or g.kv_dtype)]
    if step.has_timesteps:
        out.append(StateTensor("timesteps", (b, n), acc))
    out += [StateTensor(name, (b, n), acc) for name in step.policy.extra_state]
    out += [StateTensor(f"kv.{i}", shape, g.kv_dtype) for i, shape in enumerate(step.kv_shapes(b, offset + n + extra))]
    return out


def state_layout(step: CacheStep, flat: list) -> list[StateTensor]:
    """Every tensor of one context's state for a call with these flat inputs (nothing is allocated)."""
    frames, per_frame = step.geometry(flat)
    batch = step.latent_input(flat).shape[0]
    watched = [StateTensor(f"watch_{name}", tuple(x.shape), x.dtype, per_token=False)
               for name, x in step.watched_inputs(flat)]
    return token_state(step, batch, frames * per_frame, *step.around(flat)) + watched


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each tensor counted once (tied weights share)."""
    seen = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class CacheMemoryReport:
    """What one cache context holds for one call shape; `str()` says it in a few lines. Built by
    `OptimizedModule.cache_memory_report()`."""

    model: str
    config: str
    batch: int
    frames: int
    tokens: int
    tensors: tuple[StateTensor, ...]
    weight_bytes: int
    max_cache_bytes: int | None = None

    @property
    def bytes_per_context(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bytes_per_token(self) -> int:
        """Per token and sample: every per-token tensor's share (exact: all are [B, L, ...] or [B, H, L, ...])."""
        return sum(t.nbytes for t in self.tensors if t.per_token) // (self.batch * self.tokens)

    @property
    def fixed_bytes(self) -> int:
        """Copies of the watched inputs: independent of the token count."""
        return sum(t.nbytes for t in self.tensors if not t.per_token)

    @property
    def weight_ratio(self) -> float:
        return self.bytes_per_context / self.weight_bytes if self.weight_bytes else float("inf")

    def bytes_for(self, tokens: int, contexts: int = 1) -> int:
        """Bytes of `contexts` contexts for a call of this batch with `tokens` tokens (the watched inputs as in
        this call): the state is linear in the token count."""
        return contexts * (self.bytes_per_token * self.batch * tokens + self.fixed_bytes)

    def per_token_groups(self) -> dict[str, int]:
        """Bytes per token and sample by kind: K/V, residual, indicator, per-token accumulators."""
        groups = {"K/V": 0, "residual": 0, "indicator": 0, "accumulators": 0}
        for t in self.tensors:
            if t.per_token:
                kind = "K/V" if t.name.startswith("kv.") else t.name if t.name in groups else "accumulators"
                groups[kind] += t.nbytes // (self.batch * self.tokens)
        return groups

    def to_dict(self) -> dict:
        return {"model": self.model, "config": self.config, "batch": self.batch, "frames": self.frames,
                "tokens": self.tokens, "bytes_per_context": self.bytes_per_context,
                "bytes_per_token": self.bytes_per_token, "fixed_bytes": self.fixed_bytes,
                "per_token_groups": self.per_token_groups(), "weight_bytes": self.weight_bytes,
                "weight_ratio": self.weight_ratio, "max_cache_bytes": self.max_cache_bytes,
                "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                             "bytes": t.nbytes} for t in self.tensors]}

    def __str__(self) -> str:
        per_ctx, fb = self.bytes_per_context, format_bytes
        kv_layers = sum(t.name.startswith("kv.") for t in self.tensors) // 2
        groups = " + ".join(f"{k} {fb(v)}" + (f" ({kv_layers} attention layers)" if k == "K/V" else "")
                            for k, v in self.per_token_groups().items() if v)
        per_frame = self.tokens // max(1, self.frames)
        budget = ("max_cache_bytes not set: nothing refuses a larger call" if self.max_cache_bytes is None else
                  f"max_cache_bytes {fb(self.max_cache_bytes)}: calls needing more per context are refused")
        lines = [
            (f"cache memory of {self.model} under {self.config}, per cache context, for a call of batch "
             f"{self.batch} x {self.tokens} tokens ({self.frames} frames x {per_frame}):"),
            (f"  {fb(per_ctx)} per context = {self.weight_ratio:.2f}x the weights ({fb(self.weight_bytes)}); CFG "
             f"with a context per branch holds two: {fb(2 * per_ctx)} ({2 * self.weight_ratio:.2f}x)"),
            f"  per token and sample: {fb(self.bytes_per_token)} = {groups}",
            (f"  scales linearly with batch x tokens: each frame ({per_frame} tokens) adds "
             f"{fb(self.bytes_per_token * self.batch * per_frame)} per context"),
        ]
        if self.fixed_bytes:
            watched = ", ".join(t.name[len("watch_"):] for t in self.tensors if not t.per_token)
            lines.append(f"  plus {fb(self.fixed_bytes)} of watched-input copies ({watched}), whatever the token count")
        lines.append(f"  budget: {budget}")
        return "\n".join(lines)


def describe(step: CacheStep, flat: list, model: torch.nn.Module, max_cache_bytes: int | None) -> CacheMemoryReport:
    """The report of one context's state for a call with these flat inputs."""
    frames, per_frame = step.geometry(flat)
    return CacheMemoryReport(model=type(model).__name__, config=type(step.config).__name__,
                             batch=step.latent_input(flat).shape[0], frames=frames, tokens=frames * per_frame,
                             tensors=tuple(state_layout(step, flat)), weight_bytes=weight_bytes(model),
                             max_cache_bytes=max_cache_bytes)


def warn_if_large(report: CacheMemoryReport, stacklevel: int = 3) -> None:
    """CacheMemoryWarning when one context holds more than LARGE_STATE_RATIO times the weights."""
    if report.weight_ratio <= LARGE_STATE_RATIO:
        return
    budget = ("max_cache_bytes is not set" if report.max_cache_bytes is None
              else f"max_cache_bytes is {report.max_cache_bytes}")
    warnings.warn(
        f"mcgraph: one cache context of {report.model} ({report.config}) holds "
        f"{format_bytes(report.bytes_per_context)} for the example call ({report.batch} x {report.tokens} tokens), "
        f"{report.weight_ratio:.1f}x the weights ({format_bytes(report.weight_bytes)}); CFG with a context per "
        f"branch doubles it, and it grows linearly with the token count ({format_bytes(report.bytes_per_token)} per "
        f"token and sample). {budget}: set it on the config to refuse larger calls before allocating; "
        f"model.cache_memory_report() lists every state tensor", CacheMemoryWarning, stacklevel=stacklevel)
