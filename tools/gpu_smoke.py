"""Run the three runtimes' torch paths on a GPU (or any device): eager cache, torch.compile(optimize(model))
with Inductor, and the "mcgraph" backend; print parity against the eager cache and wall times.

    python tools/gpu_smoke.py --device cuda --out result.json

Needs no diffusers (the bundled reference model only). It exists to check device handling (every tensor the
cache makes lands on the model's device) and Inductor's lowering of the cond tree on a real accelerator.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcgraph
import mcgraph.runtime.backend
from mcgraph.config import MotionCacheConfig
from mcgraph.video.sampler import sample
from mcgraph.runtime.step import DEFAULT_GRAPH_BUCKETS
from mcgraph.zoo import scenes
from mcgraph.zoo.weights import load_reference


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="a small generation (CPU check of the script)")
    p.add_argument("--inner", default="inductor", help="torch.compile backend behind both runtimes")
    p.add_argument("--runtimes", default="compile,backend",
                   help="which compiled runtimes to run besides eager: compile, backend (comma separated)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    model, encoder = load_reference()
    model = model.to(dev).eval()
    cfg = MotionCacheConfig(threshold=args.threshold, capacity_buckets=DEFAULT_GRAPH_BUCKETS,
                            chunk_frames=4)
    shape = (1, 12, 28, 32, 32)
    kw = dict(steps=50, shift=2.0, guidance_scale=4.0, ar_step=4, causal_block_size=4, window_frames=16,
              overlap_frames=4)
    if args.quick:
        shape, kw = (1, 12, 12, 16, 16), dict(kw, steps=8, ar_step=2, window_frames=12)
    with torch.no_grad():
        ctx = encoder(torch.from_numpy(scenes.random_scene(np.random.default_rng(0)).label())[None]).to(dev)
        neg = encoder(torch.from_numpy(scenes.null_label(1))).to(dev)
    window = kw["window_frames"]
    example = dict(hidden_states=torch.randn(1, 12, window, *shape[3:], device=dev),
                   timesteps=torch.rand(1, window, device=dev) * 1000, context=ctx)
    results = {"device": str(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else str(dev),
               "torch": torch.__version__}

    def timed(fn):
        times = []
        out = None
        for _ in range(args.repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    gen = lambda m: sample(m, shape, ctx, neg, seed=1, device=dev, **kw).latent
    with torch.no_grad():
        base, results["uncached_s"] = timed(lambda: gen(model))
        opt = mcgraph.optimize(model, cfg, (), example)
        want, results["eager_cached_s"] = timed(lambda: gen(opt))
        runtimes = args.runtimes.split(",")
        if "compile" in runtimes:
            t0 = time.perf_counter()
            compiled = torch.compile(opt, backend=args.inner, fullgraph=True, dynamic=False)
            first = gen(compiled)
            results["compile_first_generation_s"] = time.perf_counter() - t0
            got, results["compiled_cached_s"] = timed(lambda: gen(compiled))
            results["compiled_vs_eager_max_abs"] = (got - want).abs().max().item()
            results["compiled_first_vs_eager_max_abs"] = (first - want).abs().max().item()
            torch._dynamo.reset()
        if "backend" in runtimes:
            t0 = time.perf_counter()
            backend = torch.compile(model, backend="mcgraph", dynamic=True,
                                    options={"config": cfg, "backend": args.inner})
            gen(backend)
            results["backend_first_generation_s"] = time.perf_counter() - t0
            got_b, results["backend_cached_s"] = timed(lambda: gen(backend))
            results["backend_vs_eager_max_abs"] = (got_b - want).abs().max().item()
    results["cached_vs_uncached_psnr_db"] = float(
        10 * torch.log10(4 / ((want - base) ** 2).mean().clamp_min(1e-12)))
    for k in ("eager_cached_s", "compiled_cached_s", "backend_cached_s"):
        if k in results:
            results[k.replace("_s", "_speedup")] = results["uncached_s"] / results[k]
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    ok = all(results.get(k, 0.0) <= 1e-3 for k in ("compiled_vs_eager_max_abs", "backend_vs_eager_max_abs"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
