"""Speed benchmark of the token-subset path (issue 4, "Speed"): is the saving real, not only on paper?

For each model, on one CPU thread, measured side by side (interleaved repeats, medians):

1. the full block stack (``opt.step.stack``) against the token-subset stack (``opt.step.subset_stack``) with a
   fraction (default 25%) of the tokens, a random sorted index, attending over a full K/V cache;
2. the FLOPs of both, counted with ``torch.utils.flop_counter.FlopCounterMode`` (plus a formula for the CPU
   flash-attention kernel, which the counter does not know: without it attention would count as 0);
3. FLOP-ratio speedup, wall-time speedup and their ratio (the target is >= 0.85);
4. the cost of motion estimation + decision, as a fraction of a full model call (target <= 3%), two ways:
   (a) ``opt.step.run`` on an identical second call, which skips the stack (path "skip"), minus the
   prologue and the epilogue: indicator distance, decide, residual add, motion weights and bookkeeping;
   (b) the decision (distances from the indicator, ``mcgraph.runtime.policies.decide``) and the motion weights of
   each motion source (``CachedStep._motion_weights``) timed directly on the real-sized tensors;
5. where the subset stack spends its time (torch.profiler, grouped by op).

Models: the bundled reference DiT (16 frames x 64 tokens = 1024 tokens) and a larger diffusers
``WanTransformer3DModel`` built offline with random weights (default latent (1, 16, 16, 32, 32), patch
(1, 2, 2): 4096 tokens, hidden 384 = 6 heads x 64, 4 layers, FFN 1536).

    python tools/bench_subset.py                      # both models, writes docs/bench_subset.json
    python tools/bench_subset.py --models reference --repeats 5 --json ''
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.fx._pytree as fx_pytree
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import mcgraph
from mcgraph.compiler.capture import bind_call
from mcgraph.config import MotionCacheConfig
from mcgraph.runtime.policies import chunk_mean, decide

ROOT = Path(__file__).resolve().parents[1]
WALL_TARGET = 0.85  # wall speedup / FLOP speedup
OVERHEAD_TARGET = 0.03  # motion + decision / full model call


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


# ------------------------------------------------------------------------------------------------- FLOPs


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def count_flops(fn: Callable) -> tuple[int, dict[str, int]]:
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


# ---------------------------------------------------------------------------------------------- timing


CLOCKS = ("wall", "cpu")  # time.perf_counter, and time.thread_time (this thread's CPU time: immune to preemption)


def interleaved(fns: dict[str, Callable], repeats: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each function on both clocks, the functions alternating (order rotated every repeat)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            c, t = time.thread_time(), time.perf_counter()
            fns[n]()
            t, c = time.perf_counter() - t, time.thread_time() - c
            times[n]["wall"].append(t)
            times[n]["cpu"].append(c)
    return times


def med_ms(ts: list[float]) -> float:
    return 1000 * statistics.median(ts)


def spread_ms(ts: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ts, n=4) if len(ts) >= 4 else [min(ts), 0, max(ts)]
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
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    groups = {g: 0.0 for g in GROUPS}
    other = 0.0
    for e in events:
        for g, keys in GROUPS.items():
            if e.key in keys:
                groups[g] += e.self_cpu_time_total
                break
        else:
            other += e.self_cpu_time_total
    groups["other elementwise / misc"] = other
    return {
        "total_ms_per_call": total / runs / 1000,
        "groups_ms_per_call": {g: v / runs / 1000 for g, v in groups.items()},
        "top_ops": [{"op": e.key, "self_ms_per_call": e.self_cpu_time_total / runs / 1000, "calls": e.count // runs,
                     "shapes": None} for e in top],
    }


def op_excess(step, stack_in, index, kv, fraction: float, repeats: int = 5) -> dict:
    """Per-op wall time of both stacks (an fx.Interpreter timing every node, medians over repeats): where does
    the subset stack spend more than `fraction` x the full stack's time?"""
    import collections

    class Timed(torch.fx.Interpreter):
        def run_node(self, n):
            t = time.perf_counter()
            out = super().run_node(n)
            key = getattr(n.target, "__name__", str(n.target)) if n.op == "call_function" else n.op
            self.times[key] += time.perf_counter() - t
            self.calls[key] += 1
            return out

    res = {}
    for name, gm, args in (("full", step.stack, stack_in), ("subset", step.subset_stack, [*stack_in, index, *kv])):
        acc = collections.defaultdict(list)
        for _ in range(repeats):
            it = Timed(gm)
            it.times, it.calls = collections.defaultdict(float), collections.Counter()
            it.run(*args)
            for k, v in it.times.items():
                acc[k].append(v)
        res[name] = ({k: statistics.median(v) * 1000 for k, v in acc.items()}, it.calls, len(gm.graph.nodes))
    (full, _, n_full), (sub, calls, n_sub) = res["full"], res["subset"]
    ops = [{"op": k, "full_ms": full.get(k, 0.0), "full_scaled_ms": full.get(k, 0.0) * fraction,
            "subset_ms": sub.get(k, 0.0), "excess_ms": sub.get(k, 0.0) - full.get(k, 0.0) * fraction,
            "calls": calls.get(k, 0)} for k in set(full) | set(sub)]
    ops.sort(key=lambda o: -o["excess_ms"])
    return {"full_ms": sum(full.values()), "subset_ms": sum(sub.values()),
            "excess_ms": sum(sub.values()) - fraction * sum(full.values()), "nodes_full": n_full,
            "nodes_subset": n_sub, "ops": ops}


def what_if(step, stack_in, index, kv, repeats: int, compile_: bool, log) -> dict:
    """Ratios (speedup / FLOP speedup = full ms x n / (subset ms x L), FLOPs scale with n) under two remedies, on
    the CPU clock: (1) the K/V cache written in place (``index_copy_`` instead of the out-of-place
    ``index_copy`` that copies every layer's whole cache per call), (2) both stacks under ``torch.compile``."""
    import copy

    graph = copy.deepcopy(step.subset_stack.graph)
    for node in graph.nodes:
        if node.target == torch.ops.aten.index_copy.default:
            node.target = torch.ops.aten.index_copy_.default
    in_place = torch.fx.GraphModule(step.subset_stack, graph)
    kv_own = [t.clone() for t in kv]
    fns = {"full": lambda: step.stack(*stack_in), "subset": lambda: step.subset_stack(*stack_in, index, *kv),
           "subset_in_place": lambda: in_place(*stack_in, index, *kv_own)}
    if compile_:
        log("   what-if: torch.compile of both stacks (a minute or more) ...")
        t0 = time.perf_counter()
        full_c, sub_c = torch.compile(step.stack), torch.compile(step.subset_stack)
        full_c(*stack_in)
        sub_c(*stack_in, index, *kv)
        fns.update({"full_compiled": lambda: full_c(*stack_in), "subset_compiled": lambda: sub_c(*stack_in, index, *kv)})
        compile_s = time.perf_counter() - t0
    times = interleaved(fns, repeats, warmup=1)
    ms = {k: med_ms(v["cpu"]) for k, v in times.items()}
    scale = len(index) / stack_in_tokens(step, stack_in)
    out = {"cpu_ms": ms,
           "ratio_out_of_place": ms["full"] * scale / ms["subset"],
           "ratio_in_place_kv": ms["full"] * scale / ms["subset_in_place"]}
    if compile_:
        out.update({"compile_s": compile_s,
                    "ratio_compiled": ms["full_compiled"] * scale / ms["subset_compiled"],
                    "speedup_compiled_subset_vs_eager_full": ms["full"] / ms["subset_compiled"]})
    return out


def stack_in_tokens(step, stack_in) -> int:
    return stack_in[step.stack_inputs.index(step.stream_input)].shape[1]


# ------------------------------------------------------------------------------------------------ bench


def bench_model(name: str, repeats: int, fraction: float, seed: int, profile: bool, log,
                what_if_mode: str = "off") -> dict:
    model, kwargs, desc = MODELS[name]()
    log(f"\n== {name}: {desc}")
    t0 = time.perf_counter()
    opt = mcgraph.optimize(model, MotionCacheConfig(threshold=0.1), (), kwargs)
    log(f"   capture + rewrite: {time.perf_counter() - t0:.1f} s")
    step = opt.step
    bound = bind_call(model, (), kwargs)
    flat = fx_pytree.tree_flatten_spec(((), bound), opt.captured.graph_module.graph._codegen.pytree_info.in_spec)

    with torch.no_grad():
        stack_in = opt.stack_inputs(**kwargs)
        h_full, *kv = step.stack(*stack_in)
        batch, tokens, dim = h_full.shape
        n_sel = max(1, round(fraction * tokens))
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(tokens, generator=g)[:n_sel].sort().values

        full = lambda: step.stack(*stack_in)
        subset = lambda: step.subset_stack(*stack_in, index, *kv)
        h_sel, *_ = subset()
        err = (h_sel - h_full.index_select(1, index)).abs().max().item()  # fresh cache: must match the full rows

        flops_full, ops_full = count_flops(full)
        flops_sub, ops_sub = count_flops(subset)
        log(f"   {tokens} tokens, hidden {dim}, {len(kv) // 2} self-attention layers; subset {n_sel} tokens "
            f"({100 * n_sel / tokens:.0f}%), max |subset - full rows| = {err:.2e}")
        log(f"   timing the stacks: {repeats} interleaved repeats ...")
        stack_times = interleaved({"full": full, "subset": subset}, repeats, warmup=2)

        # fixed cost of the subset machinery: one token (dispatch, gathers, full K/V cache copies), all tokens
        one = index[:1]
        every = torch.arange(tokens)
        sub_one = lambda: step.subset_stack(*stack_in, one, *kv)
        sub_all = lambda: step.subset_stack(*stack_in, every, *kv)
        diag_times = interleaved({"full": full, "subset_1": sub_one, "subset_all": sub_all},
                                 max(3, repeats // 3), warmup=1)

        # ---- cost of motion estimation + decision
        state = step.run(flat, None, "bench")[1]
        record_before = step.record
        step.record = True
        step.run(flat, state, "bench")
        skip_path = step.records[-1].path
        del step.records[-1]
        step.record = record_before
        if skip_path != "skip":
            raise RuntimeError(f"an identical second call took path {skip_path!r}, expected 'skip'")
        frames, per_frame = step._geometry(flat)
        run_skip = lambda: step.run(flat, state, "bench")

        def pro_epi():  # what the skip path does besides deciding: prologue, h_L = h_0 + R, epilogue
            p = step.prologue(*flat)
            v = dict(zip(step.boundary, p[:-1]))
            h_l = v[step.stream_input] + state["residual"]
            return step.epilogue(h_l, *[v[n] for n in step.epilogue_inputs])

        outputs = pro_epi()
        indicator = step.prologue(*flat)[-1]
        prev = indicator * (1 + 0.01 * torch.randn(indicator.shape, generator=g))
        cfg = MotionCacheConfig(threshold=0.1)
        acc = torch.rand(batch, tokens, generator=g) * 0.1
        computes = torch.full((batch, tokens), cfg.warmup_steps + cfg.phase1_computes + 1, dtype=torch.int32)
        weights = torch.rand(batch, tokens, generator=g) * 0.4 + 0.6

        def decision():  # what CachedStep.run computes between the prologue and the stack
            num = (indicator - prev).abs().mean(-1).float()
            den = prev.abs().mean(-1).float()
            dist = num / (den + 1e-8)
            chunk_dist = chunk_mean(num, frames, step.chunk_frames) / (chunk_mean(den, frames, step.chunk_frames) + 1e-8)
            sample_dist = num.mean(1) / (den.mean(1) + 1e-8)
            t_tok = step._token_timesteps(flat, batch, frames, per_frame)
            final = torch.zeros_like(dist, dtype=torch.bool) if t_tok is None else (t_tok > 0) & (t_tok <= 50)
            update, *_ = decide(cfg, dist, chunk_dist, sample_dist, acc, computes, final, weights, frames,
                                step.chunk_frames)
            return update.any(0).nonzero()

        def motion_weights(source: str) -> Callable:
            c = MotionCacheConfig(motion_source=source)
            return lambda: step._motion_weights(c, h_full, flat, outputs, frames, per_frame)

        motion = {src: motion_weights(src) for src in ("hidden", "latent", "clean")}
        log("   timing model call, step.run (full / skip), prologue + epilogue, decision, motion weights ...")
        call_times = interleaved({"model": lambda: model(**kwargs), "run_full": lambda: step.run(flat, None, "bench")},
                                 max(3, repeats // 3), warmup=1)
        cheap = max(41, 3 * repeats)
        skip_times = interleaved({"run_skip": run_skip, "pro_epi": pro_epi}, cheap, warmup=3)
        direct_times = interleaved({"decision": decision, **{f"motion_{k}": v for k, v in motion.items()}},
                                   cheap, warmup=3)
        profiles = {}
        if profile:
            log("   profiling ...")
            profiles = {"full": profile_ops(full), "subset": profile_ops(subset),
                        "per_op_wall_excess": op_excess(step, stack_in, index, kv, n_sel / tokens)}
        remedies = None
        if what_if_mode != "off":
            log("   what-if: in-place K/V cache write" + (", torch.compile" if what_if_mode == "compile" else ""))
            remedies = what_if(step, stack_in, index, kv, repeats, what_if_mode == "compile", log)

    def metrics(clock: str) -> dict:
        def ms(times, key):
            return med_ms(times[key][clock])

        f_med, s_med = ms(stack_times, "full"), ms(stack_times, "subset")
        wall_speedup = f_med / s_med
        model_ms = ms(call_times, "model")
        skip_ms, pro_epi_ms = ms(skip_times, "run_skip"), ms(skip_times, "pro_epi")
        decision_ms = ms(direct_times, "decision")
        motion_ms = {k: ms(direct_times, f"motion_{k}") for k in motion}
        overhead_ms = skip_ms - pro_epi_ms
        return {
            "ms_full": f_med,
            "ms_subset": s_med,
            "ms_full_quartiles": spread_ms(stack_times["full"][clock]),
            "ms_subset_quartiles": spread_ms(stack_times["subset"][clock]),
            "speedup": wall_speedup,
            "speedup_over_flop_speedup": wall_speedup / flop_speedup,
            "target_met": wall_speedup / flop_speedup >= WALL_TARGET,
            "ideal_subset_ms": f_med / flop_speedup,
            "ms_subset_1_token": ms(diag_times, "subset_1"),
            "ms_subset_all_tokens": ms(diag_times, "subset_all"),
            "ms_full_diag": ms(diag_times, "full"),
            "model_call_ms": model_ms,
            "step_run_full_ms": ms(call_times, "run_full"),
            "step_run_skip_ms": skip_ms,
            "prologue_plus_epilogue_ms": pro_epi_ms,
            "skip_overhead_ms": overhead_ms,
            "skip_overhead_fraction_of_model_call": overhead_ms / model_ms,
            "decision_ms": decision_ms,
            "motion_weights_ms": motion_ms,
            "decision_plus_motion_fraction_of_model_call": {k: (decision_ms + v) / model_ms
                                                            for k, v in motion_ms.items()},
            "overhead_target_met": max(overhead_ms, decision_ms + max(motion_ms.values())) / model_ms
            <= OVERHEAD_TARGET,
        }

    flop_speedup = flops_full / flops_sub
    return {
        "model": name,
        "description": desc,
        "tokens": tokens,
        "hidden": dim,
        "layers": len(kv) // 2,
        "selected_tokens": n_sel,
        "selected_fraction": n_sel / tokens,
        "max_abs_error_subset_vs_full_rows": err,
        "flops_full": flops_full,
        "flops_subset": flops_sub,
        "flops_by_op_full": ops_full,
        "flops_by_op_subset": ops_sub,
        "flop_speedup": flop_speedup,
        "repeats": repeats,
        "load_average_1min": os.getloadavg()[0],
        "wall": metrics("wall"),
        "cpu": metrics("cpu"),
        "profile": profiles,
        "what_if": remedies,
    }


def print_table(results: list[dict], out=print) -> None:
    out("")
    out(f"{'':36}" + "".join(f"{r['model'] + ' (' + str(r['tokens']) + ' tokens)':>32}" for r in results))
    out(f"{'':36}" + "".join(f"{'wall':>16}{'cpu':>16}" for _ in results))

    def row(label, fmt, key, both=True):
        cells = []
        for r in results:
            if both:
                cells += [f"{fmt(key(r['wall'])):>16}", f"{fmt(key(r['cpu'])):>16}"]
            else:
                cells.append(f"{fmt(key(r)):>32}")
        out(f"{label:36}" + "".join(cells))

    row("selected tokens", str, lambda r: f"{r['selected_tokens']} ({100 * r['selected_fraction']:.0f}%)", both=False)
    row("GFLOP full / subset stack", str, lambda r: f"{r['flops_full'] / 1e9:.2f} / {r['flops_subset'] / 1e9:.2f}",
        both=False)
    row("FLOP-ratio speedup", "{:.2f}x".format, lambda r: r["flop_speedup"], both=False)
    row("ms full stack (median)", "{:.1f}".format, lambda m: m["ms_full"])
    row("ms subset stack (median)", "{:.1f}".format, lambda m: m["ms_subset"])
    row("speedup", "{:.2f}x".format, lambda m: m["speedup"])
    row(f"speedup / FLOP speedup (>= {WALL_TARGET})", str,
        lambda m: f"{m['speedup_over_flop_speedup']:.3f} {'ok' if m['target_met'] else 'MISSED'}")
    row("ideal subset ms (full / FLOP ratio)", "{:.1f}".format, lambda m: m["ideal_subset_ms"])
    row("subset ms with 1 token (fixed cost)", "{:.1f}".format, lambda m: m["ms_subset_1_token"])
    row("subset ms, all tokens", "{:.1f}".format, lambda m: m["ms_subset_all_tokens"])
    row("model call ms (eager original)", "{:.1f}".format, lambda m: m["model_call_ms"])
    row("step.run ms, full path", "{:.1f}".format, lambda m: m["step_run_full_ms"])
    row("step.run ms, skip path", "{:.2f}".format, lambda m: m["step_run_skip_ms"])
    row("  prologue + epilogue ms", "{:.2f}".format, lambda m: m["prologue_plus_epilogue_ms"])
    row("  difference: motion + decision ms", "{:.2f}".format, lambda m: m["skip_overhead_ms"])
    row("  as % of model call", "{:.2f}%".format, lambda m: 100 * m["skip_overhead_fraction_of_model_call"])
    row("decision ms (direct)", "{:.3f}".format, lambda m: m["decision_ms"])
    for src in ("hidden", "latent", "clean"):
        row(f"motion weights ms ({src})", "{:.3f}".format, lambda m, s=src: m["motion_weights_ms"][s])
    row("decision + motion % (h/l/c)", str, lambda m: "/".join(
        f"{100 * v:.2f}" for v in m["decision_plus_motion_fraction_of_model_call"].values()))
    row(f"motion + decision <= {100 * OVERHEAD_TARGET:.0f}% of a call", str,
        lambda m: "ok" if m["overhead_target_met"] else "MISSED")
    loads = ", ".join(f"{r['load_average_1min']:.2f}" for r in results)
    out(f"(1-min load average during the runs: {loads} "
        f"on {os.cpu_count()} cores; 'cpu' is this thread's CPU time, unaffected by preemption)")
    for r in results:
        w = r.get("what_if")
        if w:
            line = (f"\n{r['model']} what-if (cpu clock, speedup / FLOP speedup): as built {w['ratio_out_of_place']:.3f}, "
                    f"K/V cache written in place {w['ratio_in_place_kv']:.3f}")
            if "ratio_compiled" in w:
                line += (f", torch.compile {w['ratio_compiled']:.3f} (compiled subset {w['speedup_compiled_subset_vs_eager_full']:.2f}x "
                         f"faster than the eager full stack; compile {w['compile_s']:.0f} s)")
            out(line)
        ex = r["profile"].get("per_op_wall_excess")
        if ex:
            out(f"\n{r['model']}: per-op wall time (fx.Interpreter, medians), subset vs full x {r['selected_fraction']:.2f}; "
                f"excess {ex['excess_ms']:.2f} ms of subset {ex['subset_ms']:.2f} ms ({ex['nodes_subset']} nodes):")
            out(f"   {'op':36}{'full':>9}{'full x f':>10}{'subset':>9}{'excess':>9}{'calls':>7}")
            for o in ex["ops"][:10]:
                out(f"   {o['op']:36}{o['full_ms']:9.2f}{o['full_scaled_ms']:10.2f}{o['subset_ms']:9.2f}"
                    f"{o['excess_ms']:9.2f}{o['calls']:7}")
        for which in ("full", "subset"):
            p = r["profile"].get(which)
            if not p:
                continue
            out(f"\n{r['model']} {which} stack, profiler self time per call ({p['total_ms_per_call']:.1f} ms):")
            for g, ms in sorted(p["groups_ms_per_call"].items(), key=lambda kv: -kv[1]):
                out(f"   {g:44} {ms:8.2f} ms  {100 * ms / p['total_ms_per_call']:5.1f}%")


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
                        help="also time remedies: the K/V cache written in place; 'compile' adds torch.compile of "
                             "both stacks (slow to compile)")
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
    log = lambda s: print(s, flush=True)
    results = [bench_model(m, args.repeats, args.fraction, args.seed, not args.no_profile, log, args.what_if)
               for m in names]
    print_table(results)
    if args.json:
        doc = {
            "command": "python tools/bench_subset.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "targets": {"wall_over_flop_speedup": WALL_TARGET, "motion_plus_decision_fraction": OVERHEAD_TARGET},
            "results": results,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
