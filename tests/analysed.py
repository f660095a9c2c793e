"""Capture + analyse each subject once per test session (capture costs seconds)."""

from __future__ import annotations

import functools

from mcgraph import capture
from mcgraph.compiler.analysis import analyze
from mcgraph.zoo.subjects import SUBJECTS


@functools.cache
def analysed(name: str):
    subject = SUBJECTS[name]()
    captured = capture(subject.model, (), subject.kwargs)
    return subject, captured, analyze(captured)


# the untrained reference has the same graph as the trained one: analysing it again proves nothing new
SUBJECT_LIST = [name for name in SUBJECTS if name != "reference-untrained"]
