"""Per-token motion weights from inter-frame differences (spec 3.3 step 9 / 3.4), normalised per frame into
[floor, 1]: the fastest-changing token of each frame accumulates distance at the full rate, static ones
down to `floor` of it (so MotionCache never recomputes more than chunk-wise caching at the same threshold).
"""

from __future__ import annotations

import torch


def frame_differences(tokens: torch.Tensor, frames: int, relative: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """tokens [B, L, C] laid out frame-major -> d [B, L]: per token, the change from the same position in the
    previous frame (mean over channels; relative to the previous frame's magnitude when `relative`).
    Frame 0 has no previous frame in the window and takes frame 1's differences."""
    b, n, c = tokens.shape
    x = tokens.view(b, frames, n // frames, c)
    if frames < 2:
        return torch.ones(b, n, dtype=tokens.dtype, device=tokens.device)
    diff = (x[:, 1:] - x[:, :-1]).abs().mean(-1)
    if relative:
        diff = diff / (x[:, :-1].abs().mean(-1) + eps)
    d = torch.cat([diff[:, :1], diff], dim=1)
    return d.reshape(b, n)


def normalise_per_frame(d: torch.Tensor, frames: int, floor: float, eps: float = 1e-8) -> torch.Tensor:
    """Min-max per frame into [floor, 1]; a frame with no spread gets weight 1 (conservative: full rate)."""
    b, n = d.shape
    x = d.view(b, frames, n // frames)
    lo = x.amin(-1, keepdim=True)
    hi = x.amax(-1, keepdim=True)
    spread = hi - lo
    w = floor + (1 - floor) * (x - lo) / (spread + eps)
    w = torch.where(spread > eps, w, torch.ones_like(w))
    return w.reshape(b, n)


def latent_tokens(latent: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, L, C*pt*ph*pw] in the token order of the patch embedding (frame-major)."""
    b, c, f, h, w = latent.shape
    pt, ph, pw = patch
    x = latent.view(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (f // pt) * (h // ph) * (w // pw), c * pt * ph * pw)
