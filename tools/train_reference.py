"""Train the bundled reference DiT with diffusion forcing on procedural sprite videos (CPU).

Diffusion forcing: every chunk of `causal_block_size` frames gets its own noise level. Half the batches
sort the levels so earlier chunks are cleaner (what autoregressive sampling sees), and some batches give
a clean first chunk (continuation of real history). Rectified flow, AdamW, warm-up + cosine LR, EMA.

Writes a safetensors checkpoint (EMA weights, config and the training command in its metadata) every
`--save-every` steps and at the end, plus a loss log (JSON lines) and, with matplotlib, a loss-curve PNG.

    python tools/train_reference.py --steps 6000 --batch 8 --out mcgraph/zoo/weights/reference.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mcgraph.flow_matching import NUM_TRAIN_TIMESTEPS, add_noise, shift_sigma
from mcgraph.zoo.latent import video_to_latent
from mcgraph.zoo.scenes import sample_batch
from mcgraph.zoo.weights import build_reference, count_parameters, save_reference


def chunk_sigmas(rng: torch.Generator, batch: int, frames: int, cbs: int, shift: float) -> torch.Tensor:
    """Per-frame noise levels [B, frames], constant within each chunk of `cbs` frames."""
    chunks = math.ceil(frames / cbs)
    u = torch.rand(batch, chunks, generator=rng)
    sig = shift_sigma(u, shift)
    sort = torch.rand(batch, generator=rng) < 0.5
    sig[sort] = sig[sort].sort(dim=1).values
    clean_first = torch.rand(batch, generator=rng) < 0.2
    sig[clean_first, 0] = 0.0
    return sig.repeat_interleave(cbs, dim=1)[:, :frames]


def plot_loss(log_path: Path, png_path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed; skipping the loss plot", file=sys.stderr)
        return
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, alpha=0.3, label="loss (per step)")
    ax.plot(steps[k - 1 :], smooth, label=f"moving mean ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    ax.set_title("reference DiT, diffusion-forcing training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--shift", type=float, default=2.0, help="noise-level shift used for training")
    p.add_argument("--label-dropout", type=float, default=0.1, help="probability of the null label (for CFG)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and save) after this wall time")
    p.add_argument("--out", type=Path, default=Path("mcgraph/zoo/weights/reference.safetensors"))
    p.add_argument("--log", type=Path, default=Path("docs/reference_training_loss.jsonl"))
    p.add_argument("--plot", type=Path, default=Path("docs/reference_training_loss.png"))
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    t_rng = torch.Generator().manual_seed(args.seed)
    model, encoder = build_reference()
    cfg = model.config
    params = list(model.parameters()) + list(encoder.parameters())
    ema_model, ema_encoder = copy.deepcopy(model).eval(), copy.deepcopy(encoder).eval()
    ema_params = list(ema_model.parameters()) + list(ema_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    n_params = count_parameters(model) + count_parameters(encoder)
    print(f"reference DiT: {n_params:,} parameters, config {cfg.to_dict()}", flush=True)

    from tqdm import tqdm

    args.log.parent.mkdir(parents=True, exist_ok=True)
    log = args.log.open("w")
    command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    start = time.time()
    bar = tqdm(range(1, args.steps + 1), desc="train", unit="step", mininterval=5)

    def save(step):
        info = {"step": step, "command": command, "seed": args.seed, "batch": args.batch,
                "minutes": round((time.time() - start) / 60, 2), "parameters": n_params}
        save_reference(args.out, ema_model, ema_encoder, info)

    for step in bar:
        lr = args.lr * min(1.0, step / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        videos, labels, _ = sample_batch(np_rng, args.batch, frames=args.frames)
        x0 = video_to_latent(torch.from_numpy(videos))
        labels = torch.from_numpy(labels)
        drop = torch.rand(args.batch, generator=t_rng) < args.label_dropout
        labels[drop] = 0
        sig = chunk_sigmas(t_rng, args.batch, args.frames, cfg.causal_block_size, args.shift)
        noise = torch.randn(x0.shape, generator=t_rng)
        s = sig[:, None, :, None, None]
        xt = add_noise(x0, noise, s)
        v = model(xt, sig * NUM_TRAIN_TIMESTEPS, encoder(labels))
        err = (v - (noise - x0)) ** 2
        weight = (sig > 0).float()[:, None, :, None, None].expand_as(err)  # clean history has no target
        loss = (err * weight).sum() / weight.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema_params, params):
                pe.lerp_(pm, 1 - args.ema)
        log.write(json.dumps({"step": step, "loss": round(loss.item(), 6), "lr": lr,
                              "t": round(time.time() - start, 1)}) + "\n")
        if step % 20 == 0:
            log.flush()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        out_of_time = args.max_minutes and (time.time() - start) > args.max_minutes * 60
        if step % args.save_every == 0 or step == args.steps or out_of_time:
            save(step)
            plot_loss(args.log, args.plot)
        if out_of_time:
            print(f"stopping at step {step}: --max-minutes reached", flush=True)
            break
    log.close()
    print(f"done in {(time.time() - start) / 60:.1f} min; weights at {args.out}", flush=True)


if __name__ == "__main__":
    main()
