"""One cache-aware model call as a pure function of tensors, for torch.compile and ONNX export.

    StepGraph(flat inputs..., state...) -> (flat outputs..., recomputed [B, L] bool, executed [] int64, new state...)

Matches: a `CachedStep` (the split prologue / stack / token-subset stack / epilogue graphs).
Requires: static capacity buckets (the config's, else `DEFAULT_GRAPH_BUCKETS`).
Guarantees: no Python branch on data and no in-place write to an input. The decision is tensor code shared
with the eager runtime (`CachedStep.decide_tokens` / `finish`); the path is a `torch.cond` chain:

    nothing selected          -> skip: h_L = h_0 + cached residual (the blocks do not run)
    selected <= bucket k_i    -> the k_i-token subset stack (top-k by score; extras are just recomputed)
    more than the last bucket -> the full stack

so the graph has static shapes on every path and ONNX Runtime runs only the branch taken (`If` is lazy).
With the same buckets it computes exactly what `CachedStep.run` computes eagerly.

The state is explicit: `state_names` lists it in order (see `docs/ARCHITECTURE.md`); `initial_state` gives
the tensors for a context's first call (computes 0: that call computes every token).
"""

from __future__ import annotations

import torch

from mcgraph.runtime.step import CachedStep, Front, bucket_sizes, select_tokens

DEFAULT_GRAPH_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
DECISION_OUTPUTS = ("mcgraph_recomputed", "mcgraph_executed")


def _cond(pred, true_fn, false_fn, operands):
    """torch.cond when compiling or exporting (one graph, both branches); a plain branch when run eagerly, where
    torch.cond would invoke dynamo on every call for nothing."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return torch.cond(pred, true_fn, false_fn, operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


class StepGraph(torch.nn.Module):
    """See module docstring. `example_flat`: the flat inputs of one call, fixing the state's shapes."""

    def __init__(self, step: CachedStep, example_flat: list, buckets: tuple[float, ...] | None = None):
        super().__init__()
        self.__dict__["step"] = step  # not a module; its graphs are registered below so their weights are ours
        self.prologue = step.prologue
        self.stack = step.stack
        self.subset_stack = step.subset_stack_functional
        self.epilogue = step.epilogue
        self.buckets = tuple(buckets or step.config.capacity_buckets or DEFAULT_GRAPH_BUCKETS)
        self.num_inputs = len(step.input_names)
        with torch.no_grad():
            front = step.front(example_flat)
            template = step.initial_state(front)
        self.tokens = front.tokens
        self.state_names = self._state_names(template)
        self.num_outputs = len(step.epilogue(front.h0, *[front.values[n] for n in step.epilogue_inputs]))

    # ------------------------------------------------------------------------------------------ state
    @staticmethod
    def _state_names(state: dict) -> list[str]:
        names = [k for k in state if k != "kv"]
        for i in range(len(state["kv"]) // 2):
            names += [f"k_cache_{i}", f"v_cache_{i}"]
        return names

    def state_to_list(self, state: dict) -> list[torch.Tensor]:
        flat = [state[k] for k in self.state_names if not k.startswith(("k_cache_", "v_cache_"))]
        return flat + list(state["kv"])

    def state_from_list(self, values) -> dict:
        values = list(values)
        plain = [k for k in self.state_names if not k.startswith(("k_cache_", "v_cache_"))]
        state = dict(zip(plain, values[:len(plain)]))
        state["kv"] = values[len(plain):]
        return state

    def initial_state(self, flat: list) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.state_to_list(self.step.initial_state(self.step.front(flat)))

    # ------------------------------------------------------------------------------------------- call
    def forward(self, *args):
        flat, state = list(args[:self.num_inputs]), self.state_from_list(args[self.num_inputs:])
        outputs, update, executed, new_state = self.run(flat, state)
        new = self.state_to_list(new_state)
        if torch.compiler.is_exporting():
            # a state the policy leaves as is (TeaCache's weights) would be an input returned as an output, which
            # export turns into one value with the output's name: the file would lose the state_<name> input.
            # (Export only: under dynamo this identity test would become a guard on object ids.)
            given = {id(t) for t in args[self.num_inputs:]}
            new = [t.clone() if id(t) in given else t for t in new]
        return (*outputs, update, executed, *new)

    def run(self, flat: list, state: dict | None):
        """(outputs, recomputed [B, L], executed [], new state dict); state None: the context's first call."""
        step = self.step
        front = step.front(flat)
        if state is None:
            state = step.initial_state(front)
        update, acc, computes = step.decide_tokens(flat, front, state)
        selected = update.any(0)
        h_l, residual, fresh, executed, *kv = self._execute(selected, acc, front, state)
        outputs = self.epilogue(h_l, *[front.values[n] for n in step.epilogue_inputs])
        new_state = step.finish(flat, front, state, update, acc, computes, h_l, residual, kv, fresh, outputs)
        return outputs, update, executed, new_state

    def _execute(self, selected, acc, front: Front, state: dict):
        tokens = front.tokens
        kv = list(state["kv"])
        n_kv = len(kv)
        # cond operands must be tensors; non-tensor stack inputs (static sizes) are closed over
        tensor_slots = [i for i, v in enumerate(front.stack_in) if isinstance(v, torch.Tensor)]
        need = selected.sum()
        # branch 0 skips (nothing selected), branch i runs the i-th bucket, the last one the full stack
        sizes = [k for k in bucket_sizes(self.buckets, tokens) if k < tokens]
        branch = (need > 0).long() + sum((need > k).long() for k in sizes)
        operands = (branch, selected, acc, front.h0, state["residual"], *kv, *[front.stack_in[i] for i in tensor_slots])

        def unpack(ops):
            sel, acc_, h0, res = ops[1:5]
            kv_ = list(ops[5:5 + n_kv])
            stack_in = list(front.stack_in)
            for slot, value in zip(tensor_slots, ops[5 + n_kv:]):
                stack_in[slot] = value
            return sel, acc_, h0, res, kv_, stack_in

        def dense(*outs):
            # every branch must return the same layout (cond checks strides): the stack's K/V may be views
            return tuple(t.contiguous() for t in outs)

        def count(sel, k: int):
            return torch.full((), k, dtype=torch.int64, device=sel.device)

        def skip(*ops):
            sel, _, h0, res, kv_, _ = unpack(ops)
            # cond branches may not return their inputs: clone (ONNX turns these into Identity)
            return dense(h0 + res, res.clone(), torch.zeros_like(sel), count(sel, 0), *[t.clone() for t in kv_])

        def full(*ops):
            sel, _, h0, _, _, stack_in = unpack(ops)
            h_l, *kv_new = self.stack(*stack_in)
            return dense(h_l, h_l - h0, torch.ones_like(sel), count(sel, tokens), *kv_new)

        def subset(k):
            def run(*ops):
                sel, acc_, h0, res, kv_, stack_in = unpack(ops)
                index = select_tokens(sel, acc_, k)
                h_sel, *kv_new = self.subset_stack(*stack_in, index, *kv_)
                residual = res.index_copy(1, index, h_sel - h0.index_select(1, index))
                fresh = torch.zeros_like(sel).index_fill(0, index, True)
                return dense(h0 + residual, residual, fresh, count(sel, k), *kv_new)
            return run

        sizes = [k for k in bucket_sizes(self.buckets, tokens) if k < tokens]
        branches = [skip, *[subset(k) for k in sizes], full]

        def tree(lo, hi):
            # a balanced tree of conds over the branch index: export retraces nested branches once per
            # enclosing level, so depth (log2 of the branch count), not the number of buckets, sets its cost
            if lo == hi:
                return branches[lo]
            mid = (lo + hi) // 2
            left, right = tree(lo, mid), tree(mid + 1, hi)
            return lambda *ops: _cond(ops[0] <= mid, left, right, ops)

        return tree(0, len(branches) - 1)(*operands)

    # ------------------------------------------------------------------------------------------ naming
    def output_names(self) -> list[str]:
        outs = [f"output_{i}" for i in range(self.num_outputs)]
        return outs + list(DECISION_OUTPUTS) + [f"new_state_{n}" for n in self.state_names]
