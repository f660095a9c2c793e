"""What a benchmark or demo run is: the policies and their thresholds, the sampler schedule, the checks.

- `ScheduleSettings`: the diffusion-forcing schedule (steps, shift, CFG, windows, ...) shared by every run.
- `BenchSettings` / `quick_settings`: the policy sweep of `mcgraph bench` (`mcgraph.bench.run`), with its two
  controls (`CONTROLS`): "placebo" (MotionCache with its motion weights permuted within each frame) and
  "oracle" (the full stack every call, refreshing the tokens whose true residual changed most).
  Its `peer_*` fields (the peer comparison, `mcgraph bench --peers`) are defined and checked in
  `mcgraph.bench.peer_settings`.
- `SweepConfig` / `sweep_configs`: one configuration of that sweep (policy x threshold x motion source, or
  oracle x fraction).
- `make_cache_config`: policy name + threshold (+ motion source, buckets) -> an mcgraph cache config.
- `RuntimeBenchSettings` / `quick_runtime_settings`: `mcgraph bench --runtimes` (`mcgraph.bench.runtime_bench`).
- `parse_buckets`, `RUNTIMES`, `COMPILE_BACKENDS`: the runtimes' settings (`mcgraph.bench.runtimes`).

Light to import (no torch at the top): the command line builds its parser from these names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mcgraph.bench.peer_settings import (
    DEFAULT_PEER_MODEL,
    QUICK_PEER_THRESHOLDS,
    check_peer_settings,
    default_peer_thresholds,
    peer_thresholds_json,
)
from mcgraph.config import MOTION_SOURCES

__all__ = ["BENCH_POLICIES", "CACHE_POLICIES", "COMPILE_BACKENDS", "CONTROLS", "DEFAULT_MATCH_FRACTIONS",
           "DEFAULT_ORACLE_FRACTIONS", "DEFAULT_SEEDS", "DEFAULT_THRESHOLDS", "MOTION_SOURCES", "POLICIES",
           "QUICK_THRESHOLDS", "RUNTIMES", "BenchSettings", "RuntimeBenchSettings", "ScheduleSettings",
           "SettingsError", "SweepConfig", "describe_config", "make_cache_config", "parse_buckets",
           "quick_runtime_settings", "quick_settings", "sweep_configs"]

POLICIES = ("none", "teacache", "flowcache", "motioncache")
CACHE_POLICIES = ("teacache", "flowcache", "motioncache")
# 0.02 added so that the sweeps bracket the matched-compute targets: at the full settings (28 frames, 50 steps,
# checkpoint step 3939) MotionCache computes ~45 % of tokens at 0.05 and ~30 % at 0.1, FlowCache ~54 % at 0.05,
# TeaCache ~36 % at 0.1 (docs/bench/bench.json), so 60 % needs a lower threshold
DEFAULT_THRESHOLDS = {
    "teacache": (0.02, 0.05, 0.1, 0.4),
    "flowcache": (0.02, 0.05, 0.1, 0.2),
    "motioncache": (0.02, 0.05, 0.1, 0.2),
}
QUICK_THRESHOLDS = {"teacache": (0.1,), "flowcache": (0.1,), "motioncache": (0.1,)}
# benchmark controls (not caches): "placebo" = MotionCache (first motion source, MotionCache's thresholds) with
# `placebo_seed`; "oracle" = OracleConfig at each of `oracle_fractions` (eager, full stack: no wall time)
CONTROLS = ("placebo", "oracle")
BENCH_POLICIES = POLICIES + CONTROLS
DEFAULT_ORACLE_FRACTIONS = (0.2, 0.3, 0.45, 0.6)
DEFAULT_MATCH_FRACTIONS = (0.3, 0.45, 0.6)  # computed-token fractions of the matched-compute table
DEFAULT_SEEDS = tuple(range(8))
RUNTIMES = ("eager", "compile", "onnx")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


class SettingsError(ValueError):
    """An invalid demo / cache setting (the command line reports it as a usage error)."""


# ------------------------------------------------------------------------------------------- schedule
@dataclass
class ScheduleSettings:
    """The diffusion-forcing sampler's schedule (`mcgraph.video.sampler.SamplerConfig` without the model's
    causal block size), with the defaults of the MotionCache paper's SkyReels-V2 run, scaled down."""

    steps: int = 50
    shift: float = 2.0
    guidance_scale: float = 4.0
    ar_step: int = 4
    frames: int = 28
    window_frames: int = 16
    overlap_frames: int = 4
    addnoise_condition: float = 20.0

    def sampler_kwargs(self, causal_block_size: int) -> dict:
        return dict(steps=self.steps, shift=self.shift, guidance_scale=self.guidance_scale,
                    causal_block_size=causal_block_size, ar_step=self.ar_step, window_frames=self.window_frames,
                    overlap_frames=self.overlap_frames, addnoise_condition=self.addnoise_condition)

    def json_fields(self, after: str) -> dict:
        """`asdict(self)` with the schedule's fields placed after the field `after` (the order of the JSON
        files written so far)."""
        d = asdict(self)
        schedule = {f.name: d.pop(f.name) for f in fields(ScheduleSettings)}
        out = {}
        for k, v in d.items():
            out[k] = v
            if k == after:
                out.update(schedule)
        return out


# ---------------------------------------------------------------------------------------- the sweep
@dataclass
class BenchSettings(ScheduleSettings):
    """Everything that defines a benchmark run (stored verbatim in the JSON)."""

    seeds: tuple[int, ...] = DEFAULT_SEEDS
    policies: tuple[str, ...] = BENCH_POLICIES
    thresholds: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    motion_sources: tuple[str, ...] = MOTION_SOURCES
    repeats: int = 1
    threads: tuple[int, ...] = (1,)
    weights: str | None = None
    peers: bool = False
    peer_model: str = DEFAULT_PEER_MODEL  # one of PEER_MODELS (`mcgraph.bench.peer_settings`)
    peer_steps: int = 50
    peer_thresholds: dict[str, tuple[float, ...]] = field(default_factory=default_peer_thresholds)
    quick: bool = False
    oracle_fractions: tuple[float, ...] = DEFAULT_ORACLE_FRACTIONS
    match_fractions: tuple[float, ...] = DEFAULT_MATCH_FRACTIONS
    placebo_seed: int = 0

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        self.oracle_fractions = tuple(float(f) for f in self.oracle_fractions)
        self.match_fractions = tuple(float(f) for f in self.match_fractions)
        self.policies = tuple(self.policies)
        self.motion_sources = tuple(self.motion_sources)
        self.threads = tuple(int(t) for t in self.threads)
        self.thresholds = {k: tuple(float(x) for x in v) for k, v in self.thresholds.items()}
        bad = [p for p in self.policies if p not in BENCH_POLICIES]
        if bad:
            raise ValueError(f"unknown policies {bad}; known: {list(BENCH_POLICIES)}")
        for name in ("oracle_fractions", "match_fractions"):
            if any(not 0 < f <= 1 for f in getattr(self, name)):
                raise ValueError(f"{name} must be fractions in (0, 1], got {getattr(self, name)}")
        if self.placebo_seed < 0:
            raise ValueError(f"placebo_seed must be >= 0, got {self.placebo_seed}")
        bad = [s for s in self.motion_sources if s not in MOTION_SOURCES]
        if bad:
            raise ValueError(f"unknown motion sources {bad}; known: {list(MOTION_SOURCES)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not self.threads or min(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        for policy, values in self.thresholds.items():
            if policy not in CACHE_POLICIES:
                raise ValueError(f"thresholds given for {policy!r}, which has none; policies with thresholds: "
                                 f"{list(CACHE_POLICIES)}")
            if any(v < 0 or not math.isfinite(v) for v in values):
                raise ValueError(f"thresholds of {policy} must be finite and >= 0, got {values}")
        self.peer_thresholds = check_peer_settings(self.peer_model, self.peer_steps, self.peer_thresholds)

    def to_json(self) -> dict:
        d = self.json_fields(after="seeds")
        d["thresholds"] = {k: list(v) for k, v in self.thresholds.items()}
        d["peer_thresholds"] = peer_thresholds_json(self.peer_thresholds)
        for k in ("seeds", "policies", "motion_sources", "threads", "oracle_fractions", "match_fractions"):
            d[k] = list(d[k])
        return d


def quick_settings(**overrides) -> BenchSettings:
    """A tiny sweep for CI smoke tests: one seed, 16 steps, 12 frames in two 8-frame windows, one threshold
    per policy, MotionCache (and placebo) with the "hidden" source, the oracle at two fractions, the tiny Wan
    for peers."""
    base = dict(seeds=(0,), steps=16, frames=12, window_frames=8, overlap_frames=4, thresholds=dict(QUICK_THRESHOLDS),
                motion_sources=("hidden",), repeats=1, peer_model="wan-tiny", peer_steps=10,
                peer_thresholds=dict(QUICK_PEER_THRESHOLDS),
                oracle_fractions=(0.2, 0.6), quick=True)
    base.update(overrides)
    return BenchSettings(**base)


@dataclass
class SweepConfig:
    """One configuration of the sweep. `timed`: False for the oracle (it runs the full stack every call, so its
    wall time says nothing); `fraction`: the oracle's refresh fraction (None for the others)."""

    id: str
    policy: str
    threshold: float | None
    motion_source: str | None
    series: str
    label: str
    config: Any  # mcgraph CacheConfig
    fraction: float | None = None
    timed: bool = True


def _motion_configs(policy: str, tau: float, sources, final_t: float, placebo_seed: int) -> list[SweepConfig]:
    from mcgraph.config import MotionCacheConfig

    seed = placebo_seed if policy == "placebo" else None
    return [SweepConfig(f"{policy}-{src}-{tau:g}", policy, tau, src, f"{policy}[{src}]", f"{policy}[{src}] τ={tau:g}",
                        MotionCacheConfig(threshold=tau, final_timestep=final_t, motion_source=src,
                                          placebo_seed=seed))
            for src in sources]


def sweep_configs(settings: BenchSettings, final_t: float) -> list[SweepConfig]:
    """Every configuration the settings ask for: policy x threshold, for MotionCache each motion source; the
    placebo with MotionCache's thresholds and its first motion source; the oracle at each fraction."""
    from mcgraph.config import FlowCacheConfig, NoCache, OracleConfig, TeaCacheConfig

    out = []
    for policy in settings.policies:
        if policy == "none":
            out.append(SweepConfig("none", "none", None, None, "none", "none (captured, no cache)", NoCache()))
        elif policy == "oracle":
            out += [SweepConfig(f"oracle-{f:g}", "oracle", None, None, "oracle", f"oracle f={f:g}",
                                OracleConfig(fraction=f, final_timestep=final_t), fraction=f, timed=False)
                    for f in settings.oracle_fractions]
        elif policy in ("motioncache", "placebo"):
            sources = settings.motion_sources if policy == "motioncache" else settings.motion_sources[:1]
            for tau in settings.thresholds.get("motioncache", DEFAULT_THRESHOLDS["motioncache"]):
                out += _motion_configs(policy, tau, sources, final_t, settings.placebo_seed)
        else:
            cls = TeaCacheConfig if policy == "teacache" else FlowCacheConfig
            for tau in settings.thresholds.get(policy, DEFAULT_THRESHOLDS[policy]):
                out.append(SweepConfig(f"{policy}-{tau:g}", policy, tau, None, policy, f"{policy} τ={tau:g}",
                                       cls(threshold=tau, final_timestep=final_t)))
    return out


# ---------------------------------------------------------------------------- the runtime benchmark
@dataclass
class RuntimeBenchSettings(ScheduleSettings):
    """Everything that defines a runtime benchmark (stored verbatim in the JSON)."""

    runtimes: tuple[str, ...] = RUNTIMES  # eager is always measured: it is every ratio's baseline
    policy: str = "motioncache"
    threshold: float = 0.1
    motion_source: str | None = None
    buckets: tuple[float, ...] | None = None  # None: DEFAULT_GRAPH_BUCKETS
    compile_backend: str = "inductor"
    seed: int = 0
    repeats: int = 3
    threads: int = 1
    weights: str | None = None
    quick: bool = False

    def __post_init__(self):
        self.runtimes = tuple(dict.fromkeys(self.runtimes))
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad or not self.runtimes:
            raise ValueError(f"runtimes must be some of {', '.join(RUNTIMES)}, got {list(self.runtimes)}")
        if self.policy not in CACHE_POLICIES:
            raise ValueError(f"the runtime benchmark needs a caching policy (teacache, flowcache, motioncache), "
                             f"got {self.policy!r}")
        if not (self.threshold >= 0 and math.isfinite(self.threshold)):
            raise ValueError(f"threshold must be finite and >= 0, got {self.threshold}")
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile backend must be one of {', '.join(COMPILE_BACKENDS)}, "
                             f"got {self.compile_backend!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.buckets is not None:
            self.buckets = parse_buckets(",".join(str(b) for b in self.buckets))

    def to_json(self) -> dict:
        d = self.json_fields(after="seed")
        d["runtimes"] = list(self.runtimes)
        d["buckets"] = list(self.buckets) if self.buckets is not None else None
        return d


def quick_runtime_settings(**overrides) -> RuntimeBenchSettings:
    """CI settings (< 2 minutes with 1 thread on the bundled model): 8 frames in one window, 8 steps, one
    repeat, two capacity buckets (a smaller graph: faster compile and export), torch.compile with aot_eager
    instead of Inductor (a cold Inductor compile takes minutes on a CPU)."""
    base = dict(steps=8, frames=8, window_frames=8, overlap_frames=4, repeats=1, buckets=(0.5, 1.0),
                compile_backend="aot_eager", quick=True)
    base.update(overrides)
    return RuntimeBenchSettings(**base)


# ------------------------------------------------------------------------------------ one cache config
def make_cache_config(policy: str, *, steps: int, shift: float, threshold: float | None = None,
                      motion_source: str | None = None, capacity_buckets: Sequence[float] | None = None):
    """The mcgraph config of `policy` for the schedule (steps, shift): final_timestep from it, other fields
    the policy's defaults unless given. Raises SettingsError for invalid values."""
    from mcgraph.config import FlowCacheConfig, MotionCacheConfig, NoCache, TeaCacheConfig
    from mcgraph.errors import ConfigError
    from mcgraph.video.flow_matching import final_timestep

    if policy not in POLICIES:
        raise SettingsError(f"cache must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "none":
        if threshold is not None:
            raise SettingsError("threshold needs a caching policy (cache 'none' computes everything)")
        if motion_source is not None:
            raise SettingsError("motion_source applies to the motioncache policy only")
        if capacity_buckets is not None:
            raise SettingsError("capacity buckets need a caching policy (cache 'none' computes everything)")
        return NoCache()
    if motion_source is not None and policy != "motioncache":
        raise SettingsError(f"motion_source applies to the motioncache policy only, not {policy}")
    cls = {"teacache": TeaCacheConfig, "flowcache": FlowCacheConfig, "motioncache": MotionCacheConfig}[policy]
    kwargs = {"final_timestep": final_timestep(steps, shift)}
    if threshold is not None:
        kwargs["threshold"] = threshold
    if motion_source is not None:
        kwargs["motion_source"] = motion_source
    if capacity_buckets is not None:
        kwargs["capacity_buckets"] = tuple(capacity_buckets)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise SettingsError(str(e)) from None


def describe_config(config) -> str:
    """One line naming a cache config: policy, threshold, final timestep, motion source, buckets."""
    policy = getattr(config, "policy", "none")
    if policy == "none":
        return "none (captured graph, no caching)"
    text = f"{policy} threshold {config.threshold:g}, final_timestep {config.final_timestep:.1f}"
    if policy == "motioncache":
        text += f", motion_source {config.motion_source}"
    if getattr(config, "capacity_buckets", None):
        text += ", capacity buckets " + ",".join(f"{b:g}" for b in config.capacity_buckets)
    return text


def parse_buckets(text: str) -> tuple[float, ...]:
    """'0.25,0.5,1' -> (0.25, 0.5, 1.0); ValueError naming the problem (fractions in (0, 1], ending with 1)."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError(f"buckets must be comma-separated fractions, e.g. 0.25,0.5,1, got {text!r}")
    values = []
    for p in parts:
        try:
            values.append(float(p))
        except ValueError:
            raise ValueError(f"buckets must be numbers, got {p!r} in {text!r}") from None
    bad = [v for v in values if not 0 < v <= 1]
    if bad:
        raise ValueError(f"buckets must be fractions of the token count in (0, 1], got {bad}")
    values = sorted(set(values))
    if values[-1] != 1.0:
        raise ValueError(f"buckets must include 1 (the full stack) so that any selection fits, got {text!r}")
    return tuple(values)
