"""The bundled reference model: a small causal video DiT in the style of Wan2.1 / SkyReels-V2 DF.

It is written the way the real models are, so a graph compiler sees the same structure:
3D patch embedding (1, 2, 2); one timestep per frame turned into per-token adaLN 6-way modulation;
3D rotary position embedding; block-causal self-attention over chunks of `causal_block_size` frames
through `F.scaled_dot_product_attention`; cross-attention to a conditioning sequence; GELU MLP;
adaLN final layer; a flow-matching velocity output.

Call: ``model(latent [B, C, F, H, W], timesteps [B, F] in [0, 1000], context [B, Lc, context_dim])``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CausalDiTConfig:
    in_channels: int = 12
    out_channels: int = 12
    patch_size: tuple[int, int, int] = (1, 2, 2)
    dim: int = 128
    num_heads: int = 4
    num_layers: int = 4
    ffn_dim: int = 512
    context_dim: int = 64
    freq_dim: int = 64
    causal_block_size: int = 4
    rope_theta: float = 10000.0
    eps: float = 1e-6
    label_vocab_size: int = 0  # > 0 adds a label encoder (ids -> context); 0 means context is given
    label_length: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"CausalDiTConfig.dim={self.dim} is not divisible by num_heads={self.num_heads}")
        head_dim = self.dim // self.num_heads
        if head_dim % 2 or (head_dim // 6) < 1:
            raise ValueError(f"CausalDiTConfig: head_dim={head_dim} must be even and >= 6 for 3D RoPE")
        if self.causal_block_size < 1:
            raise ValueError("CausalDiTConfig.causal_block_size must be >= 1")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan-style sinusoidal timestep embedding: [N] -> [N, dim] (cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_tables(frames: int, height: int, width: int, head_dim: int, theta: float, device) -> tuple:
    """cos/sin tables [L, head_dim/2] for 3D RoPE, split over (frame, row, column) as in Wan."""
    parts = (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    angles = []
    for n, size in zip((frames, height, width), parts):
        inv = 1.0 / (theta ** (torch.arange(0, size, 2, dtype=torch.float32, device=device) / size))
        angles.append(torch.outer(torch.arange(n, dtype=torch.float32, device=device), inv))
    a_f, a_h, a_w = angles
    grid = torch.cat(
        [
            a_f[:, None, None, :].expand(frames, height, width, -1),
            a_h[None, :, None, :].expand(frames, height, width, -1),
            a_w[None, None, :, :].expand(frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(frames * height * width, head_dim // 2)
    return torch.cos(grid), torch.sin(grid)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, heads, L, head_dim] by the angles of [L, head_dim/2] tables."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def block_causal_mask(frames: int, tokens_per_frame: int, causal_block_size: int, device) -> torch.Tensor:
    """Boolean [L, L]: query token may attend key token iff key's chunk <= query's chunk."""
    chunk = torch.arange(frames * tokens_per_frame, device=device) // tokens_per_frame // causal_block_size
    return chunk[:, None] >= chunk[None, :]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float, kv_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        kv_dim = kv_dim or dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, x, context=None, rope=None, mask=None):
        kv = x if context is None else context
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(kv)))
        v = self._heads(self.to_v(kv))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class DiTBlock(nn.Module):
    def __init__(self, cfg: CausalDiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.attn1 = Attention(d, cfg.num_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.attn2 = Attention(d, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 1, 6, d) / d**0.5)

    def forward(self, x, modulation, context, rope, mask):
        # modulation: [B, L, 6, D], one 6-way adaLN vector per token (its frame's timestep)
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table + modulation).unbind(2)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + self.attn1(h, rope=rope, mask=mask) * gate1
        x = x + self.attn2(self.norm2(x), context=context)
        h = self.norm3(x) * (1 + scale2) + shift2
        return x + self.ffn(h) * gate2


class CausalVideoDiT(nn.Module):
    def __init__(self, cfg: CausalDiTConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or CausalDiTConfig()
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.context_embedding = nn.Sequential(
            nn.Linear(cfg.context_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 1, 2, d) / d**0.5)
        self.proj_out = nn.Linear(d, cfg.out_channels * math.prod(cfg.patch_size))

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def forward(self, hidden_states: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b, _, frames, height, width = hidden_states.shape
        pt, ph, pw = cfg.patch_size
        if timesteps.shape != (b, frames):
            raise ValueError(
                f"CausalVideoDiT: timesteps must be [batch, frames] = [{b}, {frames}], got {tuple(timesteps.shape)}"
            )
        f, h, w = frames // pt, height // ph, width // pw
        tokens_per_frame = h * w

        x = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2)  # [B, L, D]
        t = timesteps[:, ::pt]
        e = self.time_embedding(sinusoidal_embedding(t.reshape(-1), cfg.freq_dim)).view(b, f, -1)  # [B, F, D]
        e0 = self.time_projection(e).view(b, f, 1, 6, -1)
        # per-token modulation: every token carries its own frame's timestep (diffusion forcing)
        modulation = e0.expand(b, f, tokens_per_frame, 6, cfg.dim).reshape(b, f * tokens_per_frame, 6, cfg.dim)
        e_tokens = e.view(b, f, 1, 1, -1).expand(b, f, tokens_per_frame, 1, cfg.dim).reshape(b, -1, 1, cfg.dim)

        ctx = self.context_embedding(context)
        rope = rope_tables(f, h, w, cfg.dim // cfg.num_heads, cfg.rope_theta, x.device)
        mask = block_causal_mask(f, tokens_per_frame, cfg.causal_block_size, x.device)

        for block in self.blocks:
            x = block(x, modulation, ctx, rope, mask)

        shift, scale = (self.scale_shift_table + e_tokens).unbind(2)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)  # [B, L, C*pt*ph*pw]
        c = cfg.out_channels
        x = x.view(b, f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c, f * pt, h * ph, w * pw)


class LabelEncoder(nn.Module):
    """Scene label ids [B, Lc] -> conditioning sequence [B, Lc, context_dim]. Id 0 is padding / "no label"."""

    def __init__(self, vocab_size: int, length: int, context_dim: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, context_dim)
        self.positions = nn.Parameter(torch.randn(1, length, context_dim) * 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids) + self.positions
