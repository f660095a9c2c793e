"""When a token subset pays: the subset stack's cost, measured once per captured shape.

Matches: a `CacheStep` and the flat inputs of one call (the capture's example).
Guarantees: `SubsetCost.break_even` is the fraction of tokens above which running them as a subset is measured
to cost more than the full stack (gathering inputs, writing K/V rows and the per-call fixed work of the subset
graph are not free: on diffusers' Wan with 60 tokens a 75 % subset measured slower than the full stack). The
eager runtime then runs the full stack instead, which is also exact for every token. Never below 0.5: timing
noise must not send a call that skips half the FLOPs or more to the full path.

Model: subset time = fixed + per_token * n, fitted through medians at n = L/4 and 3L/4 (interleaved with
full-stack runs, so a noisy machine slows all three alike); break-even n* = (full - fixed) / per_token.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

MIN_BREAK_EVEN = 0.5


@dataclass(frozen=True)
class SubsetCost:
    tokens: int
    full_s: float  # the full block stack, seconds
    fixed_s: float  # the subset stack's cost at zero tokens (intercept)
    per_token_s: float  # its cost per token run

    @property
    def break_even(self) -> float:
        """Fraction of tokens above which the full stack is the cheaper path, in [MIN_BREAK_EVEN, 1]."""
        if self.per_token_s <= 0:
            return 1.0 if self.fixed_s < self.full_s else MIN_BREAK_EVEN
        n_star = (self.full_s - self.fixed_s) / self.per_token_s
        return min(1.0, max(MIN_BREAK_EVEN, n_star / self.tokens))

    def describe(self) -> str:
        return (f"full stack {self.full_s * 1e3:.2f} ms, subset {self.fixed_s * 1e3:.2f} ms + "
                f"{self.per_token_s * 1e6:.2f} us/token: a subset pays below {self.break_even:.0%} of "
                f"{self.tokens} tokens")


def measure_subset_cost(step, flat: list, repeats: int = 3) -> SubsetCost:
    """Time the full stack and the subset stack at L/4 and 3L/4 tokens on `flat` (no cache state is touched:
    the subset runs on scratch K/V)."""
    with torch.no_grad():
        front = step.front(flat)
        tokens = front.tokens
        h_l, *kv = step.graphs.run("stack", *front.stack_in)
        sizes = [max(1, tokens // 4), max(1, (3 * tokens) // 4)]
        if sizes[0] == sizes[1]:
            return SubsetCost(tokens, 1.0, 0.0, 1.0 / max(1, tokens))  # too few tokens to fit: no opinion
        # spread over the sequence: a subset's cost does not depend on which tokens, only how many
        index = {n: torch.linspace(0, tokens - 1, n, device=front.h0.device).round().long().unique() for n in sizes}

        def full():
            step.graphs.run("stack", *front.stack_in)

        def subset(n):
            scratch = [t.clone() for t in kv]  # the in-place subset stack writes its K/V rows here
            return lambda: step.graphs.run("subset_stack", *front.stack_in, index[n], *scratch)

        runs = {"full": full, **{n: subset(n) for n in sizes}}
        times: dict = {k: [] for k in runs}
        for k, fn in runs.items():  # warm-up
            fn()
        for _ in range(repeats):
            for k, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    n1, n2 = index[sizes[0]].numel(), index[sizes[1]].numel()
    per_token = (med[sizes[1]] - med[sizes[0]]) / (n2 - n1)
    return SubsetCost(tokens, med["full"], med[sizes[0]] - per_token * n1, per_token)
