"""Whole generations (diffusion forcing with CFG, or a standard CFG loop) on the test subjects, used to compare
runtimes: eager cache, torch.compile, ONNX Runtime. Every call of one generation has the same input shapes
(windows of equal length), so one static ONNX export serves it."""

from __future__ import annotations

import contextlib

import torch

from mcgraph.video.flow_matching import sigma_schedule
from mcgraph.video.sampler import sample

DF = dict(steps=8, shift=2.0, guidance_scale=4.0, ar_step=2)
REF_SHAPE = (1, 12, 20, 16, 16)  # two windows of 12 frames (overlap 4)
REF_SAMPLER = dict(DF, causal_block_size=4, window_frames=12, overlap_frames=4)
SKY_SHAPE = (1, 4, 10, 8, 10)  # two windows of 6 frames (overlap 2)
SKY_SAMPLER = dict(DF, causal_block_size=2, window_frames=6, overlap_frames=2)


def reference_generation(model) -> torch.Tensor:
    ctx = torch.randn(1, 11, 64, generator=torch.Generator().manual_seed(1))
    return sample(model, REF_SHAPE, ctx, torch.zeros(1, 11, 64), seed=3, **REF_SAMPLER).latent


def reference_call_kwargs(model) -> dict:
    """Inputs of one model call of `reference_generation` (shapes are what an export needs)."""
    return dict(hidden_states=torch.randn(1, 12, 12, 16, 16), timesteps=torch.rand(1, 12) * 1000,
                context=torch.randn(1, 11, 64))


class SkyReelsCall:
    """The sampler's `model(latent, timesteps, cond)` for a SkyReels-V2 transformer or any runtime called like one
    (mcgraph.video.adapters.SkyReelsV2Adapter reads the model's parameters and config, which a runtime has not)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, latent, timesteps, cond):
        return self.model(hidden_states=latent, timestep=timesteps, encoder_hidden_states=cond,
                          enable_diffusion_forcing=True, return_dict=False)[0]

    def cache_context(self, name):
        return _own_context(self.model, name)

    def reset_cache(self):
        if not _is_diffusers(self.model) and callable(getattr(self.model, "reset_cache", None)):
            self.model.reset_cache()


def skyreels_generation(model) -> torch.Tensor:
    ctx = torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(2))
    return sample(SkyReelsCall(model), SKY_SHAPE, ctx, torch.zeros(1, 7, 16), seed=5, **SKY_SAMPLER).latent


def skyreels_call_kwargs() -> dict:
    return dict(hidden_states=torch.randn(1, 4, 6, 8, 10), timestep=torch.rand(1, 6) * 1000,
                encoder_hidden_states=torch.randn(1, 7, 16), enable_diffusion_forcing=True, return_dict=False)


def wan_generation(model, steps: int = 8, guidance: float = 4.0) -> torch.Tensor:
    """A standard flow-matching loop with CFG, as diffusers' Wan pipeline runs it."""
    from mcgraph.runtime import context as runtime_context

    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(3))
    neg = torch.zeros(1, 7, 16)
    x = torch.randn(1, 4, 3, 8, 10, generator=g)
    sig = sigma_schedule(steps, 3.0).float()
    if not _is_diffusers(model) and callable(getattr(model, "reset_cache", None)):
        model.reset_cache()
    runtime_context.reset_cache()
    for i in range(steps):
        t = torch.tensor([float(sig[i] * 1000)])
        with _ctx(model, "cond"):
            vc = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        with _ctx(model, "uncond"):
            vu = model(hidden_states=x, timestep=t, encoder_hidden_states=neg, return_dict=False)[0]
        x = x + (sig[i + 1] - sig[i]) * (vu + guidance * (vc - vu))
    return x


def wan_call_kwargs() -> dict:
    return dict(hidden_states=torch.randn(1, 4, 3, 8, 10), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 7, 16), return_dict=False)


def _is_diffusers(model) -> bool:
    # diffusers models have cache_context too (their hook registry): not ours to drive; compiled wrappers of
    # them (torch.compile) forward attribute access, so look at the class of what is called
    return type(model).__module__.startswith("diffusers") or type(getattr(model, "_orig_mod", None)).__module__.startswith("diffusers")


def _own_context(model, name):
    return model.cache_context(name) if hasattr(model, "cache_context") and not _is_diffusers(model) \
        else contextlib.nullcontext()


@contextlib.contextmanager
def _ctx(model, name):
    from mcgraph.runtime import context as runtime_context

    with _own_context(model, name), runtime_context.cache_context(name):
        yield
