"""Per-call overhead of mcgraph's eager runtime against the model itself, on CPU with one thread.

For each subject it times, side by side in one process and interleaved call by call (A, B, C, D, A, B, ...,
so that the machine's noise falls on every candidate alike), under `torch.no_grad()`:

  eager       the model's own forward
  identity    `mcgraph.optimize(model, NoCache())`: the captured graph through the runtime (lean function)
  graph-fx    the captured `torch.fx.GraphModule` called directly (fx's generated forward), for contrast
  cache-full  `MotionCacheConfig(threshold=0.0, warmup_steps=1)` with `reset_cache()` before every call
              (inside the timing): each call is a full first call, i.e. the caching machinery's fixed cost

and prints medians, quartiles, minima and `vs eager` = eager median / candidate median (> 1: faster than eager).
`same` says whether the candidate's output equals eager's bit for bit (max |diff| otherwise).

    python tools/bench_overhead.py [--subjects wan-tiny,wan-384] [--repeats 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.utils._pytree as pytree

SUBJECTS = ("reference", "wan-tiny", "skyreels-tiny", "plain-dit", "wan-384")
CANDIDATES = ("eager", "identity", "graph-fx", "cache-full")


def wan_384():
    """diffusers' WanTransformer3DModel, bigger: hidden 384 (4 heads x 96), 4 blocks, FFN 1536, latent
    (1, 16, 4, 16, 16) -> 4 x 8 x 8 = 256 video tokens, 64 text tokens of width 512."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=96, in_channels=16,
                                  out_channels=16, text_dim=512, freq_dim=256, ffn_dim=1536, num_layers=4).eval()
    kwargs = dict(hidden_states=torch.randn(1, 16, 4, 16, 16), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 64, 512), return_dict=False)
    return model, kwargs


def load_subject(name: str):
    """(model, example kwargs) of a subject name."""
    if name == "wan-384":
        return wan_384()
    from mcgraph.zoo.subjects import SUBJECTS as ZOO

    subject = ZOO[name]()
    return subject.model, subject.kwargs


def build_candidates(model, kwargs) -> tuple[dict[str, Callable], dict[str, str]]:
    """The callables to time, and why any is missing (a config the model does not take)."""
    import mcgraph
    from mcgraph.compiler.capture import bind_call
    from mcgraph.config import MotionCacheConfig

    identity = mcgraph.optimize(model, mcgraph.NoCache(), example_kwargs=kwargs)
    gm, bound = identity.latest.captured.graph_module, bind_call(model, (), kwargs)
    calls = {"eager": lambda: model(**kwargs), "identity": lambda: identity(**kwargs),
             "graph-fx": lambda: gm(**bound)}
    missing = {}
    try:
        cached = identity.with_config(MotionCacheConfig(threshold=0.0, warmup_steps=1))
    except Exception as exc:  # report it in the table, time the others
        missing["cache-full"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    else:
        def full_call():
            cached.reset_cache()
            return cached(**kwargs)

        calls["cache-full"] = full_call
    return calls, missing


def first_tensor(out) -> torch.Tensor:
    return next(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def agreement(calls: dict[str, Callable]) -> dict[str, str]:
    """Whether each candidate's output equals eager's, bit for bit."""
    ref = first_tensor(calls["eager"]())
    out = {}
    for label, call in calls.items():
        got = first_tensor(call())
        out[label] = "yes" if torch.equal(got, ref) else f"{(got - ref).abs().max().item():.1e}"
    return out


def interleaved(calls: dict[str, Callable], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each candidate, timed round robin (one call of each in turn, `repeats` rounds)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {label: [] for label in calls}
    clock = time.perf_counter
    for _ in range(repeats):
        for label, call in calls.items():
            start = clock()
            call()
            times[label].append(clock() - start)
    return times


def summarise(name: str, times: dict[str, list[float]], same: dict[str, str], missing: dict[str, str]) -> list:
    eager = statistics.median(times["eager"])
    rows = []
    for label in CANDIDATES:
        if label in missing:
            rows.append(dict(subject=name, candidate=label, error=missing[label]))
            continue
        ts = sorted(times[label])
        q1, med, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0],) * 3
        rows.append(dict(subject=name, candidate=label, median_ms=med * 1e3, q1_ms=q1 * 1e3, q3_ms=q3 * 1e3,
                         min_ms=ts[0] * 1e3, vs_eager=eager / med, same=same[label], calls=len(ts)))
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"| {'subject':<14} | {'candidate':<10} | {'median ms':>10} | {'q1..q3 ms':>17} | {'min ms':>8} | "
            f"{'vs eager':>8} | same |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['subject']:<14} | {r['candidate']:<10} | n/a: {r['error']}")
            continue
        spread = f"{r['q1_ms']:.3f}..{r['q3_ms']:.3f}"
        lines.append(f"| {r['subject']:<14} | {r['candidate']:<10} | {r['median_ms']:>10.3f} | {spread:>17} | "
                     f"{r['min_ms']:>8.3f} | {r['vs_eager']:>7.2f}x | {r['same']:<4} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores ({cpu}), CPU only, torch {torch.__version__}, torch threads "
            f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"Python {platform.python_version()}")


def parse_args(argv):
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=summary, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", default=",".join(SUBJECTS), help=f"comma-separated, of {', '.join(SUBJECTS)}")
    p.add_argument("--repeats", type=int, default=100, help="rounds of interleaved calls per subject (default 100)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = p.parse_args(argv)
    args.subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    unknown = [s for s in args.subjects if s not in SUBJECTS]
    if unknown:
        p.error(f"unknown subjects {unknown}; known: {', '.join(SUBJECTS)}")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # capture-time warnings (static fallbacks etc.) are not what is measured
    rows = []
    print(machine(), flush=True)
    with torch.no_grad():
        for name in args.subjects:
            start = time.perf_counter()
            model, kwargs = load_subject(name)
            calls, missing = build_candidates(model, kwargs)
            same = agreement(calls)
            times = interleaved(calls, args.repeats, args.warmup)
            rows += summarise(name, times, same, missing)
            print(f"  {name}: {time.perf_counter() - start:.0f} s (setup + {args.repeats} rounds)", file=sys.stderr,
                  flush=True)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine(), repeats=args.repeats, warmup=args.warmup, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
