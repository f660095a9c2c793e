"""The settings of the peer comparison (`mcgraph bench --peers` / `--peers-only`, `mcgraph.bench.peers`) and
their checks: the model sizes (`PEER_MODELS`), the kinds of rows (`PEER_METHODS`) and the values each takes
(`normalise_peer_thresholds`), the defaults; `check_peer_settings` validates the `BenchSettings.peer_*` fields.

Light to import (no torch): the command line builds its parser from these names.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_PEER_MODEL", "PEER_BUDGET_THRESHOLD", "PEER_METHODS", "PEER_MODELS", "QUICK_PEER_THRESHOLDS",
           "check_peer_settings", "default_peer_thresholds", "normalise_peer_thresholds", "peer_thresholds_json",
           "taylorseer_spec"]

# the peer model sizes (diffusers' WanTransformer3DModel, random weights; `mcgraph.bench.peer_models`):
# "wan-tiny" (diffusers' test size, 60 tokens), "wan-bench" (4 blocks, dim 128, 512 video tokens, 7 text tokens),
# "wan-384" (issue 14's peer setting: 4 blocks, dim 384 = 6 heads x 64, ffn 1536, 1024 video tokens, 512 text
# tokens; one uncached 50-step CFG generation takes about 55 s on one CPU thread)
PEER_MODELS = ("wan-tiny", "wan-bench", "wan-384")
DEFAULT_PEER_MODEL = "wan-384"
# the rows of the peer comparison (`BenchSettings.peer_thresholds` keys) and what their values are:
# diffusers' FirstBlockCache threshold, PyramidAttentionBroadcast skip range, TaylorSeer cache interval (an int,
# max_order 1) or (interval, max_order); mcgraph's TeaCache / FlowCache / MotionCache thresholds, and
# "motioncache_budget": MotionCache token budgets (`token_budget`, at threshold PEER_BUDGET_THRESHOLD)
PEER_METHODS = ("first_block_cache", "pyramid_attention_broadcast", "taylorseer", "teacache", "flowcache",
                "motioncache", "motioncache_budget")
PEER_BUDGET_THRESHOLD = 0.1
# one row of each kind, for `quick_settings`
QUICK_PEER_THRESHOLDS = {"first_block_cache": (0.1,), "pyramid_attention_broadcast": (2,), "taylorseer": ((3, 1),),
                         "teacache": (0.1,), "flowcache": (0.1,), "motioncache": (0.1,), "motioncache_budget": (0.5,)}


def default_peer_thresholds() -> dict:
    """The default rows of the peer comparison (a new dict each call)."""
    # FirstBlockCache: on wan-384 the first block's residual changes by 11-19 % (relative absmean) per step, so
    # 0.05 and 0.1 never skip there (docs/bench/peers.md)
    return {"first_block_cache": (0.12, 0.15, 0.2), "pyramid_attention_broadcast": (2, 3),
            "taylorseer": ((4, 1), (5, 1), (5, 2)),
            "teacache": (0.1, 0.2), "flowcache": (0.1, 0.2), "motioncache": (0.1, 0.2),
            "motioncache_budget": (0.5, 0.3)}


def taylorseer_spec(value) -> tuple[int, int]:
    """A TaylorSeer entry of `peer_thresholds`: an interval K (max_order 1) or (K, max_order) -> (K, order)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"a TaylorSeer entry is an interval or (interval, max_order), got {value!r}")
        k, order = value
    else:
        k, order = value, 1
    if float(k) != int(k) or float(order) != int(order) or int(k) < 1 or int(order) < 1:
        raise ValueError(f"TaylorSeer interval and max_order must be integers >= 1, got {value!r}")
    return int(k), int(order)


def normalise_peer_thresholds(th: dict) -> dict:
    """Check the peer rows (`PEER_METHODS` keys) and give each value its type; ValueError otherwise."""
    out = {}
    for method, values in th.items():
        if method not in PEER_METHODS:
            raise ValueError(f"unknown peer method {method!r}; known: {list(PEER_METHODS)}")
        values = tuple(values)
        if method == "taylorseer":
            out[method] = tuple(taylorseer_spec(v) for v in values)
            continue
        try:
            vals = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ValueError(f"peer values of {method} must be numbers, got {values}") from None
        if any(not math.isfinite(v) or v < 0 for v in vals):
            raise ValueError(f"peer values of {method} must be finite and >= 0, got {values}")
        if method == "pyramid_attention_broadcast":
            if any(v != int(v) or v < 1 for v in vals):
                raise ValueError(f"PyramidAttentionBroadcast skip ranges must be integers >= 1, got {values}")
            vals = tuple(int(v) for v in vals)
        if method == "motioncache_budget" and any(not 0 < v <= 1 for v in vals):
            raise ValueError(f"token budgets must be fractions in (0, 1], got {values}")
        out[method] = vals
    return out


def check_peer_settings(peer_model: str, peer_steps: int, peer_thresholds: dict) -> dict:
    """Check the `BenchSettings.peer_*` fields; the thresholds normalised (`normalise_peer_thresholds`)."""
    if peer_model not in PEER_MODELS:
        raise ValueError(f"peer_model must be one of {', '.join(PEER_MODELS)}, got {peer_model!r}")
    if peer_steps < 2:
        raise ValueError(f"peer_steps must be >= 2, got {peer_steps}")
    return normalise_peer_thresholds(peer_thresholds)


def peer_thresholds_json(peer_thresholds: dict) -> dict:
    """`peer_thresholds` as JSON (TaylorSeer's (interval, max_order) pairs as lists)."""
    return {k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in peer_thresholds.items()}
