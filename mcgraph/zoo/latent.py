"""The reference model's stand-in "VAE": a lossless 2x2 pixel-unshuffle, RGB video <-> 12-channel latent.

Real video DiTs work on a VAE latent; ours is exactly invertible so every quality number measured on
videos is the model's and the cache's, never an autoencoder's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FACTOR = 2


def video_to_latent(video: torch.Tensor) -> torch.Tensor:
    """[B, frames, 3, H, W] in [-1, 1] -> latent [B, 12, frames, H/2, W/2]."""
    b, f, c, h, w = video.shape
    if h % FACTOR or w % FACTOR:
        raise ValueError(f"video height/width must be multiples of {FACTOR}, got {h}x{w}")
    z = F.pixel_unshuffle(video.reshape(b * f, c, h, w), FACTOR)
    return z.reshape(b, f, c * FACTOR * FACTOR, h // FACTOR, w // FACTOR).transpose(1, 2).contiguous()


def latent_to_video(latent: torch.Tensor) -> torch.Tensor:
    """Inverse of `video_to_latent`: [B, 12, frames, h, w] -> [B, frames, 3, 2h, 2w]."""
    b, c, f, h, w = latent.shape
    z = latent.transpose(1, 2).reshape(b * f, c, h, w)
    v = F.pixel_shuffle(z, FACTOR)
    return v.reshape(b, f, c // (FACTOR * FACTOR), h * FACTOR, w * FACTOR)
