"""Numbers that show the reference model is trained: held-out denoising loss, and continuation of a real clip
(one real chunk given, the rest generated) judged by background error and the fraction of moving pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcgraph.video.flow_matching import NUM_TRAIN_TIMESTEPS, add_noise
from mcgraph.video.sampler import sample
from mcgraph.zoo.latent import latent_to_video, video_to_latent
from mcgraph.zoo.scenes import random_scene, render, sample_batch


def held_out_loss(model, encoder, batch: int = 8, seed: int = 12345, frames: int = 16) -> float:
    """Flow-matching MSE on unseen procedural videos at fixed noise levels (0.1..0.9, per chunk)."""
    rng = np.random.default_rng(seed)
    videos, labels, _ = sample_batch(rng, batch, frames=frames)
    x0 = video_to_latent(torch.from_numpy(videos))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    cbs = model.config.causal_block_size
    levels = torch.linspace(0.1, 0.9, batch)[:, None].expand(batch, frames).clone()
    levels += (torch.arange(frames) // cbs).float()[None] * 0.0  # same level within a sample: clean comparison
    with torch.no_grad():
        xt = add_noise(x0, noise, levels[:, None, :, None, None])
        v = model(xt, levels * NUM_TRAIN_TIMESTEPS, encoder(torch.from_numpy(labels)))
    return float(((v - (noise - x0)) ** 2).mean())


@dataclass
class ContinuationScore:
    background_error: float  # mean |generated - real| on pixels that are background in both, generated frames
    moving_fraction_real: float  # fraction of pixels changing between consecutive frames (> 0.1), real clip
    moving_fraction_generated: float
    generated: torch.Tensor  # [frames, 3, H, W]
    real: torch.Tensor


def continuation(model, encoder, seed: int, frames: int = 16, steps: int = 20, guidance: float = 4.0,
                 history_chunks: int = 1) -> ContinuationScore:
    scene = random_scene(np.random.default_rng(seed))
    video, masks = render(scene, frames=frames, seed=seed)
    real = torch.from_numpy(video)
    latent = video_to_latent(real[None])
    cbs = model.config.causal_block_size
    hist = latent[:, :, : history_chunks * cbs]
    with torch.no_grad():
        ctx = encoder(torch.from_numpy(scene.label())[None])
        neg = encoder(torch.zeros_like(torch.from_numpy(scene.label())[None]))
        out = sample(model, tuple(latent.shape), ctx, neg, seed=seed, steps=steps, shift=2.0, guidance_scale=guidance,
                     causal_block_size=cbs, ar_step=cbs, history=hist)
    gen = latent_to_video(out.latent)[0].clamp(-1, 1)
    start = history_chunks * cbs
    background = ~torch.from_numpy(masks)[:, None].expand_as(real)
    sel = background[start:]
    bg_err = float((gen[start:] - real[start:]).abs()[sel].mean())

    def moving(v):
        d = (v[1:] - v[:-1]).abs().amax(1) > 0.1
        return float(d[start - 1 :].float().mean())

    return ContinuationScore(bg_err, moving(real), moving(gen), gen, real)
