"""One tiny video DiT per architectural construct (issue 13, items 5 and 6), written from scratch in plain torch:
the subjects of `tests/test_construct_table.py` and `tools/construct_table.py`.

Every model starts from `ZooDiT`, a Wan-like baseline (Conv3d patch embedding, one timestep per latent frame
turned into a per-frame [B, F, 6, D] adaLN modulation expanded to its tokens, SDPA self-attention,
cross-attention to text, unpatchify), and changes one construct, so a failure points at that construct. Seeded,
eval mode, width 24, 2 heads, 80 video tokens (grid 4 x 4 x 5, patch 1 x 2 x 2), batch 2, outputs O(1).
`CONSTRUCTS[name]()` returns `(model, example_kwargs, make_call)`; `make_call(step)` gives the inputs of
denoising step `step` (latent drifting, timesteps falling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

D, H, FFN, CTX, LC, FREQ, C, B, REGISTERS = 24, 2, 48, 16, 7, 32, 4, 2, 4
PATCH, GRID = (1, 2, 2), (4, 4, 5)


def norm(x):
    return F.layer_norm(x, x.shape[-1:])


def sinusoid(t):
    """[N] -> [N, FREQ], Wan-style (cos first)."""
    a = t.float()[:, None] * torch.exp(-math.log(1e4) * torch.arange(FREQ // 2, dtype=torch.float32) / (FREQ // 2))
    return torch.cat([a.cos(), a.sin()], -1)


# ------------------------------------------------------------------------------------- attention cores
def sdpa(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def manual(q, k, v, mask=None):
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v


def linear_attention(q, k, v, mask=None):
    q, k = F.elu(q) + 1, F.elu(k) + 1  # phi: positive features
    return (q @ (k.transpose(-1, -2) @ v)) / (q @ k.sum(-2, keepdim=True).transpose(-1, -2) + 1e-6)


def flex(q, k, v, mask=None):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v)


class Attn(nn.Module):
    """Separate Q/K/V/out projections around an attention `core` on [B, heads, L, head_dim]."""

    def __init__(self, core=sdpa, split="unflatten"):
        super().__init__()
        self.core, self.split = core, split
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))

    def heads(self, x):
        if self.split == "view":
            return x.view(x.shape[0], -1, H, D // H).transpose(1, 2)
        return x.unflatten(-1, (H, -1)).transpose(1, 2)

    def forward(self, x, kv=None, mask=None):
        kv = x if kv is None else kv
        out = self.core(self.heads(self.q(x)), self.heads(self.k(kv)), self.heads(self.v(kv)), mask)
        return self.o(out.transpose(1, 2).flatten(2))


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(D, H, batch_first=True)

    def forward(self, x, kv=None, mask=None):
        return self.mha(x, x, x, need_weights=False)[0]


class FactorAttn(Attn):
    """Over the tokens of one frame ("space", [B*F, HW, D]) or over the frames at one position ("time",
    [B*HW, F, D]) of a [B, L, D] stream; `mask` carries the grid (frames, tokens per frame)."""

    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def forward(self, x, kv=None, mask=None):
        (b, n, d), (f, hw) = x.shape, mask
        if self.axis == "space":
            return super().forward(x.reshape(b * f, hw, d)).reshape(b, n, d)
        y = super().forward(x.view(b, f, hw, d).transpose(1, 2).reshape(b * hw, f, d))
        return y.view(b, hw, f, d).transpose(1, 2).reshape(b, n, d)


class Block(nn.Module):
    """adaLN block: modulated self-attention, cross-attention to text, modulated MLP."""

    def __init__(self, attn=None, cross=True, flat_mod=False, split="unflatten"):
        super().__init__()
        self.flat_mod = flat_mod
        self.attn = attn if attn is not None else Attn(split=split)
        self.cross = Attn(split=split) if cross else None
        self.ffn = nn.Sequential(nn.Linear(D, FFN), nn.GELU(approximate="tanh"), nn.Linear(FFN, D))
        self.table = nn.Parameter(torch.randn(1, 1, 6, D) / D**0.5)

    def mods(self, mod):
        if self.flat_mod:  # one [B, L, 6*D] tensor, chunked here
            return (mod + self.table.flatten(2)).chunk(6, -1)
        return (mod + self.table).unbind(2)

    def mlp(self, h):
        return self.ffn(h)

    def forward(self, x, mod, ctx=None, mask=None):
        s1, c1, g1, s2, c2, g2 = self.mods(mod)
        x = x + self.attn(norm(x) * (1 + c1) + s1, mask=mask) * g1
        if self.cross is not None:
            x = x + self.cross(norm(x), ctx)
        return x + self.mlp(norm(x) * (1 + c2) + s2) * g2


class AutocastBlock(Block):
    def mlp(self, h):
        # a mixed-precision region inside the block: export makes it a wrap_with_autocast higher-order op
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.ffn(h)
        return y.float()


class FrameModBlock(Block):
    """Per-frame modulation [B, F, 6, D] broadcast by unflattening the stream into frames (SkyReels-V2's code)."""

    def forward(self, x, mod, ctx=None, mask=None):
        s1, c1, g1, s2, c2, g2 = (m[:, :, None] for m in (mod + self.table).unbind(2))

        def per_frame(y, scale, shift=0.0):
            return (y.unflatten(1, (mod.shape[1], -1)) * scale + shift).flatten(1, 2)

        x = x + per_frame(self.attn(per_frame(norm(x), 1 + c1, s1)), g1)
        x = x + self.cross(norm(x), ctx)
        return x + per_frame(self.mlp(per_frame(norm(x), 1 + c2, s2)), g2)


class JointBlock(Block):
    """CogVideoX-style: text and video concatenated in one self-attention sequence, split back after."""

    def forward(self, x, mod, txt=None, mask=None):
        s1, c1, g1, s2, c2, g2 = self.mods(mod)
        n = txt.shape[1]
        a = self.attn(torch.cat([norm(txt), norm(x) * (1 + c1) + s1], 1))
        txt, x = txt + a[:, :n], x + a[:, n:] * g1
        return x + self.mlp(norm(x) * (1 + c2) + s2) * g2, txt + self.mlp(norm(txt))


class DualBlock(Block):
    """Dual-stream (Flux / SD3 / HunyuanVideo double block): each stream its own projections, one softmax over
    both, joined after the head split; `video_first` puts the video rows before the text (HunyuanVideo)."""

    def __init__(self, video_first=False):
        super().__init__(cross=False)
        self.video_first = video_first
        self.tattn, self.tffn = Attn(), nn.Sequential(nn.Linear(D, FFN), nn.GELU(), nn.Linear(FFN, D))

    def forward(self, x, mod, txt=None, mask=None):
        s1, c1, g1, s2, c2, g2 = self.mods(mod)
        at, av, n = self.tattn, self.attn, txt.shape[1]
        pairs = ((norm(txt), at), (norm(x) * (1 + c1) + s1, av))
        pairs = pairs[::-1] if self.video_first else pairs
        q, k, v = (torch.cat([a.heads(getattr(a, p)(s)) for s, a in pairs], 2) for p in "qkv")
        o = sdpa(q, k, v).transpose(1, 2).flatten(2)
        ot, ov = (o[:, -n:], o[:, :-n]) if self.video_first else (o[:, :n], o[:, n:])
        txt, x = txt + at.o(ot), x + av.o(ov) * g1
        return x + self.mlp(norm(x) * (1 + c2) + s2) * g2, txt + self.tffn(norm(txt))


class JoinedSingleBlock(Block):
    """HunyuanVideo-style single-stream block: joins the video and text streams into one sequence inside the
    block (video first), runs attention and MLP in parallel on it, and splits the streams back."""

    def __init__(self):
        super().__init__(cross=False)

    def forward(self, x, mod, txt=None, mask=None):
        n = txt.shape[1]
        seq = torch.cat([x, txt], 1)
        s1, c1, g1, s2, c2, g2 = self.mods(torch.cat([mod, mod.new_zeros(mod.shape[0], n, *mod.shape[2:])], 1))
        seq = seq + self.attn(norm(seq) * (1 + c1) + s1) * g1 + self.mlp(norm(seq) * (1 + c2) + s2) * g2
        return seq[:, :-n], seq[:, -n:]


# ------------------------------------------------------------------------------------------------ models
class ZooDiT(nn.Module):
    """The baseline (construct 1); the variants below override one stage. `mod_layout`: what enters the
    blocks, "token" [B, L, 6, D], "flat" [B, L, 6*D] or "frame" [B, F, 6, D]."""

    def __init__(self, blocks=None, mod_layout="token"):
        super().__init__()
        self.mod_layout = mod_layout
        self.patch = nn.Conv3d(C, D, PATCH, PATCH)
        self.t_embed = nn.Sequential(nn.Linear(FREQ, D), nn.SiLU(), nn.Linear(D, D))
        self.t_proj = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.text = nn.Linear(CTX, D)
        self.blocks = nn.ModuleList(blocks if blocks is not None else [Block() for _ in range(2)])
        self.out = nn.Linear(D, C * math.prod(PATCH))

    def embed(self, latent):
        z = self.patch(latent)
        return z.flatten(2).transpose(1, 2), tuple(z.shape[2:])

    def frame_modulation(self, t):
        """[B, F] timesteps -> [B, F, 6, D]."""
        return self.t_proj(self.t_embed(sinusoid(t.reshape(-1)))).view(t.shape[0], -1, 6, D)

    def modulation(self, t, f, hw):
        e = self.frame_modulation(t)
        if self.mod_layout == "frame":
            return e
        e = e[:, :, None].expand(-1, -1, hw, -1, -1).reshape(t.shape[0], f * hw, 6, D)  # each token its frame's
        return e.flatten(2) if self.mod_layout == "flat" else e

    def attn_arg(self, x, grid):
        """What each block passes its self-attention as `mask` (None here)."""

    def stack(self, x, mod, ctx, grid):
        arg = self.attn_arg(x, grid)
        for blk in self.blocks:
            x = blk(x, mod, ctx, arg)
            if isinstance(x, tuple):  # two streams: (video, text)
                x, ctx = x
        return x

    def unpatchify(self, x, grid):
        (f, h, w), (pt, ph, pw) = grid, PATCH
        x = self.out(norm(x)).view(x.shape[0], f, h, w, pt, ph, pw, C).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], C, f * pt, h * ph, w * pw)

    def forward(self, latent, t, context):
        x, grid = self.embed(latent)
        x = self.stack(x, self.modulation(t, grid[0], grid[1] * grid[2]), self.text(context), grid)
        return self.unpatchify(x, grid)


class RegisterDiT(ZooDiT):
    def __init__(self):
        super().__init__()
        self.registers = nn.Parameter(torch.randn(1, REGISTERS, D))

    def stack(self, x, mod, ctx, grid):
        b = x.shape[0]
        x = torch.cat([self.registers.expand(b, -1, -1), x], 1)
        mod = torch.cat([mod.new_zeros(b, REGISTERS, 6, D), mod], 1)  # registers: the blocks' own table only
        return super().stack(x, mod, ctx, grid)[:, REGISTERS:]


class TokenInputDiT(ZooDiT):
    """Pre-patchified tokens [B, L, C*p*p] through a Linear; the grid comes as Python ints; returns tokens."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Linear(C * math.prod(PATCH), D)

    def forward(self, tokens, t, context, frames: int, height: int, width: int):
        x = self.patch(tokens)
        x = self.stack(x, self.modulation(t, frames, height * width), self.text(context), (frames, height, width))
        return self.out(norm(x))


class Conv2dDiT(ZooDiT):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(C, D, PATCH[1:], PATCH[1:])

    def embed(self, latent):
        b, c, f, hh, ww = latent.shape
        z = self.patch(latent.transpose(1, 2).reshape(b * f, c, hh, ww))  # frames folded into the batch
        return z.flatten(2).transpose(1, 2).reshape(b, -1, D), (f, z.shape[2], z.shape[3])


class ControlDiT(ZooDiT):
    def __init__(self):
        super().__init__()
        self.control = nn.Conv3d(C, D, PATCH, PATCH)
        self.hints = nn.ModuleList(nn.Linear(D, D) for _ in self.blocks)

    def forward(self, latent, t, context, control):
        x, grid = self.embed(latent)
        c = self.control(control).flatten(2).transpose(1, 2)
        hints = [p(c) for p in self.hints]
        mod, ctx = self.modulation(t, grid[0], grid[1] * grid[2]), self.text(context)
        for blk, hint in zip(self.blocks, hints):
            x = blk(x, mod, ctx) + hint  # side input between blocks
        return self.unpatchify(x, grid)


class HintStackDiT(ZooDiT):
    """VACE-style: a second block stack over the control video's tokens (seeded with the video's) computes the
    hints added to the main stream after its blocks."""

    def __init__(self):
        super().__init__()
        self.control = nn.Conv3d(C, D, PATCH, PATCH)
        self.hint_blocks = nn.ModuleList(Block() for _ in self.blocks)
        self.hint_out = nn.ModuleList(nn.Linear(D, D) for _ in self.blocks)

    def forward(self, latent, t, context, control):
        x, grid = self.embed(latent)
        mod, ctx = self.modulation(t, grid[0], grid[1] * grid[2]), self.text(context)
        c, hints = self.control(control).flatten(2).transpose(1, 2) + x, []
        for blk, out in zip(self.hint_blocks, self.hint_out):
            c = blk(c, mod, ctx)
            hints.append(out(c))
        for blk, hint in zip(self.blocks, hints):
            x = blk(x, mod, ctx) + hint
        return self.unpatchify(x, grid)


class DualSingleDiT(ZooDiT):
    def __init__(self):
        super().__init__(blocks=[DualBlock() for _ in range(2)])
        self.single = nn.ModuleList(Block(cross=False) for _ in range(2))

    def stack(self, x, mod, ctx, grid):
        for blk in self.blocks:
            x, ctx = blk(x, mod, ctx)
        n = ctx.shape[1]
        seq, mod = torch.cat([ctx, x], 1), torch.cat([mod.new_zeros(x.shape[0], n, 6, D), mod], 1)
        for blk in self.single:
            seq = blk(seq, mod)
        return seq[:, n:]


class ChainedStacksDiT(ZooDiT):
    """HunyuanVideo's layout: dual-stream blocks, then single-stream blocks that join the two streams per block;
    the video stream runs through both module lists."""

    def __init__(self):
        super().__init__(blocks=[DualBlock(video_first=True) for _ in range(2)])
        self.single = nn.ModuleList(JoinedSingleBlock() for _ in range(2))

    def stack(self, x, mod, ctx, grid):
        for blk in (*self.blocks, *self.single):
            x, ctx = blk(x, mod, ctx)
        return x


class RefinerDiT(ZooDiT):
    def __init__(self):
        super().__init__()
        self.refiner = nn.ModuleList(Block(cross=False) for _ in range(2))

    def forward(self, latent, t, context):
        ctx, sample_mod = self.text(context), self.frame_modulation(t.mean(1, keepdim=True))  # [B, 1, 6, D]
        for blk in self.refiner:
            ctx = blk(ctx, sample_mod)
        x, grid = self.embed(latent)
        return self.unpatchify(self.stack(x, self.modulation(t, grid[0], grid[1] * grid[2]), ctx, grid), grid)


class MaskDiT(ZooDiT):
    """Self-attention mask: frames attend to their neighbours (|df| <= 1), boolean or additive float."""

    def __init__(self, additive):
        super().__init__()
        self.additive = additive

    def attn_arg(self, x, grid):
        frame = torch.arange(x.shape[1]) // (grid[1] * grid[2])
        mask = (frame[:, None] - frame[None]).abs() <= 1
        return torch.zeros(mask.shape).masked_fill(~mask, float("-inf")) if self.additive else mask


class FactorDiT(ZooDiT):
    def attn_arg(self, x, grid):
        return grid[0], grid[1] * grid[2]


class TextLengthDiT(ZooDiT):
    def forward(self, latent, t, context, text_mask):
        n = int(text_mask.sum(1).max())  # data-dependent: the mask decides how much text is attended
        return super().forward(latent, t, context[:, :n])


# ------------------------------------------------------------------------------------------------ registry
def _inputs(**extra):
    g = torch.Generator().manual_seed(0)
    (f, h, w), (pt, ph, pw) = GRID, PATCH
    return dict(latent=torch.randn(B, C, f * pt, h * ph, w * pw, generator=g),
                t=(900.0 - 40.0 * torch.arange(f * pt, dtype=torch.float32)).expand(B, -1).clone(),
                context=torch.randn(B, LC, CTX, generator=g), **extra)


def _build(make_model, inputs=None, latent="latent"):
    torch.manual_seed(0)
    model = make_model().eval()
    kwargs = inputs if inputs is not None else _inputs()
    noise = torch.randn(kwargs[latent].shape, generator=torch.Generator().manual_seed(7))

    def make_call(step: int) -> dict:
        return {**kwargs, latent: kwargs[latent] + 0.05 * step * noise, "t": (kwargs["t"] - 150.0 * step).clamp(1)}

    return model, kwargs, make_call


def _token_inputs():
    f, h, w = GRID
    kwargs = _inputs(frames=f, height=h, width=w)
    kwargs["tokens"] = torch.randn(B, f * h * w, C * math.prod(PATCH), generator=torch.Generator().manual_seed(3))
    del kwargs["latent"]
    return kwargs


def text_mask(length):
    return torch.arange(LC).expand(B, -1) < length


def _zoo(block=Block, **kw):
    return lambda: ZooDiT(blocks=[block(**kw) for _ in range(2)])


def _cls(cls, **kw):
    return lambda: cls(**kw)


CONSTRUCTS = {
    "baseline": lambda: _build(ZooDiT),
    "flat_modulation": lambda: _build(lambda: ZooDiT([Block(flat_mod=True, split="view") for _ in "ab"], "flat")),
    "joint_attention": lambda: _build(_zoo(JointBlock, cross=False)),
    "register_tokens": lambda: _build(RegisterDiT),
    "linear_patchify": lambda: _build(TokenInputDiT, _token_inputs(), latent="tokens"),
    "conv2d_frames": lambda: _build(Conv2dDiT),
    "control_hints": lambda: _build(ControlDiT, _inputs(control=torch.randn(B, C, 4, 8, 10))),
    "hint_stack": lambda: _build(HintStackDiT, _inputs(control=torch.randn(B, C, 4, 8, 10))),
    "dual_single_stacks": lambda: _build(DualSingleDiT),
    "chained_stacks": lambda: _build(ChainedStacksDiT),
    "text_refiner": lambda: _build(RefinerDiT),
    "manual_attention": lambda: _build(lambda: ZooDiT([Block(Attn(manual)) for _ in "ab"])),
    "multihead_attention": lambda: _build(lambda: ZooDiT([Block(MHA()) for _ in "ab"])),
    "bool_mask": lambda: _build(_cls(MaskDiT, additive=False)),
    "additive_mask": lambda: _build(_cls(MaskDiT, additive=True)),
    "factorised_attention": lambda: _build(lambda: FactorDiT([Block(FactorAttn(a)) for a in ("space", "time")])),
    "linear_attention": lambda: _build(lambda: ZooDiT([Block(Attn(linear_attention)) for _ in "ab"])),
    "flex_attention": lambda: _build(lambda: ZooDiT([Block(Attn(flex)) for _ in "ab"])),
    "autocast_region": lambda: _build(_zoo(AutocastBlock)),
    "dynamic_text_length": lambda: _build(TextLengthDiT, _inputs(text_mask=text_mask(5))),
    "per_frame_modulation": lambda: _build(lambda: ZooDiT([FrameModBlock() for _ in "ab"], "frame")),
}

# layouts whose tokens can be subset in principle (each token's work outside attention is its own, or can be
# gathered): MotionCache should run on them. Factorised attention cannot (a frame's query set would be ragged).
SUBSETTABLE = set(CONSTRUCTS) - {"factorised_attention"}
