"""Cache configurations: small, validated, versioned, serialisable dataclasses (one per policy).

`mcgraph.optimize(model, config, ...)` takes one of these, in the style of torchao's `quantize_(model,
Config)`. Every field is checked on creation and a bad value raises ConfigError naming the field.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

from mcgraph.errors import ConfigError

CONFIG_VERSION = 1


@dataclass(frozen=True)
class CacheConfig:
    """Base class. `policy` names the caching policy; subclasses add and validate their fields."""

    policy: ClassVar[str] = "base"
    abstract: ClassVar[bool] = True  # only concrete configs can be built, from a dict or by optimize()
    caches: ClassVar[bool] = False  # True: a caching policy (needs the cache step and its state)

    def __post_init__(self):
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """ConfigError naming the field for a value of the wrong type: a string threshold, a bool where a number
        is meant ("no" would otherwise read as True, True as 1), a string of bucket fractions. Lists of numbers
        for tuple fields are accepted and stored as tuples (a config read from JSON has lists)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = str(f.type).replace(" ", "")
            optional = kind.endswith("|None")
            kind = kind.removesuffix("|None")
            if value is None and optional:
                continue
            if kind == "bool":
                ok = isinstance(value, bool)
            elif kind == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            elif kind == "float":
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            elif kind == "str":
                ok = isinstance(value, str)
            elif kind.startswith("tuple["):
                ok = isinstance(value, (tuple, list)) and all(
                    isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
                if ok:
                    object.__setattr__(self, f.name, tuple(value))
            else:
                ok = True
            if not ok:
                want = kind + (" or None" if optional else "")
                raise ConfigError(f"{type(self).__name__}.{f.name} = {value!r}: must be {want}, got "
                                  f"{type(value).__name__}")

    def validate(self) -> None:
        """Raise ConfigError naming the offending field."""

    def check_concrete(self) -> None:
        """ConfigError unless this is a config one can run (not the abstract base of a family)."""
        if self.abstract:
            concrete = sorted(c.__name__ for c in _all_subclasses(CacheConfig) if not c.abstract)
            raise ConfigError(f"{type(self).__name__} is abstract (the fields its policies share); use one of {concrete}")

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CacheConfig:
        data = dict(data)
        policy = data.pop("policy", None)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version {version} is not supported (this mcgraph reads version {CONFIG_VERSION})")
        classes = {c.policy: c for c in _all_subclasses(CacheConfig) if not c.abstract}
        if policy not in classes:
            raise ConfigError(f"unknown policy {policy!r}; known: {sorted(classes)}")
        cls = classes[policy]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
        return cls(**data)


def _all_subclasses(cls):
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


@dataclass(frozen=True)
class NoCache(CacheConfig):
    """Capture and analyse, but cache nothing: the optimised model computes exactly what the original does."""

    policy: ClassVar[str] = "none"
    abstract: ClassVar[bool] = False


def require(condition: bool, config: CacheConfig, field: str, message: str) -> None:
    """Validation helper: raise ConfigError('<Config>.<field> = <value>: <message>') unless condition holds."""
    if not condition:
        raise ConfigError(f"{type(config).__name__}.{field} = {getattr(config, field)!r}: {message}")


MOTION_SOURCES = ("hidden", "latent", "clean", "residual")


@dataclass(frozen=True)
class ReuseConfig(CacheConfig):
    """Fields shared by the caching policies.

    threshold: reuse while the accumulated distance stays below it; 0 recomputes everything (exact).
    warmup_steps: a token is computed at its first `warmup_steps` changed steps before any reuse.
    force_final_step / final_timestep: always compute a token whose timestep t is in (0, final_timestep],
        i.e. its final denoising step; set final_timestep to your schedule's last non-zero timestep
        (`mcgraph.video.sampler.final_timestep(steps, shift)`); the default 50 fits 50 steps at shift <= 3.
    chunk_frames: frames per chunk (the causal block); None reads the model config
        (`causal_block_size` / `num_frame_per_block`), else 1.
    capacity_buckets: None computes exactly the selected tokens (data-dependent count, eager); a tuple of
        fractions of the token count gives static shapes for compile/export (top-k by score; extra tokens
        are simply recomputed).
    token_budget: a static token budget instead of a data-dependent count: after a context's first call every
        call runs exactly round(token_budget * tokens) tokens through the blocks (at least 1), the policy's
        selection first, then the largest accumulated distances, so one static-shaped graph serves every
        call (CUDA graphs, fixed-shape engines). Selected tokens beyond the budget wait for a later call
        (their accumulators are kept); only a call whose never-computed or invalidated tokens exceed the
        budget runs the full stack (their cached values do not exist or no longer hold).
    subset_cost_model: with exact token counts (no buckets, no budget), time the subset stack against the full
        stack once per captured shape (`mcgraph.runtime.cost_model`) and run the full stack when a subset would
        cost more (never below half the tokens). False: always run exactly the selected tokens.
    max_cache_bytes: refuse (before allocating) a cache state larger than this, per context.
    """

    policy: ClassVar[str] = "reuse"  # abstract: the fields every caching policy shares
    caches: ClassVar[bool] = True
    threshold: float = 0.1
    warmup_steps: int = 5
    force_final_step: bool = True
    final_timestep: float = 50.0
    chunk_frames: int | None = None
    capacity_buckets: tuple[float, ...] | None = None
    token_budget: float | None = None
    subset_cost_model: bool = True
    max_cache_bytes: int | None = None

    def validate(self) -> None:
        require(self.threshold >= 0, self, "threshold", "must be >= 0 (0 recomputes every token)")
        require(self.warmup_steps >= 1, self, "warmup_steps", "must be >= 1: the cache is filled by a full step")
        require(self.final_timestep >= 0, self, "final_timestep", "must be >= 0")
        require(self.chunk_frames is None or self.chunk_frames >= 1, self, "chunk_frames", "must be >= 1 or None")
        if self.capacity_buckets is not None:
            object.__setattr__(self, "capacity_buckets", tuple(sorted(float(b) for b in self.capacity_buckets)))
            require(len(self.capacity_buckets) > 0 and all(0 < b <= 1 for b in self.capacity_buckets), self,
                    "capacity_buckets", "must be fractions in (0, 1]")
            require(self.capacity_buckets[-1] == 1.0, self, "capacity_buckets",
                    "must end with 1.0 so that any selection fits a bucket")
        require(self.token_budget is None or 0 < self.token_budget <= 1, self, "token_budget",
                "must be a fraction of the tokens in (0, 1], or None")
        require(self.token_budget is None or self.capacity_buckets is None, self, "token_budget",
                "and capacity_buckets are two ways to fix the token count: set one")
        require(self.max_cache_bytes is None or self.max_cache_bytes > 0, self, "max_cache_bytes", "must be > 0")


@dataclass(frozen=True)
class TeaCacheConfig(ReuseConfig):
    """TeaCache: reuse the whole step (every token) while the accumulated global distance stays below threshold."""

    policy: ClassVar[str] = "teacache"
    abstract: ClassVar[bool] = False


@dataclass(frozen=True)
class FlowCacheConfig(ReuseConfig):
    """FlowCache: TeaCache per chunk of frames (spec 3.2): each chunk is recomputed or reused as a whole."""

    policy: ClassVar[str] = "flowcache"
    abstract: ClassVar[bool] = False


@dataclass(frozen=True)
class MotionCacheConfig(ReuseConfig):
    """MotionCache (spec 3.3): per-token accumulated distance, weighted by motion, after warm-up and a
    chunk-level (FlowCache) phase of `phase1_computes` compute events.

    motion_source: where inter-frame differences are measured: "hidden" (last block's output, as the
        SkyReels-V2 port), "latent" (the noisy input latent, as the MAGI-1 port) or "clean" (the predicted
        clean latent x0 = x_t - sigma * v of a flow-matching model), or "residual": no proxy, the observed
        change of each token's cached residual whenever it is recomputed (its residual instability, which
        the inter-frame difference stands in for in the paper), measured during the chunk-wise phase.
    weight_floor: motion weights are min-max normalised per frame into [weight_floor, 1].
    temporal_voting / vote_threshold: per chunk and spatial position, recompute all frames of the chunk
        there if more than vote_threshold of them were selected, else none.
    min_update_ratio: within a chunk, a partial update smaller than this fraction is dropped (and its
        accumulators kept), avoiding tiny inefficient batches.
    token_distance: the step distance each token accumulates in the token phase: "chunk" (its chunk's
        distance, as the official SkyReels-V2 port's `global` mode) or "token" (its own indicator's change).
    placebo_seed: a control for benchmarks, not for use: permute the motion weights within each frame by a
        fixed random permutation from this seed (same weights, wrong places). None: the real weights.
    """

    policy: ClassVar[str] = "motioncache"
    abstract: ClassVar[bool] = False
    phase1_computes: int = 6
    motion_source: str = "hidden"
    weight_floor: float = 0.6
    temporal_voting: bool = True
    vote_threshold: float = 0.5
    min_update_ratio: float = 0.4
    token_distance: str = "chunk"
    placebo_seed: int | None = None

    def validate(self) -> None:
        super().validate()
        require(self.token_distance in ("chunk", "token"), self, "token_distance", "must be 'chunk' or 'token'")
        require(self.phase1_computes >= 0, self, "phase1_computes", "must be >= 0")
        require(self.motion_source in MOTION_SOURCES, self, "motion_source", f"must be one of {MOTION_SOURCES}")
        require(0 <= self.weight_floor <= 1, self, "weight_floor", "must be in [0, 1]")
        require(0 <= self.vote_threshold < 1, self, "vote_threshold", "must be in [0, 1)")
        require(0 <= self.min_update_ratio <= 1, self, "min_update_ratio", "must be in [0, 1]")
        require(self.placebo_seed is None or (isinstance(self.placebo_seed, int) and self.placebo_seed >= 0), self,
                "placebo_seed", "must be None or an int >= 0")


@dataclass(frozen=True)
class OracleConfig(ReuseConfig):
    """A benchmark control, not a cache: every call computes the full stack, then keeps fresh only the
    `fraction` of tokens whose true block-stack residual changed most since they were last refreshed (plus
    warm-up, final-step and never-computed tokens); the rest reuse their cached residual. Keys and values are
    always fresh. Its quality at a token fraction is the headroom any selection rule has there."""

    policy: ClassVar[str] = "oracle"
    abstract: ClassVar[bool] = False
    fraction: float = 0.3

    def validate(self) -> None:
        super().validate()
        require(0 < self.fraction <= 1, self, "fraction", "must be in (0, 1]")
