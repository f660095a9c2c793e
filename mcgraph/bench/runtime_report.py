"""The runtime benchmark's tables and files: DIR/runtime_bench.json and DIR/runtime_report.md, from the
result dict of `mcgraph.bench.runtime_bench.run_runtime_bench`."""

from __future__ import annotations

import json
from pathlib import Path

from mcgraph.bench.runtime_bench import EAGER_UNCACHED, NOISE_FACTOR, PARITY_TOL

__all__ = ["ratio_table", "runtime_markdown", "runtime_table", "write_runtime_outputs"]


def _f(v, spec=".2f", none="—", suffix="") -> str:
    return none if v is None else f"{v:{spec}}{suffix}"


def runtime_table(data: dict) -> str:
    """The Markdown table of runs (times, speedups, tokens computed, PSNR)."""
    runs = {r["id"]: r for r in data["runs"]}
    base = runs[EAGER_UNCACHED]["median_s"]
    lines = ["| run | median s | speedup vs eager uncached | tokens computed | PSNR vs eager uncached |",
             "|---|---:|---:|---:|---:|"]
    for r in data["runs"]:
        p = "identical" if r["identical_to_eager_uncached"] else _f(r["psnr_vs_eager_uncached_db"], suffix=" dB")
        lines.append(f"| {r['label']} | {r['median_s']:.3f} | {base / r['median_s']:.2f}x | "
                     f"{_f(r['computed_fraction'] and 100 * r['computed_fraction'], '.1f', suffix='%')} | {p} |")
    return "\n".join(lines)


def ratio_table(data: dict) -> str:
    """Speedups and the ORT target, parity, setup costs (rows of runtimes that did not run are left out)."""
    q, p = data["ratios"], data["parity"]
    x = lambda v: _f(v, suffix="x")
    met = q["ort_target_met"]
    target = "" if met is None else (" (met)" if met else " (not met)")
    rows = [
        ("eager_speedup", "eager speedup = eager uncached / eager cached (exact K)", x(q["eager_speedup"])),
        ("eager_speedup_buckets", "eager speedup with buckets = eager uncached / eager cached (buckets)",
         x(q["eager_speedup_buckets"])),
        ("compile_speedup", "compile speedup = eager cached (buckets) / compiled cached", x(q["compile_speedup"])),
        ("ort_speedup", "ORT speedup = ORT uncached / ORT cached", x(q["ort_speedup"])),
        ("ort_over_eager_speedup", f"**ORT speedup / eager speedup** (target >= {q['ort_target']:g})",
         f"**{x(q['ort_over_eager_speedup'])}**{target}"),
        ("ort_over_eager_speedup_buckets", "ORT speedup / eager speedup with buckets",
         x(q["ort_over_eager_speedup_buckets"])),
        ("ort_uncached_vs_eager_uncached", "ORT uncached vs eager uncached (speedup)",
         x(q["ort_uncached_vs_eager_uncached"])),
        ("ort_cached_vs_eager_buckets", "ORT cached vs eager cached (buckets) (speedup)",
         x(q["ort_cached_vs_eager_buckets"])),
    ]
    lines = ["| ratio | value |", "|---|---:|"]
    lines += [f"| {label} | {value} |" for key, label, value in rows if q[key] is not None]
    lines += ["", "| parity: max abs diff of the final latents | value |", "|---|---:|"]
    for key, label in (("compiled_vs_eager_buckets", "compiled vs eager cached (buckets)"),
                       ("ort_cached_vs_eager_buckets", "ORT cached vs eager cached (buckets)"),
                       ("ort_cached_vs_compiled", "ORT cached vs compiled"),
                       ("ort_uncached_vs_eager_uncached", "ORT uncached vs eager uncached"),
                       ("eager_exact_vs_buckets", "eager exact K vs buckets (not parity: buckets compute more)")):
        if p[key] is not None:
            lines.append(f"| {label} | {p[key]:.3g} |")
    same = p["ort_decisions_identical"]
    if same is not None:
        lines.append(f"| ORT cached made the eager (buckets) decisions, call by call | {'yes' if same else 'NO'} |")
    lines.append(f"| tolerance: max({PARITY_TOL:g} x max(1, max abs latent {p['latent_abs_max']:.3g}), "
                 f"{NOISE_FACTOR:g} x ORT uncached vs eager uncached) | {p['tolerance']:.3g} |")
    lines.append(f"| parity ok (max abs diff {p['max_abs_diff']:.3g}) | {'yes' if p['ok'] else 'NO'} |")
    c, o = data.get("compile"), data.get("onnx")
    if c or o:
        lines += ["", "| setup | value |", "|---|---:|"]
    if c:
        lines += [f"| compile ({c['backend']}): first generation incl. compiling | {c['first_generation_s']:.1f} s |",
                  f"| compile time (first generation - median) | {c['compile_s_estimate']:.1f} s |",
                  f"| graphs compiled (warm-up / timed runs) | {c['graphs']} / {c['graphs_compiled_in_timed_runs']} |"]
    if o:
        for key, label in (("cached", "ORT cached (mcgraph.export.onnx)"), ("uncached", "ORT uncached (torch.onnx.export)")):
            s = o[key]
            lines += [f"| {label}: export | {s['export_s']:.1f} s |",
                      f"| {label}: nodes (incl. If branches), size | {s['nodes']}, {s['bytes'] / 2**20:.2f} MiB |"]
    return "\n".join(lines)


def runtime_markdown(data: dict) -> str:
    s = data["settings"]
    env = data["environment"]
    head = (f"# mcgraph runtime benchmark\n\n{s['policy']} threshold {s['threshold']:g}, capacity buckets "
            f"{','.join(f'{b:g}' for b in data['graph_buckets'])}; reference model ({env['weights']}), seed "
            f"{s['seed']}, {s['frames']} frames in windows {data['windows']}, {s['steps']} steps, CFG "
            f"{s['guidance_scale']:g}; {s['threads']} thread(s), median of {s['repeats']} generation(s); "
            f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {env['cpu']}.")
    if data.get("command"):
        head += f"\n\n`{data['command']}`"
    return f"{head}\n\n{runtime_table(data)}\n\n{ratio_table(data)}\n"


def write_runtime_outputs(data: dict, out: str | Path) -> dict:
    """Write DIR/runtime_bench.json and DIR/runtime_report.md; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(data, allow_nan=False, default=str))
    paths = {"json": str(out / "runtime_bench.json"), "report": str(out / "runtime_report.md")}
    Path(paths["json"]).write_text(json.dumps(clean, indent=1) + "\n")
    Path(paths["report"]).write_text(runtime_markdown(clean))
    return paths
