"""Speed benchmark of the token-subset path (issue 4, "Speed"): is the saving real, not only on paper?

Every timed computation is the library's own: the graphs of ``opt.step.graphs`` and the stages of
``mcgraph.runtime.step.CacheStep``; nothing of the runtime is copied here. Per model, on one CPU thread
(interleaved repeats, medians, wall and this thread's CPU clock):

1. full block stack (``graphs.stack``) vs token-subset stack (``graphs.subset_stack``, K/V written in place, as
   run eagerly) on a random sorted `--fraction` of the tokens over a full K/V cache; their FLOPs
   (``FlopCounterMode`` plus a formula for the CPU flash-attention kernel it does not know); wall speedup over
   FLOP speedup (target >= 0.85);
2. motion estimation + decision as a fraction of a model call (target <= 3%): (a) ``opt.step(flat, state)`` on
   an identical second call (the skip path) minus prologue and epilogue; (b) the stages on real tensors:
   ``step.decide`` (distances, final step, the policy's decision), and ``step.finish`` (state update with
   ``policy.new_weights``) of a step per motion source;
3. where the subset stack spends its time (torch.profiler op groups; fx.Interpreter per-op comparison).

Models: the bundled reference DiT (16 frames x 64 tokens) and a diffusers ``WanTransformer3DModel`` with random
weights (default latent (1, 16, 16, 32, 32), patch (1, 2, 2): 4096 tokens, hidden 384 = 6 x 64, 4 layers).

    python tools/bench_subset.py                      # both models, writes docs/bench_subset.json
    python tools/bench_subset.py --models reference --repeats 5 --json ''
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils import flop_counter

import mcgraph
from mcgraph.config import MOTION_SOURCES, MotionCacheConfig
from mcgraph.runtime.step import execution_path

ROOT = Path(__file__).resolve().parents[1]
WALL_TARGET = 0.85  # wall speedup / FLOP speedup
OVERHEAD_TARGET = 0.03  # motion + decision / full model call
THRESHOLD = 0.1


# ------------------------------------------------------------------------------------------------ models
def reference_model():
    import numpy as np

    from mcgraph.zoo import scenes
    from mcgraph.zoo.weights import load_reference

    model, encoder = load_reference()
    g = torch.Generator().manual_seed(0)
    ids = scenes.random_scene(np.random.default_rng(0), size=32).label()
    with torch.no_grad():
        context = encoder(torch.from_numpy(ids)[None])
    kwargs = dict(hidden_states=torch.randn(1, 12, 16, 16, 16, generator=g),
                  timesteps=torch.rand(1, 16, generator=g) * 1000, context=context)
    return model, kwargs, "reference DiT (bundled weights), latent (1, 12, 16, 16, 16), patch (1, 2, 2)"


def wan_model(frames=16, size=32, layers=4, heads=6, head_dim=64, ffn=1536, text_tokens=32):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
               out_channels=16, text_dim=256, freq_dim=256, ffn_dim=ffn, num_layers=layers, rope_max_seq_len=1024)
    model = WanTransformer3DModel(**cfg).eval()
    g = torch.Generator().manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(1, 16, frames, size, size, generator=g), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, text_tokens, 256, generator=g), return_dict=False)
    desc = (f"diffusers WanTransformer3DModel (random weights), latent (1, 16, {frames}, {size}, {size}), patch "
            f"(1, 2, 2), hidden {heads * head_dim} = {heads} x {head_dim}, {layers} layers, FFN {ffn}, "
            f"{text_tokens} text tokens")
    return model, kwargs, desc


def wan_tiny_model():
    """A seconds-fast Wan for the tests of this tool (not a benchmark)."""
    return wan_model(frames=2, size=8, layers=2, heads=2, head_dim=12, ffn=32, text_tokens=4)


MODELS = {"reference": reference_model, "wan": wan_model, "wan-tiny": wan_tiny_model}


# ------------------------------------------------------------------------------------------ FLOPs, timing
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def count_flops(fn: Callable) -> tuple[int, dict[str, int]]:
    with flop_counter.FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def interleaved(fns: dict[str, Callable], repeats: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each function on the wall clock and this thread's CPU clock (immune to preemption),
    the functions alternating, their order rotated every repeat."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            c, t = time.thread_time(), time.perf_counter()
            fns[n]()
            times[n]["wall"].append(time.perf_counter() - t)
            times[n]["cpu"].append(time.thread_time() - c)
    return times


def med_ms(ts: list[float]) -> float:
    return 1000 * statistics.median(ts)


def spread_ms(ts: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ts, n=4) if len(ts) >= 4 else [min(ts), max(ts)]
    return 1000 * q[0], 1000 * q[-1]


# ------------------------------------------------------------------------------------------- profiling
GROUPS = {
    "matmul (linear)": ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention (sdpa)": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention",
                         "aten::_scaled_dot_product_attention_math"),
    "gather (index_select)": ("aten::index_select",),
    "K/V cache write (index_copy)": ("aten::index_copy", "aten::index_copy_"),
    "copies (clone/copy_/contiguous/cat/stack)": ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat",
                                                  "aten::stack"),
    "norms": ("aten::native_layer_norm", "aten::layer_norm", "aten::_fused_rms_norm", "aten::rms_norm"),
}


def profile_ops(fn: Callable, runs: int = 3) -> dict:
    """Self CPU time per call of every aten op under torch.profiler, and by op group."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = {e.key: {"ms": e.self_cpu_time_total / runs / 1000, "calls": e.count // runs} for e in events}
    group_of = {op: g for g, names in GROUPS.items() for op in names}
    groups = dict.fromkeys([*GROUPS, "other elementwise / misc"], 0.0)
    for op, o in ops.items():
        groups[group_of.get(op, "other elementwise / misc")] += o["ms"]
    return {"total_ms_per_call": sum(o["ms"] for o in ops.values()), "groups_ms_per_call": groups,
            "ops_per_call": ops}


def op_excess(full: dict, subset: dict, fraction: float) -> dict:
    """From two `profile_ops` results: per op, how much more than `fraction` x the full stack's time the subset
    stack spends (the subset machinery: gathers, K/V writes, fixed per-op costs)."""
    f, s = full["ops_per_call"], subset["ops_per_call"]
    ms = lambda d, k: d.get(k, {"ms": 0.0})["ms"]  # noqa: E731
    ops = sorted(({"op": k, "full_ms": ms(f, k), "full_scaled_ms": ms(f, k) * fraction, "subset_ms": ms(s, k),
                   "excess_ms": ms(s, k) - ms(f, k) * fraction, "calls": s.get(k, {"calls": 0})["calls"]}
                  for k in set(f) | set(s)), key=lambda o: -o["excess_ms"])
    return {"full_ms": full["total_ms_per_call"], "subset_ms": subset["total_ms_per_call"],
            "excess_ms": subset["total_ms_per_call"] - fraction * full["total_ms_per_call"], "ops": ops}


def what_if(graphs, stack_in, index, kv, repeats: int, compile_: bool, log) -> dict:
    """Ratios (speedup / FLOP speedup, CPU clock) of the library's two subset stacks: K/V written in place
    (``subset_stack``, eager) and out of place (``subset_stack_functional``, compile / export); with
    `compile_`, also both stacks under ``torch.compile``."""
    kv_own = [t.clone() for t in kv]
    fns = {"full": lambda: graphs.run("stack", *stack_in),
           "subset": lambda: graphs.run("subset_stack_functional", *stack_in, index, *kv),
           "subset_in_place": lambda: graphs.run("subset_stack", *stack_in, index, *kv_own)}
    if compile_:
        log("   what-if: torch.compile of both stacks (a minute or more) ...")
        t0 = time.perf_counter()
        full_c, sub_c = torch.compile(graphs.stack), torch.compile(graphs.subset_stack_functional)
        full_c(*stack_in)
        sub_c(*stack_in, index, *kv)
        fns.update(full_compiled=lambda: full_c(*stack_in), subset_compiled=lambda: sub_c(*stack_in, index, *kv))
        compile_s = time.perf_counter() - t0
    ms = {k: med_ms(v["cpu"]) for k, v in interleaved(fns, repeats, warmup=1).items()}
    scale = len(index) / stack_in[graphs.stack_inputs.index(graphs.stream_input)].shape[1]
    out = {"cpu_ms": ms, "ratio_out_of_place": ms["full"] * scale / ms["subset"],
           "ratio_in_place_kv": ms["full"] * scale / ms["subset_in_place"]}
    if compile_:
        out.update(compile_s=compile_s, ratio_compiled=ms["full_compiled"] * scale / ms["subset_compiled"],
                   speedup_compiled_subset_vs_eager_full=ms["full"] / ms["subset_compiled"])
    return out


# ------------------------------------------------------------------------------------------------ bench
def decision_fns(model, kwargs, step, flat, seed: int) -> dict[str, Callable]:
    """The runtime's own calls to time: model, full / skip step calls, prologue + epilogue, the decision
    stages and each motion source's state update, on the real tensors of one call."""
    state = step(flat, None).new_state
    second = step(flat, state)
    if execution_path(int(second.executed), second.tokens) != "skip":
        raise RuntimeError(f"an identical second call ran {int(second.executed)} tokens, expected the skip path")
    g, front = step.graphs, step.front(flat)

    def pro_epi():  # what the skip path does besides the decision and the state update
        f = step.front(flat)
        return g.epilogue(f.h0 + state["residual"], *[f.values[n] for n in g.epilogue_inputs])

    # a later call: the indicator moved a little, every token past warm-up and the chunk-wise phase
    gen, cfg, like = torch.Generator().manual_seed(seed), step.config, state["acc"]
    later = dict(state, indicator=state["indicator"] * (1 + 0.01 * torch.randn(
                     state["indicator"].shape, generator=gen).to(like.device)),
                 acc=torch.rand(like.shape, generator=gen).to(like.device) * cfg.threshold,
                 computes=torch.full_like(state["computes"], cfg.warmup_steps + cfg.phase1_computes + 1),
                 weights=torch.rand(like.shape, generator=gen).to(like.device) * 0.4 + 0.6)

    def decision():  # CacheStep.__call__ between the prologue and the execution
        update = step.decide(flat, front, later).update
        return update.any(0).nonzero()

    h_l = front.h0 + state["residual"]
    outputs = g.epilogue(h_l, *[front.values[n] for n in g.epilogue_inputs])
    fresh_rows = (torch.arange(front.tokens, device=like.device) % 4) == 0  # a quarter of the rows recomputed

    def fresh():
        return fresh_rows
    residual = state["residual"] * 1.01  # and this call's residual

    def state_update(source: str) -> Callable:  # CacheStep.finish of a step with this motion source
        s = step.with_config(dataclasses.replace(cfg, motion_source=source))
        st = {**s.initial_state(front), **later}
        return lambda: s.finish(flat, front, st, st["acc"], st["computes"], h_l, residual, st["kv"], fresh, outputs)

    return {"model": lambda: model(**kwargs),
            "run_full": lambda: step(flat, None), "run_skip": lambda: step(flat, state), "pro_epi": pro_epi,
            "decision": decision, **{f"motion_{s}": state_update(s) for s in MOTION_SOURCES}}


def stack_fns(graphs, stack_in, fraction: float, seed: int):
    """(index, K/V, error, callables) for the full and subset stacks and the subset's fixed cost."""
    h_full, *kv = graphs.run("stack", *stack_in)
    tokens = h_full.shape[1]
    n_sel = max(1, round(fraction * tokens))
    index = torch.randperm(tokens, generator=torch.Generator().manual_seed(seed))[:n_sel].sort().values
    h_sel, *_ = graphs.run("subset_stack", *stack_in, index, *kv)
    err = (h_sel - h_full.index_select(1, index)).abs().max().item()  # fresh cache: must match the full rows
    every = torch.arange(tokens)
    fns = {"full": lambda: graphs.run("stack", *stack_in),
           "subset": lambda: graphs.run("subset_stack", *stack_in, index, *kv),
           "subset_1": lambda: graphs.run("subset_stack", *stack_in, index[:1], *kv),
           "subset_all": lambda: graphs.run("subset_stack", *stack_in, every, *kv)}
    return h_full, index, kv, err, fns


def metrics(times: dict, flop_speedup: float, clock: str) -> dict:
    ms = {k: med_ms(v[clock]) for k, v in times.items()}
    speedup = ms["full"] / ms["subset"]
    model_ms, overhead_ms = ms["model"], ms["run_skip"] - ms["pro_epi"]
    motion = {s: ms[f"motion_{s}"] for s in MOTION_SOURCES}
    return {
        "ms_full": ms["full"], "ms_subset": ms["subset"],
        "ms_full_quartiles": spread_ms(times["full"][clock]), "ms_subset_quartiles": spread_ms(times["subset"][clock]),
        "speedup": speedup, "speedup_over_flop_speedup": speedup / flop_speedup,
        "target_met": speedup / flop_speedup >= WALL_TARGET, "ideal_subset_ms": ms["full"] / flop_speedup,
        "ms_subset_1_token": ms["subset_1"], "ms_subset_all_tokens": ms["subset_all"],
        "ms_full_diag": ms["full_diag"],
        "model_call_ms": model_ms, "step_run_full_ms": ms["run_full"], "step_run_skip_ms": ms["run_skip"],
        "prologue_plus_epilogue_ms": ms["pro_epi"], "skip_overhead_ms": overhead_ms,
        "skip_overhead_fraction_of_model_call": overhead_ms / model_ms,
        "decision_ms": ms["decision"], "motion_weights_ms": motion,
        "decision_plus_motion_fraction_of_model_call": {s: (ms["decision"] + v) / model_ms for s, v in motion.items()},
        "overhead_target_met": max(overhead_ms, ms["decision"] + max(motion.values())) / model_ms <= OVERHEAD_TARGET,
    }


def bench_model(name: str, repeats: int, fraction: float, seed: int, profile: bool, log,
                what_if_mode: str = "off") -> dict:
    model, kwargs, desc = MODELS[name]()
    log(f"\n== {name}: {desc}")
    t0 = time.perf_counter()
    opt = mcgraph.optimize(model, MotionCacheConfig(threshold=THRESHOLD), (), kwargs)
    log(f"   capture + rewrite: {time.perf_counter() - t0:.1f} s")
    _, _, flat = opt.specialisation_for(**kwargs)
    step, graphs = opt.step, opt.step.graphs
    with torch.no_grad():
        stack_in = opt.stack_inputs(**kwargs)
        h_full, index, kv, err, stacks = stack_fns(graphs, stack_in, fraction, seed)
        (_, tokens, dim), n_sel = h_full.shape, len(index)
        flops_full, ops_full = count_flops(stacks["full"])
        flops_sub, ops_sub = count_flops(stacks["subset"])
        log(f"   {tokens} tokens, hidden {dim}, {len(kv) // 2} self-attention layers; subset {n_sel} tokens "
            f"({100 * n_sel / tokens:.0f}%), max |subset - full rows| = {err:.2e}")
        log(f"   timing the stacks: {repeats} interleaved repeats ...")
        times = interleaved({k: stacks[k] for k in ("full", "subset")}, repeats, warmup=2)
        times.update(interleaved({"full_diag": stacks["full"], "subset_1": stacks["subset_1"],
                                  "subset_all": stacks["subset_all"]}, max(3, repeats // 3)))
        log("   timing model call, step (full / skip), prologue + epilogue, decision, state updates ...")
        fns = decision_fns(model, kwargs, step, flat, seed)
        times.update(interleaved({k: fns[k] for k in ("model", "run_full")}, max(3, repeats // 3)))
        times.update(interleaved({k: v for k, v in fns.items() if k not in ("model", "run_full")},
                                 max(41, 3 * repeats), warmup=3))
        profiles, remedies = {}, None
        if profile:
            log("   profiling ...")
            profiles = {"full": profile_ops(stacks["full"]), "subset": profile_ops(stacks["subset"])}
            profiles["per_op_excess"] = op_excess(profiles["full"], profiles["subset"], n_sel / tokens)
        if what_if_mode != "off":
            log("   what-if: K/V cache written out of place" + (", torch.compile" if what_if_mode == "compile" else ""))
            remedies = what_if(graphs, stack_in, index, kv, repeats, what_if_mode == "compile", log)
    flop_speedup = flops_full / flops_sub
    return {"model": name, "description": desc, "tokens": tokens, "hidden": dim, "layers": len(kv) // 2,
            "selected_tokens": n_sel, "selected_fraction": n_sel / tokens, "max_abs_error_subset_vs_full_rows": err,
            "flops_full": flops_full, "flops_subset": flops_sub, "flops_by_op_full": ops_full,
            "flops_by_op_subset": ops_sub, "flop_speedup": flop_speedup, "repeats": repeats,
            "load_average_1min": os.getloadavg()[0], "wall": metrics(times, flop_speedup, "wall"),
            "cpu": metrics(times, flop_speedup, "cpu"), "profile": profiles, "what_if": remedies}


# ------------------------------------------------------------------------------------------------ report
ROWS = [  # (label, format, metric) per clock
    ("ms full stack (median)", "{:.1f}", lambda m: m["ms_full"]),
    ("ms subset stack (median)", "{:.1f}", lambda m: m["ms_subset"]),
    ("speedup", "{:.2f}x", lambda m: m["speedup"]),
    (f"speedup / FLOP speedup (>= {WALL_TARGET})", "{}",
     lambda m: f"{m['speedup_over_flop_speedup']:.3f} {'ok' if m['target_met'] else 'MISSED'}"),
    ("subset ms with 1 token (fixed cost)", "{:.1f}", lambda m: m["ms_subset_1_token"]),
    ("model call ms (eager original)", "{:.1f}", lambda m: m["model_call_ms"]),
    ("step ms, full path", "{:.1f}", lambda m: m["step_run_full_ms"]),
    ("step ms, skip path", "{:.2f}", lambda m: m["step_run_skip_ms"]),
    ("  prologue + epilogue ms", "{:.2f}", lambda m: m["prologue_plus_epilogue_ms"]),
    ("  difference: motion + decision ms", "{:.2f}", lambda m: m["skip_overhead_ms"]),
    ("  as % of model call", "{:.2f}%", lambda m: 100 * m["skip_overhead_fraction_of_model_call"]),
    ("decision ms (direct)", "{:.3f}", lambda m: m["decision_ms"]),
    *[(f"state update ms ({s} weights)", "{:.3f}", lambda m, s=s: m["motion_weights_ms"][s]) for s in MOTION_SOURCES],
    ("decision + update %, min-max source", "{}", lambda m: "-".join(
        f"{100 * f(m['decision_plus_motion_fraction_of_model_call'].values()):.2f}" for f in (min, max))),
    (f"motion + decision <= {100 * OVERHEAD_TARGET:.0f}% of a call", "{}",
     lambda m: "ok" if m["overhead_target_met"] else "MISSED"),
]


def print_details(r: dict, out) -> None:
    w = r.get("what_if")
    if w:
        compiled = "" if "ratio_compiled" not in w else (
            f", torch.compile {w['ratio_compiled']:.3f} (compiled subset "
            f"{w['speedup_compiled_subset_vs_eager_full']:.2f}x"
            f" faster than the eager full stack; compile {w['compile_s']:.0f} s)")
        out(f"\n{r['model']} what-if (cpu clock, speedup / FLOP speedup): K/V out of place "
            f"{w['ratio_out_of_place']:.3f}, in place (as run eagerly) {w['ratio_in_place_kv']:.3f}{compiled}")
    ex = r["profile"].get("per_op_excess")
    if ex:
        out(f"\n{r['model']}: per-op self CPU time (profiler), subset vs full x {r['selected_fraction']:.2f}; "
            f"excess {ex['excess_ms']:.2f} ms of subset {ex['subset_ms']:.2f} ms:")
        out(f"   {'op':52}{'full':>9}{'full x f':>10}{'subset':>9}{'excess':>9}{'calls':>7}")
        for o in ex["ops"][:10]:
            out(f"   {o['op'][:52]:52}{o['full_ms']:9.2f}{o['full_scaled_ms']:10.2f}{o['subset_ms']:9.2f}"
                f"{o['excess_ms']:9.2f}{o['calls']:7}")
    for which in ("full", "subset"):
        p = r["profile"].get(which)
        if p:
            out(f"\n{r['model']} {which} stack, profiler self time per call ({p['total_ms_per_call']:.1f} ms):")
            for g, ms in sorted(p["groups_ms_per_call"].items(), key=lambda kv: -kv[1]):
                out(f"   {g:44} {ms:8.2f} ms  {100 * ms / max(p['total_ms_per_call'], 1e-9):5.1f}%")


def print_table(results: list[dict], out=print) -> None:
    out("\n" + f"{'':36}" + "".join(f"{r['model'] + ' (' + str(r['tokens']) + ' tokens)':>32}" for r in results))
    out(f"{'':36}" + "".join(f"{'wall':>16}{'cpu':>16}" for _ in results))
    for label, value in (("selected tokens", lambda r: f"{r['selected_tokens']} ({100 * r['selected_fraction']:.0f}%)"),
                         ("GFLOP full / subset stack",
                          lambda r: f"{r['flops_full'] / 1e9:.2f} / {r['flops_subset'] / 1e9:.2f}"),
                         ("FLOP-ratio speedup", lambda r: f"{r['flop_speedup']:.2f}x")):
        out(f"{label:36}" + "".join(f"{value(r):>32}" for r in results))
    for label, fmt, key in ROWS:
        out(f"{label:36}" + "".join(f"{fmt.format(key(r[c])):>16}" for r in results for c in ("wall", "cpu")))
    loads = ", ".join(f"{r['load_average_1min']:.2f}" for r in results)
    out(f"(1-min load average during the runs: {loads} on {os.cpu_count()} cores; 'cpu' is this thread's CPU "
        "time, unaffected by preemption)")
    for r in results:
        print_details(r, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default="reference,wan", help="comma separated: " + ", ".join(MODELS))
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats of each stack")
    parser.add_argument("--fraction", type=float, default=0.25, help="fraction of tokens in the subset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the targets are for 1)")
    parser.add_argument("--wan-frames", type=int, default=16, help="latent frames of the larger Wan model")
    parser.add_argument("--wan-size", type=int, default=32, help="latent height = width of the larger Wan model")
    parser.add_argument("--wan-layers", type=int, default=4, help="blocks of the larger Wan model")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler breakdowns")
    parser.add_argument("--what-if", choices=("off", "inplace", "compile"), default="off",
                        help="also time the out-of-place subset stack (compile / export form) against the in-place "
                             "one; 'compile' adds torch.compile of both stacks (slow to compile)")
    parser.add_argument("--json", default=str(ROOT / "docs" / "bench_subset.json"), help="output ('' for none)")
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    MODELS["wan"] = lambda: wan_model(frames=args.wan_frames, size=args.wan_size, layers=args.wan_layers)
    log = lambda s: print(s, flush=True)  # noqa: E731
    results = [bench_model(m, args.repeats, args.fraction, args.seed, not args.no_profile, log, args.what_if)
               for m in names]
    print_table(results)
    if args.json:
        doc = {"command": "python tools/bench_subset.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
               "processor": platform.processor(),
               "targets": {"wall_over_flop_speedup": WALL_TARGET, "motion_plus_decision_fraction": OVERHEAD_TARGET},
               "results": results}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
