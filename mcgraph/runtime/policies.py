"""Caching policies as objects, one per config type, registered by type (in the style of torchao's config
handler registry): each owns its step distance, its token selection and what it keeps between calls.

Every policy works on the same per-token quantities, as pure tensor code (no `.item()`, no Python branch on
data), so the decision traces into a graph for compile and export:
  Distances.token  [B, L] relative L1 change of each token's indicator since the last call (0 when unchanged)
  Distances.chunk  [B, L] the same over the token's chunk of frames
  Distances.sample [B]    the same over the whole sample
  acc [B, L] accumulated distance since last computed, computes [B, L] compute count, final [B, L] the token is
  at its final denoising step (forced), weights [B, L] per-token motion weights.
`Policy.decide` returns the recompute mask U [B, L] with the new acc / computes. Decisions are per sample
(batch rows never mix) and per cache context (the session keeps one state per CFG branch).

`policy_for(config)` builds the policy of a config; an abstract config (`ReuseConfig`) has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from mcgraph.config import (
    CacheConfig,
    FlowCacheConfig,
    MotionCacheConfig,
    OracleConfig,
    ReuseConfig,
    TeaCacheConfig,
)
from mcgraph.errors import ConfigError, McGraphError
from mcgraph.runtime.motion import frame_differences, latent_tokens, normalise_per_frame

_POLICIES: dict[type, type[Policy]] = {}


def register_policy(config_type: type[ReuseConfig]):
    """Class decorator: `cls` is the policy of configs of exactly `config_type` (and its subclasses)."""

    def wrap(cls):
        cls.config_type = config_type
        _POLICIES[config_type] = cls
        return cls

    return wrap


def policy_for(config: CacheConfig, chunk_frames: int) -> Policy:
    """The policy object for `config`; ConfigError for a config type with no registered policy."""
    for cls in type(config).__mro__:
        if cls in _POLICIES:
            return _POLICIES[cls](config, chunk_frames)
        if cls is ReuseConfig:
            break
    raise ConfigError(f"{type(config).__name__} has no caching policy (abstract, or not registered); use one of "
                      f"{sorted(c.__name__ for c in _POLICIES)}")


def registered_policies() -> dict[type, type]:
    return dict(_POLICIES)


# ------------------------------------------------------------------------------------------- chunk maths
# Chunks from Python ints (frames, chunk_frames) and reshapes: a traced graph holds constants (bincount would
# have a data-dependent size), and an eager call makes no index tensors (this runs several times per call).
def _by_chunk(x: torch.Tensor, frames: int, chunk_frames: int) -> tuple[torch.Tensor, int, int]:
    """[B, F, S] -> ([B, chunks, chunk_frames, S] zero-padded, chunks, frames in the last chunk)."""
    b, _, s = x.shape
    chunks = -(-frames // chunk_frames)
    pad = chunks * chunk_frames - frames
    if pad:
        x = torch.cat([x, x.new_zeros(b, pad, s)], 1)
    return x.view(b, chunks, chunk_frames, s), chunks, chunk_frames - pad


def _per_chunk(values: torch.Tensor, last_frames: int, chunk_frames: int, op) -> torch.Tensor:
    """`op(values, frames in the chunk)` per chunk along dim 1, where only the last chunk may be short."""
    if last_frames == chunk_frames:
        return op(values, chunk_frames)
    return torch.cat([op(values[:, :-1], chunk_frames), op(values[:, -1:], last_frames)], 1)


def _to_frames(per_chunk: torch.Tensor, frames: int, chunk_frames: int) -> torch.Tensor:
    """[B, chunks, S] -> [B, frames, S]: each frame gets its chunk's value."""
    b, chunks, s = per_chunk.shape
    return per_chunk[:, :, None].expand(b, chunks, chunk_frames, s).reshape(b, chunks * chunk_frames, s)[:, :frames]


def chunk_mean(values: torch.Tensor, frames: int, chunk_frames: int) -> torch.Tensor:
    """[B, L] -> [B, L]: every token gets the mean over its chunk of `chunk_frames` frames (last may be short)."""
    b, n = values.shape
    grouped, _, last = _by_chunk(values.view(b, frames, n // frames), frames, chunk_frames)
    sums = grouped.sum((2, 3))[:, :, None]  # [B, chunks, 1]
    means = _per_chunk(sums, last, chunk_frames, lambda v, f: v / (f * (n // frames)))
    return _to_frames(means, frames, chunk_frames).expand(b, frames, n // frames).reshape(b, n)


def _vote(mask: torch.Tensor, frames: int, chunk_frames: int, threshold: float) -> torch.Tensor:
    """Per chunk and spatial position: all frames of the chunk if more than `threshold` of them are selected."""
    b, n = mask.shape
    grouped, _, last = _by_chunk(mask.view(b, frames, n // frames).float(), frames, chunk_frames)
    votes = _per_chunk(grouped.sum(2), last, chunk_frames, lambda v, f: v > threshold * f)  # [B, chunks, S]
    return _to_frames(votes, frames, chunk_frames).reshape(b, n)


# --------------------------------------------------------------------------------------------- inputs
class Distances:
    """Relative L1 change of the indicator per token, chunk and sample, each computed only when a policy reads
    it (a traced graph then holds only what the policy uses)."""

    def __init__(self, num: torch.Tensor, den: torch.Tensor, frames: int, chunk_frames: int):
        self.num, self.den, self.frames, self.chunk_frames = num, den, frames, chunk_frames
        self._memo: dict = {}  # not functools.cached_property: its lock is not traceable by dynamo

    def _once(self, key: str, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def token(self) -> torch.Tensor:  # [B, L]
        return self._once("token", lambda: self.num / (self.den + 1e-8))

    @property
    def chunk(self) -> torch.Tensor:  # [B, L]
        f, c = self.frames, self.chunk_frames
        return self._once("chunk", lambda: chunk_mean(self.num, f, c) / (chunk_mean(self.den, f, c) + 1e-8))

    @property
    def sample(self) -> torch.Tensor:  # [B]
        return self._once("sample", lambda: self.num.mean(1) / (self.den.mean(1) + 1e-8))


@dataclass
class CallView:
    """What a policy may read of the call just made, to update its per-token weights. Values a policy may not
    read are functions: a traced graph then holds only what the policy reads (the exported step graph refuses
    dangling nodes)."""

    h_l: Callable[[], torch.Tensor]  # [B, L, D] the stream after the last block (grid rows)
    residual: Callable[[], torch.Tensor]  # [B, L, D] the cached residual after this call
    old_residual: Callable[[], torch.Tensor]  # [B, L, D] before this call
    fresh: Callable[[], torch.Tensor]  # [L] bool: grid rows recomputed this call
    computes_before: torch.Tensor  # [B, L]
    frames: int
    latent: Callable[[], torch.Tensor]  # the latent input [B, C, F, H, W]
    velocity: Callable[[], torch.Tensor]  # the model's first output
    frame_timesteps: Callable[[], torch.Tensor | None]  # [B, F] or None
    patch_size: tuple[int, int, int]


@dataclass
class Decision:
    """A policy's decision for one call, before it is settled by what actually ran."""

    update: torch.Tensor  # [B, L] bool: the tokens the policy recomputes
    acc: torch.Tensor  # [B, L] accumulated distance including this call's step (nothing reset yet)
    computes: torch.Tensor  # [B, L] compute counts before this call
    required: torch.Tensor  # [B, L] bool: never computed or invalidated (no usable cached value): no budget defers
    forced: torch.Tensor | None = None  # [B, L] bool: at their final denoising step (force_final_step)

    def priority(self) -> torch.Tensor:
        """[L] how a token budget ranks tokens (then by staleness): required 3+, at the final step 2, selected
        1, the rest 0. A final step left out would leave its velocity stale for good, so it goes before the
        ordinary selection; a required token before everything (the budget always holds them all)."""
        p = self.update.any(0).long() + 2 * self.required.any(0).long()
        return p if self.forced is None else p + self.forced.any(0).long()

    def settle(self, ran: torch.Tensor | None = None):
        """(recomputed [B, L], new acc, new computes). None: the tokens the policy chose (they all ran; extra
        rows a capacity bucket ran are not counted). `ran` [L] bool (a token budget): exactly the tokens that
        ran, chosen or not: they restart their accumulators and count a compute, while a chosen token the
        budget left out keeps its accumulated distance and so leads the next call (budgets rotate)."""
        done = self.update if ran is None else ran[None, :].expand_as(self.update)
        return done, torch.where(done, torch.zeros_like(self.acc), self.acc), self.computes + done.to(
            self.computes.dtype)


class Policy:
    """Base: accumulate a step distance, compute what is due, warming up or forced. Subclasses choose the
    step distance and how due tokens become the recompute mask."""

    config_type: ClassVar[type]

    def __init__(self, config: ReuseConfig, chunk_frames: int):
        self.config = config
        self.chunk_frames = chunk_frames

    # state the policy keeps beyond the common one: name -> initial fill value ([B, L] float)
    extra_state: ClassVar[dict[str, float]] = {}

    def step_distance(self, d: Distances, computes, weights) -> torch.Tensor:
        raise NotImplementedError

    def select(self, due, must, computes, frames: int) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, d: Distances, acc, computes, final, weights, frames: int, invalid=None) -> Decision:
        """The recompute mask U [B, L] and what settling it needs (`Decision.settle` resets the accumulators of
        the tokens that ran). `invalid` [B, L]: tokens whose cached values no longer hold (an input the
        indicator does not see changed): computed whatever the policy says."""
        cfg = self.config
        changed = d.token > 0
        required = computes == 0
        if invalid is not None:
            required = required | invalid
        warm = changed & (computes < cfg.warmup_steps)
        forced = final & changed if cfg.force_final_step else torch.zeros_like(changed)
        must = warm | forced | required
        acc = acc + self.step_distance(d, computes, weights)
        update = self.select(acc >= cfg.threshold, must, computes, frames)
        return Decision(update, acc, computes, required, forced)  # must (forced among it) is in update

    def new_weights(self, view: CallView, state: dict) -> dict:
        """State entries to replace after a call (weights and the like); none by default."""
        return {}


@register_policy(TeaCacheConfig)
class TeaCachePolicy(Policy):
    """Whole step: every token is computed when any is due (TeaCache)."""

    def step_distance(self, d, computes, weights):
        return d.sample[:, None].expand_as(d.token)

    def select(self, due, must, computes, frames):
        return (due | must).any(1, keepdim=True).expand_as(due)


@register_policy(FlowCacheConfig)
class FlowCachePolicy(Policy):
    """Per chunk of frames (FlowCache, spec 3.2): a chunk is recomputed or reused as a whole."""

    def step_distance(self, d, computes, weights):
        return d.chunk

    def select(self, due, must, computes, frames):
        return chunk_mean((due | must).float(), frames, self.chunk_frames) > 0


@register_policy(MotionCacheConfig)
class MotionCachePolicy(Policy):
    """Per token (MotionCache, spec 3.3): a chunk-wise phase, then motion-weighted per-token accumulation with
    temporal voting and a minimum partial-update ratio."""

    def __init__(self, config: MotionCacheConfig, chunk_frames: int):
        super().__init__(config, chunk_frames)
        if config.motion_source == "residual":
            self.extra_state = {"instability": 0.0}

    def _phase1(self, computes):
        return computes < self.config.warmup_steps + self.config.phase1_computes

    def step_distance(self, d, computes, weights):
        own = d.chunk if self.config.token_distance == "chunk" else d.token
        return torch.where(self._phase1(computes), d.chunk, weights * own)

    def select(self, due, must, computes, frames):
        cfg = self.config
        update = due
        if not cfg.temporal_voting and cfg.min_update_ratio <= 0:
            return update | must  # nothing reads the phase (a traced graph keeps no unused value)
        token_phase = ~self._phase1(computes)
        if cfg.temporal_voting:
            # logical form of where(token_phase, vote, update): ONNX Runtime has no boolean Where
            vote = _vote(update, frames, self.chunk_frames, cfg.vote_threshold)
            update = (token_phase & vote) | (~token_phase & update)
        if cfg.min_update_ratio > 0:
            frac = chunk_mean(update.float(), frames, self.chunk_frames)
            too_few = (frac > 0) & (frac < cfg.min_update_ratio) & token_phase
            update = update & ~too_few
        return update | must

    def new_weights(self, view: CallView, state: dict) -> dict:
        cfg = self.config
        if cfg.motion_source == "residual":
            # observed instability of the rows just recomputed (and computed before): how much R moved
            old = view.old_residual()
            change = (view.residual() - old).abs().mean(-1) / (old.abs().mean(-1) + 1e-8)
            observed = view.fresh()[None, :] & (view.computes_before > 0)
            instability = torch.where(observed, change.float(), state["instability"])
            return {"instability": instability, "weights": self._shuffle(
                normalise_per_frame(instability, view.frames, cfg.weight_floor), view.frames)}
        if cfg.motion_source == "hidden":
            d = frame_differences(view.h_l().float(), view.frames, relative=True)
        else:
            latent = view.latent().float()
            if cfg.motion_source == "clean":
                velocity = view.velocity().float()
                t = view.frame_timesteps()
                if t is None or velocity.shape != latent.shape:
                    raise McGraphError("motion_source='clean' needs a [B, F] or [B] timestep input and a velocity "
                                       "output shaped like the latent")
                sigma = (t / 1000.0).view(latent.shape[0], 1, -1, 1, 1).repeat_interleave(view.patch_size[0], 2)
                latent = latent - sigma * velocity
            d = frame_differences(latent_tokens(latent, view.patch_size), view.frames,
                                  relative=cfg.motion_source == "clean")
        return {"weights": self._shuffle(normalise_per_frame(d, view.frames, cfg.weight_floor), view.frames)}

    def _shuffle(self, weights: torch.Tensor, frames: int) -> torch.Tensor:
        """The placebo control: the same weights permuted within each frame by a fixed random permutation,
        so a benchmark can tell the motion signal from merely computing part of a chunk."""
        seed = self.config.placebo_seed
        if seed is None:
            return weights
        b, n = weights.shape
        per_frame = n // frames
        perm = torch.randperm(per_frame, generator=torch.Generator().manual_seed(seed)).to(weights.device)
        return weights.view(b, frames, per_frame)[:, :, perm].reshape(b, n)


@register_policy(OracleConfig)
class OraclePolicy(Policy):
    """The selection headroom (a benchmark control): the step computes the true residual every call and asks
    `select_by_change` which tokens to refresh; see `OracleConfig`."""

    needs_true_residual: ClassVar[bool] = True

    def select_by_change(self, change, changed, computes, final) -> torch.Tensor:
        """[B, L] bool: the top `fraction` of changed tokens by true residual change, plus what must run."""
        cfg = self.config
        must = (changed & (computes < cfg.warmup_steps)) | (computes == 0)
        if cfg.force_final_step:
            must = must | (final & changed)
        k = max(1, round(cfg.fraction * change.shape[1]))
        score = torch.where(changed, change, torch.full_like(change, -1.0))
        top = torch.zeros_like(changed).scatter(1, score.topk(k, dim=1).indices, True) & changed
        return top | must
