"""Write docs/reference_samples.png: for a few seeds, the real clip and the model's continuation of its first
chunk (the rest generated), one row each, so you can see what the bundled model does.

    python tools/sample_strip.py --out docs/reference_samples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mcgraph.eval.video_io import save_strip
from mcgraph.zoo.quality import continuation
from mcgraph.zoo.weights import load_reference


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/reference_samples.png"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, encoder = load_reference()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        c = continuation(model, encoder, seed, steps=args.steps, guidance=args.guidance)
        rows += [c.real, c.generated]
        print(f"seed {seed}: background error {c.background_error:.3f}, moving pixels real "
              f"{c.moving_fraction_real:.3f} / generated {c.moving_fraction_generated:.3f}")
    save_strip(rows, args.out)
    print(f"wrote {args.out} (rows: real, continuation; per seed)")


if __name__ == "__main__":
    main()
