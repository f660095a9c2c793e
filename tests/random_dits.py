"""Random small video DiTs for structure fuzzing (issue 12, item 10), written from scratch in plain torch.

A `DiTSpec` fixes one model: depth, width, heads, patch and token grid, causal frame mask (boolean, additive,
or built inside each block), timestep layout (one per sample, per latent frame or per token), modulation
layout (`[B, 6, D]`, per frame `[B, F, 6, D]`, per token `[B, L, 6*D]` or `[B, L, 6, D]`), fused or separate
QKV, how heads are split, cross-attention or not, positions (none, learned, rotary). `build_dit(spec)` builds
it with random weights (seeded, eval mode, outputs O(1)); `dit_inputs(spec, ...)` makes its inputs;
`dit_specs()` is the hypothesis strategy.

Call: ``model(latent [B, C, F*pt, H*ph, W*pw], t, context [B, Lc, CTX] | None)`` with ``t`` ``[B]``,
``[B, F*pt]`` or ``[B, F*H*W]`` by `spec.timestep`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

CONTEXT_DIM, CONTEXT_LEN, FREQ_DIM, MAX_TOKENS = 8, 5, 16, 128
# modulation must be at least as fine as the timestep: a per-token timestep cannot give one vector per sample.
# Hypothesis favours the first choice of a `sampled_from` (its simplest): the layouts mcgraph supports go first,
# so that fewer examples are spent on refusals
FINER = {"sample": ("sample", "token_split", "frame", "token"), "frame": ("token_split", "frame", "token"),
         "token": ("token_split", "token")}


@dataclass(frozen=True)
class DiTSpec:
    """One random model. `grid` is the token grid (frames, rows, columns) after patching."""

    seed: int = 0
    depth: int = 2
    width: int = 24
    heads: int = 2
    patch: tuple[int, int, int] = (1, 2, 2)
    grid: tuple[int, int, int] = (4, 2, 3)
    in_channels: int = 4
    batch: int = 2
    causal: str = "none"  # "none" | "bool" | "additive" | "bool_in_block"
    chunk: int = 1  # token frames per causal chunk
    timestep: str = "sample"  # "sample" | "frame" | "token"
    # "sample" [B, 6, D] | "frame" [B, F, 6, D] | "token" [B, L, 6D] | "token_split" [B, L, 6, D]
    modulation: str = "sample"
    qkv: str = "separate"  # "separate" | "fused_chunk" | "fused_view"
    split: str = "unflatten"  # how heads are split: "unflatten" | "view" | "reshape"
    cross: bool = False
    position: str = "none"  # "none" | "learned" | "rope"
    table: bool = False  # a learned scale-shift table added to the modulation in every block

    @property
    def causal_block_size(self) -> int | None:
        """Read by mcgraph as the chunk size (as on the reference and SkyReels-V2 configs)."""
        return self.chunk if self.causal != "none" else None

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)

    def latent_shape(self) -> tuple[int, ...]:
        (f, h, w), (pt, ph, pw) = self.grid, self.patch
        return (self.batch, self.in_channels, f * pt, h * ph, w * pw)

    def constructs(self) -> dict[str, object]:
        """The drawn choices, for per-construct statistics (seed and sizes left out)."""
        return dict(depth=self.depth, heads=self.heads, patch=self.patch, batch=self.batch, causal=self.causal,
                    timestep=self.timestep, modulation=self.modulation, qkv=self.qkv, split=self.split,
                    cross=self.cross, position=self.position, table=self.table,
                    frames=self.grid[0], one_row_or_col=min(self.grid[1:]) == 1)


@st.composite
def dit_specs(draw) -> DiTSpec:
    """Hypothesis strategy: a random small DiT (at most MAX_TOKENS tokens). Depth 1 goes last: mcgraph needs
    >= 2 blocks to find the stack, so it is always refused (still drawn: the refusal must be clean)."""
    width = draw(st.sampled_from([16, 24, 32]))
    heads = draw(st.sampled_from([h for h in (1, 2, 3, 4, 8) if width % h == 0 and (width // h) % 2 == 0]))
    frames = draw(st.integers(1, 4))
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    timestep = draw(st.sampled_from(["sample", "frame", "token"]))
    return DiTSpec(
        seed=draw(st.integers(0, 2**16)), depth=draw(st.sampled_from([2, 3, 1])), width=width, heads=heads,
        patch=(draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))),
        grid=(frames, rows, cols), in_channels=draw(st.sampled_from([2, 3, 4])), batch=draw(st.sampled_from([1, 2])),
        causal=draw(st.sampled_from(["none", "bool", "additive", "bool_in_block"])), chunk=draw(st.integers(1, 2)),
        timestep=timestep, modulation=draw(st.sampled_from(FINER[timestep])),
        qkv=draw(st.sampled_from(["separate", "fused_chunk", "fused_view"])),
        split=draw(st.sampled_from(["unflatten", "view", "reshape"])), cross=draw(st.booleans()),
        position=draw(st.sampled_from(["none", "learned", "rope"])), table=draw(st.booleans()),
    )


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[N] -> [N, dim]: cos/sin timestep embedding (mcgraph recognises the timestep input by it)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def rope_table(tokens: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """1D rotary tables [L, head_dim / 2] over the token index."""
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(tokens, dtype=torch.float32, device=device), inv)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


def frame_mask(tokens: int, per_frame, chunk: int, device) -> torch.Tensor:
    """Boolean [L, L]: a token may attend to tokens of its own and earlier chunks of `chunk` frames."""
    ids = torch.arange(tokens, device=device) // per_frame // chunk
    return ids[:, None] >= ids[None, :]


class Attention(nn.Module):
    """Self- or cross-attention through SDPA, with the spec's QKV layout and head split."""

    def __init__(self, spec: DiTSpec, kv_dim: int | None = None):
        super().__init__()
        d = spec.width
        self.spec, self.cross = spec, kv_dim is not None
        if spec.qkv == "separate":
            self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(kv_dim or d, d), nn.Linear(kv_dim or d, d)
        elif self.cross:
            self.to_q, self.to_kv = nn.Linear(d, d), nn.Linear(kv_dim, 2 * d)
        else:
            self.to_qkv = nn.Linear(d, 3 * d)
        self.to_out = nn.Linear(d, d)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.spec.heads
        if self.spec.split == "unflatten":
            x = x.unflatten(-1, (h, -1))
        elif self.spec.split == "view":
            x = x.view(b, -1, h, d // h)
        else:
            x = x.reshape(b, n, h, d // h)
        return x.transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, hd = x.shape
        x = x.transpose(1, 2)
        if self.spec.split == "unflatten":
            return x.flatten(2)
        return x.reshape(b, n, h * hd) if self.spec.split == "reshape" else x.contiguous().view(b, -1, h * hd)

    def _qkv(self, x, context):
        kind = self.spec.qkv
        if kind == "separate":
            kv = x if context is None else context
            return self._heads(self.to_q(x)), self._heads(self.to_k(kv)), self._heads(self.to_v(kv))
        if self.cross:
            k, v = self.to_kv(context).chunk(2, -1)
            return self._heads(self.to_q(x)), self._heads(k), self._heads(v)
        if kind == "fused_chunk":
            return tuple(self._heads(p) for p in self.to_qkv(x).chunk(3, -1))
        b, n, _ = x.shape
        return self.to_qkv(x).view(b, n, 3, self.spec.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x, context=None, rope=None, mask=None, per_frame=None):
        q, k, v = self._qkv(x, context)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.spec.causal == "bool_in_block" and not self.cross:
            mask = frame_mask(x.shape[1], per_frame, self.spec.chunk, x.device)  # built from the block's own input
        return self.to_out(self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


def _norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:])


class Block(nn.Module):
    """adaLN-zero style block: modulated self-attention, optional cross-attention, modulated gated MLP."""

    def __init__(self, spec: DiTSpec):
        super().__init__()
        d = spec.width
        self.spec = spec
        self.attn = Attention(spec)
        self.cross = Attention(spec, kv_dim=d) if spec.cross else None
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d))
        table_shape = {"sample": (1, 6, d), "frame": (1, 1, 6, d), "token": (1, 1, 6 * d),
                       "token_split": (1, 1, 6, d)}[spec.modulation]
        self.table = nn.Parameter(torch.randn(table_shape) * 0.1) if spec.table else None

    def _parts(self, mod: torch.Tensor) -> list[torch.Tensor]:
        """Six modulation vectors, each broadcastable against the stream as `_modulate` uses it."""
        if self.table is not None:
            mod = mod + self.table
        layout = self.spec.modulation
        if layout == "sample":  # [B, 6, D] -> [B, 1, D]
            return list(mod.chunk(6, 1))
        if layout == "frame":  # [B, F, 6, D] -> [B, F, 1, D] (applied to the stream viewed per frame)
            return [p.unsqueeze(2) for p in mod.unbind(2)]
        if layout == "token_split":  # [B, L, 6, D] -> [B, L, D] (as the bundled reference model)
            return list(mod.unbind(2))
        return list(mod.chunk(6, -1))  # [B, L, 6*D] -> [B, L, D]

    def _modulate(self, x, shift, scale):
        if self.spec.modulation == "frame":
            frames = shift.shape[1]
            return (_norm(x).unflatten(1, (frames, -1)) * (1 + scale) + shift).flatten(1, 2)
        return _norm(x) * (1 + scale) + shift

    def _gate(self, y, gate):
        if self.spec.modulation == "frame":
            return (y.unflatten(1, (gate.shape[1], -1)) * gate).flatten(1, 2)
        return y * gate

    def forward(self, x, mod, context, rope, mask, per_frame):
        shift1, scale1, gate1, shift2, scale2, gate2 = self._parts(mod)
        x = x + self._gate(self.attn(self._modulate(x, shift1, scale1), rope=rope, mask=mask, per_frame=per_frame),
                           gate1)
        if self.cross is not None:
            x = x + self.cross(_norm(x), context=context)
        return x + self._gate(self.mlp(self._modulate(x, shift2, scale2)), gate2)


class RandomDiT(nn.Module):
    """A random small video DiT; see the module docstring."""

    def __init__(self, spec: DiTSpec):
        super().__init__()
        d, (pt, ph, pw) = spec.width, spec.patch
        self.config = spec
        self.patch_embed = nn.Conv3d(spec.in_channels, d, spec.patch, spec.patch)
        self.time_mlp = nn.Sequential(nn.Linear(FREQ_DIM, d), nn.SiLU(), nn.Linear(d, d))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.context_embed = nn.Linear(CONTEXT_DIM, d) if spec.cross else None
        self.pos = nn.Parameter(torch.randn(1, MAX_TOKENS, d) * 0.1) if spec.position == "learned" else None
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.head_mod = nn.Linear(d, 2 * d)
        self.proj_out = nn.Linear(d, spec.in_channels * pt * ph * pw)

    def _time(self, t: torch.Tensor, b: int, f: int, per_frame) -> tuple[torch.Tensor, torch.Tensor]:
        """(block modulation in the spec's layout, per-token time embedding [B, L, D] for the head)."""
        spec, d = self.config, self.config.width
        if spec.timestep == "frame":
            t = t[:, :: spec.patch[0]]  # one timestep per latent frame: the first of each patch
        e = self.time_mlp(sinusoid(t.reshape(-1), FREQ_DIM))
        rows, cols = {"sample": (1, 1), "frame": (f, 1), "token": (f, per_frame)}[spec.timestep]
        e = e.view(b, rows, cols, d)
        m = self.time_proj(e)  # [B, f or 1, per_frame or 1, 6D]
        e_tok = e.expand(b, f, per_frame, d).reshape(b, -1, d)
        if spec.modulation == "sample":
            return m.view(b, 6, d), e_tok
        if spec.modulation == "frame":
            return m.view(b, -1, 6, d).expand(b, f, 6, d), e_tok
        m = m.expand(b, f, per_frame, 6 * d)
        if spec.modulation == "token_split":
            return m.reshape(b, -1, 6, d), e_tok
        return m.reshape(b, -1, 6 * d), e_tok

    def forward(self, latent: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.config
        b, c = latent.shape[:2]
        (pt, ph, pw), d = spec.patch, spec.width
        x = self.patch_embed(latent)
        f, h, w = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)  # [B, L, D], frame-major
        tokens, per_frame = x.shape[1], h * w
        if self.pos is not None:
            x = x + self.pos[:, :tokens]
        mod, e_tok = self._time(t, b, f, per_frame)
        ctx = self.context_embed(context) if self.context_embed is not None else None
        rope = rope_table(tokens, d // spec.heads, x.device) if spec.position == "rope" else None
        mask = None
        if spec.causal in ("bool", "additive"):
            mask = frame_mask(tokens, per_frame, spec.chunk, x.device)
            if spec.causal == "additive":
                mask = torch.zeros(mask.shape, device=x.device).masked_fill(~mask, float("-inf"))
        for block in self.blocks:
            x = block(x, mod, ctx, rope, mask, per_frame)
        shift, scale = self.head_mod(F.silu(e_tok)).chunk(2, -1)
        x = self.proj_out(_norm(x) * (1 + scale) + shift)
        x = x.view(b, f, h, w, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, c, f * pt, h * ph, w * pw)


def build_dit(spec: DiTSpec) -> RandomDiT:
    """The model of `spec`, seeded, in eval mode. PyTorch's default init (uniform, 1/sqrt(fan_in)) keeps
    every activation O(1) at these widths; the tables and positions are drawn at 0.1."""
    torch.manual_seed(spec.seed)
    return RandomDiT(spec).eval()


def dit_inputs(spec: DiTSpec, step: int = 0, seed: int = 0, moving_frames: int | None = None) -> dict:
    """Call `step` of a made-up denoising run (as a sampler drives the model): the first `moving_frames` token
    frames (default all) get a new latent and a lower timestep each step; the others keep step 0's."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(spec.latent_shape(), generator=g)
    ctx = torch.randn(spec.batch, CONTEXT_LEN, CONTEXT_DIM, generator=g) if spec.cross else None
    f, pt = spec.grid[0], spec.patch[0]
    moving = f if moving_frames is None else moving_frames
    t_frame = torch.full((spec.batch, f), 900.0)  # per token frame
    x = x0.clone()
    if step:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed * 1000 + step))
        a = 0.05 * step
        x[:, :, : moving * pt] = x0[:, :, : moving * pt] * (1 - a) + a * noise[:, :, : moving * pt]
        t_frame[:, :moving] -= 80.0 * step
    if spec.timestep == "sample":
        t = t_frame[:, 0] if moving else t_frame[:, -1]
    elif spec.timestep == "frame":
        t = t_frame.repeat_interleave(pt, 1)  # one per latent frame
    else:
        t = t_frame.repeat_interleave(spec.grid[1] * spec.grid[2], 1)
    return dict(latent=x, t=t, context=ctx)
