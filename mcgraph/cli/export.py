"""`mcgraph export`: write a cache-aware model as one ONNX file (static shapes, explicit cache state).

Builds a built-in model (the bundled reference DiT by default, or one of `mcgraph.zoo.subjects`), optimises
it with a caching policy (`mcgraph.bench.settings.make_cache_config`, the same settings as `mcgraph demo --cache`),
exports it with `mcgraph.export.onnx`, checks the file with ``onnx.checker`` and prints what was written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mcgraph.cli.common import (
    UsageError,
    add_command,
    buckets,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    prepare_output_file,
)

REFERENCE_MODELS = ("reference", "reference-untrained")
DEFAULT_REFERENCE_FRAMES = 16  # the demo's window


def add_export_command(subparsers) -> None:
    from mcgraph.zoo.subjects import SUBJECT_NAMES

    p = add_command(
        subparsers, "export",
        help="export a cache-aware model to ONNX (cache state as explicit inputs/outputs)",
        description=(
            "Optimise a built-in model with a caching policy and write it as one ONNX file: the model's tensor "
            "inputs plus state_* inputs in, its outputs plus the decision (mcgraph_recomputed, mcgraph_executed) "
            "and new_state_* out; the reuse decision and the skip / capacity-bucket / full paths are inside the "
            "graph (If nodes). Shapes are static: those of the example inputs (--frames). The file is checked "
            "with onnx.checker; run it with mcgraph.export.OrtSession(FILE), which the diffusion-forcing sampler "
            "drives like the model. Models: " + ", ".join(SUBJECT_NAMES) + " (reference: the bundled trained "
            "DiT, called as the demo calls it: batch 1, 12 x FRAMES x 16 x 16 latents)."
        ),
    )
    p.add_argument("output", type=Path, metavar="FILE", help="the ONNX file to write (e.g. model.onnx)")
    p.add_argument("--model", default="reference", choices=SUBJECT_NAMES, help="built-in model to export")
    p.add_argument("--cache", default="motioncache", choices=("none", "teacache", "flowcache", "motioncache"),
                   help="caching policy compiled into the graph ('none' cannot be exported this way)")
    p.add_argument("--threshold", type=nonnegative_float, default=None,
                   help="reuse threshold of the policy (default: the policy's, 0.1)")
    p.add_argument("--buckets", type=buckets, default=None, metavar="F1,F2,...",
                   help="capacity buckets: fractions of the token count ending with 1, e.g. 0.25,0.5,1 "
                        "(default: 0.125,0.25,0.375,0.5,0.75,1); fewer buckets make a smaller graph")
    p.add_argument("--motion-source", default=None, metavar="SOURCE",
                   help="motioncache: hidden, latent, clean or residual (default: the config's)")
    p.add_argument("--frames", type=positive_int, default=None,
                   help=f"frames of the example input, i.e. the window length the sampler will call the model "
                        f"with (default: {DEFAULT_REFERENCE_FRAMES} for the reference, the demo's window; else "
                        f"the model's example)")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="denoising steps of the schedule it will run (sets the policy's final_timestep)")
    p.add_argument("--shift", type=positive_float, default=2.0, help="timestep shift of that schedule")
    p.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="--model reference: weights file (default: bundled)")
    p.add_argument("--verify", action="store_true",
                   help="also run a few calls through ONNX Runtime and the eager model with the same buckets and "
                        "print the largest output difference")
    p.add_argument("--threads", type=nonnegative_int, default=0,
                   help="torch / ONNX Runtime CPU threads (0: default)")
    p.set_defaults(func=run_export_command)


def build_subject(name: str, frames: int | None, weights: Path | None):
    """(model, example kwargs, description) of a built-in model, called as the sampler calls it."""
    import torch

    if weights is not None and name != "reference":
        raise UsageError(f"--weights applies to --model reference only, not {name!r}")
    if name in REFERENCE_MODELS:
        from mcgraph.zoo import scenes
        from mcgraph.zoo.weights import BUNDLED_WEIGHTS, build_reference, load_reference

        if name == "reference":
            path = weights if weights is not None else BUNDLED_WEIGHTS
            model, encoder = load_reference(path)
            source = str(path)
        else:
            torch.manual_seed(0)
            model, encoder = build_reference()
            model.eval()
            source = "random weights"
        frames = frames or DEFAULT_REFERENCE_FRAMES
        with torch.no_grad():
            context = encoder(torch.from_numpy(scenes.null_label(1)))
        g = torch.Generator().manual_seed(0)
        cfg = model.config
        kwargs = dict(hidden_states=torch.randn(1, cfg.in_channels, frames, 16, 16, generator=g),
                      timesteps=torch.rand(1, frames, generator=g) * 1000, context=context)
        return model, kwargs, f"{name} ({source})"
    from mcgraph.zoo.subjects import SUBJECTS

    try:
        subject = SUBJECTS[name]()
    except ImportError as e:
        raise RuntimeError(f"model {name!r} needs a package that is not installed: {e}") from None
    kwargs = subject.make_kwargs(frames=frames) if frames is not None else subject.kwargs
    return subject.model, kwargs, name


def _shapes(kwargs: dict) -> str:
    import torch

    return ", ".join(f"{k} {list(v.shape)}" for k, v in kwargs.items() if isinstance(v, torch.Tensor))


def run_export_command(args: argparse.Namespace) -> int:
    if args.cache == "none":
        raise UsageError("--cache none has no cache to export; pick teacache, flowcache or motioncache (the "
                         "uncached model exports with plain torch.onnx.export)")
    if args.weights is not None and args.model != "reference":
        raise UsageError(f"--weights applies to --model reference only, not {args.model!r}")
    if args.weights is not None and not args.weights.is_file():
        raise UsageError(f"--weights {args.weights}: no such file")
    prepare_output_file(args.output, "FILE")  # now: the file is written only after optimising and exporting
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"ONNX export needs the onnx extra (pip install 'mcgraph[onnx]'): {e}") from None

    import torch

    import mcgraph

    from mcgraph.bench.runtimes import graph_config, quiet_export
    from mcgraph.bench.settings import SettingsError, make_cache_config
    from mcgraph.export import export_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = graph_config(make_cache_config(args.cache, steps=args.steps, shift=args.shift,
                                                threshold=args.threshold, motion_source=args.motion_source,
                                                capacity_buckets=args.buckets))
    except SettingsError as e:
        raise UsageError(str(e)) from None
    model, kwargs, description = build_subject(args.model, args.frames, args.weights)
    print(f"model: {description}; example inputs: {_shapes(kwargs)}")
    bucket_text = ",".join(f"{b:g}" for b in config.capacity_buckets)
    print(f"cache: {config.policy} threshold {config.threshold:g}, capacity buckets {bucket_text}")
    opt = mcgraph.optimize(model, config, (), kwargs)
    with quiet_export():
        info = export_onnx(opt, args.output, example_kwargs=kwargs, check=False)

    import onnx

    onnx.checker.check_model(str(args.output))
    print(f"wrote {info.summary()}")
    print("onnx.checker: passed")
    print(f"inputs: {', '.join(info.inputs)}")
    print(f"outputs: {', '.join(info.outputs)}")
    print(f"state tensors ({len(info.state)}): {', '.join(info.state)}")
    if args.verify:
        diff, paths = verify(opt, args.output, kwargs, threads=args.threads or None)
        print(f"verify: {len(paths)} calls ({', '.join(paths)}), max |ONNX Runtime - eager| {diff:.3g}")
    print(f"run it: mcgraph.export.OrtSession({str(args.output)!r}) (called like the model; static shapes)")
    return 0


def verify(opt, path, kwargs: dict, *, threads: int | None = None, calls: int = 10) -> tuple[float, list[str]]:
    """Run `calls` calls (perturbed inputs, one cache context) through the exported file and the eager model
    `opt` (same config, same buckets); (largest output difference, path each eager call took)."""
    import torch
    import torch.utils._pytree as pytree

    from mcgraph.bench.runtimes import quiet_export
    from mcgraph.export import OrtSession

    with quiet_export():
        session = OrtSession(path, threads=threads)
    opt.reset_cache()
    records = opt.record_decisions()
    start = len(records)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    with torch.no_grad():
        for i in range(calls):
            call = {k: _perturb(v, i, g) for k, v in kwargs.items()}
            want = pytree.tree_leaves(opt(**call))
            got = pytree.tree_leaves(session(**call))
            for a, b in zip(want, got):
                if isinstance(a, torch.Tensor):
                    worst = max(worst, (a.float() - b.float()).abs().max().item())
    opt.record_decisions(False)
    opt.reset_cache()
    return worst, [r.path for r in records[start:]]


def _perturb(value, i: int, generator):
    """The i-th verify input: a video latent ([B, C, F, H, W]) drifts slightly, and more in its second half of
    frames, so the policy recomputes some tokens and reuses others (subset calls). Other inputs (conditioning,
    timesteps) stay as they are, as within one generation: a changed conditioning would (rightly) force every
    token to be recomputed."""
    import torch

    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 5:
        return value
    out = value + 0.002 * i * torch.randn(value.shape, generator=generator)
    if value.dim() == 5 and value.shape[2] > 1:
        half = value.shape[2] // 2
        out[:, :, half:] += 0.3 * i * torch.randn(out[:, :, half:].shape, generator=generator)
    return out
