"""Shared builders for the caching tests: one capture per subject, configs swapped with `with_config`."""

from __future__ import annotations

import functools

import mcgraph
from mcgraph.config import MotionCacheConfig
from mcgraph.zoo.subjects import SUBJECTS


@functools.cache
def base_module(name: str, batch: int | None = None):
    subject = SUBJECTS[name]()
    kwargs = subject.kwargs if batch is None else subject.make_kwargs(batch=batch)
    return subject, mcgraph.optimize(subject.model, MotionCacheConfig(threshold=0.0), (), kwargs)


def cached(name: str, config, batch: int | None = None):
    subject, base = base_module(name, batch)
    return subject, base.with_config(config)
