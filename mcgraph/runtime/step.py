"""The one cache-aware model call: (flat inputs, state) -> (flat outputs, decision, new state).

Matches: the graphs `mcgraph.compiler.cache_build` makes from one captured specialisation (prologue, block
stack, token-subset stack, epilogue).
Guarantees: one definition of the call, in two modes that share every stage (front, distances, policy
decision, the skip / subset / full branches, the state update):

- eager (`traced=False`): Python picks the path from the exact number of selected tokens (or the smallest
  capacity bucket that holds them when the config has buckets); the subset stack writes K/V rows in place;
- traced (`traced=True`, for torch.compile and export): static capacity buckets and a balanced `torch.cond`
  tree over the branch index, no Python branch on data, no in-place write to an input.

With the same buckets both modes compute the same thing. State per context is a dict of tensors (the
indicator of the last call, per-token accumulators / compute counts / motion weights / last timesteps, the
block-stack residual R = h_L - h_0, every self-attention layer's K and V, and `watch_<input>`: the inputs the
indicator cannot see, whose change invalidates the sample); it lives in the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mcgraph.compiler.cache_build import StepGraphs
from mcgraph.config import ReuseConfig
from mcgraph.errors import McGraphError
from mcgraph.runtime.cost_model import SubsetCost
from mcgraph.runtime.memory import ACCUMULATOR_DTYPE, COUNT_DTYPE, state_layout, token_state
from mcgraph.runtime.policies import CallView, Decision, Distances, policy_for
from mcgraph.runtime.token_count import budget_tokens, bucket_sizes, eager_index, select_tokens

DEFAULT_GRAPH_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0)


@dataclass
class Front:
    """What the prologue produced for one call, and the call's geometry."""

    values: dict  # boundary name -> value
    indicator: torch.Tensor  # [B, L, C]
    stack_in: list
    h0: torch.Tensor  # [B, L, D] the stream entering block 0
    batch: int
    tokens: int
    frames: int
    per_frame: int
    flat: list  # the call's flat inputs
    timesteps: torch.Tensor | None  # each token's timestep [B, L] (read once per call), None without one


@dataclass
class StepResult:
    outputs: list
    recomputed: torch.Tensor  # [B, L] bool: tokens the policy chose
    executed: torch.Tensor | int  # tokens run through the blocks (0 skip, a bucket, or all)
    new_state: dict
    frames: int = 0
    tokens: int = 0


def execution_path(executed: int, tokens: int) -> str:
    """The path a call took, from how many tokens ran through the blocks: "skip", "subset" or "full"."""
    return "skip" if executed == 0 else ("full" if executed == tokens else "subset")


def _cond(pred, true_fn, false_fn, operands):
    """torch.cond when compiling or exporting (one graph, both branches); a plain branch when run eagerly,
    where torch.cond would invoke dynamo on every call for nothing."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return torch.cond(pred, true_fn, false_fn, operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def _dense(*outs):
    # every branch must return the same layout (cond checks strides): the stack's K/V may be views
    return tuple(t.contiguous() for t in outs)


@dataclass
class CacheStep:
    """See module docstring. `structure`: what the analyses found (grid, input roles)."""

    graphs: StepGraphs
    structure: object
    config: ReuseConfig
    chunk_frames: int
    subset_cost: SubsetCost | None = None  # measured when the config asks for it (exact token counts)
    policy: object = field(init=False)

    def __post_init__(self):
        self.policy = policy_for(self.config, self.chunk_frames)

    # ---------------------------------------------------------------------------------------- geometry
    def latent_input(self, flat) -> torch.Tensor:
        return flat[self.graphs.input_names.index(self.structure.grid.latent_input)]

    def geometry(self, flat) -> tuple[int, int]:
        """(frames, tokens per frame) of this call: the grid's formulas over the call's sizes (latent dims, Python
        ints it passes), which hold for every shape the capture serves, whatever the latent's layout."""
        grid = self.structure.grid
        sizes = {}
        for symbol, (name, dim, divisor) in grid.size_inputs.items():
            x = flat[self.graphs.input_names.index(name)]
            sizes[symbol] = (x if dim is None else x.shape[dim]) // divisor
        frames, height, width = grid.evaluate(sizes)
        return frames, height * width

    @property
    def has_timesteps(self) -> bool:
        return any(role == "timestep" for role in self.structure.inputs.values())

    def token_timesteps(self, flat, batch: int, frames: int, per_frame: int) -> torch.Tensor | None:
        """Each token's timestep [B, frames * per_frame] (per_frame 1: per frame), or None if not readable."""
        names = [n for n, role in self.structure.inputs.items() if role == "timestep"]
        if not names:
            return None
        t = flat[self.graphs.input_names.index(names[0])]
        if not isinstance(t, torch.Tensor):
            return None
        t = t.float()
        if t.dim() == 2 and t.shape[1] == frames:
            return t.repeat_interleave(per_frame, dim=1).expand(batch, -1)
        if t.numel() == batch or t.numel() == 1:
            return t.reshape(-1, 1).expand(batch, frames * per_frame)
        return None

    def kv_shapes(self, batch: int, tokens: int) -> list[tuple[int, ...]]:
        """Shapes of every layer's K and V cache for a call with `batch` samples and `tokens` tokens."""
        g = self.graphs
        out = []
        for shape in g.kv_example_shapes:
            s = list(shape)
            s[0] = s[0] // g.example_batch * batch
            s[-2] = tokens
            out.append(tuple(s))
        return out

    def state_bytes(self, batch: int, tokens: int) -> int:
        """Bytes of one context's per-token state (all but the watched-input copies) for a call of this size."""
        return sum(t.nbytes for t in token_state(self, batch, tokens))

    def state_bytes_for(self, flat) -> int:
        """Bytes of one context's state for a call with these inputs, every tensor `initial_state` makes
        (`mcgraph.runtime.memory.state_layout`), known before anything is allocated."""
        return sum(t.nbytes for t in state_layout(self, flat))

    # ------------------------------------------------------------------------------------------ stages
    def front(self, flat) -> Front:
        """Run the prologue (everything before the blocks) and read the call's geometry."""
        g = self.graphs
        pro = g.run("prologue", *flat)
        values = dict(zip(g.boundary, pro[:-1]))
        h0 = values[g.stream_input]
        batch, tokens, _ = h0.shape
        frames, per_frame = self.geometry(flat)
        if frames * per_frame != tokens:
            raise McGraphError(f"token grid {frames}x{per_frame} does not match {tokens} tokens")
        return Front(values, pro[-1], [values[n] for n in g.stack_inputs], h0, batch, tokens, frames, per_frame,
                     list(flat), self.token_timesteps(flat, batch, frames, per_frame))

    def initial_state(self, front: Front) -> dict:
        """The state before a context's first call: nothing computed yet (computes 0), so that call computes
        every token whatever the policy; the same tensors are the first inputs of an exported step graph."""
        b, n, dev = front.batch, front.tokens, front.h0.device
        state = {  # contiguous like every later state (`finish`), whatever the strides of the values they follow
            "indicator": torch.zeros_like(front.indicator, memory_format=torch.contiguous_format),
            "acc": torch.zeros(b, n, dtype=ACCUMULATOR_DTYPE, device=dev),
            "computes": torch.zeros(b, n, dtype=COUNT_DTYPE, device=dev),
            "weights": torch.ones(b, n, dtype=ACCUMULATOR_DTYPE, device=dev),
            "residual": torch.zeros_like(front.h0, memory_format=torch.contiguous_format),
        }
        if self.has_timesteps:
            state["timesteps"] = torch.full((b, n), float("inf"), dtype=ACCUMULATOR_DTYPE, device=dev)
        for name, fill in self.policy.extra_state.items():
            state[name] = torch.full((b, n), fill, dtype=ACCUMULATOR_DTYPE, device=dev)
        for name, x in self.watched_inputs(front.flat):
            state[f"watch_{name}"] = torch.zeros_like(x, memory_format=torch.contiguous_format)
        state["kv"] = [torch.zeros(s, dtype=self.graphs.kv_dtype, device=dev) for s in self.kv_shapes(b, n)]
        return state

    def distances(self, front: Front, state: dict) -> Distances:
        num = (front.indicator - state["indicator"]).abs().mean(-1).float()  # [B, L]
        den = state["indicator"].abs().mean(-1).float()
        return Distances(num, den, front.frames, self.chunk_frames)

    def final_step(self, flat, front: Front, state: dict) -> torch.Tensor:
        """[B, L] bool: the token's timestep *drops* into (0, final_timestep] this call (its final denoising
        step); a history frame held at a small timestep (re-noised prefix) is not final on every call."""
        t_tok = front.timesteps
        if t_tok is None:
            return torch.zeros(front.batch, front.tokens, dtype=torch.bool, device=front.h0.device)
        return (t_tok > 0) & (t_tok <= self.config.final_timestep) & (t_tok < state["timesteps"])

    def watched_inputs(self, flat) -> list[tuple[str, torch.Tensor]]:
        """Tensor inputs whose change the indicator cannot see: all but the latent and the timesteps (which
        enter block 0's modulated input). The conditioning is one: it enters through cross-attention only."""
        roles = self.structure.inputs
        latent = self.structure.grid.latent_input
        return [(name, x) for name, x in zip(self.graphs.input_names, flat)
                if isinstance(x, torch.Tensor) and name != latent and roles.get(name) != "timestep"]

    def invalidated(self, flat, front: Front, state: dict) -> torch.Tensor:
        """[B, L] bool: every token of a sample whose watched inputs differ from the context's last call (a
        different prompt, a CFG branch run without its own context): its cached residuals were made for other
        inputs, so the whole sample is recomputed."""
        b = front.batch
        stale = torch.zeros(b, dtype=torch.bool, device=front.h0.device)
        for name, x in self.watched_inputs(flat):
            prev = state[f"watch_{name}"]
            diff = (x != prev).reshape(x.shape[0], -1).any(1) if x.dim() > 0 else (x != prev).reshape(1)
            stale = stale | (diff if diff.shape[0] == b else diff.any().expand(b))
        return stale[:, None].expand(b, front.tokens)

    def decide(self, flat, front: Front, state: dict) -> Decision:
        """The policy's decision for this call (settled after execution: `Decision.settle`).

        A token whose timestep *rises* (a new chunk in the same window slot, a new generation of the same
        shape) is a new token: its compute count and accumulator restart, so it warms up and is computed."""
        acc, computes = state["acc"], state["computes"]
        if front.timesteps is not None:
            rising = front.timesteps > state["timesteps"]
            computes = torch.where(rising, torch.zeros_like(computes), computes)
            acc = torch.where(rising, torch.zeros_like(acc), acc)
        return self.policy.decide(self.distances(front, state), acc, computes, self.final_step(flat, front, state),
                                  state["weights"], front.frames, invalid=self.invalidated(flat, front, state))

    def with_config(self, config: ReuseConfig) -> CacheStep:
        """The same graphs under another caching config (its own policy)."""
        return CacheStep(self.graphs, self.structure, config, self.chunk_frames, self.subset_cost)

    # -------------------------------------------------------------------------------------- branches
    # each branch returns (h_L, residual, fresh rows [L], executed, *K/V)
    def _skip(self, h0, res, kv, count, copy: bool):
        # traced: cond branches may not return their inputs (ONNX turns the clones into Identity)
        return (h0 + res, res.clone() if copy else res,
                torch.zeros(h0.shape[1], dtype=torch.bool, device=h0.device), count(0),
                *[t.clone() if copy else t for t in kv])

    def _full(self, stack_in, h0, count):
        h_l, *kv_new = self.graphs.run("stack", *stack_in)
        return (h_l, h_l - h0, torch.ones(h0.shape[1], dtype=torch.bool, device=h0.device), count(h0.shape[1]),
                *kv_new)

    def _subset(self, index, stack_in, h0, res, kv, count, inplace: bool):
        stack = "subset_stack" if inplace else "subset_stack_functional"
        h_sel, *kv_new = self.graphs.run(stack, *stack_in, index, *kv)
        residual = res.index_copy(1, index, h_sel - h0.index_select(1, index))
        fresh = torch.zeros(h0.shape[1], dtype=torch.bool, device=h0.device).index_fill(0, index, True)
        return (h0 + residual, residual, fresh, count(index.shape[0]), *kv_new)

    def execute_eager(self, decision: Decision, front: Front, state: dict, first_call: bool):
        """(h_L, residual, fresh rows, executed, *kv) with Python picking the path."""
        tokens = front.tokens
        index = None if first_call else eager_index(decision, tokens, self.config, self.subset_cost)

        def count(n):
            return n

        if index is None or index.numel() == tokens:
            return self._full(front.stack_in, front.h0, count)
        if index.numel() == 0:
            return self._skip(front.h0, state["residual"], state["kv"], count, copy=False)
        return self._subset(index, front.stack_in, front.h0, state["residual"], state["kv"], count, inplace=True)

    def execute_traced(self, decision: Decision, front: Front, state: dict, buckets):
        """The same branches as `execute_eager`, chosen by a balanced `torch.cond` tree over static buckets;
        with a token budget, two branches: the budget, or the full stack when the required tokens exceed it."""
        tokens = front.tokens
        selected, acc = decision.update.any(0), decision.acc
        budget = budget_tokens(self.config.token_budget, tokens)
        if budget is not None:
            required = decision.required.any(0)
            selected = selected.long() + required.long()  # the priority select_tokens ranks by
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
        operands = (branch, selected, acc, front.h0, state["residual"], *kv,
                    *[front.stack_in[i] for i in tensor_slots])

        def unpack(ops):
            stack_in = list(front.stack_in)
            for slot, value in zip(tensor_slots, ops[5 + n_kv:]):
                stack_in[slot] = value
            return ops[1], ops[2], ops[3], ops[4], list(ops[5:5 + n_kv]), stack_in

        def count_like(sel):
            return lambda n: torch.full((), n, dtype=torch.int64, device=sel.device)

        def skip(*ops):
            sel, _, h0, res, kv_, _ = unpack(ops)
            return _dense(*self._skip(h0, res, kv_, count_like(sel), copy=True))

        def full(*ops):
            sel, _, h0, _, _, stack_in = unpack(ops)
            return _dense(*self._full(stack_in, h0, count_like(sel)))

        def subset(k):
            def run(*ops):
                sel, acc_, h0, res, kv_, stack_in = unpack(ops)
                return _dense(*self._subset(select_tokens(sel, acc_, k), stack_in, h0, res, kv_, count_like(sel),
                                            inplace=False))
            return run

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

    def finish(self, flat, front: Front, state: dict, acc, computes, h_l, residual, kv, fresh, outputs) -> dict:
        """The new state after a call: the updated accumulators and what the policy keeps (motion weights)."""
        new_state = {k: v for k, v in state.items() if k != "kv"}
        new_state.update(indicator=front.indicator, acc=acc, computes=computes, residual=residual)
        if front.timesteps is not None:
            new_state["timesteps"] = front.timesteps
        view = CallView(h_l=h_l, residual=residual, old_residual=state["residual"], fresh=fresh,
                        computes_before=state["computes"], frames=front.frames,
                        latent=lambda: self.latent_input(flat), velocity=lambda: outputs[0],
                        frame_timesteps=lambda: self.token_timesteps(flat, front.batch, front.frames, 1),
                        patch_size=self.structure.grid.patch_size)
        new_state.update(self.policy.new_weights(view, state))
        for name, x in self.watched_inputs(flat):
            new_state[f"watch_{name}"] = x.detach().clone(memory_format=torch.contiguous_format)  # callers may reuse inputs
        # contiguous: a compiled step is specialised on its inputs' strides, and the prologue's indicator, the
        # expanded timesteps or a residual made from a transposed stream would change them after the first call
        # (measured: the backend compiled its step twice)
        new_state = {k: v.contiguous() for k, v in new_state.items()}
        new_state["kv"] = list(kv)
        return new_state

    # -------------------------------------------------------------------------------------------- call
    def __call__(self, flat: list, state: dict | None, *, traced: bool = False, buckets=None) -> StepResult:
        """One call. `state` None: the context's first call (every token is computed). `traced`: the graph
        mode, with `buckets` (default: the config's, else DEFAULT_GRAPH_BUCKETS)."""
        front = self.front(flat)
        first_call = state is None
        if first_call:
            state = self.initial_state(front)
        if getattr(self.policy, "needs_true_residual", False):
            if traced:
                raise McGraphError(f"{type(self.config).__name__} is a benchmark control that runs the full stack "
                                   "every call; it has no traced (compiled / exported) form")
            return self._oracle_call(flat, front, state)
        decision = self.decide(flat, front, state)  # tokens any sample needs run once for the whole batch
        if traced:
            buckets = tuple(buckets or self.config.capacity_buckets or DEFAULT_GRAPH_BUCKETS)
            h_l, residual, fresh, executed, *kv = self.execute_traced(decision, front, state, buckets)
        else:
            h_l, residual, fresh, executed, *kv = self.execute_eager(decision, front, state, first_call)
        update, acc, computes = decision.settle(fresh if self.config.token_budget is not None else None)
        outputs = self.graphs.run("epilogue", h_l, *[front.values[n] for n in self.graphs.epilogue_inputs])
        new_state = self.finish(flat, front, state, acc, computes, h_l, residual, kv, fresh, outputs)
        return StepResult(list(outputs), update, executed, new_state, front.frames, front.tokens)

    def _oracle_call(self, flat, front: Front, state: dict) -> StepResult:
        """The oracle control: full stack, then refresh only the tokens the policy picks by true change."""
        h_full, *kv = self.graphs.run("stack", *front.stack_in)
        true_residual = h_full - front.h0
        old = state["residual"]
        change = (true_residual - old).abs().mean(-1) / (old.abs().mean(-1) + 1e-8)
        changed = self.distances(front, state).token > 0
        update = self.policy.select_by_change(change.float(), changed, state["computes"],
                                              self.final_step(flat, front, state))
        residual = torch.where(update[..., None], true_residual, old)
        h_l = front.h0 + residual
        fresh = update.any(0)
        computes = state["computes"] + update.to(state["computes"].dtype)
        outputs = self.graphs.run("epilogue", h_l, *[front.values[n] for n in self.graphs.epilogue_inputs])
        new_state = self.finish(flat, front, state, torch.zeros_like(state["acc"]), computes, h_l, residual, kv,
                                fresh, outputs)
        return StepResult(list(outputs), update, int(fresh.sum()), new_state, front.frames, front.tokens)
