"""Benchmarks and the demo's library, one idea per module:

- `settings`: what a run is (schedule, policy sweep, runtime benchmark, cache configs, buckets);
- `run`: the policy sweep of `mcgraph bench`; `peers`: diffusers' own caches on Wan (`--peers`);
- `measure`: progress bar, threads, medians, decision records; `summary`: figures across seeds, Pareto;
- `report`: bench.json (schema.json), report.md, results.md; `plots`: the PNGs; `environment`: versions, CPU;
- `runtime_bench` / `runtime_report`: `mcgraph bench --runtimes`; `runtimes`: torch.compile and ONNX Runtime;
- `demo_run` / `demo_compare`: `mcgraph demo` (uncached vs cached generation, heat maps).
"""
