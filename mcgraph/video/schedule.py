"""Diffusion-forcing timestep matrix (the SkyReels-V2 DF schedule), in integer step indices.

A window of frames is split into chunks ("causal blocks", "groups") of `causal_block_size` frames; the
last chunk is shorter when the frame count is not a multiple. Each row of the matrix is one denoising
call (or one cond + uncond pair under CFG) and gives every chunk an integer *progress index*:

- ``0``      the chunk has not started (its latent is pure noise, sigma = 1, t = 1000);
- ``k``      the chunk has received k Euler updates, so its latent is at noise level ``sigmas[k]``;
- ``steps``  the chunk is done (clean, sigma = 0, t = 0).

Chunk 0 advances by one per row. Chunk i sits `ar_step` rows behind chunk i-1 (index[i] = index[i-1] -
ar_step, clamped at 0) until chunk i-1 is done, then advances by one per row on its own; ``ar_step = 0``
keeps all chunks in sync. Prefix chunks (clean overlap history from the previous window) start done and
never change. A row updates a chunk iff its index changed in that row; every non-prefix chunk therefore
gets exactly `steps` updates, and a window of n non-prefix chunks takes
``(n - 1) * min(ar_step, steps) + steps`` rows (5 chunks, ar_step 5, 50 steps: 70 rows; with one prefix
chunk: 65).

This is the recurrence of SkyReels-V2's ``generate_timestep_matrix`` with one change of convention: its
extra "done and idle" index ``steps + 1`` is folded into ``steps`` here, so index k always means "at
noise level sigmas[k]" and the latent entering row r is at ``sigmas[input_index[r]]``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch

__all__ = ["DiffusionForcingSchedule", "diffusion_forcing_schedule", "num_rows"]


def _as_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def num_rows(num_chunks: int, ar_step: int, steps: int) -> int:
    """Rows needed to finish `num_chunks` chunks that all start at index 0."""
    if num_chunks <= 0:
        return 0
    return (num_chunks - 1) * min(ar_step, steps) + steps


@dataclass(frozen=True, eq=False)
class DiffusionForcingSchedule:
    """The per-row chunk progress of one window. Tensors are CPU int64 / bool."""

    num_frames: int
    causal_block_size: int
    ar_step: int
    steps: int
    num_prefix_frames: int
    step_index: torch.Tensor  # [rows, chunks] int64: progress index after the row
    update_mask: torch.Tensor  # [rows, chunks] bool: chunk takes one Euler step in this row
    chunk_of_frame: torch.Tensor = field(repr=False)  # [frames] int64

    @property
    def num_rows(self) -> int:
        return int(self.step_index.shape[0])

    @property
    def num_chunks(self) -> int:
        return int(self.step_index.shape[1])

    @property
    def num_prefix_chunks(self) -> int:
        return self.num_prefix_frames // self.causal_block_size

    @property
    def chunk_sizes(self) -> tuple[int, ...]:
        return tuple(int(n) for n in torch.bincount(self.chunk_of_frame, minlength=self.num_chunks))

    @property
    def initial_index(self) -> torch.Tensor:
        """[chunks]: progress before the first row (``steps`` for prefix chunks, else 0)."""
        idx = torch.zeros(self.num_chunks, dtype=torch.long)
        idx[: self.num_prefix_chunks] = self.steps
        return idx

    @property
    def input_index(self) -> torch.Tensor:
        """[rows, chunks]: progress *entering* each row, i.e. the noise level the model sees."""
        return torch.cat([self.initial_index[None], self.step_index[:-1]], dim=0)

    def to_frames(self, per_chunk: torch.Tensor) -> torch.Tensor:
        """Expand a tensor whose last axis is chunks to frames ([..., chunks] -> [..., frames])."""
        if per_chunk.shape[-1] != self.num_chunks:
            raise ValueError(f"last axis must have {self.num_chunks} chunks, got shape {tuple(per_chunk.shape)}")
        return per_chunk.index_select(-1, self.chunk_of_frame.to(per_chunk.device))

    def frame_step_index(self) -> torch.Tensor:
        return self.to_frames(self.step_index)

    def frame_input_index(self) -> torch.Tensor:
        return self.to_frames(self.input_index)

    def frame_update_mask(self) -> torch.Tensor:
        return self.to_frames(self.update_mask)

    def frame_timesteps(self, sigmas: torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
        """[rows, frames] model timesteps ``1000 * sigmas[input index]`` (prefix frames at t = 0).

        `sigmas` has ``steps + 1`` levels from 1 (noise) to 0 (clean), e.g. `flow_matching.sigma_schedule`.
        """
        if sigmas.shape != (self.steps + 1,):
            raise ValueError(f"sigmas must have shape ({self.steps + 1},), got {tuple(sigmas.shape)}")
        return num_train_timesteps * sigmas[self.frame_input_index()]


def diffusion_forcing_schedule(
    num_frames: int,
    causal_block_size: int = 1,
    ar_step: int = 0,
    steps: int = 50,
    num_prefix_frames: int = 0,
) -> DiffusionForcingSchedule:
    """Build the diffusion-forcing schedule of one window (see the module docstring).

    `num_prefix_frames` clean history frames sit at the start of the window; they must be whole chunks and
    leave at least one frame to generate.
    """
    num_frames = _as_int(num_frames, "num_frames", 1)
    cbs = _as_int(causal_block_size, "causal_block_size", 1)
    ar_step = _as_int(ar_step, "ar_step", 0)
    steps = _as_int(steps, "steps", 1)
    num_prefix_frames = _as_int(num_prefix_frames, "num_prefix_frames", 0)
    if num_prefix_frames % cbs:
        raise ValueError(
            f"num_prefix_frames={num_prefix_frames} must be a multiple of causal_block_size={cbs} (whole chunks)"
        )
    if num_prefix_frames >= num_frames:
        raise ValueError(
            f"num_prefix_frames={num_prefix_frames} must be smaller than num_frames={num_frames} "
            "(at least one frame has to be generated)"
        )

    chunk_of_frame = torch.arange(num_frames) // cbs
    n_chunks = int(chunk_of_frame[-1]) + 1
    n_prefix = num_prefix_frames // cbs
    prev = [steps] * n_prefix + [0] * (n_chunks - n_prefix)

    rows: list[list[int]] = []
    while min(prev) < steps:
        new = []
        for i in range(n_chunks):
            if i == 0 or prev[i - 1] >= steps:
                new.append(prev[i] + 1)  # first chunk, or the one before is done: advance on its own
            else:
                new.append(new[i - 1] - ar_step)  # lag the chunk before by ar_step rows
        prev = [min(max(v, 0), steps) for v in new]
        rows.append(prev)

    step_index = torch.tensor(rows, dtype=torch.long).reshape(len(rows), n_chunks)
    before = torch.cat([torch.tensor([[steps] * n_prefix + [0] * (n_chunks - n_prefix)]), step_index[:-1]])
    return DiffusionForcingSchedule(
        num_frames=num_frames,
        causal_block_size=cbs,
        ar_step=ar_step,
        steps=steps,
        num_prefix_frames=num_prefix_frames,
        step_index=step_index,
        update_mask=step_index != before,
        chunk_of_frame=chunk_of_frame,
    )
