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

from .config import MotionCacheConfig, ReuseConfig
from .decisions import chunk_mean, decide
from .errors import McGraphError
from .motion import frame_differences, latent_tokens, normalise_per_frame
from .structure import ModelStructure


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
class CachedStep:
    config: ReuseConfig
    structure: ModelStructure
    prologue: torch.nn.Module
    stack: torch.nn.Module
    subset_stack: torch.nn.Module
    epilogue: torch.nn.Module
    boundary: list[str]
    stack_inputs: list[str]
    epilogue_inputs: list[str]
    stream_input: str
    input_names: list[str]  # flat input names (graph placeholders)
    chunk_frames: int
    kv_floats_per_token: int  # K+V elements per token summed over layers (per batch sample)
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

    # --------------------------------------------------------------------------------------------- run
    def run(self, flat: list, state: dict | None, context: str = "default"):
        cfg = self.config
        pro = self.prologue(*flat)
        values = dict(zip(self.boundary, pro[:-1]))
        indicator = pro[-1]
        stack_in = [values[n] for n in self.stack_inputs]
        h0 = values[self.stream_input]
        batch, tokens, dim = h0.shape
        frames, per_frame = self._geometry(flat)
        if frames * per_frame != tokens:
            raise McGraphError(f"token grid {frames}x{per_frame} does not match {tokens} tokens")
        if cfg.max_cache_bytes is not None and state is None:
            need = self.state_bytes(batch, tokens, dim, h0.dtype)
            if need > cfg.max_cache_bytes:
                raise CacheMemoryError(
                    f"cache state for context {context!r} needs {need / 2**20:.1f} MiB "
                    f"(batch {batch}, {tokens} tokens, hidden {dim}, {len(self.subset_stack_layers())} attention "
                    f"layers), over max_cache_bytes = {cfg.max_cache_bytes / 2**20:.1f} MiB")

        if state is None:
            update = torch.ones(batch, tokens, dtype=torch.bool, device=h0.device)
            acc = torch.zeros(batch, tokens, device=h0.device)
            computes = torch.zeros(batch, tokens, dtype=torch.int32, device=h0.device)
            weights = torch.ones(batch, tokens, device=h0.device)
            computes = computes + 1
        else:
            num = (indicator - state["indicator"]).abs().mean(-1).float()  # [B, L]
            den = state["indicator"].abs().mean(-1).float()
            dist = num / (den + 1e-8)
            chunk_dist = chunk_mean(num, frames, self.chunk_frames) / (chunk_mean(den, frames, self.chunk_frames) + 1e-8)
            sample_dist = num.mean(1) / (den.mean(1) + 1e-8)
            t_tok = self._token_timesteps(flat, batch, frames, per_frame)
            if t_tok is None:
                final = torch.zeros_like(dist, dtype=torch.bool)
            else:
                # a token's final step is the call where its timestep *drops* into (0, final_timestep]; a
                # history frame held at a small timestep (re-noised prefix) is not at its final step every call
                t_prev = state.get("timesteps")
                dropped = torch.ones_like(dist, dtype=torch.bool) if t_prev is None else t_tok < t_prev
                final = (t_tok > 0) & (t_tok <= cfg.final_timestep) & dropped
            weights = state["weights"]
            update, acc, computes = decide(cfg, dist, chunk_dist, sample_dist, state["acc"], state["computes"],
                                           final, weights, frames, self.chunk_frames)

        selected = update.any(0)  # tokens any sample needs: run once for the whole batch
        index = self._execution_index(selected, acc, state)
        n = index.numel() if index is not None else tokens
        if state is None or n == tokens:
            h_l, *kv = self.stack(*stack_in)
            residual = h_l - h0
            path = "full"
        elif n == 0:
            h_l = h0 + state["residual"]
            residual = state["residual"]
            kv = state["kv"]
            path = "skip"
        else:
            h_sel, *kv = self.subset_stack(*stack_in, index, *state["kv"])
            residual = state["residual"].index_copy(1, index, h_sel - h0.index_select(1, index))
            h_l = h0 + residual
            path = "subset"
        outputs = self.epilogue(h_l, *[values[n_] for n_ in self.epilogue_inputs])
        instability = state.get("instability") if state is not None else None
        wants_instability = isinstance(cfg, MotionCacheConfig) and cfg.motion_source == "residual"
        if wants_instability and path != "skip" and state is not None:
            # observed residual instability of the rows just recomputed: how much R moved since they were cached
            change = (residual - state["residual"]).abs().mean(-1) / (state["residual"].abs().mean(-1) + 1e-8)
            fresh = update if index is None else torch.zeros_like(update).index_fill(1, index, True)
            instability = torch.where(fresh, change.float(), instability if instability is not None else change.float())
        if isinstance(cfg, MotionCacheConfig):
            if cfg.motion_source == "residual":
                if instability is not None:
                    weights = normalise_per_frame(instability, frames, cfg.weight_floor)
            else:
                weights = self._motion_weights(cfg, h_l, flat, outputs, frames, per_frame)
        new_state = {"indicator": indicator, "acc": acc, "computes": computes, "weights": weights,
                     "residual": residual, "kv": list(kv)}
        if instability is not None:
            new_state["instability"] = instability
        t_now = self._token_timesteps(flat, batch, frames, per_frame)
        if t_now is not None:
            new_state["timesteps"] = t_now
        if self.record:
            self.records.append(StepRecord(context, update.cpu(), n, tokens, frames, path))
        return outputs, new_state

    def subset_stack_layers(self) -> list:
        return [n for n in self.subset_stack.graph.nodes if n.op == "placeholder" and n.name.startswith("k_cache")]

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
        cap = next(b for b in buckets if round(b * tokens) >= need)
        k = min(tokens, max(need, round(cap * tokens)))
        if k == tokens:
            return None
        # selected tokens first, then those with the largest accumulated distance: extras are simply recomputed
        score = selected.float() * 1e9 + acc.sum(0)
        return score.topk(k).indices.sort().values

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
