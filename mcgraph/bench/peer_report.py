"""What the peer comparison (`mcgraph.bench.peers`) shows: the rows of its table (`peers_table_rows`: speedups,
efficiency, overhead, error), the Markdown table (`peers_markdown_table`) and peers.md (`peers_markdown`);
`write_peers_outputs` writes peers.json and peers.md of `mcgraph bench --peers-only`.
"""

from __future__ import annotations

import json
from pathlib import Path

from mcgraph.bench.measure import median

__all__ = ["peers_markdown", "peers_markdown_table", "peers_table_rows", "write_peers_outputs"]

def _paired(base: list[float], run: list[float]) -> list[float]:
    """Per-round ratios base_i / run_i of interleaved repeats."""
    return [b / r for b, r in zip(base, run)]


def peers_table_rows(doc: dict) -> list[dict]:
    """One dict per row of the peer table (uncached first), the figures `peers_markdown` prints: wall and CPU
    speedup (ratio of medians, with the range of the per-round ratios), FLOP speedup, efficiency, per-call
    overhead (wall time beyond what the FLOPs would take at the uncached rate), tokens computed, error."""
    p = doc["peers"] if "peers" in doc else doc
    t = next(iter(p["baseline"]["wall_s"]))
    calls = p["loop"]["calls"]
    base_wall = p["baseline"]["wall_s"][t]
    base_flops = p["baseline"]["flops"]
    cpu = doc.get("cpu")
    base_cpu = cpu["baseline"]["cpu_repeats"][t] if cpu else None
    rows = [{"framework": "—", "method": "uncached (eager)", "speedup": 1.0, "speedup_range": None,
             "cpu_speedup": 1.0 if cpu else None, "flop_speedup": 1.0, "efficiency": 1.0, "overhead_ms": 0.0,
             "wall_s": base_wall, "executed_fraction": None, "rel_error": 0.0, "run": None}]
    order = {"mcgraph": 0, "diffusers": 1}
    indexed = sorted(enumerate(p["runs"]), key=lambda ir: (order.get(ir[1]["framework"], 2), ir[1]["method"],
                                                            -ir[1]["speedup"][t]))
    for i, r in indexed:
        pairs = _paired(p["baseline"]["wall_repeats"][t], r["wall_repeats"][t])
        cpu_speedup = None
        if cpu:
            cpu_speedup = median(base_cpu) / median(cpu["runs"][i]["cpu_repeats"][t])
        overhead = (r["wall_s"][t] - base_wall * r["flops"] / base_flops) / calls * 1e3
        rows.append({"framework": r["framework"], "method": r["label"].split(" ", 1)[1], "speedup": r["speedup"][t],
                     "speedup_range": (min(pairs), max(pairs)) if len(pairs) > 1 else None,
                     "cpu_speedup": cpu_speedup, "flop_speedup": r["flop_speedup"], "efficiency": r["efficiency"][t],
                     "overhead_ms": overhead, "wall_s": r["wall_s"][t], "executed_fraction": r["executed_fraction"],
                     "rel_error": r["rel_error"], "run": r})
    return rows


def _load(values) -> str:
    return "—" if not values else " / ".join(f"{v:.2f}" for v in values)


def _x(v, spec=".2f") -> str:
    return "—" if v is None else f"{v:{spec}}×"


def peers_markdown_table(doc: dict) -> str:
    """The peer table in Markdown (one line per `peers_table_rows` row)."""
    p = doc["peers"] if "peers" in doc else doc
    t = next(iter(p["baseline"]["wall_s"]))
    n = len(p["baseline"]["wall_repeats"][t])
    head = ["framework", "method", f"speedup ({t} thr)", f"per-round range (n={n})", "CPU-time speedup",
            "FLOP speedup", "efficiency", "overhead ms/call", "wall s", "tokens computed",
            "rel. L2 error of final latent"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in peers_table_rows(doc):
        rng = row["speedup_range"]
        cells = [row["framework"], row["method"], _x(row["speedup"]),
                 f"{rng[0]:.2f}–{rng[1]:.2f}" if rng else "—", _x(row["cpu_speedup"]), _x(row["flop_speedup"]),
                 f"{row['efficiency']:.2f}", f"{row['overhead_ms']:+.1f}" if row["run"] else "—",
                 f"{row['wall_s']:.2f}",
                 "—" if row["executed_fraction"] is None else f"{100 * row['executed_fraction']:.1f}%",
                 "0" if row["run"] is None else f"{row['rel_error']:.2e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peers_markdown(doc: dict) -> str:
    """peers.md of `--peers-only`: the setting, how it was measured, the table."""
    p, env = doc["peers"], doc["environment"]
    m, loop = p["model"], p["loop"]
    t = next(iter(p["baseline"]["wall_s"]))
    n = len(p["baseline"]["wall_repeats"][t])
    tokens = doc.get("video_tokens")
    lines = [
        "# Peer comparison: mcgraph vs diffusers' cache hooks on WanTransformer3DModel", "",
        f"Created {doc['created']}" + (f" by `{doc['command']}`" if doc.get("command") else "")
        + f" in {doc['elapsed_s']:.0f} s.", "",
        f"Model: `{m['class']}` ({m['name']}), {m['weights']}, config {m['config']}; latent {m['latent_shape']}"
        + (f" ({tokens} video tokens)" if tokens else "") + f", text embeddings {m['text_shape']}.", "",
        f"Loop: flow-matching Euler, {loop['steps']} steps, shift {loop['shift']:g}, two-call CFG "
        f"{loop['guidance_scale']:g} (cond then uncond: {loop['calls']} model calls); mcgraph's final_timestep "
        f"{loop['final_timestep']:.3g}. diffusers' caches run through `model.enable_cache(...)` with "
        f"`cache_context('cond'/'uncond', step info)` and `_reset_stateful_cache()` per generation; mcgraph's "
        f"through `mcgraph.optimize` (captured once in {p['capture_s']:.1f} s, then `with_config` per row, "
        f"`reset_cache()` per generation).", "",
        f"Environment: {env['processor']} ({env['cpu_count']} cores), {t} torch thread(s), OMP_NUM_THREADS="
        f"{env.get('omp_num_threads')}, Python {env['python']}, torch {env['torch']}, diffusers {env['diffusers']}, "
        f"mcgraph {env['mcgraph']} ({env.get('git_commit')}); load average {_load(env.get('load_average'))} at the "
        f"start, {_load(env.get('load_average_end'))} at the end.", "",
        f"Measurement: one counted generation per row first (FLOPs with `torch.utils.flop_counter`, tokens "
        f"computed, the final latent; it is also the warm-up), then {n} timed round(s), each running the "
        f"uncached model and every row once in turn. Speedup: median uncached wall time / median wall time of the "
        f"row; the range is that of the per-round ratios. CPU-time speedup: the same with process CPU time. "
        f"Efficiency: speedup / FLOP speedup. Overhead ms/call: (row's wall time - uncached wall time x row's "
        f"FLOPs / uncached FLOPs) / {loop['calls']} calls, i.e. the time per call beyond what the row's FLOPs "
        f"cost at the uncached rate (negative: cheaper than its FLOPs). Tokens computed: tokens run through the "
        f"blocks / tokens, over all calls (mcgraph). Error: ||x - x_uncached|| / ||x_uncached|| of the final "
        f"latent. Every timed generation reproduced its counted latent bit for bit: {doc.get('reproducible')}.", "",
        peers_markdown_table(doc), "",
    ]
    return "\n".join(lines)


def write_peers_outputs(doc: dict, out: str | Path) -> dict:
    """Write DIR/peers.json (its `peers` section validated against bench.json's schema) and DIR/peers.md."""
    import jsonschema

    from mcgraph.bench.report import load_schema

    jsonschema.validate(doc["peers"], load_schema()["properties"]["peers"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "peers.json", "report": out / "peers.md"}
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n")
    paths["report"].write_text(peers_markdown(doc))
    return {k: str(v) for k, v in paths.items()}
