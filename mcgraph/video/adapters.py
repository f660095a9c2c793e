"""Call adapters: make third-party video DiTs look like the sampler's ``model(latent, timesteps, cond)``.

Nothing here patches the wrapped model: the adapter only translates the call, the way the model's own
pipeline calls it. diffusers is imported lazily (only when you build a tiny test model).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["SkyReelsV2Adapter", "build_tiny_skyreels_v2", "tiny_skyreels_v2_config"]


class SkyReelsV2Adapter:
    """Drive an unmodified diffusers ``SkyReelsV2Transformer3DModel`` with per-frame timesteps.

    diffusers' ``SkyReelsV2DiffusionForcingPipeline`` calls the transformer with ``timestep`` of shape
    [B, latent frames] and ``enable_diffusion_forcing=True``; the model then expands one adaLN modulation
    per frame to that frame's tokens, and applies block-causal attention over chunks of
    ``config.num_frame_per_block`` frames (the pipeline sets it from ``causal_block_size``). This adapter
    makes exactly that call.

    `conditioning` is the text embedding [B, L, text_dim] (``encoder_hidden_states``), or a dict of keyword
    arguments for the transformer (``encoder_hidden_states`` plus e.g. ``encoder_hidden_states_image``).
    `fps` is used only by models built with ``inject_sample_info`` (the pipeline maps 16 fps to id 0, any
    other rate to id 1). The cache protocol of `mcgraph.video.sampler` is forwarded to diffusers' own cache
    hooks (``cache_context``; ``reset_cache`` resets diffusers' stateful hooks).
    """

    def __init__(self, transformer: torch.nn.Module, *, fps: int = 16, attention_kwargs: dict | None = None):
        cfg = transformer.config
        if tuple(cfg.patch_size)[0] != 1:
            raise ValueError(
                f"SkyReelsV2Adapter: temporal patch size {cfg.patch_size[0]} is not supported "
                "(diffusion forcing gives one timestep per latent frame, which needs patch_size[0] == 1)"
            )
        self.transformer = transformer
        self.fps = fps
        self.attention_kwargs = attention_kwargs

    @property
    def causal_block_size(self) -> int:
        return int(self.transformer.config.num_frame_per_block)

    def __call__(self, latent: torch.Tensor, timesteps: torch.Tensor, conditioning: Any) -> torch.Tensor:
        if latent.dim() != 5:
            raise ValueError(f"SkyReelsV2Adapter: latent must be [B, C, F, H, W], got {tuple(latent.shape)}")
        b, _, f, h, w = latent.shape
        if tuple(timesteps.shape) != (b, f):
            raise ValueError(
                f"SkyReelsV2Adapter: timesteps must be [batch, frames] = [{b}, {f}], got {tuple(timesteps.shape)}"
            )
        cbs = self.causal_block_size
        if cbs > 1 and f % cbs:
            # diffusers builds its block-causal mask for whole blocks only
            raise ValueError(
                f"SkyReelsV2Adapter: {f} frames is not a multiple of the model's num_frame_per_block={cbs}"
            )
        kwargs = dict(conditioning) if isinstance(conditioning, dict) else {"encoder_hidden_states": conditioning}
        param = next(self.transformer.parameters())
        kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"].to(device=param.device, dtype=param.dtype)
        fps = None
        if self.transformer.config.inject_sample_info:
            fps = [0 if self.fps == 16 else 1] * b
        out = self.transformer(
            hidden_states=latent.to(device=param.device, dtype=param.dtype),
            timestep=timesteps.to(param.device),
            enable_diffusion_forcing=True,
            fps=fps,
            attention_kwargs=self.attention_kwargs,
            return_dict=False,
            **kwargs,
        )[0]
        return out.to(device=latent.device, dtype=latent.dtype)

    def cache_context(self, name: str):
        ctx = getattr(self.transformer, "cache_context", None)
        return ctx(name) if callable(ctx) else contextlib.nullcontext()

    def reset_cache(self) -> None:
        # an mcgraph-optimised transformer has its own reset; a plain diffusers one resets its hooks
        reset = getattr(self.transformer, "reset_cache", None) or getattr(self.transformer, "_reset_stateful_cache", None)
        if callable(reset):
            reset()


def tiny_skyreels_v2_config(**overrides) -> dict:
    """A tiny SkyReels-V2 DF transformer config for offline tests (random weights, ~20k parameters)."""
    cfg = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=64,
        inject_sample_info=False,
        num_frame_per_block=2,
    )
    cfg.update(overrides)
    return cfg


def build_tiny_skyreels_v2(seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised (``torch.manual_seed(seed)``) tiny ``SkyReelsV2Transformer3DModel``."""
    from diffusers import SkyReelsV2Transformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SkyReelsV2Transformer3DModel(**tiny_skyreels_v2_config(**overrides))
    return model.eval()
