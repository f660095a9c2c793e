"""The rows of the peer comparison (`mcgraph.bench.peers`), as runnable entries on one `PeerLoop`:
diffusers' cache hooks (FirstBlockCache, PyramidAttentionBroadcast, TaylorSeer; `diffusers_entries`) and
mcgraph's policies (TeaCache, FlowCache, MotionCache, MotionCache with a token budget; `mcgraph_entries`), each
at the values of `BenchSettings.peer_thresholds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mcgraph.bench.peer_models import PeerLoop
from mcgraph.bench.peer_settings import PEER_BUDGET_THRESHOLD
from mcgraph.bench.settings import BenchSettings

__all__ = ["diffusers_entries", "mcgraph_entries"]

def _diffusers_methods(settings: BenchSettings, clock: dict) -> list[tuple[str, str, dict, Callable]]:
    """(method, label, params, config factory) of each diffusers row; `clock` holds the loop's current timestep."""
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
    for k, order in th.get("taylorseer", ()):
        # diffusers' default identifiers ("^blocks.*attn", fullmatch) match no Wan module: cache whole blocks
        out.append(("taylorseer", f"TaylorSeer interval={k} order={order}",
                    {"cache_interval": k, "disable_cache_before_step": 3, "max_order": order,
                     "cache_identifiers": [r"blocks\.\d+"]},
                    lambda k=k, order=order: TaylorSeerCacheConfig(
                        cache_interval=k, disable_cache_before_step=3, max_order=order,
                        taylor_factors_dtype=torch.float32, cache_identifiers=[r"blocks\.\d+"])))
    return out


def mcgraph_entries(settings: BenchSettings, loop: PeerLoop) -> tuple[list[dict], float]:
    """mcgraph's policies on the peer model (captured before any diffusers hook touches it); capture seconds."""
    import torch

    import mcgraph
    from mcgraph.config import FlowCacheConfig, MotionCacheConfig, TeaCacheConfig

    example = dict(hidden_states=loop.noise.clone(), timestep=torch.tensor([500.0]), encoder_hidden_states=loop.ctx,
                   return_dict=False)
    t0 = time.perf_counter()
    base = mcgraph.optimize(loop.model, MotionCacheConfig(threshold=0.0, final_timestep=loop.final_t), (), example)
    capture_s = time.perf_counter() - t0
    th = settings.peer_thresholds
    specs = []  # (method, label, params, config)
    classes = {"teacache": TeaCacheConfig, "flowcache": FlowCacheConfig, "motioncache": MotionCacheConfig}
    for policy, cls in classes.items():
        for tau in th.get(policy, ()):
            specs.append((policy, f"{policy} τ={tau:g}", {"threshold": tau},
                          cls(threshold=tau, final_timestep=loop.final_t)))
    for b in th.get("motioncache_budget", ()):
        tau = PEER_BUDGET_THRESHOLD
        specs.append(("motioncache_budget", f"motioncache budget={b:g} (τ={tau:g})",
                      {"threshold": tau, "token_budget": b},
                      MotionCacheConfig(threshold=tau, token_budget=b, final_timestep=loop.final_t)))
    entries = []
    for method, label, params, config in specs:
        opt = base.with_config(config)

        def runner(opt=opt):
            opt.reset_cache()
            return loop.run(opt, "mcgraph")

        entries.append({"framework": "mcgraph", "method": method, "label": f"mcgraph {label}", "params": params,
                        "run": runner, "module": opt})
    return entries, capture_s


def diffusers_entries(settings: BenchSettings, loop: PeerLoop) -> list[dict]:
    """diffusers' caches on a copy of the model (same weights): `enable_cache` leaves hook registries on the
    modules even after `disable_cache`, which would make mcgraph see a changed model and capture it again."""
    import copy

    entries = []
    model = copy.deepcopy(loop.model)
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
