"""The settings of a `mcgraph bench` run from its options: `bench_settings` (the policy sweep and the peer
comparison) and `check_sampler_settings` (whether the schedule makes a valid sampler); usage errors raised now,
before anything runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from mcgraph.cli.common import SCHEDULE_OPTIONS, UsageError, schedule_overrides

__all__ = ["bench_settings", "check_sampler_settings"]

# options copied into the settings when given (argparse dest -> settings field)
_SCHEDULE_AND_PEERS = SCHEDULE_OPTIONS + (("peer_model", "peer_model"), ("peer_steps", "peer_steps"))


def check_sampler_settings(settings) -> None:
    """Raise ValueError now if the settings make no valid sampler (with the weights' causal block size)."""
    from mcgraph.video.sampler import SamplerConfig
    from mcgraph.zoo.weights import BUNDLED_WEIGHTS, read_metadata

    weights = Path(settings.weights) if settings.weights else BUNDLED_WEIGHTS
    try:
        cbs = int(read_metadata(weights)["config"]["causal_block_size"])
    except Exception:  # missing/invalid weights: load_reference reports it clearly later
        cbs = 1
    SamplerConfig(**settings.sampler_kwargs(cbs))


def bench_settings(args: argparse.Namespace):
    """The BenchSettings of the options given; UsageError for invalid ones."""
    from mcgraph.bench.settings import BenchSettings, quick_settings

    over = {}
    for name in ("seeds", "policies", "motion_sources", "repeats", "threads", "oracle_fractions", "match_fractions"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    over.update(schedule_overrides(args, _SCHEDULE_AND_PEERS))
    if args.weights is not None:
        over["weights"] = str(args.weights)
    over["peers"] = bool(args.peers or args.peers_only)
    try:
        settings = quick_settings(**over) if args.quick else BenchSettings(**over)
        if args.peer_thresholds:
            settings.peer_thresholds = {**settings.peer_thresholds, **dict(args.peer_thresholds)}
            settings.__post_init__()
        if args.thresholds:
            th = dict(settings.thresholds)
            for policy, values in args.thresholds:
                th[policy] = values
            settings.thresholds = {k: tuple(v) for k, v in th.items()}
            settings.__post_init__()
        check_sampler_settings(settings)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return settings
