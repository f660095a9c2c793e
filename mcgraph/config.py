"""Cache configurations: small, validated, versioned, serialisable dataclasses (one per policy).

`mcgraph.optimize(model, config, ...)` takes one of these, in the style of torchao's `quantize_(model,
Config)`. Every field is checked on creation and a bad value raises ConfigError naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError

CONFIG_VERSION = 1


@dataclass(frozen=True)
class CacheConfig:
    """Base class. `policy` names the caching policy; subclasses add and validate their fields."""

    policy: ClassVar[str] = "base"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the offending field."""

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "CacheConfig":
        data = dict(data)
        policy = data.pop("policy", None)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version {version} is not supported (this mcgraph reads version {CONFIG_VERSION})")
        classes = {c.policy: c for c in _all_subclasses(CacheConfig)}
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


def require(condition: bool, config: CacheConfig, field: str, message: str) -> None:
    """Validation helper: raise ConfigError('<Config>.<field> = <value>: <message>') unless condition holds."""
    if not condition:
        raise ConfigError(f"{type(config).__name__}.{field} = {getattr(config, field)!r}: {message}")
