"""Benchmark mcgraph on a Wan2.1-1.3B-shaped transformer at a 480p-like token count, in one call on a lent GPU.

    PYTHONPATH=. python tools/gpu_bench.py --out $OUT            # the device tool's command (H200, < 8 min)
    PYTHONPATH=. python tools/gpu_bench.py --small --device cpu   # the same script, tiny, on one CPU core

The model is the project's own causal DiT (`mcgraph.zoo.causal_dit`) with Wan 1.3B's shape (dim 1536, 12 heads,
ffn 8960, 30 blocks, 16 latent channels, 4096-wide text context of 512 tokens), random weights, bf16 on CUDA.
Latent 21 x 60 x 104 (frames x height x width, before the 1x2x2 patching) = 21 x 30 x 52 = 32,760 tokens.

Conditions: `uncached` (the plain model), `identity` (`mcgraph.optimize(model, mcgraph.NoCache())`) and fixed
token budgets (`MotionCacheConfig(token_budget=b)`: after a context's first call every call runs exactly
round(b * tokens) tokens through the blocks). Modes: `eager`, `inductor` (`torch.compile(module,
fullgraph=True)`) and `cudagraphs` (`torch.compile(..., mode="reduce-overhead")`). Each (mode, condition) runs
a warm-up denoising loop (compiles there) and a timed loop from a fresh cache: flow-matching Euler steps with
CFG (a "cond" and an "uncond" cache context per step), the latent and the timestep changing every step.
Compiled cached runs make each context's first call (full compute, no state yet) eagerly by default
(--first-call), which halves their compiles; under CUDA graphs the cache state is copied after each call
(--cudagraph-state). The CUDA-graph runs record whether Inductor actually used CUDA graphs (`cuda_graphs_used`,
from its cudagraph_skips counter: it skips graphs holding a torch.cond, as mcgraph's traced step does).

Per run: ms per model call (median and mean over the timed loop's calls, synchronised on CUDA), the ratio to
eager uncached, peak memory (CUDA only), compile time, and the final latent's difference from eager uncached
(for identity that is the correctness check; for a budget it is the cache's error). A failure is recorded with
its error text and the rest still runs. Runs stop being started once --budget-s seconds have passed (or would
by the run's end, estimated from the runs so far); a SIGALRM at --hard-limit-s interrupts the one in progress. The JSON
(`gpu_bench.json` in --out) is rewritten after every run, so a killed call still leaves what it measured.
Exit status 0 when at least one run was measured, 1 when none was.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the clock of --budget-s and --hard-limit-s starts before torch is imported

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import os
import platform
import signal
import statistics
import sys
import traceback
from pathlib import Path

import torch
import torch._dynamo  # imported before the hard-limit alarm is armed: an import it interrupts stays broken
import torch._inductor.config
import torch.utils._pytree as pytree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcgraph
from mcgraph.config import MotionCacheConfig, NoCache
from mcgraph.video.flow_matching import final_timestep, sigma_schedule
from mcgraph.zoo import causal_dit
from mcgraph.zoo.causal_dit import CausalDiTConfig, CausalVideoDiT

SCHEMA = "mcgraph.gpu_bench/1"
MODES = ("eager", "inductor", "cudagraphs")

# Wan2.1-T2V-1.3B: dim 1536, 12 heads (head_dim 128), ffn 8960, 30 blocks, 16 latent channels, umT5 context
WAN_1_3B = dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2), dim=1536, num_heads=12, num_layers=30,
                ffn_dim=8960, context_dim=4096, freq_dim=256)
WAN_LATENT = dict(frames=21, height=60, width=104, context_len=512)  # 480x832, 81 frames -> 32,760 tokens
# --small: a CPU check of the script (two blocks: the fewest the block-stack analysis accepts)
SMALL = dict(in_channels=4, out_channels=4, patch_size=(1, 2, 2), dim=32, num_heads=2, num_layers=2, ffn_dim=64,
             context_dim=16, freq_dim=16)
SMALL_LATENT = dict(frames=4, height=8, width=8, context_len=8)  # 4 x 4 x 4 = 64 tokens


class BenchTimeout(BaseException):
    """The hard time limit (--hard-limit-s) passed while a run was in progress (a BaseException, so that no
    `except Exception` on the way, in torch or mcgraph, takes it for a failure it can recover from)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-bench-out"),
                   help="output folder for gpu_bench.json (default: $OUT, else ./gpu-bench-out)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="model dtype (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--small", action="store_true",
                   help="tiny width/depth/token count (a CPU check of the script, well under a minute)")
    p.add_argument("--frames", type=int, default=None, help="latent frames (default 21; --small 4)")
    p.add_argument("--height", type=int, default=None, help="latent height before 2x2 patching (default 60)")
    p.add_argument("--width", type=int, default=None, help="latent width before 2x2 patching (default 104)")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default 30; --small 2)")
    p.add_argument("--context-len", type=int, default=None, help="text tokens (default 512; --small 8)")
    p.add_argument("--causal-block-size", type=int, default=None,
                   help="frames per causal chunk, also the cache's chunk (default 7: 3 chunks of 21 frames)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma separated subset of {','.join(MODES)}")
    p.add_argument("--conditions", default="uncached,identity,budgets",
                   help="comma separated subset of uncached, identity, budgets")
    p.add_argument("--budgets", default="0.5,0.3,0.15", help="token budgets (fractions of the tokens)")
    p.add_argument("--backend", default=None,
                   help="torch.compile backend of the compiled modes (default inductor; --small on cpu: eager, "
                        "i.e. dynamo only, since Inductor's C++ compile takes minutes on one core)")
    p.add_argument("--first-call", choices=("eager", "compiled"), default="eager",
                   help="compiled cached runs: the first call of each cache context (a full compute, with no "
                        "cache state yet) runs eagerly (eager: 2 compiled graphs per run, cond and uncond) or "
                        "compiled too (compiled: 4 graphs, twice the compile time)")
    p.add_argument("--cudagraph-state", choices=("clone", "keep"), default="clone",
                   help="cudagraphs mode: copy the cache state after each call (clone), as CUDA-graph trees "
                        "overwrite a previous call's outputs, or keep it as returned (keep)")
    p.add_argument("--threshold", type=float, default=0.1, help="MotionCache threshold (ranks tokens in a budget)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps in the timed loop (2 calls each: CFG)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="denoising steps in the warm-up loop (default: 1 eager, 3 compiled: a first call, a call "
                        "on the first call's state, a call on a later state)")
    p.add_argument("--schedule-steps", type=int, default=50, help="length of the schedule the loop is a slice of")
    p.add_argument("--start-step", type=int, default=20, help="schedule step the loops start at")
    p.add_argument("--shift", type=float, default=3.0, help="flow-matching timestep shift")
    p.add_argument("--guidance", type=float, default=5.0, help="CFG scale")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no run once this many seconds have passed since start, or would have by its end "
                        "(estimated from the runs so far)")
    p.add_argument("--hard-limit-s", type=float, default=455.0,
                   help="interrupt the run in progress at this many seconds since start (SIGALRM); 0: never")
    p.add_argument("--identity-tol", type=float, default=None,
                   help="max abs difference identity vs eager uncached counted as correct (default: 1e-4 in "
                        "float32, 5e-2 in bf16/fp16)")
    p.add_argument("--seed", type=int, default=0)
    return p


# ------------------------------------------------------------------------------------------------- helpers
class Clock:
    def __init__(self, t0: float = _T0):
        self.t0 = t0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _has_token_budget() -> bool:
    return "token_budget" in {f.name for f in dataclasses.fields(MotionCacheConfig)}


def _model_dtype_adapter(dtype: torch.dtype) -> str | None:
    """The zoo model computes its timestep embedding and RoPE tables in float32, which a bf16/fp16 model cannot
    take (Linear: "mat1 and mat2 must have the same dtype"; SDPA: q/k/v dtypes differ). Cast both to the model
    dtype, as diffusers' Wan does for its time embedder. Process-wide: this script builds one model."""
    if dtype == torch.float32:
        return None
    if getattr(causal_dit, "_gpu_bench_dtype", None) is None:
        sin, rope = causal_dit.sinusoidal_embedding, causal_dit.rope_tables

        @functools.wraps(sin)
        def sinusoidal_embedding(t, dim):
            return sin(t, dim).to(causal_dit._gpu_bench_dtype)

        @functools.wraps(rope)
        def rope_tables(*args, **kwargs):
            return tuple(x.to(causal_dit._gpu_bench_dtype) for x in rope(*args, **kwargs))

        causal_dit.sinusoidal_embedding, causal_dit.rope_tables = sinusoidal_embedding, rope_tables
    causal_dit._gpu_bench_dtype = dtype
    return (f"mcgraph.zoo.causal_dit.sinusoidal_embedding and rope_tables outputs cast to {dtype} (the zoo model "
            "makes them float32, which a reduced-precision model cannot take)")


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _cleanup(dev: torch.device) -> None:
    """Free compiled graphs (and CUDA-graph pools) between runs; a failure here is only printed."""
    try:
        torch._dynamo.reset()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    except (Exception, BenchTimeout) as exc:  # noqa: BLE001
        print(f"  cleanup failed: {_error_text(exc)[:300]}", flush=True)


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compile_counters() -> dict:
    """Dynamo / Inductor counters that explain a compile time (graphs, recompiles, FX graph cache)."""
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "fxgraph_cache_hit": int(counters["inductor"]["fxgraph_cache_hit"]),
            "fxgraph_cache_miss": int(counters["inductor"]["fxgraph_cache_miss"]),
            "fxgraph_cache_bypass": int(counters["inductor"]["fxgraph_cache_bypass"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 4000 else text[:2000] + "\n...\n" + text[-2000:]


# ------------------------------------------------------------------------------------------------- workload
class Workload:
    """The model, one fixed generation slice (noise, text, schedule) and the loop that drives a runtime."""

    def __init__(self, args, dev: torch.device, dtype: torch.dtype):
        base, lat = (SMALL, SMALL_LATENT) if args.small else (WAN_1_3B, WAN_LATENT)
        frames = args.frames or lat["frames"]
        height, width = args.height or lat["height"], args.width or lat["width"]
        context_len = args.context_len or lat["context_len"]
        block = args.causal_block_size or (2 if args.small else 7)
        cfg = CausalDiTConfig(**dict(base, num_layers=args.layers or base["num_layers"], causal_block_size=block))
        self.dev, self.dtype, self.cfg = dev, dtype, cfg
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        with torch.device(dev):  # initialise on the device: 1.4B parameters initialised on a CPU take minutes
            model = CausalVideoDiT(cfg)
        self.model = model.to(dtype).eval().requires_grad_(False)
        _sync(dev)
        self.build_s = time.perf_counter() - t0
        pt, ph, pw = cfg.patch_size
        self.latent_shape = (1, cfg.in_channels, frames, height, width)
        self.tokens = (frames // pt) * (height // ph) * (width // pw)
        g = torch.Generator().manual_seed(args.seed + 1)
        self.noise = torch.randn(self.latent_shape, generator=g).to(dev)
        self.ctx = torch.randn(1, context_len, cfg.context_dim, generator=g).to(dev, dtype)
        self.neg = torch.zeros(1, context_len, cfg.context_dim, device=dev, dtype=dtype)
        if not 0 <= args.start_step < args.schedule_steps:
            raise SystemExit(f"--start-step {args.start_step} must be in [0, --schedule-steps={args.schedule_steps})")
        self.sig = sigma_schedule(args.schedule_steps, args.shift).float()
        self.start, self.guidance = args.start_step, args.guidance
        self.final_t = final_timestep(args.schedule_steps, args.shift)
        self.params = sum(p.numel() for p in self.model.parameters())

    def example(self) -> dict:
        t = torch.full((1, self.latent_shape[2]), float(self.sig[self.start] * 1000), device=self.dev)
        return dict(hidden_states=self.noise.to(self.dtype), timesteps=t, context=self.ctx)

    def loop(self, fn, opt, steps: int, times: list | None = None, outputs: list | None = None,
             after=None, first=None) -> torch.Tensor:
        """Euler steps [start, start + steps) of the schedule with CFG; `opt`: the OptimizedModule whose cache
        contexts the calls use (None: the plain model). Appends each call's seconds to `times` (`after(context)`,
        run after each call, inside its time) and each output to `outputs`. `first`: what runs a context's
        first call (no cache state yet) instead of `fn`."""
        x = self.noise.clone()
        frames = self.latent_shape[2]
        last = len(self.sig) - 1
        with torch.no_grad():
            for i in range(self.start, min(self.start + steps, last)):
                t = torch.full((1, frames), float(self.sig[i] * 1000), device=self.dev)
                latent = x.to(self.dtype)
                v = {}
                for name, c in (("cond", self.ctx), ("uncond", self.neg)):
                    with opt.cache_context(name) if opt is not None else contextlib.nullcontext():
                        _sync(self.dev)
                        t0 = time.perf_counter()
                        eager_first = first is not None and opt.cache_session.states.get(name) is None
                        out = (first if eager_first else fn)(hidden_states=latent, timesteps=t, context=c)
                        if eager_first:
                            _clone_state(opt, name, torch.Tensor.contiguous)
                        elif after is not None:
                            after(name)
                        _sync(self.dev)
                        if times is not None:
                            times.append(time.perf_counter() - t0)
                    v[name] = out.float()  # a copy: CUDA-graph outputs are overwritten by the next replay
                    if outputs is not None:
                        outputs.append(v[name].cpu())
                x = x + (self.sig[i + 1] - self.sig[i]) * (v["uncond"] + self.guidance * (v["cond"] - v["uncond"]))
        return x


# ------------------------------------------------------------------------------------------------- runs
def _plan(args, has_budget: bool) -> tuple[list[tuple[str, str]], list[str], dict]:
    """(mode, condition) pairs in priority order, so that a time-limited call measures what matters most
    first: every eager run (no compile), then the headline budget (the one nearest 30 %) and uncached under
    CUDA graphs and Inductor, then the other budgets, then compiled identity. Also notes, and each budget
    condition's fraction."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; known {list(MODES)}")
    wanted = {c.strip() for c in args.conditions.split(",") if c.strip()}
    unknown = wanted - {"uncached", "identity", "budgets"}
    if unknown:
        raise SystemExit(f"--conditions: unknown {sorted(unknown)}; known uncached, identity, budgets")
    budgets = {}
    for b in args.budgets.split(","):
        if b.strip():
            b = float(b)
            if not 0 < b <= 1:
                raise SystemExit(f"--budgets: {b:g} is not a fraction in (0, 1]")
            budgets[f"budget{round(b * 100):02d}"] = b
    notes = []
    budgets_run = list(budgets) if "budgets" in wanted else []
    if budgets_run and not has_budget:
        notes.append("MotionCacheConfig has no token_budget field in this mcgraph: the budget conditions were "
                     "skipped")
        print("note: " + notes[-1], flush=True)
        budgets_run = []
    head = sorted(budgets_run, key=lambda n: (abs(budgets[n] - 0.3), -budgets[n]))
    eager = [c for c in ("uncached", "identity") if c in wanted] + sorted(budgets_run, key=lambda n: -budgets[n])
    plan = [("eager", c) for c in eager] if "eager" in modes else []
    compiled = [m for m in ("cudagraphs", "inductor") if m in modes]
    uncached = ["uncached"] if "uncached" in wanted else []
    for m in compiled:  # the budget first where CUDA graphs are what it is for, uncached first elsewhere
        plan += [(m, c) for c in (head[:1] + uncached if m == "cudagraphs" else uncached + head[:1])]
    plan += [(m, c) for m in compiled for c in head[1:]]
    plan += [(m, "identity") for m in compiled if "identity" in wanted]
    return plan, notes, budgets


def _kind(condition: str) -> str:
    return "budget" if condition.startswith("budget") else condition


def _estimate(results: list[dict], mode: str, condition: str, args) -> float:
    """Seconds a run will likely take, from the runs so far: the same mode and kind of condition if one ran;
    else the compile time per graph of the last compiled run times the graphs this one compiles, plus the
    eager run of the condition scaled to this run's number of calls."""
    kind = _kind(condition)
    same = [r for r in results if r["mode"] == mode and _kind(r["condition"]) == kind]
    if same:
        return same[-1]["wall_s"]
    steps = args.steps
    eager = [r for r in results if r["mode"] == "eager" and r["condition"] == condition and r["status"] == "ok"]
    eager = eager or [r for r in results if r["mode"] == "eager" and r["condition"] == "uncached"
                      and r["status"] == "ok"]
    run = 0.0
    if eager:
        r = eager[-1]
        per_call = max(0.0, r["wall_s"] - r.get("capture_s", 0.0)) / (2 * (r["warmup_steps"] + steps))
        warm = args.warmup_steps or (1 if mode == "eager" else 3)
        run = per_call * 2 * (warm * (2 if mode == "cudagraphs" else 1) + steps)
    if mode == "eager":
        return run
    compiled = [r for r in results if r["mode"] != "eager" and r.get("graphs_compiled") and "compile_s" in r]
    if not compiled:
        return run

    def stacks(c: str) -> int:  # a budget's graph holds two block stacks: the budget's and the full one (cond)
        return 2 if _kind(c) == "budget" else 1

    last = compiled[-1]
    per_stack = last["compile_s"] / (last["graphs_compiled"] * stacks(last["condition"]))
    graphs = 1 if kind in ("uncached", "identity") else (2 if args.first_call == "eager" else 4)
    return per_stack * stacks(condition) * graphs + run


def _timeout_in(exc: BaseException | None) -> bool:
    """Whether the hard time limit is behind this exception (dynamo wraps what a backend raises)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BenchTimeout):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class _SkipLog(logging.Handler):
    """Collects Inductor's "skipping cudagraphs due to ..." messages (CUDA only; on CPU only the counter)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage()[:1500])


def _clone_state(opt, context: str, fn=torch.clone) -> None:
    """Replace a context's cache state by `fn` of each tensor (outside torch.compile). torch.clone: under
    CUDA-graph trees every call of a compiled function starts a new generation, whose replays overwrite
    earlier outputs, and the state one call returns is an input of the next. Tensor.contiguous: the eager
    first call leaves a residual of another layout than compiled calls do, which a stride guard recompiles."""
    states = opt.cache_session.states
    entry = states.get(context)
    if entry is not None:
        states[context] = (entry[0], pytree.tree_map_only(torch.Tensor, fn, entry[1]))


class Runner:
    def __init__(self, args, work: Workload, budgets: dict, backend: str):
        self.args, self.work, self.budgets, self.backend = args, work, budgets, backend
        self.base_opt = None  # the first capture; other configs reuse it through with_config
        self.opts: dict[str, mcgraph.OptimizedModule] = {}
        self.capture_s: dict[str, float] = {}
        self.skip_log = _SkipLog()
        logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs").addHandler(self.skip_log)

    def config_for(self, condition: str):
        if condition == "identity":
            return NoCache()
        return MotionCacheConfig(token_budget=self.budgets[condition], threshold=self.args.threshold,
                                 final_timestep=self.work.final_t)

    def optimised(self, condition: str):
        if condition not in self.opts:
            t0 = time.perf_counter()
            cfg = self.config_for(condition)
            if self.base_opt is None:
                self.base_opt = mcgraph.optimize(self.work.model, cfg, example_kwargs=self.work.example())
                opt = self.base_opt
            else:
                opt = self.base_opt.with_config(cfg)
            _sync(self.work.dev)
            self.capture_s[condition] = time.perf_counter() - t0
            self.opts[condition] = opt
        return self.opts[condition]

    def compiled(self, mode: str, target):
        if mode == "eager":
            return target
        if mode == "cudagraphs" and self.backend != "inductor":
            raise RuntimeError(f"mode cudagraphs needs --backend inductor (reduce-overhead), not {self.backend}")
        kw = dict(mode="reduce-overhead") if mode == "cudagraphs" else {}
        return torch.compile(target, backend=self.backend, fullgraph=True, dynamic=False, **kw)

    def run(self, mode: str, condition: str) -> dict:
        work, dev = self.work, self.work.dev
        rec: dict = {"mode": mode, "condition": condition, "status": "error"}
        if mode != "eager":
            rec["backend"] = self.backend + (" (reduce-overhead)" if mode == "cudagraphs" else "")
        if condition in self.budgets:
            rec["token_budget"] = self.budgets[condition]
            rec["budget_tokens"] = min(work.tokens, max(1, round(self.budgets[condition] * work.tokens)))
        t_start = time.perf_counter()
        opt = fn = None
        n_skip_msgs = len(self.skip_log.messages)
        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            if condition != "uncached":
                opt = self.optimised(condition)
                rec["capture_s"] = self.capture_s[condition]
                opt.reset_cache()
            fn = self.compiled(mode, work.model if opt is None else opt)
            clone = opt is not None and mode == "cudagraphs" and self.args.cudagraph_state == "clone"
            if opt is not None and mode == "cudagraphs":
                rec["state_cloned_after_each_call"] = clone
            after = (lambda name: _clone_state(opt, name)) if clone else None
            first = None
            if opt is not None and mode != "eager" and condition != "identity":
                rec["first_call_per_context"] = self.args.first_call
                first = opt if self.args.first_call == "eager" else None
            graphs0, c0 = _unique_graphs(), _compile_counters()
            recording = opt is not None and mode == "eager" and condition != "identity"
            records = opt.record_decisions() if recording else None  # a live list
            warm_times: list[float] = []
            warmup_steps = self.args.warmup_steps or (1 if mode == "eager" else 3)
            rec["warmup_steps"] = warmup_steps
            t0 = time.perf_counter()
            # CUDA-graph trees record a graph at its second call: two warm-up loops run every path twice
            for _ in range(2 if mode == "cudagraphs" else 1):
                if opt is not None:
                    opt.reset_cache()
                work.loop(fn, opt, warmup_steps, warm_times, after=after, first=first)
            rec["warmup_s"] = time.perf_counter() - t0
            rec["first_call_s"] = warm_times[0] if warm_times else None
            rec["warmup_call_s"] = warm_times
            if recording:
                rec["executed_tokens_warmup"] = [int(r.executed) for r in records]
                opt.record_decisions(False)
            if opt is not None:
                opt.reset_cache()
            graphs1 = _unique_graphs()
            times: list[float] = []
            outputs: list[torch.Tensor] = []
            final = work.loop(fn, opt, self.args.steps, times, outputs, after=after, first=first)
            rec["graphs_compiled"] = graphs1 - graphs0
            rec["recompiled_while_timed"] = _unique_graphs() - graphs1
            if mode != "eager":
                rec["compile_counters"] = {k: v - c0[k] for k, v in _compile_counters().items()}
            if mode == "cudagraphs" and dev.type == "cuda":
                rec["cuda_graphs_used"] = rec["compile_counters"]["cudagraph_skips"] == 0
                rec["cudagraph_skip_messages"] = self.skip_log.messages[n_skip_msgs:][:4]
            if not times:
                raise RuntimeError("the timed loop made no call (--steps 0, or --start-step at the schedule's end)")
            ms = [t * 1000 for t in times]
            rec.update(ms_per_call_median=statistics.median(ms), ms_per_call_mean=statistics.fmean(ms),
                       ms_per_call_min=min(ms), ms_calls=ms, calls=len(ms))
            if mode != "eager":
                # the warm-up's time beyond its calls at the timed speed: tracing, Inductor, CUDA-graph recording
                rec["compile_s"] = max(0.0, rec["warmup_s"] - len(warm_times) * rec["ms_per_call_median"] / 1000)
            if dev.type == "cuda":
                rec["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
            rec["status"] = "ok"
            rec["_final"] = final.cpu()
            rec["_first_output"] = outputs[0]
        except (Exception, BenchTimeout) as exc:  # noqa: BLE001 - one failure is recorded, the rest still runs
            rec["status"] = "interrupted" if _timeout_in(exc) else "error"
            rec["error"] = _error_text(exc)
            rec["traceback_tail"] = traceback.format_exc()[-3000:]
            print(f"  {mode}/{condition} {rec['status']}: {rec['error'][:500]}", flush=True)
        finally:
            rec["wall_s"] = time.perf_counter() - t_start
            fn = None
            # torch.compile(model) sets model._is_torch_compile (seen in torch 2.13), which mcgraph's model guard takes
            # for a change of the model: the next call of an optimised module would capture it again
            work.model.__dict__.pop("_is_torch_compile", None)
            if opt is not None:
                with contextlib.suppress(Exception):
                    opt.reset_cache()
                    opt.record_decisions(False)
            if mode != "eager" or rec["status"] != "ok":
                _cleanup(dev)
        return rec


# ------------------------------------------------------------------------------------------------- report
def _table(results: list[dict]) -> str:
    head = ("mode", "condition", "ms/call med", "ms/call mean", "speedup", "peak GiB", "compile s", "max|d| eager",
            "status")
    rows = [head]
    def f(r, key, fmt):
        v = r.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    for r in results:

        rows.append((r["mode"], r["condition"], f(r, "ms_per_call_median", "{:.2f}"),
                     f(r, "ms_per_call_mean", "{:.2f}"), f(r, "speedup_vs_eager_uncached", "{:.2f}x"),
                     f(r, "peak_memory_gib", "{:.2f}"), f(r, "compile_s", "{:.1f}"),
                     f(r, "final_max_abs_vs_eager_uncached", "{:.2e}"), r["status"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(path)


def _environment(dev: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "mcgraph": mcgraph.__version__,
           "device": str(dev), "host_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(dev), cuda=torch.version.cuda,
                   device_memory_gib=torch.cuda.get_device_properties(dev).total_memory / 2**30)
    return env


def _compare(rec: dict, final, first, reference: dict | None, eager_finals: dict) -> None:
    """Speedup and output differences against eager uncached, and against the same condition run eagerly."""
    if reference is not None:
        rec["speedup_vs_eager_uncached"] = reference["ms"] / rec["ms_per_call_median"]
        rec["ratio_vs_eager_uncached"] = rec["ms_per_call_median"] / reference["ms"]
        rec["final_max_abs_vs_eager_uncached"] = _max_abs(final, reference["final"])
        rec["final_rel_err_vs_eager_uncached"] = _rel_err(final, reference["final"])
        rec["first_call_max_abs_vs_eager_uncached"] = _max_abs(first, reference["first"])
    if rec["mode"] == "eager":
        eager_finals[rec["condition"]] = final
    elif rec["condition"] in eager_finals:
        rec["final_max_abs_vs_eager_same_condition"] = _max_abs(final, eager_finals[rec["condition"]])


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    clock = Clock()
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    backend = args.backend or ("eager" if args.small and dev.type == "cpu" else "inductor")
    out_path = args.out / "gpu_bench.json"
    tol = args.identity_tol if args.identity_tol is not None else (1e-4 if dtype == torch.float32 else 5e-2)
    has_budget = _has_token_budget()
    plan, notes, budgets = _plan(args, has_budget)
    adapter = _model_dtype_adapter(dtype)
    if backend != "inductor":
        notes.append(f"compiled modes use torch.compile backend {backend!r}, not Inductor")

    def on_alarm(signum, frame):
        raise BenchTimeout(f"hard limit of {args.hard_limit_s:g} s reached")

    if args.hard_limit_s > 0 and hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, args.hard_limit_s - clock.elapsed()))

    command = " ".join(["tools/gpu_bench.py", *(sys.argv[1:] if argv is None else argv)])
    doc: dict = {"schema": SCHEMA, "command": command, "preset": "small" if args.small else "wan-1.3b-480p",
                 "environment": _environment(dev), "notes": notes, "token_budget_supported": has_budget,
                 "compile_backend": backend, "plan": [f"{m}/{c}" for m, c in plan], "results": [], "skipped": []}
    try:
        work = Workload(args, dev, dtype)
    except (Exception, BenchTimeout) as exc:  # noqa: BLE001 - recorded in the JSON
        doc["error"] = _error_text(exc)
        doc["traceback_tail"] = traceback.format_exc()[-3000:]
        _write(out_path, doc)
        print(f"building the model failed: {doc['error']}\nwrote {out_path}; nothing measured", flush=True)
        return 1
    doc["model"] = {"class": "mcgraph.zoo.causal_dit.CausalVideoDiT", "config": work.cfg.to_dict(),
                    "parameters": work.params, "dtype": str(dtype).replace("torch.", ""), "weights": "random",
                    "dtype_adapter": adapter, "build_s": work.build_s,
                    "latent_shape": list(work.latent_shape), "context_shape": list(work.ctx.shape),
                    "tokens": work.tokens}
    if dev.type == "cuda":
        doc["model"]["weights_gib"] = torch.cuda.memory_allocated(dev) / 2**30
    doc["loop"] = {"schedule_steps": args.schedule_steps, "shift": args.shift, "start_step": args.start_step,
                   "warmup_steps": args.warmup_steps or "1 eager, 3 compiled", "timed_steps": args.steps, "calls_per_step": 2,
                   "cfg": "two calls per step, cache contexts 'cond' and 'uncond'", "guidance": args.guidance,
                   "final_timestep": work.final_t,
                   "timesteps": [float(work.sig[i] * 1000)
                                 for i in range(args.start_step, min(args.start_step + args.steps, args.schedule_steps))]}
    doc.update(budget_s=args.budget_s, hard_limit_s=args.hard_limit_s, identity_tolerance=tol)
    print(f"{doc['preset']}: {work.params / 1e6:.1f}M parameters, {work.tokens} tokens, {dtype}, {dev}; "
          f"built in {work.build_s:.1f}s", flush=True)

    try:
        runner = Runner(args, work, budgets, backend)
        reference: dict | None = None
        eager_finals: dict = {}
        interrupted = False
        for mode, condition in plan:
            now = clock.elapsed()
            guess = _estimate(doc["results"], mode, condition, args)
            reason = None
            if mode == "cudagraphs" and dev.type != "cuda":
                reason = "CUDA graphs need a CUDA device"
            elif interrupted:
                reason = "the hard time limit interrupted an earlier run"
            elif now > args.budget_s:
                reason = f"{now:.0f}s elapsed > --budget-s {args.budget_s:g}"
            elif now + guess > args.budget_s:
                reason = f"{now:.0f}s elapsed + {guess:.0f}s (its estimate) > --budget-s {args.budget_s:g}"
            if reason:
                doc["skipped"].append({"mode": mode, "condition": condition, "reason": reason})
                print(f"skip {mode}/{condition}: {reason}", flush=True)
                continue
            print(f"run  {mode}/{condition} at {now:.0f}s (estimate {guess:.0f}s)", flush=True)
            rec = runner.run(mode, condition)
            rec["started_at_s"], rec["estimated_s"] = now, guess
            interrupted = rec["status"] == "interrupted"
            final, first = rec.pop("_final", None), rec.pop("_first_output", None)
            if rec["status"] == "ok":
                if mode == "eager" and condition == "uncached":
                    reference = {"final": final, "first": first, "ms": rec["ms_per_call_median"]}
                _compare(rec, final, first, reference, eager_finals)
                if condition == "identity" and mode == "eager" and reference is not None:
                    diff = max(rec["final_max_abs_vs_eager_uncached"], rec["first_call_max_abs_vs_eager_uncached"])
                    doc["identity_check"] = {"max_abs_diff": diff, "tolerance": tol, "ok": diff <= tol,
                                             "what": "eager identity vs eager uncached: max |difference| of the first "
                                                     "call's output and of the timed loop's final latent"}
                print(f"     {rec['ms_per_call_median']:.2f} ms/call"
                      + (f", {rec['speedup_vs_eager_uncached']:.2f}x" if "speedup_vs_eager_uncached" in rec else "")
                      + (f", compile {rec['compile_s']:.1f}s" if "compile_s" in rec else ""), flush=True)
            doc["results"].append(rec)
            doc["elapsed_s"] = clock.elapsed()
            _write(out_path, doc)
    except (Exception, BenchTimeout) as exc:  # noqa: BLE001 - the harness itself failed: keep what it measured
        doc["error"] = _error_text(exc)
        doc["traceback_tail"] = traceback.format_exc()[-3000:]
        print(f"benchmark loop failed: {doc['error'][:500]}", flush=True)
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.setitimer(signal.ITIMER_REAL, 0)
    doc["elapsed_s"] = clock.elapsed()
    doc["measured"] = sum(r["status"] == "ok" for r in doc["results"])
    _write(out_path, doc)
    print()
    print(_table(doc["results"]))
    if "identity_check" in doc:
        c = doc["identity_check"]
        print(f"\nidentity vs eager uncached: max |diff| {c['max_abs_diff']:.3e} (tolerance {c['tolerance']:g}): "
              f"{'ok' if c['ok'] else 'MISMATCH'}")
    for n in notes:
        print(f"note: {n}")
    for sk in doc["skipped"]:
        print(f"skipped {sk['mode']}/{sk['condition']}: {sk['reason']}")
    print(f"\nwrote {out_path} ({doc['elapsed_s']:.1f}s)", flush=True)
    return 0 if doc["measured"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
