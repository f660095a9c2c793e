"""One cache-aware model call: (flat inputs, state) -> (flat outputs, new state), built from the split graphs.

State per context is a dict of tensors (nothing hidden in buffers): the indicator of the last call, the
per-token accumulators, compute counts and motion weights, the block-stack residual R = h_L - h_0, and each
self-attention layer's K and V for every token. `CachedStep.run` returns a new state rather than mutating its input,
except that the token-subset stack writes fresh K/V rows into the cache tensors in place
(the eager default; `TokenSubsetStack(inplace_kv=False)` gives the purely functional form export needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mcgraph.config import MotionCacheConfig, ReuseConfig
from mcgraph.runtime.policies import chunk_mean, decide
from mcgraph.errors import McGraphError
from mcgraph.runtime.motion import frame_differences, latent_tokens, normalise_per_frame
from mcgraph.compiler.structure import ModelStructure


class CacheMemoryError(McGraphError, MemoryError):
    """The cache state would exceed the configured budget; nothing was allocated."""


@dataclass
class StepRecord:
    """What one call decided (kept when recording is on): for plots, heat maps and tests."""

    context: str
    computed: torch.Tensor  # [B, L] bool: tokens recomputed (decided), before union over the batch
    executed: int  # tokens actually run through the blocks (union over the batch, or a capacity bucket)
    tokens: int
    frames: int
    path: str  # "full" | "subset" | "skip"


@dataclass
class Front:
    """What the prologue produced for one call, and the call's geometry."""

    values: dict  # boundary name -> value
    indicator: torch.Tensor  # [B, L, C]
    stack_in: list
    h0: torch.Tensor  # [B, L, D] the stream entering block 0
    batch: int
    tokens: int
    dim: int
    frames: int
    per_frame: int


def execution_path(executed: int, tokens: int) -> str:
    """The path a call took, from how many tokens ran through the blocks: "skip", "subset" or "full"."""
    return "skip" if executed == 0 else ("full" if executed == tokens else "subset")


def bucket_sizes(buckets, tokens: int) -> list[int]:
    """Token counts of the capacity buckets (fractions of `tokens`), ascending, the last one all tokens."""
    sizes = sorted({min(tokens, max(1, round(b * tokens))) for b in buckets})
    return sizes if sizes[-1] == tokens else [*sizes, tokens]


def select_tokens(selected: torch.Tensor, acc: torch.Tensor, k: int) -> torch.Tensor:
    """The k tokens to run, ascending: every selected one, then those with the largest accumulated distance.

    The score is made unique (float64, a tiny index term) so that eager, compiled and ONNX Runtime top-k pick
    the same tokens: their tie-breaking rules differ."""
    tokens = selected.shape[0]
    order = torch.arange(tokens, device=selected.device, dtype=torch.float64)
    score = selected.double() * 1e12 + acc.sum(0).double() - order * 1e-9
    return score.topk(k).indices.sort().values


@dataclass
class CachedStep:
    config: ReuseConfig
    structure: ModelStructure
    prologue: torch.nn.Module
    stack: torch.nn.Module
    subset_stack: torch.nn.Module  # writes K/V rows in place (eager)
    subset_stack_functional: torch.nn.Module  # the same, out of place (compile / export)
    epilogue: torch.nn.Module
    boundary: list[str]
    stack_inputs: list[str]
    epilogue_inputs: list[str]
    stream_input: str
    input_names: list[str]  # flat input names (graph placeholders)
    chunk_frames: int
    kv_floats_per_token: int  # K+V elements per token summed over layers (per batch sample)
    kv_example_shapes: list  # every layer's K and V shape on the build example (batch first, tokens second-last)
    example_batch: int
    kv_dtype: torch.dtype
    records: list[StepRecord] = field(default_factory=list)
    record: bool = False

    # ---------------------------------------------------------------------------------------- geometry
    def _geometry(self, flat) -> tuple[int, int]:
        """(frames, tokens per frame) of this call, from the latent input's shape and the patch size."""
        grid = self.structure.grid
        latent = flat[self.input_names.index(grid.latent_input)]
        pt, ph, pw = grid.patch_size
        if latent.dim() == 5:
            return latent.shape[2] // pt, (latent.shape[3] // ph) * (latent.shape[4] // pw)
        return 1, (latent.shape[2] // ph) * (latent.shape[3] // pw)

    def _token_timesteps(self, flat, batch: int, frames: int, per_frame: int) -> torch.Tensor | None:
        names = [n for n, role in self.structure.inputs.items() if role == "timestep"]
        if not names:
            return None
        t = flat[self.input_names.index(names[0])]
        if not isinstance(t, torch.Tensor):
            return None
        t = t.float()
        if t.dim() == 2 and t.shape[1] == frames:
            return t.repeat_interleave(per_frame, dim=1).expand(batch, -1)
        if t.numel() == batch or t.numel() == 1:
            return t.reshape(-1, 1).expand(batch, frames * per_frame)
        return None

    def state_bytes(self, batch: int, tokens: int, dim: int, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        per_token = 2 * dim * elem + self.kv_floats_per_token * elem + 3 * 4  # R, indicator, KV, acc/computes/w
        return batch * tokens * per_token

    def kv_shapes(self, batch: int, tokens: int) -> list[tuple[int, ...]]:
        """Shapes of every layer's K and V cache for a call with `batch` samples and `tokens` tokens."""
        out = []
        for shape in self.kv_example_shapes:
            s = list(shape)
            s[0] = s[0] // self.example_batch * batch
            s[-2] = tokens
            out.append(tuple(s))
        return out

    # ------------------------------------------------------------------------------- the shared stages
    def front(self, flat) -> Front:
        """Run the prologue (everything before the blocks) and read the call's geometry."""
        pro = self.prologue(*flat)
        values = dict(zip(self.boundary, pro[:-1]))
        h0 = values[self.stream_input]
        batch, tokens, dim = h0.shape
        frames, per_frame = self._geometry(flat)
        if frames * per_frame != tokens:
            raise McGraphError(f"token grid {frames}x{per_frame} does not match {tokens} tokens")
        return Front(values, pro[-1], [values[n] for n in self.stack_inputs], h0, batch, tokens, dim, frames,
                     per_frame)

    def initial_state(self, front: Front) -> dict:
        """The state before a context's first call: nothing computed yet (computes 0), so that call computes
        every token whatever the policy; the same tensors are the first inputs of an exported step graph."""
        b, n, dev = front.batch, front.tokens, front.h0.device
        state = {
            "indicator": torch.zeros_like(front.indicator),
            "acc": torch.zeros(b, n, device=dev),
            "computes": torch.zeros(b, n, dtype=torch.int32, device=dev),
            "weights": torch.ones(b, n, device=dev),
            "residual": torch.zeros_like(front.h0),
        }
        if self.has_timesteps:
            state["timesteps"] = torch.full((b, n), float("inf"), device=dev)
        if self.wants_instability:
            state["instability"] = torch.zeros(b, n, device=dev)
        state["kv"] = [torch.zeros(s, dtype=self.kv_dtype, device=dev) for s in self.kv_shapes(b, n)]
        return state

    def decide_tokens(self, flat, front: Front, state: dict):
        """(recompute mask U [B, L], new acc, new computes) from the indicator's change since the last call."""
        cfg = self.config
        frames = front.frames
        num = (front.indicator - state["indicator"]).abs().mean(-1).float()  # [B, L]
        den = state["indicator"].abs().mean(-1).float()
        dist = num / (den + 1e-8)
        chunk_dist = chunk_mean(num, frames, self.chunk_frames) / (chunk_mean(den, frames, self.chunk_frames) + 1e-8)
        sample_dist = num.mean(1) / (den.mean(1) + 1e-8)
        t_tok = self._token_timesteps(flat, front.batch, frames, front.per_frame)
        if t_tok is None:
            final = torch.zeros_like(dist, dtype=torch.bool)
        else:
            # a token's final step is the call where its timestep *drops* into (0, final_timestep]; a
            # history frame held at a small timestep (re-noised prefix) is not at its final step every call
            final = (t_tok > 0) & (t_tok <= cfg.final_timestep) & (t_tok < state["timesteps"])
        return decide(cfg, dist, chunk_dist, sample_dist, state["acc"], state["computes"], final, state["weights"],
                      frames, self.chunk_frames)

    def finish(self, flat, front: Front, state: dict, update, acc, computes, h_l, residual, kv, fresh, outputs):
        """The new state after a call: motion weights of this call's output, the updated accumulators."""
        cfg = self.config
        weights = state["weights"]
        new_state = {"indicator": front.indicator, "acc": acc, "computes": computes, "weights": weights,
                     "residual": residual}
        if self.has_timesteps:
            t_now = self._token_timesteps(flat, front.batch, front.frames, front.per_frame)
            new_state["timesteps"] = state["timesteps"] if t_now is None else t_now
        if self.wants_instability:
            # observed instability of the rows just recomputed (and computed before): how much R moved since cached
            old = state["residual"]
            change = (residual - old).abs().mean(-1) / (old.abs().mean(-1) + 1e-8)
            observed = fresh[None, :] & (state["computes"] > 0)
            new_state["instability"] = torch.where(observed, change.float(), state["instability"])
            new_state["weights"] = normalise_per_frame(new_state["instability"], front.frames, cfg.weight_floor)
        elif isinstance(cfg, MotionCacheConfig):
            new_state["weights"] = self._motion_weights(cfg, h_l, flat, outputs, front.frames, front.per_frame)
        new_state["kv"] = list(kv)
        return new_state

    # --------------------------------------------------------------------------------------------- run
    def run(self, flat: list, state: dict | None, context: str = "default"):
        """Eager call: Python chooses the path and the exact (or bucketed) number of tokens to run."""
        cfg = self.config
        front = self.front(flat)
        if state is None:
            if cfg.max_cache_bytes is not None:
                need = self.state_bytes(front.batch, front.tokens, front.dim, front.h0.dtype)
                if need > cfg.max_cache_bytes:
                    raise CacheMemoryError(
                        f"cache state for context {context!r} needs {need / 2**20:.1f} MiB "
                        f"(batch {front.batch}, {front.tokens} tokens, hidden {front.dim}, {len(self.kv_example_shapes) // 2} "
                        f"attention layers), over max_cache_bytes = {cfg.max_cache_bytes / 2**20:.1f} MiB")
            state = self.initial_state(front)
        update, acc, computes = self.decide_tokens(flat, front, state)

        selected = update.any(0)  # tokens any sample needs: run once for the whole batch
        index = self._execution_index(selected, acc, state)
        tokens, h0 = front.tokens, front.h0
        n = index.numel() if index is not None else tokens
        if n == tokens:
            h_l, *kv = self.stack(*front.stack_in)
            residual = h_l - h0
            fresh = torch.ones(tokens, dtype=torch.bool, device=h0.device)
            path = "full"
        elif n == 0:
            h_l = h0 + state["residual"]
            residual = state["residual"]
            kv = state["kv"]
            fresh = torch.zeros(tokens, dtype=torch.bool, device=h0.device)
            path = "skip"
        else:
            h_sel, *kv = self.subset_stack(*front.stack_in, index, *state["kv"])
            residual = state["residual"].index_copy(1, index, h_sel - h0.index_select(1, index))
            h_l = h0 + residual
            fresh = torch.zeros(tokens, dtype=torch.bool, device=h0.device).index_fill(0, index, True)
            path = "subset"
        outputs = self.epilogue(h_l, *[front.values[n_] for n_ in self.epilogue_inputs])
        new_state = self.finish(flat, front, state, update, acc, computes, h_l, residual, kv, fresh, outputs)
        if self.record:
            self.records.append(StepRecord(context, update.cpu(), n, tokens, front.frames, path))
        return outputs, new_state

    @property
    def has_timesteps(self) -> bool:
        return any(role == "timestep" for role in self.structure.inputs.values())

    @property
    def wants_instability(self) -> bool:
        return isinstance(self.config, MotionCacheConfig) and self.config.motion_source == "residual"

    def _execution_index(self, selected, acc, state):
        """Token indices to run through the blocks; None means all. Buckets give static sizes."""
        tokens = selected.shape[0]
        buckets = self.config.capacity_buckets
        if state is None:
            return None
        if buckets is None:
            return selected.nonzero().squeeze(1)
        need = int(selected.sum())
        if need == 0:
            return selected.nonzero().squeeze(1)
        k = next(k for k in bucket_sizes(buckets, tokens) if k >= need)
        if k >= tokens:
            return None
        return select_tokens(selected, acc, k)

    def _motion_weights(self, cfg: MotionCacheConfig, h_l, flat, outputs, frames, per_frame):
        grid = self.structure.grid
        if cfg.motion_source == "hidden":
            d = frame_differences(h_l.float(), frames, relative=True)
        else:
            latent = flat[self.input_names.index(grid.latent_input)].float()
            if cfg.motion_source == "clean":
                velocity = outputs[0].float()
                t = self._token_timesteps(flat, latent.shape[0], frames, 1)  # per frame [B, F]
                if t is None or velocity.shape != latent.shape:
                    raise McGraphError("motion_source='clean' needs a [B, F] or [B] timestep input and a velocity "
                                       "output shaped like the latent")
                sigma = (t / 1000.0).view(latent.shape[0], 1, frames, 1, 1).repeat_interleave(grid.patch_size[0], 2)
                latent = latent - sigma * velocity
            d = frame_differences(latent_tokens(latent, grid.patch_size), frames, relative=cfg.motion_source == "clean")
        return normalise_per_frame(d, frames, cfg.weight_floor)
