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

import functools
from dataclasses import dataclass, field

import torch

from mcgraph.compiler.cache_build import StepGraphs
from mcgraph.config import ReuseConfig
from mcgraph.errors import ConfigError, McGraphError
from mcgraph.runtime.cost_model import SubsetCost
from mcgraph.runtime.memory import ACCUMULATOR_DTYPE, COUNT_DTYPE, state_layout, token_state
from mcgraph.runtime.policies import CallView, Decision, Distances, policy_for
from mcgraph.passes.token_subset import joint_rows
from mcgraph.runtime.token_count import bucket_sizes, eager_index, execute_traced, select_tokens  # noqa: F401 (re-exported)

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
    # non-grid rows (text, registers) before and after the grid in the attention sequence; `tokens` counts the
    # grid's only (the decision state), the stream holds all rows when they are concatenated before the blocks
    offset: int = 0
    extra: int = 0

    @property
    def sequence(self) -> int:
        """Rows of the self-attention sequence (the K/V cache)."""
        return self.offset + self.tokens + self.extra


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

    def call_sizes(self, flat) -> dict:
        """The size symbols' values in this call (latent dims, Python ints it passes, the text length)."""
        sizes = {}
        for symbol, (name, dim, divisor) in self.structure.grid.size_inputs.items():
            x = flat[self.graphs.input_names.index(name)]
            sizes[symbol] = (x if dim is None else x.shape[dim]) // divisor
        return sizes

    def geometry(self, flat) -> tuple[int, int]:
        """(frames, tokens per frame) of this call: the grid's formulas over the call's sizes (latent dims, Python
        ints it passes), which hold for every shape the capture serves, whatever the latent's layout."""
        frames, height, width = self.structure.grid.evaluate(self.call_sizes(flat))
        return frames, height * width

    def around(self, flat) -> tuple[int, int]:
        """(offset, extra): non-grid rows before and after the grid in this call's attention sequence."""
        return self.structure.grid.around(self.call_sizes(flat))

    @property
    def in_stream(self) -> bool:
        """The non-grid rows are rows of the residual stream (concatenated before the blocks): they are run on
        every call that runs the stack, and sliced off the per-token decision state."""
        return self.structure.grid.joint == "sequence"

    def grid_rows(self, front: Front, x, dim: int = 1):
        """The grid's rows of a value over the stream's rows."""
        return x.narrow(dim, front.offset, front.tokens) if self.in_stream else x

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
        """Shapes of every layer's K and V cache for a call with `batch` samples and an attention sequence of
        `tokens` rows (non-grid rows included)."""
        g = self.graphs
        out = []
        for shape in g.kv_example_shapes:
            s = list(shape)
            s[0] = s[0] // g.example_batch * batch
            s[-2] = tokens
            out.append(tuple(s))
        return out

    def state_bytes(self, batch: int, tokens: int, offset: int = 0, extra: int = 0) -> int:
        """Bytes of one context's per-token state (all but the watched-input copies) for a call of this size."""
        return sum(t.nbytes for t in token_state(self, batch, tokens, offset, extra))

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
        batch, rows, _ = h0.shape
        frames, per_frame = self.geometry(flat)
        offset, extra = self.around(flat)
        tokens = frames * per_frame
        if (offset + tokens + extra if self.in_stream else tokens) != rows:
            raise McGraphError(f"token grid {frames}x{per_frame} (+ {offset} + {extra} other rows) does not match "
                               f"{rows} rows of the residual stream")
        indicator = pro[-1].narrow(1, offset, tokens) if self.in_stream else pro[-1]
        return Front(values, indicator, [values[n] for n in g.stack_inputs], h0, batch, tokens, frames, per_frame,
                     list(flat), self.token_timesteps(flat, batch, frames, per_frame), offset, extra)

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
        state["kv"] = [torch.zeros(s, dtype=self.graphs.kv_dtype, device=dev)
                       for s in self.kv_shapes(b, front.sequence)]
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

    def _full(self, stack_in, h0, count, tokens: int, kv_like=None):
        if kv_like is not None and self.graphs.regroups_frames:  # traced: see StepGraphs.regroups_frames
            every = torch.arange(h0.shape[1], device=h0.device)
            h_l, *kv_new = self.graphs.run("subset_stack_functional", *stack_in, every, *kv_like)
        else:
            h_l, *kv_new = self.graphs.run("stack", *stack_in)
        return (h_l, h_l - h0, torch.ones(h0.shape[1], dtype=torch.bool, device=h0.device), count(tokens), *kv_new)

    def _subset(self, index, front: Front, stack_in, h0, res, kv, count, inplace: bool):
        """The grid tokens `index` (ascending), with every non-grid row of the stream (`in_stream`)."""
        grid_count = index.shape[0]
        if self.in_stream:
            index = joint_rows(index, front.tokens, front.offset, front.extra)
        stack = "subset_stack" if inplace else "subset_stack_functional"
        h_sel, *kv_new = self.graphs.run(stack, *stack_in, index, *kv)
        residual = res.index_copy(1, index, h_sel - h0.index_select(1, index))
        fresh = torch.zeros(h0.shape[1], dtype=torch.bool, device=h0.device).index_fill(0, index, True)
        return (h0 + residual, residual, fresh, count(grid_count), *kv_new)

    def execute_eager(self, decision: Decision, front: Front, state: dict, first_call: bool):
        """(h_L, residual, fresh rows, executed, *kv) with Python picking the path."""
        tokens = front.tokens
        index = None if first_call else eager_index(decision, tokens, self.config, self.subset_cost)

        def count(n):
            return n

        if index is None or index.numel() == tokens:
            return self._full(front.stack_in, front.h0, count, tokens)
        if index.numel() == 0 and not self.always_run(front):
            return self._skip(front.h0, state["residual"], state["kv"], count, copy=False)
        return self._subset(index, front, front.stack_in, front.h0, state["residual"], state["kv"], count,
                            inplace=True)

    def always_run(self, front: Front) -> bool:
        """Rows run on every call, whatever the selection: the stream's non-grid rows (their inputs, text or
        registers, may change, and they cost little next to the video)."""
        return self.in_stream and (front.offset + front.extra) > 0

    def execute_traced(self, decision: Decision, front: Front, state: dict, buckets):
        """The same branches as `execute_eager`, chosen by a balanced `torch.cond` tree over static buckets
        (`token_count.execute_traced`)."""
        return execute_traced(self, decision, front, state, buckets)

    def finish(self, flat, front: Front, state: dict, acc, computes, h_l, residual, kv, fresh, outputs) -> dict:
        """The new state after a call: the updated accumulators and what the policy keeps (motion weights)."""
        new_state = {k: v for k, v in state.items() if k != "kv"}
        new_state.update(indicator=front.indicator, acc=acc, computes=computes, residual=residual)
        if front.timesteps is not None:
            new_state["timesteps"] = front.timesteps
        grid = functools.partial(self.grid_rows, front)
        view = CallView(h_l=lambda: grid(h_l), residual=lambda: grid(residual),
                        old_residual=lambda: grid(state["residual"]), fresh=fresh,
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
        fresh_rows = fresh
        fresh = lambda: self.grid_rows(front, fresh_rows, 0)  # noqa: E731 - read only where needed (traced)
        update, acc, computes = decision.settle(fresh() if self.config.token_budget is not None else None)
        outputs = self.graphs.run("epilogue", h_l, *[front.values[n] for n in self.graphs.epilogue_inputs])
        new_state = self.finish(flat, front, state, acc, computes, h_l, residual, kv, fresh, outputs)
        return StepResult(list(outputs), update, executed, new_state, front.frames, front.tokens)

    def _oracle_call(self, flat, front: Front, state: dict) -> StepResult:
        """The oracle control: full stack, then refresh only the tokens the policy picks by true change."""
        if self.in_stream:
            raise ConfigError(f"{type(self.config).__name__} does not support non-grid rows (text, registers) in "
                              "the residual stream")
        h_full, *kv = self.graphs.run("stack", *front.stack_in)
        true_residual = h_full - front.h0
        old = state["residual"]
        change = (true_residual - old).abs().mean(-1) / (old.abs().mean(-1) + 1e-8)
        changed = self.distances(front, state).token > 0
        update = self.policy.select_by_change(change.float(), changed, state["computes"],
                                              self.final_step(flat, front, state))
        residual = torch.where(update[..., None], true_residual, old)
        h_l = front.h0 + residual
        fresh_rows = update.any(0)
        fresh = lambda: fresh_rows  # noqa: E731
        computes = state["computes"] + update.to(state["computes"].dtype)
        outputs = self.graphs.run("epilogue", h_l, *[front.values[n] for n in self.graphs.epilogue_inputs])
        new_state = self.finish(flat, front, state, torch.zeros_like(state["acc"]), computes, h_l, residual, kv,
                                fresh, outputs)
        return StepResult(list(outputs), update, int(fresh_rows.sum()), new_state, front.frames, front.tokens)
