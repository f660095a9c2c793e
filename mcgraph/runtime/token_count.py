"""How many tokens a call runs through the blocks, and which: exact selections, capacity buckets, token budgets.

Matches: a policy's `Decision` for one call and the caching config.
Guarantees: one rule per mode, shared by the eager step (`eager_index`) and the traced one (`bucket_sizes`,
`budget_tokens`, `select_tokens` inside its `cond` branches), so both pick the same tokens:
- exact: the selected tokens, or all of them where the measured subset cost says the full stack is cheaper;
- capacity buckets: the smallest bucket holding the selection, topped up with the stalest tokens;
- token budget: exactly the budget, required > selected > stalest; the full stack only when the required
  tokens (never computed, invalidated) exceed it.
"""

from __future__ import annotations

import torch

from mcgraph.config import ReuseConfig
from mcgraph.runtime.cost_model import SubsetCost
from mcgraph.runtime.policies import Decision


def bucket_sizes(buckets, tokens: int) -> list[int]:
    """Token counts of the capacity buckets (fractions of `tokens`), ascending, the last one all tokens."""
    sizes = sorted({min(tokens, max(1, round(b * tokens))) for b in buckets})
    return sizes if sizes[-1] == tokens else [*sizes, tokens]


def select_tokens(priority: torch.Tensor, acc: torch.Tensor, k: int) -> torch.Tensor:
    """The k tokens to run, ascending: by `priority` [L] (bool: selected or not; or small ints: a token budget
    ranks required tokens above the rest of the selection), then by largest accumulated distance.

    The score is made unique (float64, a tiny index term) so that eager, compiled and ONNX Runtime top-k pick
    the same tokens: their tie-breaking rules differ. The accumulated distance is squashed into [0, 1)
    (a / (1 + a), monotonic) so that it orders tokens within a priority level at any magnitude: added to a
    priority scaled by 1e12 it lost the index term and ties went to each runtime's own rule."""
    tokens = priority.shape[0]
    order = torch.arange(tokens, device=priority.device, dtype=torch.float64)
    stale = acc.sum(0).double().clamp_min(0)
    score = priority.double() * 2 + stale / (1 + stale) - order * 1e-12
    return score.topk(k).indices.sort().values


def budget_tokens(budget: float | None, tokens: int) -> int | None:
    """Tokens a static token budget runs per call (at least 1), None without a budget."""
    return None if budget is None else min(tokens, max(1, round(budget * tokens)))


def eager_index(decision: Decision, tokens: int, config: ReuseConfig, cost: SubsetCost | None) -> torch.Tensor | None:
    """The token rows an eager call (not a context's first) runs, ascending; None: all of them (full stack)."""
    selected, acc = decision.update.any(0), decision.acc
    budget = budget_tokens(config.token_budget, tokens)
    if budget is not None:
        required = decision.required.any(0)
        if budget < tokens and int(required.sum()) <= budget:
            return select_tokens(selected.long() + required.long(), acc, budget)
        return None
    need = int(selected.sum())
    buckets = config.capacity_buckets
    if buckets is None:
        if config.subset_cost_model and cost is not None and need > cost.break_even * tokens:
            return None  # measured: this many tokens cost less as the full stack
        return selected.nonzero().squeeze(1)
    if need == 0:
        return selected.nonzero().squeeze(1)
    k = next(k for k in bucket_sizes(buckets, tokens) if k >= need)
    return None if k >= tokens else select_tokens(selected, acc, k)
