"""The peer comparison of `mcgraph bench --peers`: diffusers' `WanTransformer3DModel` (random weights, built
offline) in a standard flow-matching loop with CFG under diffusers' own cache hooks (FirstBlockCache,
PyramidAttentionBroadcast, TaylorSeer) and under mcgraph's policies; speedup vs the relative error of the
final latent."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from mcgraph.bench.measure import Progress, median, record_summary, recorded_decisions, set_threads
from mcgraph.bench.settings import BenchSettings

__all__ = ["run_peers"]


def _peer_model(size: str):
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

        torch.manual_seed(0)
        cfg = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
                   out_channels=16, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, rope_max_seq_len=64)
        model = WanTransformer3DModel(**cfg).eval()
        latent, text = (1, 16, 8, 16, 16), (1, 7, 64)
    keep = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers")
    shown = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in keep}
    return model.eval(), latent, text, shown


def _wan_loop(model, noise, ctx, neg, steps: int, shift: float, guidance: float, contexts: str = "none",
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


def _diffusers_methods(settings: BenchSettings, clock: dict) -> list[tuple[str, str, dict, Callable]]:
    import torch
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    th = settings.peer_thresholds
    out = []
    for tau in th.get("first_block_cache", ()):
        out.append(("first_block_cache", f"FirstBlockCache threshold={tau:g}", {"threshold": tau},
                    lambda tau=tau: FirstBlockCacheConfig(threshold=tau)))
    for k in th.get("pyramid_attention_broadcast", ()):
        k = int(k)
        out.append(("pyramid_attention_broadcast", f"PAB skip={k}",
                    {"spatial_attention_block_skip_range": k, "cross_attention_block_skip_range": k,
                     "timestep_skip_range": [100, 800]},
                    lambda k=k: PyramidAttentionBroadcastConfig(
                        spatial_attention_block_skip_range=k, cross_attention_block_skip_range=k,
                        spatial_attention_timestep_skip_range=(100, 800),
                        cross_attention_timestep_skip_range=(100, 800),
                        current_timestep_callback=lambda: clock["t"])))
    for k in th.get("taylorseer", ()):
        k = int(k)
        # diffusers' default identifiers ("^blocks.*attn", fullmatch) match no Wan module: cache whole blocks
        out.append(("taylorseer", f"TaylorSeer interval={k}",
                    {"cache_interval": k, "disable_cache_before_step": 3, "max_order": 1,
                     "cache_identifiers": [r"blocks\.\d+"]},
                    lambda k=k: TaylorSeerCacheConfig(cache_interval=k, disable_cache_before_step=3, max_order=1,
                                                      taylor_factors_dtype=torch.float32,
                                                      cache_identifiers=[r"blocks\.\d+"])))
    return out




class _Loop:
    """The peer model and one fixed generation: noise, text embeddings, the schedule; `run(model, contexts)`."""

    def __init__(self, settings: BenchSettings):
        import torch

        from mcgraph.video.flow_matching import final_timestep

        self.model, self.latent_shape, self.text_shape, self.model_cfg = _peer_model(settings.peer_model)
        self.steps, self.shift, self.guidance = settings.peer_steps, 3.0, settings.guidance_scale
        g = torch.Generator().manual_seed(1234)
        self.noise = torch.randn(self.latent_shape, generator=g)
        self.ctx = torch.randn(self.text_shape, generator=g)
        self.neg = torch.zeros(self.text_shape)
        self.final_t = final_timestep(self.steps, self.shift)
        self.clock = {"t": 1000.0}

    def run(self, model, contexts: str = "none"):
        return _wan_loop(model, self.noise, self.ctx, self.neg, self.steps, self.shift, self.guidance, contexts,
                         self.clock)

    def plain(self):
        return self.run(self.model)


def _mcgraph_entries(settings: BenchSettings, loop: _Loop) -> tuple[list[dict], float]:
    """mcgraph's policies on the peer model (captured before any diffusers hook touches it); capture seconds."""
    import torch

    import mcgraph
    from mcgraph.config import FlowCacheConfig, MotionCacheConfig, TeaCacheConfig

    example = dict(hidden_states=loop.noise.clone(), timestep=torch.tensor([500.0]), encoder_hidden_states=loop.ctx,
                   return_dict=False)
    t0 = time.perf_counter()
    base = mcgraph.optimize(loop.model, MotionCacheConfig(threshold=0.0, final_timestep=loop.final_t), (), example)
    capture_s = time.perf_counter() - t0
    entries = []
    classes = {"teacache": TeaCacheConfig, "flowcache": FlowCacheConfig, "motioncache": MotionCacheConfig}
    for policy, cls in classes.items():
        for tau in settings.peer_thresholds.get(policy, ()):
            opt = base.with_config(cls(threshold=float(tau), final_timestep=loop.final_t))

            def runner(opt=opt):
                opt.reset_cache()
                return loop.run(opt, "mcgraph")

            entries.append({"framework": "mcgraph", "method": policy, "label": f"mcgraph {policy} τ={float(tau):g}",
                            "params": {"threshold": float(tau)}, "run": runner, "module": opt})
    return entries, capture_s


def _diffusers_entries(settings: BenchSettings, loop: _Loop) -> list[dict]:
    entries = []
    model = loop.model
    for method, label, params, make in _diffusers_methods(settings, loop.clock):
        def runner(make=make):
            # enable, run, disable: only one cache can be enabled at a time; state reset per generation
            model.enable_cache(make())
            try:
                model._reset_stateful_cache()
                return loop.run(model, "diffusers")
            finally:
                model.disable_cache()

        entries.append({"framework": "diffusers", "method": method, "label": f"diffusers {label}", "params": params,
                        "run": runner, "module": None})
    return entries


def _measure(settings: BenchSettings, loop: _Loop, entries: list[dict], bar: Progress) -> tuple[float, dict]:
    """Counted runs (FLOPs, decisions, error vs uncached), then interleaved timed rounds per thread count;
    fills each entry, returns the baseline's FLOPs and times."""
    from mcgraph.eval import metrics

    set_threads(settings.threads[0])
    fc = metrics.count_flops(loop.plain)
    ref = fc.result
    bar.step("uncached (counted)")
    for e in entries:
        with recorded_decisions(e["module"]) as records:
            cnt = metrics.count_flops(e["run"])
        if e["module"] is not None:
            e["fractions"] = record_summary(records)
        e["latent"] = cnt.result
        e["flops"] = cnt.total
        e["rel_error"] = metrics.relative_error(cnt.result, ref)
        e["times"] = {}
        bar.step(f"{e['label']} (counted)")
    base_times: dict[str, list[float]] = {}
    for threads in settings.threads:
        set_threads(threads)
        key = str(threads)
        for _ in range(settings.repeats):
            for e in [None] + entries:
                fn = loop.plain if e is None else e["run"]
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                (base_times if e is None else e["times"]).setdefault(key, []).append(dt)
                bar.step("uncached" if e is None else e["label"])
    return fc.total, base_times


def run_peers(settings: BenchSettings, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Diffusers' Wan transformer (random weights): diffusers' cache hooks vs mcgraph's policies."""
    loop = _Loop(settings)
    entries, capture_s = _mcgraph_entries(settings, loop)
    entries += _diffusers_entries(settings, loop)
    n_gen = (1 + len(entries)) * (1 + settings.repeats * len(settings.threads))
    bar = Progress(n_gen, progress, "peers")
    try:
        base_flops, base_times = _measure(settings, loop, entries, bar)
    finally:
        bar.close()
        set_threads(settings.threads[0])

    base_wall = {k: median(v) for k, v in base_times.items()}
    runs = []
    for e in entries:
        wall = {k: median(v) for k, v in e["times"].items()}
        speedup = {k: base_wall[k] / wall[k] for k in wall}
        flop_speedup = base_flops / max(1, e["flops"])
        runs.append({"framework": e["framework"], "method": e["method"], "label": e["label"], "params": e["params"],
                     "wall_s": wall, "wall_repeats": e["times"], "speedup": speedup, "flops": e["flops"],
                     "flop_speedup": flop_speedup, "efficiency": {k: v / flop_speedup for k, v in speedup.items()},
                     "rel_error": e["rel_error"],
                     "executed_fraction": e.get("fractions", {}).get("executed_fraction")})
    return {
        "model": {"class": "diffusers.WanTransformer3DModel", "name": settings.peer_model, "config": loop.model_cfg,
                  "weights": "random (torch.manual_seed(0))", "latent_shape": list(loop.latent_shape),
                  "text_shape": list(loop.text_shape)},
        "loop": {"steps": loop.steps, "shift": loop.shift, "guidance_scale": loop.guidance, "calls": 2 * loop.steps,
                 "final_timestep": loop.final_t},
        "capture_s": capture_s,
        "baseline": {"wall_s": base_wall, "wall_repeats": base_times, "flops": base_flops},
        "runs": runs,
    }
