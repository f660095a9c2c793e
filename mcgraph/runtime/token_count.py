"""How many tokens a call runs through the blocks, and which: exact selections, capacity buckets, token budgets.

Matches: a policy's `Decision` for one call and the caching config.
Guarantees: one rule per mode, shared by the eager step (`eager_index`) and the traced one (`execute_traced`:
`bucket_sizes`, `budget_tokens`, `select_tokens` inside its balanced `cond` tree), so both pick the same tokens:
- exact: the selected tokens, or all of them where the measured subset cost says the full stack is cheaper;
- capacity buckets: the smallest bucket holding the selection, topped up with the stalest tokens;
- token budget: exactly the budget, required > final step > selected > stalest; the full stack only when the
  required tokens (never computed, invalidated) exceed it.
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
    """The k tokens to run, ascending: by `priority` [L] (bool: selected or not; or `Decision.priority` for a token
    budget: required > final step > selected), then by largest accumulated distance.

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
            return select_tokens(decision.priority(), acc, budget)
        return None
    need = int(selected.sum())
    buckets = config.capacity_buckets
    if buckets is None and config.subset_cost_model and cost is not None and need > cost.break_even * tokens:
        return None  # measured: this many tokens cost less as the full stack
    if buckets is None or need == 0:
        return selected.nonzero().squeeze(1)
    k = next(k for k in bucket_sizes(buckets, tokens) if k >= need)
    return None if k >= tokens else select_tokens(selected, acc, k)


def _cond(pred, true_fn, false_fn, operands):
    """torch.cond when compiling or exporting (one graph, both branches); a plain branch when run eagerly,
    where torch.cond would invoke dynamo on every call for nothing."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return torch.cond(pred, true_fn, false_fn, operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def _dense(*outs):
    # every branch must return the same layout (cond checks strides): the stack's K/V may be views
    return tuple(t.contiguous() for t in outs)


def _fixed_dense(t: torch.Tensor) -> torch.Tensor:
    """A dense copy of `t` whose layout a compiler keeps (see `execute_traced`)."""
    dense = t.clone(memory_format=torch.contiguous_format)
    return dense.as_strided(dense.shape, dense.stride())


def execute_traced(step, decision: Decision, front, state: dict, buckets):
    """The traced step's execution (`CacheStep.execute_traced`): the same branches as `execute_eager`, chosen by
    a balanced `torch.cond` tree over static buckets; with a token budget, two branches: the budget, or the full
    stack when the required tokens exceed it. Bucket and budget sizes count grid tokens; a stream's non-grid rows
    run with every branch but the skip, which becomes "the non-grid rows only" when there are any."""
    tokens = front.tokens
    acc = decision.acc
    budget = budget_tokens(step.config.token_budget, tokens)
    if budget is not None:
        required = decision.required.any(0)
        selected = decision.priority()  # what select_tokens ranks by
    else:
        selected = decision.update.any(0)
    kv = list(state["kv"])
    n_kv = len(kv)
    # cond operands must be tensors; non-tensor stack inputs (static sizes) are closed over
    tensor_slots = [i for i, v in enumerate(front.stack_in) if isinstance(v, torch.Tensor)]
    sizes = [k for k in bucket_sizes(buckets, tokens) if k < tokens] if budget is None else []
    # branch 0 skips (nothing selected), branch i runs the i-th bucket, the last one the full stack;
    # a budget: branch 0 runs the budget, branch 1 the full stack
    if budget is None:
        need = selected.sum()
        branch = (need > 0).long() + sum((need > k).long() for k in sizes)
    else:
        branch = (required.sum() > budget).long()
    # the stream in a fixed dense layout: Inductor compiles each branch for the strides its operands had when
    # traced and asserts them at run time, but lays out a value computed in the same graph as it likes (diffusers'
    # Wan: the stream stayed transposed from the patch embedding and failed the assertion). A clone alone is
    # elided; `as_strided` fixes its input's layout. The stack input that is the stream gets the same tensor.
    h0 = _fixed_dense(front.h0)
    stack_in = [h0 if front.stack_in[i] is front.h0 else front.stack_in[i] for i in tensor_slots]
    operands = (branch, selected, acc, h0, state["residual"], *kv, *stack_in)

    def unpack(ops):
        stack_in = list(front.stack_in)
        for slot, value in zip(tensor_slots, ops[5 + n_kv:]):
            stack_in[slot] = value
        return ops[1], ops[2], ops[3], ops[4], list(ops[5:5 + n_kv]), stack_in

    def count_like(sel):
        return lambda n: torch.full((), n, dtype=torch.int64, device=sel.device)

    def skip(*ops):
        sel, _, h0, res, kv_, _ = unpack(ops)
        return _dense(*step._skip(h0, res, kv_, count_like(sel), copy=True))

    def full(*ops):
        # a token axis merged back from frames inside the blocks (`F * (L // F)` rows) is L to the tracer only
        # after a reshape to the state's shape, and cond's branches must agree on their outputs' shapes
        sel, _, h0, _, kv_, stack_in = unpack(ops)
        return _dense(*step._full(stack_in, h0, count_like(sel), tokens, kv_like=kv_))

    def subset(k):
        def run(*ops):
            sel, acc_, h0, res, kv_, stack_in = unpack(ops)
            return _dense(*step._subset(select_tokens(sel, acc_, k), front, stack_in, h0, res, kv_,
                                        count_like(sel), inplace=False))
        return run

    skip = subset(0) if step.always_run(front) else skip  # the non-grid rows only
    branches = [skip, *[subset(k) for k in sizes], full] if budget is None else (
        [subset(budget), full] if budget < tokens else [full])

    def tree(lo, hi):
        # export retraces nested branches once per enclosing level: depth (log2 of the branch count),
        # not the number of buckets, sets its cost
        if lo == hi:
            return branches[lo]
        mid = (lo + hi) // 2
        left, right = tree(lo, mid), tree(mid + 1, hi)
        return lambda *ops: _cond(ops[0] <= mid, left, right, ops)

    return tree(0, len(branches) - 1)(*operands)
