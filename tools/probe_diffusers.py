"""Probe what mcgraph does with diffusers' video transformers it has never seen: one tiny random config of each
real model class (built offline with `from_config`, seeded, eval mode, 2 layers or so, ~64-256 video tokens),
measured like `tests/test_construct_table.py::measure` measures the from-scratch construct zoo:

- capture with `mcgraph.NoCache()`: dynamic shapes, mcgraph's static fallback, refused (a `McGraphError`) or
  crashed (any other exception);
- identity vs eager over a `--calls`-step denoising trajectory (latent drifting, timesteps falling), `torch.equal`
  on every output tensor of every call;
- `opt.with_config(MotionCacheConfig(threshold=0.0))` on the same capture: its max error vs eager over the same
  trajectory (<= 1e-5 is exact), or refused / crashed;
- every error is kept per stage (build, eager, capture, identity, optimize, call) with the first line of its
  message. A model whose tiny config cannot be built or called eagerly gets a row saying so.

    python tools/probe_diffusers.py                              # every model, markdown table on stdout
    python tools/probe_diffusers.py --models wan-t2v mochi --calls 4
    python tools/probe_diffusers.py --out docs/bench/diffusers_probe.md --json docs/bench/diffusers_probe.json

Progress goes to stderr, one line per model. Exit code 0 when the probe ran (refusals and crashes included), 2 on
bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils import _pytree as pytree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mcgraph
from mcgraph.config import MotionCacheConfig
from mcgraph.errors import McGraphError

TOL = 1e-5  # MotionCache at threshold 0 is exact when its max error vs eager is at most this
STAGES = ("build", "eager", "capture", "identity", "optimize", "call")
# a refusal "names the construct" when it quotes a graph node or module of the model, or says one of these (the
# words tests/test_construct_table.py accepts)
CONSTRUCT_WORDS = ("attention", "patch embedding", "block", "token", "modulation", "mask", "residual stream",
                   "data-dependent")

# shared tiny sizes: batch 1, 4 latent channels, 4 latent frames of 8 x 10 (patch 1x2x2: 80 video tokens),
# 7 text tokens of width 16 (5 of them valid where the model takes a text mask), 2 heads
B, C, F, H, W, L, TXT = 1, 4, 4, 8, 10, 7, 16
VALID = 5

Probe = tuple[torch.nn.Module, dict, Callable[[int], dict]]


@dataclass(frozen=True)
class Info:
    cls: str  # the diffusers class
    tokens: int  # video tokens after patchify (what MotionCache would cache)
    note: str = ""  # which use of the class (t2v, i2v, diffusion forcing, ...)


MODELS: dict[str, Callable[[], Probe]] = {}
INFO: dict[str, Info] = {}


def probe(name: str, cls: str, tokens: int, note: str = ""):
    """Register a builder: `MODELS[name]()` returns (model, example kwargs, make_call(step))."""

    def register(fn):
        MODELS[name], INFO[name] = fn, Info(cls, tokens, note)
        return fn

    return register


# --------------------------------------------------------------------------------------------------- helpers
def _randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _build(cls_name: str, **config) -> torch.nn.Module:
    import diffusers

    torch.manual_seed(0)
    return getattr(diffusers, cls_name).from_config(config).eval()


def _text_mask(dtype=torch.float32, length: int = L, valid: int = VALID) -> torch.Tensor:
    return (torch.arange(length) < valid).expand(B, -1).to(dtype).clone()


def _fall(t: torch.Tensor, step: int) -> torch.Tensor:
    """Timesteps of denoising step `step`: 150 lower, at least 1; a 0 (a clean conditioning frame) stays 0."""
    return torch.where(t > 0, (t - 150.0 * step).clamp(min=1.0), t)


def _trajectory(model: torch.nn.Module, kwargs: dict, latents=("hidden_states",), timesteps=("timestep",),
                noisy: tuple[int, slice] | None = None, fall: Callable = _fall) -> Probe:
    """(model, kwargs, make_call): step `step` drifts each latent (a tensor or a list of tensors) by
    0.05 * step * fixed noise (only the channels `noisy` = (dim, slice) of the first latent: the rest is
    conditioning concatenated to it) and moves each timestep with `fall(t, step)`."""
    seeds = iter(range(7, 1000))

    def noise_like(t: torch.Tensor, first: bool) -> torch.Tensor:
        n = _randn(*t.shape, seed=next(seeds))
        if first and noisy is not None:
            dim, keep = noisy
            mask = torch.zeros(t.shape[dim])
            mask[keep] = 1.0
            n = n * mask.view([-1 if d == dim % t.dim() else 1 for d in range(t.dim())])
        return n

    noise = {k: pytree.tree_map_only(torch.Tensor, lambda t, i=i: noise_like(t, i == 0), kwargs[k])
             for i, k in enumerate(latents)}

    def make_call(step: int) -> dict:
        out = dict(kwargs)
        for k in latents:
            out[k] = pytree.tree_map(lambda x, n: x + 0.05 * step * n, kwargs[k], noise[k])
        for k in timesteps:
            out[k] = fall(kwargs[k], step)
        return out

    return model, kwargs, make_call


def _t(*shape) -> torch.Tensor:
    return torch.full(shape or (B,), 900.0)


# ------------------------------------------------------------------------------------------------ Wan family
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=C, out_channels=C,
           text_dim=TXT, freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=32)
TOK = F * (H // 2) * (W // 2)  # 80


def _wan_kwargs(channels=C, **extra) -> dict:
    return dict(hidden_states=_randn(B, channels, F, H, W), timestep=_t(),
                encoder_hidden_states=_randn(B, L, TXT, seed=1), return_dict=False, **extra)


@probe("wan-t2v", "WanTransformer3DModel", TOK, "Wan 2.1 t2v")
def wan_t2v() -> Probe:
    return _trajectory(_build("WanTransformer3DModel", **WAN), _wan_kwargs())


@probe("wan-i2v", "WanTransformer3DModel", TOK, "Wan 2.1 i2v: image latents + mask concatenated, CLIP image tokens")
def wan_i2v() -> Probe:
    cfg = {**WAN, "in_channels": 2 * C + 4, "image_dim": 16, "added_kv_proj_dim": 24}
    kwargs = _wan_kwargs(2 * C + 4, encoder_hidden_states_image=_randn(B, 5, 16, seed=2))
    return _trajectory(_build("WanTransformer3DModel", **cfg), kwargs, noisy=(1, slice(0, C)))


@probe("wan-ti2v", "WanTransformer3DModel", TOK, "Wan 2.2 ti2v: one timestep per token, first frame clean (0)")
def wan_ti2v() -> Probe:
    t = torch.full((B, F, H // 2, W // 2), 900.0)
    t[:, 0] = 0.0
    kwargs = {**_wan_kwargs(), "timestep": t.flatten(1)}
    return _trajectory(_build("WanTransformer3DModel", **WAN), kwargs)


@probe("skyreels-v2-t2v", "SkyReelsV2Transformer3DModel", TOK, "one timestep per sample")
def skyreels_t2v() -> Probe:
    return _trajectory(_build("SkyReelsV2Transformer3DModel", **WAN), _wan_kwargs())


@probe("skyreels-v2-df", "SkyReelsV2Transformer3DModel", TOK,
       "diffusion forcing: per-frame timesteps, 2-frame causal blocks")
def skyreels_df() -> Probe:
    cfg = {**WAN, "num_frame_per_block": 2}
    kwargs = {**_wan_kwargs(enable_diffusion_forcing=True), "timestep": torch.tensor([[300.0, 300.0, 900.0, 900.0]])}
    return _trajectory(_build("SkyReelsV2Transformer3DModel", **cfg), kwargs)


@probe("wan-vace", "WanVACETransformer3DModel", TOK, "VACE control hints into blocks 0 and 2 of 4")
def wan_vace() -> Probe:
    cfg = {**WAN, "num_layers": 4, "vace_layers": [0, 2], "vace_in_channels": 3 * C}
    kwargs = _wan_kwargs(control_hidden_states=_randn(B, 3 * C, F, H, W, seed=3))
    return _trajectory(_build("WanVACETransformer3DModel", **cfg), kwargs)


@probe("chronoedit", "ChronoEditTransformer3DModel", TOK, "i2v-style Wan with temporal-reasoning RoPE skip")
def chronoedit() -> Probe:
    cfg = {**WAN, "in_channels": 2 * C + 4, "image_dim": 16, "added_kv_proj_dim": 24, "rope_temporal_skip_len": 8}
    kwargs = _wan_kwargs(2 * C + 4, encoder_hidden_states_image=_randn(B, 5, 16, seed=2))
    return _trajectory(_build("ChronoEditTransformer3DModel", **cfg), kwargs, noisy=(1, slice(0, C)))


@probe("wan-animate", "WanAnimateTransformer3DModel", F * 4 * 4,
       "pose latents + face motion encoder (face frames 4 * (F - 1) - 3)")
def wan_animate() -> Probe:
    cfg = {**WAN, "in_channels": 2 * C + 4, "latent_channels": C, "image_dim": 16,
           "motion_encoder_channel_sizes": {"4": 16, "8": 16, "16": 16}, "motion_encoder_size": 16,
           "motion_style_dim": 8, "motion_dim": 4, "motion_encoder_dim": 16, "face_encoder_hidden_dim": 16,
           "face_encoder_num_heads": 2, "inject_face_latents_blocks": 2}
    kwargs = dict(hidden_states=_randn(B, 2 * C + 4, F, H, H), timestep=_t(),
                  encoder_hidden_states=_randn(B, L, TXT, seed=1), encoder_hidden_states_image=_randn(B, 5, 16, seed=2),
                  pose_hidden_states=_randn(B, C, F - 1, H, H, seed=3),
                  face_pixel_values=_randn(B, 3, 4 * (F - 1) - 3, 16, 16, seed=4), return_dict=False)
    return _trajectory(_build("WanAnimateTransformer3DModel", **cfg), kwargs, noisy=(1, slice(0, C)))


@probe("anyflow", "AnyFlowTransformer3DModel", TOK, "flow map: per-frame timestep and target timestep r")
def anyflow() -> Probe:
    cfg = dict(WAN)
    kwargs = dict(hidden_states=_randn(B, F, C, H, W), timestep=_t(B, F), r_timestep=_t(B, F) - 150.0,
                  encoder_hidden_states=_randn(B, L, TXT, seed=1), return_dict=False)
    return _trajectory(_build("AnyFlowTransformer3DModel", **cfg), kwargs, timesteps=("timestep", "r_timestep"))


@probe("helios", "HeliosTransformer3DModel", 2 * 8 * 8, "2 new frames + short/mid/long history latents")
def helios() -> Probe:
    cfg = {**WAN, "rope_dim": (4, 4, 4)}
    del cfg["rope_max_seq_len"]
    f, hw, (long, mid, short) = 2, 16, (4, 2, 1)
    idx = torch.arange(long + mid + short + f)[None]
    ilong, imid, ishort, ihid = idx.split([long, mid, short, f], dim=1)
    kwargs = dict(hidden_states=_randn(B, C, f, hw, hw), timestep=_t(), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  indices_hidden_states=ihid, indices_latents_history_short=ishort,
                  indices_latents_history_mid=imid, indices_latents_history_long=ilong,
                  latents_history_short=_randn(B, C, short, hw, hw, seed=2),
                  latents_history_mid=_randn(B, C, mid, hw, hw, seed=3),
                  latents_history_long=_randn(B, C, long, hw, hw, seed=4), return_dict=False)
    return _trajectory(_build("HeliosTransformer3DModel", **cfg), kwargs)


# --------------------------------------------------------------------------------------------- CogVideoX family
COG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=C, out_channels=C, time_embed_dim=8,
           text_embed_dim=TXT, num_layers=2, sample_width=W, sample_height=H, sample_frames=(F - 1) * 4 + 1,
           patch_size=2, temporal_compression_ratio=4, max_text_seq_length=L)


def _cog_rotary(cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """What the CogVideoX pipeline passes as `image_rotary_emb` (`_prepare_rotary_positional_embeddings`)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p, pt = cfg["patch_size"], cfg.get("patch_size_t")
    gh, gw = H // p, W // p
    if pt is None:
        # the latent is the config's sample size, so the pipeline's get_resize_crop_region_for_grid (in a module
        # that imports transformers, not installed here) gives the whole grid
        assert (cfg["sample_height"] // p, cfg["sample_width"] // p) == (gh, gw)
        return get_3d_rotary_pos_embed(cfg["attention_head_dim"], ((0, 0), (gh, gw)), (gh, gw), F)
    return get_3d_rotary_pos_embed(cfg["attention_head_dim"], None, (gh, gw), (F + pt - 1) // pt, grid_type="slice",
                                   max_size=(cfg["sample_height"] // p, cfg["sample_width"] // p))


def _cog(cls_name: str, cfg: dict, channels: int = C, rotary: bool = False, **extra) -> Probe:
    kwargs = dict(hidden_states=_randn(B, F, channels, H, W), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  timestep=_t(), return_dict=False, **extra)
    if rotary:
        kwargs["image_rotary_emb"] = _cog_rotary(cfg)
    return _trajectory(_build(cls_name, **cfg), kwargs, noisy=(2, slice(0, C)) if channels != C else None)


@probe("cogvideox-2b", "CogVideoXTransformer3DModel", TOK, "CogVideoX 2B: sincos positions, no RoPE")
def cogvideox_2b() -> Probe:
    return _cog("CogVideoXTransformer3DModel", COG)


@probe("cogvideox-5b", "CogVideoXTransformer3DModel", TOK, "CogVideoX 5B: 3D RoPE from the pipeline")
def cogvideox_5b() -> Probe:
    return _cog("CogVideoXTransformer3DModel", {**COG, "use_rotary_positional_embeddings": True}, rotary=True)


@probe("cogvideox-5b-i2v", "CogVideoXTransformer3DModel", TOK,
       "CogVideoX 5B I2V: learned positions + RoPE, image latents concatenated")
def cogvideox_i2v() -> Probe:
    cfg = {**COG, "in_channels": 2 * C, "use_rotary_positional_embeddings": True,
           "use_learned_positional_embeddings": True}
    return _cog("CogVideoXTransformer3DModel", cfg, channels=2 * C, rotary=True)


@probe("cogvideox-1.5", "CogVideoXTransformer3DModel", (F // 2) * (H // 2) * (W // 2),
       "CogVideoX 1.5: temporal patch 2, sliced RoPE")
def cogvideox_15() -> Probe:
    cfg = {**COG, "patch_size_t": 2, "use_rotary_positional_embeddings": True}
    return _cog("CogVideoXTransformer3DModel", cfg, rotary=True)


@probe("consisid", "ConsisIDTransformer3DModel", TOK, "CogVideoX-based identity-preserving i2v, face adapter on")
def consisid() -> Probe:
    cfg = {**COG, "in_channels": 2 * C, "use_rotary_positional_embeddings": True, "is_train_face": True,
           "is_kps": False, "cross_attn_interval": 1, "cross_attn_dim_head": 8, "cross_attn_num_heads": 2,
           "LFE_id_dim": 2, "LFE_vit_dim": 2, "LFE_depth": 5, "LFE_dim_head": 8, "LFE_num_heads": 2,
           "LFE_num_id_token": 1, "LFE_num_querie": 1, "LFE_ff_mult": 1, "LFE_num_scale": 1,
           "LFE_output_dim": 32 * 2 // 3}  # the perceiver's K/V width: 2/3 of the hidden width 32
    return _cog("ConsisIDTransformer3DModel", cfg, channels=2 * C, rotary=True,
                id_vit_hidden=[_randn(B, 2, 2, seed=5)], id_cond=_randn(B, 2, seed=6))


# --------------------------------------------------------------------------------------------- other families
@probe("easyanimate", "EasyAnimateTransformer3DModel", TOK, "EasyAnimate V5: MMDiT blocks, 3D RoPE")
def easyanimate() -> Probe:
    cfg = dict(attention_head_dim=16, num_attention_heads=2, in_channels=C, out_channels=C, mmdit_layers=2,
               num_layers=2, patch_size=2, sample_height=H, sample_width=W, text_embed_dim=TXT, time_embed_dim=8,
               time_position_encoding_type="3d_rope")
    kwargs = dict(hidden_states=_randn(B, C, F, H, W), timestep=_t(), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  return_dict=False)
    return _trajectory(_build("EasyAnimateTransformer3DModel", **cfg), kwargs)


HUNYUAN = dict(in_channels=C, out_channels=C, num_attention_heads=2, attention_head_dim=12, num_layers=1,
               num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=TXT,
               rope_axes_dim=(4, 4, 4))


@probe("motif-video", "MotifVideoTransformer3DModel", TOK, "dual-stream + single-stream blocks, i2v channels")
def motif_video() -> Probe:
    cfg = {**HUNYUAN, "in_channels": 2 * C + 1, "image_embed_dim": 8}
    del cfg["num_refiner_layers"]
    kwargs = dict(hidden_states=_randn(B, 2 * C + 1, F, H, W), timestep=_t(),
                  encoder_hidden_states=_randn(B, L, TXT, seed=1), encoder_attention_mask=_text_mask(),
                  image_embeds=_randn(B, 3, 8, seed=2), return_dict=False)
    return _trajectory(_build("MotifVideoTransformer3DModel", **cfg), kwargs, noisy=(1, slice(0, C)))


@probe("hunyuan-video", "HunyuanVideoTransformer3DModel", TOK, "dual-stream + single-stream, token refiner, guidance")
def hunyuan_video() -> Probe:
    cfg = {**HUNYUAN, "guidance_embeds": True, "pooled_projection_dim": 8}
    kwargs = dict(hidden_states=_randn(B, C, F, H, W), timestep=_t(), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  encoder_attention_mask=_text_mask(), pooled_projections=_randn(B, 8, seed=2),
                  guidance=torch.full((B,), 6000.0), return_dict=False)
    return _trajectory(_build("HunyuanVideoTransformer3DModel", **cfg), kwargs)


@probe("hunyuan-video-1.5", "HunyuanVideo15Transformer3DModel", F * 4 * 6, "t2v, patch 1, two text encoders")
def hunyuan_video_15() -> Probe:
    cfg = dict(in_channels=C, out_channels=C, num_attention_heads=2, attention_head_dim=12, num_layers=2,
               num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=TXT,
               text_embed_2_dim=8, image_embed_dim=8, rope_axes_dim=(4, 4, 4), target_size=16, task_type="t2v")
    kwargs = dict(hidden_states=_randn(B, C, F, 4, 6), timestep=_t(), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  encoder_attention_mask=_text_mask(), encoder_hidden_states_2=_randn(B, 4, 8, seed=2),
                  encoder_attention_mask_2=torch.ones(B, 4), image_embeds=torch.zeros(B, 3, 8), return_dict=False)
    return _trajectory(_build("HunyuanVideo15Transformer3DModel", **cfg), kwargs)


@probe("hunyuan-framepack", "HunyuanVideoFramepackTransformer3DModel", F * 4 * 4,
       "FramePack: clean + 2x / 4x history latents, image projection")
def hunyuan_framepack() -> Probe:
    cfg = {**HUNYUAN, "guidance_embeds": True, "pooled_projection_dim": 8, "has_image_proj": True,
           "image_proj_dim": 16, "has_clean_x_embedder": True}
    hw, clean, h2, h4 = 8, 2, 2, 8
    idx = torch.arange(clean + h2 + h4 + F)
    i4, i2, ic, ix = idx.split([h4, h2, clean, F])
    kwargs = dict(hidden_states=_randn(B, C, F, hw, hw), timestep=_t(), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  encoder_attention_mask=_text_mask(), pooled_projections=_randn(B, 8, seed=2),
                  image_embeds=_randn(B, 5, 16, seed=3), indices_latents=ix,
                  guidance=torch.full((B,), 10000.0),
                  latents_clean=_randn(B, C, clean, hw, hw, seed=4), indices_latents_clean=ic,
                  latents_history_2x=_randn(B, C, h2, hw, hw, seed=5), indices_latents_history_2x=i2,
                  latents_history_4x=_randn(B, C, h4, hw, hw, seed=6), indices_latents_history_4x=i4,
                  return_dict=False)
    return _trajectory(_build("HunyuanVideoFramepackTransformer3DModel", **cfg), kwargs)


@probe("mochi", "MochiTransformer3DModel", TOK, "asymmetric dual-stream, text mask")
def mochi() -> Probe:
    cfg = dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
               in_channels=C, qk_norm="rms_norm", text_embed_dim=TXT, time_embed_dim=4, activation_fn="swiglu",
               max_sequence_length=L)
    kwargs = dict(hidden_states=_randn(B, C, F, H, W), encoder_hidden_states=_randn(B, L, TXT, seed=1), timestep=_t(),
                  encoder_attention_mask=_text_mask(torch.bool), return_dict=False)
    return _trajectory(_build("MochiTransformer3DModel", **cfg), kwargs)


LTX_GRID = (F, 4, 5)  # latent frames, height, width: patch 1, tokens given as [B, N, C]


@probe("ltx-video", "LTXVideoTransformer3DModel", math.prod(LTX_GRID), "token-shaped latents [B, N, C], patch 1")
def ltx_video() -> Probe:
    cfg = dict(in_channels=C, out_channels=C, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
               num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=TXT)
    f, h, w = LTX_GRID
    kwargs = dict(hidden_states=_randn(B, f * h * w, C), encoder_hidden_states=_randn(B, L, TXT, seed=1), timestep=_t(),
                  encoder_attention_mask=_text_mask(), num_frames=f, height=h, width=w,
                  rope_interpolation_scale=(1 / 25 * 8, 32.0, 32.0), return_dict=False)
    return _trajectory(_build("LTXVideoTransformer3DModel", **cfg), kwargs)


@probe("ltx-2", "LTX2VideoTransformer3DModel", math.prod(LTX_GRID), "LTX-2: joint video + audio streams")
def ltx_2() -> Probe:
    cfg = dict(in_channels=C, out_channels=C, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
               cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
               audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
               caption_channels=TXT, rope_double_precision=False)
    f, h, w = LTX_GRID
    kwargs = dict(hidden_states=_randn(B, f * h * w, C), audio_hidden_states=_randn(B, 9, 4, seed=2),
                  encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  audio_encoder_hidden_states=_randn(B, L, TXT, seed=3),
                  timestep=_t(), encoder_attention_mask=_text_mask(), num_frames=f, height=h, width=w,
                  audio_num_frames=9, fps=25.0, return_dict=False)
    return _trajectory(_build("LTX2VideoTransformer3DModel", **cfg), kwargs,
                       latents=("hidden_states", "audio_hidden_states"))


@probe("allegro", "AllegroTransformer3DModel", TOK, "Allegro: 3D RoPE, PixArt-style adaLN-single")
def allegro() -> Probe:
    cfg = dict(num_attention_heads=2, attention_head_dim=8, in_channels=C, out_channels=C, num_layers=2,
               cross_attention_dim=16, sample_width=W, sample_height=H, sample_frames=F, caption_channels=8)
    kwargs = dict(hidden_states=_randn(B, C, F, H, W), encoder_hidden_states=_randn(B, L, 8, seed=1), timestep=_t(),
                  encoder_attention_mask=_text_mask(), return_dict=False)
    return _trajectory(_build("AllegroTransformer3DModel", **cfg), kwargs)


@probe("cosmos", "CosmosTransformer3DModel", TOK,
       "Cosmos text2world, learned extra positions; concat_padding_mask off (its resize needs torchvision)")
def cosmos() -> Probe:
    cfg = dict(in_channels=C, out_channels=C, num_attention_heads=2, attention_head_dim=12, num_layers=2, mlp_ratio=2,
               text_embed_dim=TXT, adaln_lora_dim=4, max_size=(F, 32, 32), patch_size=(1, 2, 2),
               rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type="learnable")
    kwargs = dict(hidden_states=_randn(B, C, F, H, W), timestep=_t(), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  attention_mask=torch.ones(B, L), fps=30, padding_mask=torch.zeros(B, 1, H, W), return_dict=False)
    return _trajectory(_build("CosmosTransformer3DModel", **cfg), kwargs)


@probe("latte", "LatteTransformer3DModel", F * 4 * 4, "Latte: alternating spatial / temporal blocks")
def latte() -> Probe:
    cfg = dict(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2,
               caption_channels=8, in_channels=C, cross_attention_dim=16, out_channels=2 * C, attention_bias=True,
               activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
               norm_elementwise_affine=False, norm_eps=1e-6, video_length=F)
    kwargs = dict(hidden_states=_randn(B, C, F, 8, 8), encoder_hidden_states=_randn(B, L, 8, seed=1), timestep=_t(),
                  enable_temporal_attentions=True, return_dict=False)
    return _trajectory(_build("LatteTransformer3DModel", **cfg), kwargs)


@probe("sana-video", "SanaVideoTransformer3DModel", TOK, "Sana-Video: linear attention, Mix-FFN")
def sana_video() -> Probe:
    cfg = dict(in_channels=C, out_channels=C, num_attention_heads=2, attention_head_dim=12, num_layers=2,
               num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=TXT,
               mlp_ratio=2.5, sample_size=8, patch_size=(1, 2, 2), norm_elementwise_affine=False, norm_eps=1e-6,
               qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    kwargs = dict(hidden_states=_randn(B, C, F, H, W), encoder_hidden_states=_randn(B, L, TXT, seed=1), timestep=_t(),
                  encoder_attention_mask=_text_mask(), return_dict=False)
    return _trajectory(_build("SanaVideoTransformer3DModel", **cfg), kwargs)


@probe("kandinsky-5", "Kandinsky5Transformer3DModel", TOK, "Kandinsky 5: channels-last latents, text blocks first")
def kandinsky5() -> Probe:
    cfg = dict(in_visual_dim=C, in_text_dim=TXT, in_text_dim2=8, time_dim=16, out_visual_dim=C, patch_size=(1, 2, 2),
               model_dim=24, ff_dim=48, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 4, 4),
               visual_cond=False, attention_type="regular")
    kwargs = dict(hidden_states=_randn(B, F, H, W, C), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  timestep=_t(), pooled_projections=_randn(B, 8, seed=2),
                  visual_rope_pos=[torch.arange(F), torch.arange(H // 2), torch.arange(W // 2)],
                  text_rope_pos=torch.arange(L), scale_factor=(1.0, 1.0, 1.0), return_dict=False)
    return _trajectory(_build("Kandinsky5Transformer3DModel", **cfg), kwargs)


@probe("kandinsky-6", "Kandinsky6Transformer3DModel", TOK,
       "Kandinsky 6: fused video + audio blocks, i2v channels (cond + mask), channels-last")
def kandinsky6() -> Probe:
    cfg = dict(in_visual_dim=C, out_visual_dim=C, in_text_dim=TXT, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
               model_dim=24, ff_dim=48, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 4, 4), visual_cond=True,
               in_audio_dim=4, out_audio_dim=4)
    kwargs = dict(hidden_states=_randn(B, F, H, W, 2 * C + 1), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  pooled_projections=_randn(B, 8, seed=2), timestep=_t(), audio_hidden_states=_randn(B, 9, 4, seed=3),
                  encoder_attention_mask=_text_mask(torch.bool), return_dict=False)
    return _trajectory(_build("Kandinsky6Transformer3DModel", **cfg), kwargs,
                       latents=("hidden_states", "audio_hidden_states"), noisy=(-1, slice(0, C)))


@probe("kandinsky-6-sr", "Kandinsky6SRTransformer3DModel", 2 * 8 * 16,
       "Kandinsky 6 video super-resolution: NABLA sparse attention over 8x8 tiles, no text")
def kandinsky6_sr() -> Probe:
    cfg = dict(in_visual_dim=C, out_visual_dim=C, time_dim=16, patch_size=(1, 1, 1), model_dim=24, ff_dim=48,
               num_visual_blocks=2, axes_dims=(4, 4, 4))  # input: noisy + low-resolution latent + mask channels
    kwargs = dict(hidden_states=_randn(B, 2, 8, 16, 2 * C + 1), timestep=_t(), return_dict=False)
    return _trajectory(_build("Kandinsky6SRTransformer3DModel", **cfg), kwargs, noisy=(-1, slice(0, C)))


@probe("minimax-h3", "MiniMaxH3Transformer3DModel", math.prod(LTX_GRID),
       "one packed text + audio + video sequence, token tags, (timestep, modality) AdaLN table")
def minimax_h3() -> Probe:
    cfg = dict(num_attention_heads=2, attention_head_dim=16, hidden_size=24, num_layers=2, num_refiner_layers=2,
               ffn_dim=32, in_channels=C, audio_in_channels=6, patch_size=(1, 2, 2), text_dim=8, freq_dim=8,
               time_embed_hidden_dim=24, time_embed_dim=16, rope_freq_dim=2)
    f, h, w = LTX_GRID
    nt, na, nv = 4, 6, f * h * w
    seq = nt + na + nv
    text, audio, video = torch.arange(nt), torch.arange(nt, nt + na), torch.arange(nt + na, seq)
    tags = torch.zeros(seq, dtype=torch.long)  # 0 video, 1 text, 2 audio
    tags[text], tags[audio] = 1, 2
    t_index = torch.zeros(seq, dtype=torch.long)
    t_index[audio] = 1
    pos = torch.zeros(seq, 3)
    pos[:, 0] = torch.arange(seq, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    pos[video] = grid.reshape(-1, 3).float() + torch.tensor([nt + na, 0.0, 0.0])
    kwargs = dict(hidden_states=_randn(B, nv, C * 4), audio_hidden_states=_randn(B, na, 6, seed=2),
                  encoder_hidden_states=_randn(B, nt, 8, seed=1), timestep=torch.tensor([0.9, 0.6]),
                  timestep_indices=t_index, token_tags=tags, position_ids=pos, video_indices=video,
                  audio_indices=audio, text_indices=text, return_dict=False)
    return _trajectory(_build("MiniMaxH3Transformer3DModel", **cfg), kwargs,
                       latents=("hidden_states", "audio_hidden_states"), fall=lambda t, s: t * (1 - 0.15 * s))


@probe("anyflow-far", "AnyFlowFARTransformer3DModel", F * 4 * 4,
       "frame-autoregressive AnyFlow: chunks [2, 2], block-causal flex-attention mask built inside")
def anyflow_far() -> Probe:
    cfg = {**WAN, "compressed_patch_size": (1, 4, 4), "full_chunk_limit": 3}
    del cfg["rope_max_seq_len"]
    kwargs = dict(hidden_states=_randn(B, F, C, 8, 8), timestep=_t(B, F), r_timestep=_t(B, F) - 150.0,
                  encoder_hidden_states=_randn(B, L, TXT, seed=1), chunk_partition=[2, 2], return_dict=False)
    return _trajectory(_build("AnyFlowFARTransformer3DModel", **cfg), kwargs, timesteps=("timestep", "r_timestep"))


@probe("wan-animate-2", "WanAnimate2Transformer3DModel", 3 * 4 * 4,
       "denoising call against a reference K/V cache filled by an 'extract' call; per-sample lists")
def wan_animate_2() -> Probe:
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    cfg = dict(patch_size=(1, 2, 2), text_len=16, in_dim=2 * C + 4, dim=24, ffn_dim=48, freq_dim=32, text_dim=TXT,
               out_dim=C, num_heads=2, num_layers=2, use_img_emb=True)
    model = _build("WanAnimate2Transformer3DModel", **cfg)
    ref, gen, hw = 2, 3, 8
    common = dict(encoder_hidden_states=[_randn(L, TXT, seed=1)],
                  encoder_hidden_states_image=_randn(1, 4, 1280, seed=2), return_dict=False)
    cache = WanAnimate2KVCache(2)
    grid = torch.tensor([[ref, hw // 2, hw // 2]])
    with torch.no_grad():  # the reference pass the pipeline runs once per segment
        model(hidden_states=[_randn(C, ref, hw, hw, seed=3)], timestep=torch.tensor([1.0]),
              condition_latents=[_randn(C + 4, ref, hw, hw, seed=4)], kv_cache=cache, kv_cache_mode="extract",
              seq_len=ref * (hw // 2) ** 2, offset_grid_sizes=grid, **common)
    kwargs = dict(hidden_states=[_randn(C, gen, hw, hw, seed=5)], timestep=_t(),
                  condition_latents=[_randn(C + 4, gen, hw, hw, seed=6)], kv_cache=cache, kv_cache_mode="cached",
                  seq_len=gen * (hw // 2) ** 2, reference_grid_sizes=grid, origin_len=5, origin_area=[8 * hw, 8 * hw],
                  **common)
    return _trajectory(model, kwargs)


@probe("cosmos3-omni", "Cosmos3OmniTransformer", 2 * 6 * 8,
       "Cosmos 3 omni: LLM-style packed text + vision sequence, 3D M-RoPE position ids, per-token timesteps")
def cosmos3_omni() -> Probe:
    cfg = dict(head_dim=6, hidden_act="relu2", hidden_size=12, intermediate_size=24, latent_channel=2,
               latent_patch_size=1, num_attention_heads=2, num_hidden_layers=2, num_key_value_heads=1,
               patch_latent_dim=2, qk_norm_for_text=False, rms_norm_eps=1e-5, rope_axes_dim=[1, 1, 1],
               rope_theta=1e8, vocab_size=32)
    f, h, w, nt = 2, 6, 8, 2
    nv = f * h * w
    seq = nt + nv
    vision = torch.arange(nt, seq)
    pos = torch.zeros(3, seq, dtype=torch.long)
    pos[:, :nt] = torch.arange(nt)
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), 0)
    pos[:, nt:] = grid.reshape(3, -1) + nt
    kwargs = dict(input_ids=torch.tensor([1, 2]), text_indexes=torch.arange(nt), position_ids=pos, und_len=nt,
                  sequence_length=seq, vision_tokens=[_randn(1, 2, f, h, w)], vision_token_shapes=[(f, h, w)],
                  vision_sequence_indexes=vision, vision_mse_loss_indexes=vision, vision_timesteps=_t(nv),
                  vision_noisy_frame_indexes=[torch.arange(f)], return_dict=False)
    return _trajectory(_build("Cosmos3OmniTransformer", **cfg), kwargs, latents=("vision_tokens",),
                       timesteps=("vision_timesteps",))


@probe("sana-wm", "SanaWMTransformer3DModel", F * 8 * 8,
       "SANA-WM world model: camera conditioning, GDN linear-attention + softmax blocks, per-frame timesteps")
def sana_wm() -> Probe:
    from diffusers.models.transformers.transformer_sana_wm import SanaWMTemporalShortConvolution

    cfg = dict(in_channels=C, num_layers=2, hidden_size=32, num_attention_heads=2, patch_size=(1, 1, 1),
               softmax_every_n=2, linear_head_dim=16, t_kernel_size=3, conv_kernel_size=4, caption_channels=8,
               mlp_ratio=2.0, chunk_plucker_channels=8, chunk_plucker_post_attn_blocks=2)
    model = _build("SanaWMTransformer3DModel", **cfg)
    for i, m in enumerate(x for x in model.modules() if isinstance(x, SanaWMTemporalShortConvolution)):
        m.weight.data = _randn(*m.weight.shape, seed=100 + i)  # zero-initialised: the GDN branch would be dead
    hw = 8
    c2w = torch.eye(4).repeat(B, F, 1, 1)
    c2w[..., 2, 3] = torch.arange(F, dtype=torch.float32) * 0.1
    intrinsics = torch.tensor([float(hw), float(hw), hw / 2, hw / 2]).expand(B, F, 4)
    kwargs = dict(hidden_states=_randn(B, C, F, hw, hw), timestep=_t(B, 1, F),
                  encoder_hidden_states=_randn(B, 1, L, 8, seed=1), encoder_attention_mask=_text_mask(torch.long),
                  camera_conditions=torch.cat([c2w.flatten(-2), intrinsics], -1),
                  chunk_plucker=_randn(B, 8, F, hw, hw, seed=2), return_dict=False)
    return _trajectory(model, kwargs)


@probe("sana-wm-refiner", "SanaWMLTX2RefinerTransformer3DModel", math.prod(LTX_GRID),
       "SANA-WM stage-2 refiner (LTX-2 based, video only): per-token timesteps, RoPE from the caller")
def sana_wm_refiner() -> Probe:
    cfg = dict(in_channels=C, out_channels=C, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
               cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
               audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
               caption_channels=TXT, rope_double_precision=False)
    model = _build("SanaWMLTX2RefinerTransformer3DModel", **cfg)
    f, h, w = LTX_GRID
    rope = model.build_rotary_emb_for_absolute_positions(batch_size=B, frame_positions=list(range(f)), height=h,
                                                         width=w, device=torch.device("cpu"), fps=24.0)
    kwargs = dict(hidden_states=_randn(B, f * h * w, C), encoder_hidden_states=_randn(B, L, TXT, seed=1),
                  timestep=_t(B, f * h * w), video_rotary_emb=rope, encoder_attention_mask=_text_mask(),
                  return_dict=False)
    return _trajectory(model, kwargs)


# classes in diffusers' transformers/ with "3D" / video in their name that no builder covers, and why
NOT_PROBED = {
    "TransformerTemporalModel": "a temporal-attention layer stack inside UNet video models (AnimateDiff, SVD), "
    "not a standalone denoiser",
    "JoyImageEditTransformer3DModel / JoyImageEditPlusTransformer3DModel": "image editing (3D only in its "
    "latent layout), not video generation",
}


# ------------------------------------------------------------------------------------------------ measuring
@dataclass
class Row:
    name: str
    cls: str
    tokens: int
    note: str = ""
    capture: str = "-"  # dynamic / static fallback / refused / crashed / - (not reached)
    capture_s: float | None = None
    identity_exact: bool | None = None
    identity_err: float | None = None
    motion_err: float | None = None
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)  # stage -> exception
    names_construct: bool | None = None  # a MotionCache refusal quotes a node / module or names a construct
    cached: bool | None = None  # MotionCache built a cache step (False: it runs the model uncached)
    structure: str = ""  # what MotionCache found: blocks and token grid
    dynamic_error: str = ""  # why the dynamic-shape capture failed, when the static fallback captured it

    def first_line(self, stage: str) -> str:
        exc = self.errors[stage]
        return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0]

    def kind(self, stage: str) -> str:
        return "refused" if isinstance(self.errors[stage], McGraphError) else "crashed"


def _leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _max_err(got, want) -> float:
    g, w = _leaves(got), _leaves(want)
    if len(g) != len(w):
        raise AssertionError(f"{len(g)} output tensors, eager returned {len(w)}")
    return max(((a.float() - b.float()).abs().max().item() for a, b in zip(g, w)), default=0.0)


def _equal(got, want) -> bool:
    g, w = _leaves(got), _leaves(want)
    return len(g) == len(w) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(g, w))


def _structure(mc) -> str:
    try:
        st = mc.structure
        grid = "x".join(map(str, st.grid.example)) if st.grid is not None else "?"
        return f"{len(st.blocks)} blocks, grid {grid}"
    except Exception:  # noqa: BLE001 - descriptive only
        return ""


def _names_something(exc: BaseException, model: torch.nn.Module | None, opt) -> bool:
    msg = str(exc)
    names = {m for m, _ in model.named_modules() if m} if model is not None else set()
    if opt is not None:
        names |= {n.name for n in opt.captured.graph.nodes}
    quoted = set(re.findall(r"'([^']+)'", msg))
    return bool(quoted & names) or any(w in msg.lower() for w in CONSTRUCT_WORDS)


def measure(name: str, calls: int = 4) -> Row:
    """Build, run eagerly over `calls` steps, capture with NoCache (identity vs eager, torch.equal), then MotionCache
    at threshold 0 on the same capture (`with_config`). A stage that raises is recorded; later stages that do not
    need its result still run."""
    info = INFO[name]
    row, start = Row(name, info.cls, info.tokens, info.note), time.perf_counter()
    model = opt = None

    def attempt(stage: str, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - recorded and shown: refused (McGraphError) or crashed
            row.errors[stage] = exc
            return None

    # export prints the graph of a failed capture to stderr: the row keeps the error instead
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        built = attempt("build", MODELS[name])
        if built is not None:
            model, kwargs, make_call = built
            inputs = [make_call(step) for step in range(calls)]
            want = attempt("eager", lambda: [model(**kw) for kw in inputs])
            if want is not None:
                opt = attempt("capture", lambda: mcgraph.optimize(model, mcgraph.NoCache(), (), kwargs))
                if opt is None:
                    row.capture = row.kind("capture")
                else:
                    row.capture = "dynamic" if opt.captured.dynamic else "static fallback"
                    row.dynamic_error = opt.captured.meta.get("dynamic_capture_error", "")
                    row.capture_s = opt.captured.capture_seconds
                    got = attempt("identity", lambda: [opt(**kw) for kw in inputs])
                    if got is not None:
                        row.identity_exact, row.identity_err = _equal(got, want), _max_err(got, want)
                    mc = attempt("optimize", lambda: opt.with_config(MotionCacheConfig(threshold=0.0)))
                    if mc is not None:
                        row.cached, row.structure = mc.step is not None, _structure(mc)
                    got = attempt("call", lambda: [mc(**kw) for kw in inputs]) if mc is not None else None
                    if got is not None:
                        row.motion_err = attempt("call", lambda: _max_err(got, want))
    for stage in ("optimize", "call"):
        if stage in row.errors and row.kind(stage) == "refused":
            row.names_construct = _names_something(row.errors[stage], model, opt)
            break
    row.seconds = time.perf_counter() - start
    return row


# --------------------------------------------------------------------------------------------------- output
HEADER = ("model", "class", "tokens", "capture", "capture s", "identity exact (max err)", "MotionCache thr 0",
          "refusal / error (first line)")


def _identity(row: Row) -> str:
    if "identity" in row.errors:
        return row.kind("identity")
    if row.identity_exact is None:
        return "-"
    return f"yes ({row.identity_err:.1e})" if row.identity_exact else f"NO ({row.identity_err:.1e})"


def _motion(row: Row) -> str:
    for stage in ("optimize", "call"):
        if stage in row.errors:
            return row.kind(stage) + (" in call" if stage == "call" else "")
    if row.motion_err is None:
        return "-"
    text = ("exact" if row.motion_err <= TOL else "INEXACT") + f" ({row.motion_err:.1e})"
    if not row.cached:
        return text + ", but uncached (no cache step)"
    return text + (f", {row.structure}" if row.structure else "")


def _capture(row: Row) -> str:
    if "build" in row.errors:
        return "not built"
    if "eager" in row.errors:
        return "eager call failed"
    return row.capture


def cells(row: Row, width: int = 220) -> list[str]:
    errors = "; ".join(f"{stage}: {row.first_line(stage)[:width]}" for stage in STAGES if stage in row.errors)
    if row.dynamic_error:  # repr of the exception: Type('message...')
        dynamic = row.dynamic_error.strip().split("\\n")[0].splitlines()[0]
        errors = "; ".join(x for x in (f"dynamic capture: {dynamic[:width]}", errors) if x)
    capture_s = "-" if row.capture_s is None else f"{row.capture_s:.1f}"
    return [row.name, row.cls, str(row.tokens), _capture(row), capture_s, _identity(row), _motion(row),
            errors.replace("|", "\\|").replace("\n", " ")]


def markdown(rows: list[Row], width: int = 220) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(cells(r, width)) + " |" for r in rows])


def summary(rows: list[Row]) -> str:
    n = len(rows)
    captured = sum(r.capture in ("dynamic", "static fallback") for r in rows)
    static = sum(r.capture == "static fallback" for r in rows)
    identity = sum(bool(r.identity_exact) for r in rows)
    exact = sum(r.motion_err is not None and r.motion_err <= TOL and bool(r.cached) and "call" not in r.errors
                for r in rows)
    refused = [r for r in rows if any(s in r.errors and r.kind(s) == "refused" for s in ("optimize", "call"))]
    naming = sum(bool(r.names_construct) for r in refused)
    crashed = [r.name for r in rows if any(r.kind(s) == "crashed" for s in r.errors if s not in ("build", "eager"))]
    unbuilt = [r.name for r in rows if "build" in r.errors or "eager" in r.errors]
    text = (f"{captured} of {n} capture ({static} by the static fallback), identity exact on {identity}, "
            f"MotionCache exact on {exact}, {len(refused)} refused ({naming} naming the construct)")
    text += f", {len(crashed)} crashed ({', '.join(crashed)})" if crashed else ", 0 crashed"
    text += f", {len(unbuilt)} not built or not callable eagerly ({', '.join(unbuilt)})" if unbuilt else ""
    return text + "."


def to_json(row: Row) -> dict:
    return {"model": row.name, "class": row.cls, "note": row.note, "tokens": row.tokens, "capture": _capture(row),
            "capture_s": row.capture_s, "identity_exact": row.identity_exact, "identity_max_err": row.identity_err,
            "motioncache": _motion(row), "motioncache_max_err": row.motion_err, "seconds": round(row.seconds, 2),
            "refusal_names_construct": row.names_construct, "cached": row.cached, "structure": row.structure,
            "dynamic_capture_error": row.dynamic_error or None,
            "errors": {s: {"kind": row.kind(s), "type": type(e).__name__, "first_line": row.first_line(s),
                           "message": str(e)[:4000]} for s, e in row.errors.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="NAME",
                        help=f"models to probe (default: all): {', '.join(MODELS)}")
    parser.add_argument("--calls", type=int, default=4, help="denoising steps per trajectory (default 4)")
    parser.add_argument("--out", type=Path, help="also write the markdown table (and summary) to this file")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--width", type=int, default=220, help="characters kept of each error's first line")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be >= 1")
    torch.set_num_threads(args.threads)
    start, rows = time.perf_counter(), []
    for i, name in enumerate(args.models, 1):
        print(f"[{i}/{len(args.models)}] {name} ({INFO[name].cls}) ...", file=sys.stderr, flush=True)
        row = measure(name, args.calls)
        rows.append(row)
        print(f"[{i}/{len(args.models)}] {name}: capture {_capture(row)}, identity {_identity(row)}, "
              f"MotionCache {_motion(row)}, {row.seconds:.1f} s", file=sys.stderr, flush=True)
    import diffusers

    total = time.perf_counter() - start
    env = (f"torch {torch.__version__}, diffusers {diffusers.__version__}, {args.calls} calls, "
           f"{args.threads} thread(s), {total:.0f} s")
    text = markdown(rows, args.width) + "\n\n" + summary(rows) + "\n"
    if NOT_PROBED:
        text += "\nNot probed: " + "; ".join(f"{k} ({v})" for k, v in NOT_PROBED.items()) + ".\n"
    text += f"\n{len(rows)} models, {env}\n"
    print(text, end="", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(_document(text, rows, args.calls))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "platform": platform.platform(), "tolerance": TOL,
                                         "summary": summary(rows), "not_probed": NOT_PROBED,
                                         "rows": [to_json(r) for r in rows]}, indent=1) + "\n")
    return 0


def _document(table: str, rows: list[Row], calls: int) -> str:
    return ("# mcgraph on diffusers' video transformers (tiny random configs)\n\n"
            "Written by `tools/probe_diffusers.py`. Each row: one diffusers video transformer class at a tiny random\n"
            f"config (seeded, eval, batch 1), a {calls}-step denoising trajectory (latent drifting, timesteps falling).\n"
            "capture: `mcgraph.optimize(model, NoCache())` by torch.export with dynamic shapes, or mcgraph's static\n"
            "fallback, or refused (`McGraphError`), or crashed (any other exception). identity: torch.equal vs eager\n"
            f"on every call. MotionCache thr 0: `with_config(MotionCacheConfig(threshold=0.0))`, max error vs eager\n"
            f"(exact <= {TOL:g}). tokens: video tokens after patchify.\n\n" + table
            + "\nWhat each row builds:\n\n" + "".join(f"- `{r.name}` ({r.cls}): {r.note}\n" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
