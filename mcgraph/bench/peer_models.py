"""The model of the peer comparison (`mcgraph.bench.peers`) and the generation it runs: diffusers'
`WanTransformer3DModel` at one of `PEER_SIZES` (random weights, built offline; `peer_model`), in a standard
flow-matching Euler loop with two-call CFG (`cfg_flow_loop`); `PeerLoop` holds one fixed generation of it.
"""

from __future__ import annotations

import contextlib

from mcgraph.bench.settings import BenchSettings

__all__ = ["PEER_SIZES", "PeerLoop", "cfg_flow_loop", "peer_model", "video_tokens"]

_WAN_BENCH = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
                  text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, rope_max_seq_len=64)
# name -> (diffusers config, latent shape, text shape); "wan-tiny" is `mcgraph.zoo.subjects.wan_subject("tiny")`
PEER_SIZES = {
    # 512 video tokens (8 frames of 8 x 8 patches), 7 text tokens
    "wan-bench": (_WAN_BENCH, (1, 16, 8, 16, 16), (1, 7, 64)),
    # issue 14's peer setting: hidden 384 (6 heads x 64), 4 blocks, ffn 4 x hidden; 1024 video tokens (16 frames
    # of 8 x 8 patches), 512 text tokens
    "wan-384": ({**_WAN_BENCH, "num_attention_heads": 6, "attention_head_dim": 64, "ffn_dim": 1536},
                (1, 16, 16, 16, 16), (1, 512, 64)),
}


def peer_model(size: str):
    """(model, latent shape, text shape, the config's main fields) of a peer size; random weights (seed 0)."""
    import torch

    if size == "wan-tiny":
        from mcgraph.zoo.subjects import wan_subject

        s = wan_subject("tiny")
        model = s.model
        latent = tuple(s.kwargs["hidden_states"].shape)
        text = tuple(s.kwargs["encoder_hidden_states"].shape)
        cfg = dict(model.config)
    else:
        from diffusers import WanTransformer3DModel

        if size not in PEER_SIZES:
            raise ValueError(f"unknown peer size {size!r}; known: wan-tiny, {', '.join(PEER_SIZES)}")
        cfg, latent, text = PEER_SIZES[size]
        torch.manual_seed(0)
        model = WanTransformer3DModel(**cfg).eval()
    keep = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers")
    shown = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in keep}
    return model.eval(), latent, text, shown


def video_tokens(latent: tuple, patch) -> int:
    """Video tokens per model call of a latent shape (B, C, F, H, W) under the patch size."""
    p = tuple(patch)
    return (latent[2] // p[0]) * (latent[3] // p[1]) * (latent[4] // p[2])


def cfg_flow_loop(model, noise, ctx, neg, steps: int, shift: float, guidance: float, contexts: str = "none",
                  clock: dict | None = None):
    """Standard flow-matching Euler loop with CFG (diffusers' Wan pipeline order: cond, then uncond).

    contexts: "none" (plain model), "mcgraph" (cache_context(name)) or "diffusers" (cache_context(name, step
    info), which diffusers' stateful cache hooks need)."""
    import torch

    from mcgraph.video.flow_matching import sigma_schedule

    sig = sigma_schedule(steps, shift).float()
    x = noise.clone()
    with torch.no_grad():
        for i in range(steps):
            t = torch.tensor([float(sig[i] * 1000)])
            if clock is not None:
                clock["t"] = float(t)
            if contexts == "diffusers":
                kw = dict(step_index=i, num_inference_steps=steps, timestep=float(t), sigma=float(sig[i]))
                ctx_c, ctx_u = model.cache_context("cond", **kw), model.cache_context("uncond", **kw)
            elif contexts == "mcgraph":
                ctx_c, ctx_u = model.cache_context("cond"), model.cache_context("uncond")
            else:
                ctx_c = ctx_u = contextlib.nullcontext()
            with ctx_c:
                vc = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
            with ctx_u:
                vu = model(hidden_states=x, timestep=t, encoder_hidden_states=neg, return_dict=False)[0]
            x = x + (sig[i + 1] - sig[i]) * (vu + guidance * (vc - vu))
    return x


class PeerLoop:
    """The peer model and one fixed generation: noise, text embeddings, the schedule; `run(model, contexts)`."""

    def __init__(self, settings: BenchSettings):
        import torch

        from mcgraph.video.flow_matching import final_timestep

        self.model, self.latent_shape, self.text_shape, self.model_cfg = peer_model(settings.peer_model)
        self.steps, self.shift, self.guidance = settings.peer_steps, 3.0, settings.guidance_scale
        g = torch.Generator().manual_seed(1234)
        self.noise = torch.randn(self.latent_shape, generator=g)
        self.ctx = torch.randn(self.text_shape, generator=g)
        self.neg = torch.zeros(self.text_shape)
        self.final_t = final_timestep(self.steps, self.shift)
        self.clock = {"t": 1000.0}
        self.tokens = video_tokens(self.latent_shape, self.model_cfg["patch_size"])

    def run(self, model, contexts: str = "none"):
        return cfg_flow_loop(model, self.noise, self.ctx, self.neg, self.steps, self.shift, self.guidance,
                             contexts, self.clock)

    def plain(self):
        return self.run(self.model)

