"""Per-token reuse decisions of the four policies, as pure tensor functions (no `.item()`, no Python
branches on data), so they trace into a graph for compile and export.

Every policy works on the same per-token quantities:
  dist      [B, L]  relative L1 change of each token's indicator (block 0's modulated input) since the last
                    call; exactly 0 for a token whose latent and timestep did not change;
  chunk_dist [B, L] the same measured over the token's whole chunk (every token of a chunk gets it);
  frame_dist [B, L] ... over the whole sample (TeaCache);
  acc       [B, L]  accumulated distance since the token was last computed;
  computes  [B, L]  how often the token has been computed;
  final     [B, L]  the token is at its final denoising step (forced compute);
and return the recompute mask U [B, L] with the updated acc/computes. Decisions are per sample (batch rows
never mix) and per context (the runtime keeps separate state for CFG branches).
"""

from __future__ import annotations

import torch

from mcgraph.config import FlowCacheConfig, MotionCacheConfig, ReuseConfig, TeaCacheConfig


def _chunk_layout(frames: int, chunk_frames: int, device, dtype):
    """(chunk id of every frame, frames per chunk): from Python ints, so traced graphs hold constants
    (bincount would have a data-dependent size)."""
    n_chunks = (frames + chunk_frames - 1) // chunk_frames
    chunk_id = torch.arange(frames, device=device) // chunk_frames
    counts = torch.tensor([min(chunk_frames, frames - c * chunk_frames) for c in range(n_chunks)], dtype=dtype,
                          device=device)
    return chunk_id, counts


def chunk_mean(values: torch.Tensor, frames: int, chunk_frames: int) -> torch.Tensor:
    """[B, L] -> [B, L]: every token gets the mean over its chunk of `chunk_frames` frames (last chunk may be short)."""
    b, n = values.shape
    per_frame = values.view(b, frames, n // frames).mean(2)  # [B, F]
    chunk_id, counts = _chunk_layout(frames, chunk_frames, values.device, values.dtype)
    sums = torch.zeros(b, counts.shape[0], dtype=values.dtype, device=values.device).index_add(1, chunk_id, per_frame)
    per_chunk = sums / counts
    return per_chunk[:, chunk_id].repeat_interleave(n // frames, dim=1)


def chunk_any_fraction(mask: torch.Tensor, frames: int, chunk_frames: int) -> torch.Tensor:
    """[B, L] bool -> [B, L] float: the fraction of selected tokens in each token's chunk."""
    return chunk_mean(mask.float(), frames, chunk_frames)


def decide(cfg: ReuseConfig, dist, chunk_dist, sample_dist, acc, computes, final, weights, frames: int,
           chunk_frames: int):
    """Return (recompute mask U, new acc, new computes) for `cfg`'s policy."""
    changed = dist > 0
    never = computes == 0
    warm = changed & (computes < cfg.warmup_steps)
    forced = final & changed if cfg.force_final_step else torch.zeros_like(changed)
    if isinstance(cfg, TeaCacheConfig):
        step = sample_dist[:, None].expand_as(acc)
    elif isinstance(cfg, FlowCacheConfig):
        step = chunk_dist
    elif isinstance(cfg, MotionCacheConfig):
        phase1 = computes < cfg.warmup_steps + cfg.phase1_computes
        own = chunk_dist if cfg.token_distance == "chunk" else dist
        step = torch.where(phase1, chunk_dist, weights * own)
    else:
        raise TypeError(f"no decision rule for {type(cfg).__name__}")
    acc = acc + step
    due = acc >= cfg.threshold
    if isinstance(cfg, TeaCacheConfig):
        # whole step: compute everything if any token is due, warming up or forced
        any_due = (due | warm | forced | never).any(1, keepdim=True)
        update = any_due.expand_as(due)
    elif isinstance(cfg, FlowCacheConfig):
        update = chunk_any_fraction(due | warm | forced | never, frames, chunk_frames) > 0
    else:
        update = due
        token_phase = ~phase1
        if cfg.temporal_voting:
            # logical form of where(token_phase, vote, update): ONNX Runtime has no boolean Where
            vote = _vote(update, frames, chunk_frames, cfg.vote_threshold)
            update = (token_phase & vote) | (~token_phase & update)
        if cfg.min_update_ratio > 0:
            frac = chunk_any_fraction(update, frames, chunk_frames)
            too_few = (frac > 0) & (frac < cfg.min_update_ratio) & token_phase
            update = update & ~too_few
        update = update | warm | forced | never
    acc = torch.where(update, torch.zeros_like(acc), acc)
    return update, acc, computes + update.to(computes.dtype)


def _vote(mask: torch.Tensor, frames: int, chunk_frames: int, threshold: float) -> torch.Tensor:
    """Per chunk and spatial position: all frames of the chunk if more than `threshold` of them are selected."""
    b, n = mask.shape
    s = n // frames
    per = mask.view(b, frames, s).float()
    chunk_id, counts = _chunk_layout(frames, chunk_frames, mask.device, torch.float32)
    sums = torch.zeros(b, counts.shape[0], s, device=mask.device).index_add(1, chunk_id, per)
    counts = counts[None, :, None]
    vote = (sums / counts) > threshold  # [B, chunks, S]
    return vote[:, chunk_id].reshape(b, n)
