"""MotionCache vs FlowCache at matched compute on the bundled model (3 seeds, 50 steps, CFG 4, 28 frames in
16-frame windows), plus the motion-weight floor. Prints per-run and mean (computed fraction, PSNR dB vs uncached).

    python tools/compare_flow_motion.py
    python tools/compare_flow_motion.py --seeds 0 --steps 2 --frames 8    # a quick check of the script
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import mcgraph
from mcgraph.config import FlowCacheConfig, MotionCacheConfig
from mcgraph.eval.metrics import psnr
from mcgraph.video.flow_matching import final_timestep
from mcgraph.video.sampler import sample
from mcgraph.zoo.latent import latent_to_video
from mcgraph.zoo.scenes import null_label, random_scene
from mcgraph.zoo.weights import BUNDLED_WEIGHTS, load_reference, read_metadata

CONFIGS = [("flow", FlowCacheConfig, t, {}) for t in (0.03, 0.05, 0.07, 0.1)] + [
    (f"motion f{f}", MotionCacheConfig, t, dict(weight_floor=f)) for f in (0.6, 0.8) for t in (0.05, 0.07, 0.1)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--frames", type=int, default=28, help="latent frames generated (16-frame windows)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("step", read_metadata(BUNDLED_WEIGHTS)["info"]["step"], flush=True)
    m, enc = load_reference()
    kw = dict(steps=args.steps, shift=2.0, guidance_scale=4.0, causal_block_size=4, ar_step=4, window_frames=16,
              overlap_frames=4)
    shape = (1, 12, args.frames, 16, 16)
    ft = final_timestep(args.steps, 2.0)
    res, base = {}, None
    for seed in (int(s) for s in args.seeds.split(",")):
        sc = random_scene(np.random.default_rng(seed))
        with torch.no_grad():
            ctx, neg = enc(torch.from_numpy(sc.label())[None]), enc(torch.from_numpy(null_label(1)))
        if base is None:
            ex = dict(hidden_states=torch.randn(1, 12, 16, 16, 16), timesteps=torch.rand(1, 16) * 1000, context=ctx)
            base = mcgraph.optimize(m, MotionCacheConfig(threshold=0.0), (), ex)
        with torch.no_grad():
            rv = latent_to_video(sample(m, shape, ctx, neg, seed=seed, **kw).latent)[0]
        for name, config_cls, thr, extra in CONFIGS:
            o = base.with_config(config_cls(threshold=thr, final_timestep=ft, **extra))
            o.record_decisions()
            with torch.no_grad():
                g = sample(o, shape, ctx, neg, seed=seed, **kw)
            rec = o.decision_records
            fr = sum(r.executed for r in rec) / sum(r.tokens for r in rec)
            ps = float(psnr(latent_to_video(g.latent)[0], rv))
            res.setdefault((name, thr), []).append((fr, ps))
            print(seed, name, thr, round(fr, 3), round(ps, 2), flush=True)
    print("MEANS")
    for k, v in res.items():
        print(k, round(np.mean([a for a, _ in v]), 3), round(np.mean([b for _, b in v]), 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
