"""MotionCache vs FlowCache at matched compute on the bundled model (3 seeds, 50 steps, CFG 4, 28 frames in
16-frame windows), plus the motion-weight floor. Prints per-run and mean (computed fraction, PSNR dB vs uncached).

    python tools/compare_flow_motion.py
"""
import torch, numpy as np
torch.set_num_threads(1)
import mcgraph
from mcgraph.config import MotionCacheConfig, FlowCacheConfig
from mcgraph.zoo.weights import load_reference, read_metadata, BUNDLED_WEIGHTS
from mcgraph.zoo.scenes import random_scene
from mcgraph.zoo.latent import latent_to_video
from mcgraph.video.sampler import sample
from mcgraph.video.flow_matching import final_timestep
from mcgraph.eval.metrics import psnr
print("step", read_metadata(BUNDLED_WEIGHTS)["info"]["step"], flush=True)
m, enc = load_reference()
kw = dict(steps=50, shift=2.0, guidance_scale=4.0, causal_block_size=4, ar_step=4, window_frames=16, overlap_frames=4)
shape = (1, 12, 28, 16, 16)
ft = final_timestep(50, 2.0)
configs = [("flow", FlowCacheConfig, t, {}) for t in (0.03, 0.05, 0.07, 0.1)] + \
          [(f"motion f{f}", MotionCacheConfig, t, dict(weight_floor=f)) for f in (0.6, 0.8) for t in (0.05, 0.07, 0.1)]
res = {}
base = None
for seed in (0, 1, 2):
    sc = random_scene(np.random.default_rng(seed))
    with torch.no_grad():
        ctx = enc(torch.from_numpy(sc.label())[None]); neg = enc(torch.zeros(1, 11, dtype=torch.long))
    if base is None:
        ex = dict(hidden_states=torch.randn(1,12,16,16,16), timesteps=torch.rand(1,16)*1000, context=ctx)
        base = mcgraph.optimize(m, MotionCacheConfig(threshold=0.0), (), ex)
    with torch.no_grad(): ref = sample(m, shape, ctx, neg, seed=seed, **kw)
    rv = latent_to_video(ref.latent)[0]
    for name, C, thr, extra in configs:
        o = base.with_config(C(threshold=thr, final_timestep=ft, **extra)); o.record_decisions()
        with torch.no_grad(): g = sample(o, shape, ctx, neg, seed=seed, **kw)
        rec = o.decision_records
        fr = sum(r.executed for r in rec)/sum(r.tokens for r in rec)
        p = float(psnr(latent_to_video(g.latent)[0], rv))
        res.setdefault((name, thr), []).append((fr, p))
        print(seed, name, thr, round(fr,3), round(p,2), flush=True)
print("MEANS")
for k, v in res.items():
    print(k, round(np.mean([a for a,_ in v]),3), round(np.mean([b for _,b in v]),2))
