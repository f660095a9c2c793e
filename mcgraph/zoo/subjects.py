"""Models the compiler is tested and demonstrated on, all unmodified, all built offline with random weights
(except the bundled reference, which is trained): tiny diffusers Wan / SkyReels-V2 transformers in two
sizes each, a plain non-causal DiT, and the bundled reference DiT.

Each factory returns a `Subject`: the model plus example inputs and the facts a person reading the model's
code would state (blocks, token grid, attention sites), which the analysis tests assert against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Subject:
    name: str
    model: nn.Module
    kwargs: dict
    blocks: int
    grid: tuple[int, int, int]
    self_attention: int
    cross_attention: int
    per_token_modulation: bool
    latent_input: str
    timestep_input: str
    context_input: str | None
    output_index: Callable = field(default=lambda out: out)  # picks the tensor from the model's return value

    def make_kwargs(self, frames: int | None = None, batch: int | None = None, seed: int = 0) -> dict:
        """Fresh example inputs of the same layout, optionally with another frame count / batch size."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        b0 = self.kwargs[self.latent_input].shape[0]
        f0 = self.kwargs[self.latent_input].shape[2]
        for k, v in self.kwargs.items():
            if not isinstance(v, torch.Tensor):
                out[k] = v
                continue
            shape = list(v.shape)
            if batch is not None and shape and shape[0] == b0:
                shape[0] = batch
            if frames is not None:
                if k == self.latent_input:
                    shape[2] = frames
                elif k == self.timestep_input and len(shape) == 2 and shape[1] == f0:
                    shape[1] = frames
            if v.dtype in (torch.long, torch.int64):
                out[k] = torch.randint(0, int(v.max()) + 1, shape, generator=g)  # stay within the vocabulary
            elif k == self.timestep_input:
                out[k] = torch.rand(shape, generator=g) * 1000
            else:
                out[k] = torch.randn(shape, generator=g)
        return out


def reference_subject(trained: bool = True) -> Subject:
    from mcgraph.zoo.weights import build_reference, load_reference

    model, _ = load_reference() if trained else build_reference()
    torch.manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(1, 12, 8, 16, 16), timesteps=torch.rand(1, 8) * 1000,
                  context=torch.randn(1, 11, 64))
    return Subject("reference", model.eval(), kwargs, blocks=4, grid=(8, 8, 8), self_attention=4, cross_attention=4,
                   per_token_modulation=True, latent_input="hidden_states", timestep_input="timesteps",
                   context_input="context")


def wan_subject(size: str = "tiny") -> Subject:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    if size == "tiny":
        cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                   text_dim=16, freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=32)
        latent, grid, layers = (1, 4, 3, 8, 10), (3, 4, 5), 2
    else:  # "small": other patch, heads, depth
        cfg = dict(patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=16, in_channels=8, out_channels=8,
                   text_dim=32, freq_dim=64, ffn_dim=96, num_layers=3, rope_max_seq_len=64)
        latent, grid, layers = (1, 8, 5, 16, 24), (5, 4, 6), 3
    model = WanTransformer3DModel(**cfg).eval()
    kwargs = dict(hidden_states=torch.randn(latent), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 7, cfg["text_dim"]), return_dict=False)
    return Subject(f"wan-{size}", model, kwargs, blocks=layers, grid=grid, self_attention=layers,
                   cross_attention=layers, per_token_modulation=False, latent_input="hidden_states",
                   timestep_input="timestep", context_input="encoder_hidden_states", output_index=lambda o: o[0])


def skyreels_subject(size: str = "tiny") -> Subject:
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    if size == "tiny":
        cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                   text_dim=16, freq_dim=32, ffn_dim=48, num_layers=3, rope_max_seq_len=32, num_frame_per_block=2)
        latent, grid, layers = (1, 4, 4, 8, 10), (4, 4, 5), 3
    else:
        cfg = dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=16, in_channels=8, out_channels=8,
                   text_dim=24, freq_dim=48, ffn_dim=64, num_layers=2, rope_max_seq_len=64, num_frame_per_block=3)
        latent, grid, layers = (1, 8, 6, 12, 12), (6, 6, 6), 2
    model = SkyReelsV2Transformer3DModel(**cfg).eval()
    kwargs = dict(hidden_states=torch.randn(latent), timestep=torch.rand(1, latent[2]) * 1000,
                  encoder_hidden_states=torch.randn(1, 7, cfg["text_dim"]), enable_diffusion_forcing=True,
                  return_dict=False)
    return Subject(f"skyreels-{size}", model, kwargs, blocks=layers, grid=grid, self_attention=layers,
                   cross_attention=layers, per_token_modulation=True, latent_input="hidden_states",
                   timestep_input="timestep", context_input="encoder_hidden_states", output_index=lambda o: o[0])


class PlainDiT(nn.Module):
    """A plain non-causal video DiT: one timestep per sample, learned positions, class-label conditioning
    added to the time embedding (no cross-attention), blocks in `self.layers`. Other names on purpose."""

    def __init__(self, channels=3, dim=64, heads=4, depth=3, patch=(1, 4, 4), max_tokens=512, classes=10):
        super().__init__()
        self.heads = heads
        self.patch = patch
        self.x_embed = nn.Conv3d(channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, max_tokens, dim) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embed = nn.Embedding(classes, dim)
        self.layers = nn.ModuleList(_PlainBlock(dim, heads) for _ in range(depth))
        self.final = nn.Linear(dim, channels * math.prod(patch))
        self.ada = nn.Linear(dim, 2 * dim)

    def forward(self, x, t, y):
        b, c, f, h, w = x.shape
        pf, ph, pw = self.patch
        z = self.x_embed(x)
        gf, gh, gw = z.shape[2:]
        z = z.flatten(2).transpose(1, 2)
        z = z + self.pos[:, : z.shape[1]]
        half = z.shape[-1] // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        temb = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], -1)
        cond = self.t_mlp(temb) + self.y_embed(y)
        for layer in self.layers:
            z = layer(z, cond)
        shift, scale = self.ada(F.silu(cond)).chunk(2, -1)
        z = F.layer_norm(z, z.shape[-1:]) * (1 + scale[:, None]) + shift[:, None]
        z = self.final(z).view(b, gf, gh, gw, c, pf, ph, pw)
        return z.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, f, h, w)


class _PlainBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.mod = nn.Linear(dim, 6 * dim)

    def forward(self, z, cond):
        s1, sc1, g1, s2, sc2, g2 = self.mod(F.silu(cond))[:, None].chunk(6, -1)
        h = F.layer_norm(z, z.shape[-1:]) * (1 + sc1) + s1
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        z = z + g1 * self.proj(a)
        return z + g2 * self.mlp(F.layer_norm(z, z.shape[-1:]) * (1 + sc2) + s2)


def plain_subject() -> Subject:
    torch.manual_seed(0)
    model = PlainDiT().eval()
    kwargs = dict(x=torch.randn(2, 3, 4, 16, 20), t=torch.rand(2) * 1000, y=torch.tensor([1, 7]))
    return Subject("plain-dit", model, kwargs, blocks=3, grid=(4, 4, 5), self_attention=3, cross_attention=0,
                   per_token_modulation=False, latent_input="x", timestep_input="t", context_input=None)


SUBJECT_NAMES = ("reference", "reference-untrained", "wan-tiny", "wan-small", "skyreels-tiny", "skyreels-small",
                 "plain-dit")

SUBJECTS: dict[str, Callable[[], Subject]] = {
    "reference": reference_subject,
    "reference-untrained": lambda: reference_subject(trained=False),
    "wan-tiny": lambda: wan_subject("tiny"),
    "wan-small": lambda: wan_subject("small"),
    "skyreels-tiny": lambda: skyreels_subject("tiny"),
    "skyreels-small": lambda: skyreels_subject("small"),
    "plain-dit": plain_subject,
}
