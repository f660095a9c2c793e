"""Evaluate the reference model's quality gates (`mcgraph.zoo.gates`) on a weights file.

Per seed the model generates a free video from the scene's label and a continuation of the real clip's first
chunk (one batched sampler call per mode); the table shows each gate's mean over seeds, its 95 % interval and
the threshold. Exit code 0 when every gate of --weights passes, 1 otherwise (--compare only adds columns).

    python tools/reference_gates.py --seeds 8
    python tools/reference_gates.py --weights train_state/reference_v2.safetensors --json gates.json
    python tools/reference_gates.py --compare train_state/reference_v2.safetensors --samples docs/reference_samples.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mcgraph.eval.video_io import save_strip
from mcgraph.zoo import gates as G
from mcgraph.zoo.weights import BUNDLED_WEIGHTS, WeightsError, load_reference, read_metadata


def _step(path: Path) -> str:
    try:
        info = read_metadata(path).get("info") or {}
    except Exception:  # noqa: BLE001 - metadata is informational only
        return "?"
    return str(info.get("step", "?"))


def _cell(g: G.Gate) -> str:
    ci = "" if g.lo != g.lo else f" [{g.lo:.3f}, {g.hi:.3f}]"
    return f"{g.value:.4f}{ci} {'PASS' if g.passed else 'FAIL'}"


def format_table(reports: list[tuple[str, G.GateReport]]) -> str:
    head = ["mode", "gate", "threshold"] + [name for name, _ in reports]
    rows = []
    for i, g in enumerate(reports[0][1].gates):
        rows.append([g.mode, g.name, g.threshold] + [_cell(r.gates[i]) for _, r in reports])
    rows.append(["", "all gates", ""] + [("PASS" if r.passed else "FAIL") for _, r in reports])
    rows.append(["", "evaluation time", ""] + [f"{r.wall_time_s:.0f} s" for _, r in reports])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_details(report: G.GateReport) -> str:
    """Per mode, every aggregated number (mean [95 % CI])."""
    out = []
    for mode, agg in report.aggregates.items():
        parts = []
        for k, v in agg.items():
            parts.append(f"{k}={v.mean:.4f}" if isinstance(v, G.Stat) else f"{k}={v}")
        out.append(f"  {mode}: " + ", ".join(parts))
    return "\n".join(out)


def write_samples(report: G.GateReport, path: Path, seeds: int = 3, frames: int = 8) -> Path:
    """Rows real / free / continued for the first `seeds` seeds, `frames` frames each, upscaled 3x."""
    rows = []
    for i in range(min(seeds, len(report.seeds))):
        for key in ("real", "free", "continuation"):
            if key in report.samples:
                rows.append(report.samples[key][i])
    return save_strip(rows, path, scale=3, gap=3, max_frames=frames)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS, help="weights to gate (default: the bundled)")
    p.add_argument("--seeds", type=int, default=len(G.DEFAULT_SEEDS), help="number of seeds (default 8)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    p.add_argument("--frames", type=int, default=G.DEFAULT_FRAMES, help="frames per video (default 28)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: gates.default_sampler_config)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: gates.default_sampler_config)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers (both models with --compare) here")
    p.add_argument("--samples", type=Path, default=None, help="write a PNG: rows real / free / continued")
    p.add_argument("--compare", type=Path, default=None, help="second weights file, shown side by side")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    overrides = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.guidance is not None:
        overrides["guidance_scale"] = args.guidance
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    reports = []
    for path in [args.weights] + ([args.compare] if args.compare else []):
        try:
            model, encoder = load_reference(path)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        name = f"{path.name} (step {_step(path)})"
        print(f"evaluating {path} (step {_step(path)}) on seeds {seeds[0]}..{seeds[-1]} ...", flush=True)
        report = G.evaluate(model, encoder, seeds=seeds, frames=args.frames, keep_samples=args.samples is not None,
                            **overrides)
        reports.append((name, report))
        if args.samples is not None:
            out = args.samples if len(reports) == 1 else args.samples.with_name(
                f"{args.samples.stem}_compare{args.samples.suffix}")
            write_samples(report, out)
            print(f"wrote {out} (rows per seed: real, free, continued)")

    s = reports[0][1].settings
    print(f"\nsettings: {s['frames']} frames, steps {s['steps']}, shift {s['shift']}, guidance {s['guidance_scale']}, "
          f"chunk {s['causal_block_size']}, ar_step {s['ar_step']}, window {s['window_frames']} / overlap "
          f"{s['overlap_frames']}, noise seed {s['noise_seed']}; values: mean over seeds [95 % CI]\n")
    print(format_table(reports))
    for name, r in reports:
        print(f"\n{name}:\n{format_details(r)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {name: dict(r.to_json(), weights=str(path))
                   for (name, r), path in zip(reports, [args.weights, args.compare])}
        args.json.write_text(json.dumps(payload, indent=1, default=float))
        print(f"\nwrote {args.json}")
    return 0 if reports[0][1].passed else 1


if __name__ == "__main__":
    sys.exit(main())
