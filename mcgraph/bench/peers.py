"""The peer comparison of `mcgraph bench --peers` / `--peers-only`: diffusers' `WanTransformer3DModel` (random
weights, built offline; `mcgraph.bench.peer_models`) in a standard flow-matching loop with CFG under diffusers'
own cache hooks (FirstBlockCache, PyramidAttentionBroadcast, TaylorSeer) and under mcgraph's policies (TeaCache,
FlowCache, MotionCache, MotionCache with a static token budget; the rows: `mcgraph.bench.peer_methods`); speedup
vs the relative error of the final latent.

- `run_peers`: the `peers` section of bench.json (see schema.json).
- `peer_comparison`: the same plus what bench.json has no room for (CPU times, reproducibility);
  `run_peers_only`: that as the document `--peers-only` writes (peers.json; its table and peers.md:
  `mcgraph.bench.peer_report`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

from mcgraph.bench.environment import peer_environment
from mcgraph.bench.measure import (
    Progress,
    median,
    record_summary,
    recorded_decisions,
    set_threads,
)
from mcgraph.bench.peer_methods import diffusers_entries, mcgraph_entries
from mcgraph.bench.peer_models import PeerLoop
from mcgraph.bench.settings import BenchSettings

__all__ = ["peer_comparison", "run_peers", "run_peers_only"]

def _measure(settings: BenchSettings, loop: PeerLoop, entries: list[dict], bar: Progress) -> dict:
    """Counted runs (FLOPs, decisions, error vs uncached; also the warm-up), then `repeats` interleaved timed
    rounds per thread count (uncached, every entry, in turn): wall and process CPU seconds of each. Fills each
    entry; returns the baseline's figures and whether every timed generation reproduced its counted latent."""
    import torch

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
        e["times"], e["cpu"] = {}, {}
        bar.step(f"{e['label']} (counted)")
    base = {"times": {}, "cpu": {}, "latent": ref}
    reproducible = True
    for threads in settings.threads:
        set_threads(threads)
        key = str(threads)
        for _ in range(settings.repeats):
            for e in [None] + entries:
                rec = base if e is None else e
                fn = loop.plain if e is None else e["run"]
                c0, t0 = time.process_time(), time.perf_counter()
                out = fn()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                rec["times"].setdefault(key, []).append(dt)
                rec["cpu"].setdefault(key, []).append(dc)
                reproducible &= bool(torch.equal(out, rec["latent"]))
                bar.step("uncached" if e is None else e["label"])
    return {"flops": fc.total, "times": base["times"], "cpu": base["cpu"], "reproducible": reproducible}


def peer_comparison(settings: BenchSettings, *, progress: bool = True) -> dict:
    """Run the peer comparison: {"peers": the schema's `peers` section (see `run_peers`), "cpu": process CPU
    seconds per thread count ({"baseline": {...}, "runs": [{...} in the order of peers["runs"]]}),
    "reproducible": every timed generation gave its counted latent bit for bit, "video_tokens": tokens per call}."""
    loop = PeerLoop(settings)
    entries, capture_s = mcgraph_entries(settings, loop)
    entries += diffusers_entries(settings, loop)
    n_gen = (1 + len(entries)) * (1 + settings.repeats * len(settings.threads))
    bar = Progress(n_gen, progress, "peers")
    try:
        base = _measure(settings, loop, entries, bar)
    finally:
        bar.close()
        set_threads(settings.threads[0])

    base_flops, base_times = base["flops"], base["times"]
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
    peers = {
        "model": {"class": "diffusers.WanTransformer3DModel", "name": settings.peer_model, "config": loop.model_cfg,
                  "weights": "random (torch.manual_seed(0))", "latent_shape": list(loop.latent_shape),
                  "text_shape": list(loop.text_shape)},
        "loop": {"steps": loop.steps, "shift": loop.shift, "guidance_scale": loop.guidance, "calls": 2 * loop.steps,
                 "final_timestep": loop.final_t},
        "capture_s": capture_s,
        "baseline": {"wall_s": base_wall, "wall_repeats": base_times, "flops": base_flops},
        "runs": runs,
    }
    cpu = {"baseline": {"cpu_repeats": base["cpu"]},
           "runs": [{"label": e["label"], "cpu_repeats": e["cpu"]} for e in entries]}
    return {"peers": peers, "cpu": cpu, "reproducible": base["reproducible"], "video_tokens": loop.tokens}


def run_peers(settings: BenchSettings, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Diffusers' Wan transformer (random weights): diffusers' cache hooks vs mcgraph's policies (the `peers`
    section of bench.json)."""
    return peer_comparison(settings, progress=progress)["peers"]


def run_peers_only(settings: BenchSettings, *, progress: bool = True, command: str | None = None) -> dict:
    """The peers.json document of `mcgraph bench --peers-only`."""
    started = time.perf_counter()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env = peer_environment(settings.threads)
    result = peer_comparison(settings, progress=progress)
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"kind": "mcgraph peer comparison", "created": created, "command": command, "environment": env,
            "settings": {k: v for k, v in settings.to_json().items()
                         if k.startswith("peer") or k in ("guidance_scale", "repeats", "threads")},
            **result, "elapsed_s": time.perf_counter() - started}
