"""Train the bundled reference DiT with diffusion forcing on procedural sprite videos (CPU).

Diffusion forcing: every chunk of `causal_block_size` frames gets its own noise level. Half the batches
sort the levels so earlier chunks are cleaner (what autoregressive sampling sees), and some batches give
a clean first chunk (continuation of real history). Rectified flow, AdamW, warm-up + cosine LR, EMA.

Writes a safetensors checkpoint (EMA weights, config and the training command in its metadata) every
`--save-every` steps and at the end, plus a loss log (JSON lines) and, with matplotlib, a loss-curve PNG.

Resumable: `--state` holds everything a run needs to continue (weights, EMA, optimizer moments, step, both
random generators) in one safetensors file; rerun the same command and it continues where it stopped, so a
long run can span several working sessions. `--init` warm-starts from a reference checkpoint instead.

    python tools/train_reference.py --steps 6000 --batch 8 --out mcgraph/zoo/weights/reference.safetensors
    python tools/train_reference.py --steps 9000 --init mcgraph/zoo/weights/reference.safetensors --max-minutes 140
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mcgraph.video.flow_matching import NUM_TRAIN_TIMESTEPS, add_noise, shift_sigma
from mcgraph.zoo.latent import video_to_latent
from mcgraph.zoo.scenes import sample_batch
from mcgraph.zoo.weights import build_reference, count_parameters, load_reference, save_reference


def chunk_sigmas(rng: torch.Generator, batch: int, frames: int, cbs: int, shift: float,
                 p_sorted: float = 0.5, p_clean_first: float = 0.2) -> torch.Tensor:
    """Per-frame noise levels [B, frames], constant within each chunk of `cbs` frames."""
    chunks = math.ceil(frames / cbs)
    u = torch.rand(batch, chunks, generator=rng)
    sig = shift_sigma(u, shift)
    # sorted levels (earlier chunks cleaner) are what diffusion-forcing sampling shows the model
    sort = torch.rand(batch, generator=rng) < p_sorted
    sig[sort] = sig[sort].sort(dim=1).values
    clean_first = torch.rand(batch, generator=rng) < p_clean_first
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


def _save_state(path: Path, step: int, modules: dict, opt, t_rng, np_rng, args_dict):
    """Everything needed to continue training, as tensors + JSON metadata (safetensors; no pickle)."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().contiguous().cpu() for name, m in modules.items() for k, v in m.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = v.detach().contiguous().cpu() if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = t_rng.get_state()
    meta = {"step": json.dumps(step), "np_rng": json.dumps(np_rng.bit_generator.state),
            "param_groups": json.dumps(opt_state["param_groups"]), "args": json.dumps(args_dict)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a run killed mid-save keeps the previous state


def _load_state(path: Path, modules: dict, opt, t_rng, np_rng) -> int:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    t_rng.set_state(tensors["rng.torch"])
    np_rng.bit_generator.state = json.loads(meta["np_rng"])
    return int(json.loads(meta["step"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6000, help="total steps of the run (the LR schedule spans them)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--shift", type=float, default=2.0, help="noise-level shift used for training")
    p.add_argument("--label-dropout", type=float, default=0.1, help="probability of the null label (for CFG)")
    p.add_argument("--p-sorted", type=float, default=0.5, help="fraction of batches with sorted chunk noise levels")
    p.add_argument("--p-clean-first", type=float, default=0.2, help="fraction of batches with a clean first chunk")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and save) after this wall time")
    p.add_argument("--init", type=Path, default=None, help="warm-start from this reference checkpoint (EMA weights)")
    p.add_argument("--state", type=Path, default=Path("train_state/reference_train.safetensors"),
                   help="resumable training state; continued automatically when it exists")
    p.add_argument("--fresh", action="store_true", help="ignore an existing --state file")
    p.add_argument("--out", type=Path, default=Path("mcgraph/zoo/weights/reference.safetensors"))
    p.add_argument("--log", type=Path, default=Path("docs/reference_training_loss.jsonl"))
    p.add_argument("--plot", type=Path, default=Path("docs/reference_training_loss.png"))
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    t_rng = torch.Generator().manual_seed(args.seed)
    if args.init is not None:
        model, encoder = load_reference(args.init)
        model.train()
        encoder.train()
    else:
        model, encoder = build_reference()
    model.to(dev)
    encoder.to(dev)
    cfg = model.config
    params = list(model.parameters()) + list(encoder.parameters())
    ema_model, ema_encoder = copy.deepcopy(model).eval(), copy.deepcopy(encoder).eval()
    ema_params = list(ema_model.parameters()) + list(ema_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    modules = {"model": model, "encoder": encoder, "ema_model": ema_model, "ema_encoder": ema_encoder}
    first = 1
    if args.state.is_file() and not args.fresh:
        first = _load_state(args.state, modules, opt, t_rng, np_rng) + 1
        print(f"resuming from {args.state} at step {first}", flush=True)
    n_params = count_parameters(model) + count_parameters(encoder)
    print(f"reference DiT: {n_params:,} parameters, config {cfg.to_dict()}", flush=True)

    from tqdm import tqdm

    args.log.parent.mkdir(parents=True, exist_ok=True)
    log = args.log.open("a" if first > 1 else "w")
    command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    start = time.time()
    bar = tqdm(range(first, args.steps + 1), desc="train", unit="step", mininterval=5)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def save(step):
        info = {"step": step, "command": command, "seed": args.seed, "batch": args.batch,
                "minutes_this_run": round((time.time() - start) / 60, 2), "parameters": n_params,
                "init": str(args.init) if args.init else None, "device": str(dev)}
        save_reference(args.out, ema_model, ema_encoder, info)
        _save_state(args.state, step, modules, opt, t_rng, np_rng, vars(args) | {"init": str(args.init), "state": str(args.state),
                    "out": str(args.out), "log": str(args.log), "plot": str(args.plot)})

    step = first - 1
    for step in bar:
        lr = args.lr * min(1.0, step / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        videos, labels, _ = sample_batch(np_rng, args.batch, frames=args.frames)
        x0 = video_to_latent(torch.from_numpy(videos))
        labels = torch.from_numpy(labels)
        drop = torch.rand(args.batch, generator=t_rng) < args.label_dropout
        labels[drop] = 0
        sig = chunk_sigmas(t_rng, args.batch, args.frames, cfg.causal_block_size, args.shift, args.p_sorted,
                           args.p_clean_first)
        noise = torch.randn(x0.shape, generator=t_rng)
        x0, noise, sig, labels = x0.to(dev), noise.to(dev), sig.to(dev), labels.to(dev)
        s = sig[:, None, :, None, None]
        xt = add_noise(x0, noise, s)
        with autocast:
            v = model(xt, sig * NUM_TRAIN_TIMESTEPS, encoder(labels))
        err = (v.float() - (noise - x0)) ** 2
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
            log.flush()
            save(step)
            plot_loss(args.log, args.plot)
        if out_of_time:
            print(f"stopping at step {step}: --max-minutes reached; rerun the command to continue", flush=True)
            break
    log.close()
    print(f"done in {(time.time() - start) / 60:.1f} min (step {step}); weights at {args.out}", flush=True)


if __name__ == "__main__":
    main()
