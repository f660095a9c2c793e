"""The construct table (issue 13, items 5 and 6): what mcgraph does with one tiny video DiT per construct
(`tests/construct_zoo.py`), asserted against the contract, not against today's state:

- capture: torch.export captures it, or mcgraph refuses with a CaptureError naming something recognisable;
- identity (`NoCache`) is bit-exact vs eager over a 4-step denoising trajectory wherever capture succeeds;
- MotionCache at threshold 0 is exact (<= 1e-5) over the trajectory, or refused with a McGraphError naming a
  graph node, a module or a construct; when it runs, its token-subset stack (what runs at any threshold > 0)
  matches the full stack's rows;
- the issue's goal: every layout whose tokens can be subset (`SUBSETTABLE`) is cached, not refused.

What violates the contract today is a strict xfail whose reason says what happens, so the suite stays green and
flips when fixed. `measure` also feeds `tools/construct_table.py`, which prints the table.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import time
import warnings
from dataclasses import dataclass, field

import pytest
import torch

import mcgraph
from mcgraph.config import MotionCacheConfig
from mcgraph.errors import CaptureError, McGraphError
from mcgraph.passes.token_subset import joint_rows
from mcgraph.compiler.capture import bind_call

from .construct_zoo import CONSTRUCTS, SUBSETTABLE, text_mask

TOL, SUBSET_TOL = 1e-5, 2e-5
SUBSET_STAGES = {"subset 1/2", "subset 1/3"}
# a refusal is recognisable when it quotes a graph node or module name, cites the model's source, or says one of
CONSTRUCT_WORDS = ("attention", "patch embedding", "block", "token", "modulation", "mask", "residual stream",
                   "data-dependent")


@dataclass
class Row:
    """What mcgraph does with one construct today. `errors`: stage -> exception, by stage: capture, identity,
    optimize (MotionCache analysis and rewrite), call (the MotionCache trajectory), "subset 1/2" and "subset 1/3"
    (`_subset_err`); `subset_err`: the largest error of the subset sizes that ran."""

    name: str
    model: torch.nn.Module | None = None
    opt: mcgraph.OptimizedModule | None = None  # the identity (NoCache) module; None when capture failed
    capture_s: float | None = None
    identity_exact: bool | None = None  # torch.equal on every call
    identity_err: float | None = None
    motion_err: float | None = None
    subset_err: float | None = None
    errors: dict = field(default_factory=dict)

    def first_line(self, stage: str) -> str:
        exc = self.errors[stage]
        return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0]


def _attempt(row: Row, stage: str, fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded: the contract tests judge its type and message
        row.errors[stage] = exc
        return None


def _max_err(got, want) -> float:
    return max((g - w).abs().max().item() for g, w in zip(got, want, strict=True))


def _subset_err(mc: mcgraph.OptimizedModule, kwargs: dict, fraction: int) -> float:
    """Max error of the subset stack vs the full stack's rows (and K/V) on a random 1/`fraction` of the tokens,
    the selected K/V rows stale (zeroed): threshold 0 always runs the full stack, so the subset graph that
    MotionCache runs at any threshold > 0 is checked here by hand."""
    graphs = mc.step.graphs
    stack_in = mc.stack_inputs(**kwargs)
    h_full, *kv = graphs.stack(*stack_in)
    n = h_full.shape[1]
    index = torch.randperm(n, generator=torch.Generator().manual_seed(fraction))[: n // fraction].sort().values
    rows = index
    if mc.step.structure.grid.joint == "attention":  # other tokens concatenated in each block: the K/V rows
        spec = mc.latest
        offset, extra = mc.step.around(spec.flatten(bind_call(mc.original_module, (), kwargs)))
        rows = joint_rows(index, n, offset, extra)
    stale = [t.clone().index_fill_(t.dim() - 2, rows, 0.0) for t in kv]
    h_sel, *kv_new = graphs.subset_stack(*stack_in, index, *stale)
    return _max_err([h_sel, *kv_new], [h_full.index_select(1, index), *kv])


def measure(name: str, calls: int = 4) -> Row:
    """Capture with `NoCache` (identity vs eager over `calls` steps), then MotionCache at threshold 0 on the same
    capture (`with_config`), then its subset stack. A stage that raises is recorded; later stages that do not
    need its result still run."""
    row = Row(name)
    row.model, kwargs, make_call = CONSTRUCTS[name]()
    inputs = [make_call(step) for step in range(calls)]
    # export prints the graph of a failed capture to stderr: the row keeps the error instead
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        want = [row.model(**kw) for kw in inputs]
        start = time.perf_counter()
        row.opt = _attempt(row, "capture", lambda: mcgraph.optimize(row.model, mcgraph.NoCache(), (), kwargs))
        row.capture_s = row.opt.captured.capture_seconds if row.opt is not None else time.perf_counter() - start
        if row.opt is None:
            return row
        got = _attempt(row, "identity", lambda: [row.opt(**kw) for kw in inputs])
        if got is not None:
            row.identity_exact, row.identity_err = all(map(torch.equal, got, want)), _max_err(got, want)
        mc = _attempt(row, "optimize", lambda: row.opt.with_config(MotionCacheConfig(threshold=0.0)))
        got = _attempt(row, "call", lambda: [mc(**kw) for kw in inputs]) if mc is not None else None
        if got is not None:
            row.motion_err = _max_err(got, want)
            # half the tokens is a multiple of the frame count, a third is not: a layout that regroups tokens
            # by frame fails differently on the two
            errs = [_attempt(row, f"subset 1/{k}", lambda k=k: _subset_err(mc, inputs[0], k)) for k in (2, 3)]
            row.subset_err = max((e for e in errs if e is not None), default=None)
    return row


def names_something(exc: BaseException, row: Row) -> bool:
    msg = str(exc)
    names = {m for m, _ in row.model.named_modules() if m}
    if row.opt is not None:
        names |= {n.name for n in row.opt.captured.graph.nodes}
    quoted = set(re.findall(r"'([^']+)'", msg))
    return bool(quoted & names) or "construct_zoo.py" in msg or any(w in msg.lower() for w in CONSTRUCT_WORDS)


# ------------------------------------------------------------------------------- today's violations
XFAIL = {
    ("identity", "multihead_attention"): "eager under no_grad takes nn.MultiheadAttention's fused fast path; "
    "torch.export traces the slow path (in_proj + SDPA), off while exporting: differs by ~5e-7",
    ("cached", "linear_attention"): "[attention_sites] refused: the self-attention is linear attention (no softmax "
    "over keys), named with its node and source line; MotionCache caches softmax attention only",
    ("cached", "flex_attention"): "[canonical_attention] refused: flex attention (higher-order op) is not run on a "
    "token subset yet, named with its node and source line",
    ("cached", "dynamic_text_length"): "torch.export refuses int(text_mask.sum()) (GuardOnDataDependentSymNode)",
}


def _params(check: str, names=tuple(CONSTRUCTS)):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[check, n])) if (check, n) in XFAIL
            else n for n in names]


@pytest.fixture(scope="module")
def table():
    """`table(name)`: the construct's `Row`, measured once per module (captures cost seconds)."""
    return functools.cache(measure)


def _captured(row: Row) -> Row:
    if row.opt is None:
        pytest.skip(f"torch.export refuses it (checked by test_capture_or_clear_refusal): {row.first_line('capture')}")
    return row


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", _params("capture"))
def test_capture_or_clear_refusal(table, name):
    row = table(name)
    if row.opt is None:
        exc = row.errors["capture"]
        assert isinstance(exc, CaptureError), row.first_line("capture")
        assert names_something(exc, row), f"the refusal names nothing recognisable: {exc}"


@pytest.mark.parametrize("name", _params("identity"))
def test_identity_is_bit_exact(table, name):
    row = _captured(table(name))
    assert "identity" not in row.errors, row.first_line("identity")
    assert row.identity_exact, f"identity differs from eager by {row.identity_err:.3g}"


@pytest.mark.parametrize("name", _params("motioncache"))
def test_motioncache_exact_or_clear_refusal(table, name):
    row = _captured(table(name))
    for stage in ("optimize", "call"):
        if stage in row.errors:
            exc = row.errors[stage]
            assert isinstance(exc, McGraphError), f"{stage}: {row.first_line(stage)}"
            assert names_something(exc, row), f"the refusal names nothing recognisable: {exc}"
            return
    assert row.motion_err <= TOL


@pytest.mark.parametrize("name", _params("subset"))
def test_subset_stack_matches_full_stack_rows(table, name):
    row = _captured(table(name))
    if row.motion_err is None:
        pytest.skip("MotionCache refused (checked by test_motioncache_exact_or_clear_refusal)")
    assert row.subset_err is not None and row.subset_err <= SUBSET_TOL, f"max error {row.subset_err}"
    assert SUBSET_STAGES.isdisjoint(row.errors), "; ".join(row.first_line(s) for s in SUBSET_STAGES & set(row.errors))


@pytest.mark.parametrize("name", _params("cached", sorted(SUBSETTABLE)))
def test_subsettable_layout_is_cached(table, name):
    """The issue's goal: MotionCache on every layout whose tokens can be subset."""
    row = table(name)
    assert not row.errors, "; ".join(f"{stage}: {row.first_line(stage)}" for stage in row.errors)
    assert row.motion_err <= TOL and row.subset_err <= SUBSET_TOL


def test_captured_text_length_is_not_baked_in(table):
    """If the data-dependent text length is ever captured, another mask must not reuse the example's length."""
    row = _captured(table("dynamic_text_length"))
    kwargs = {**CONSTRUCTS["dynamic_text_length"]()[1], "text_mask": text_mask(3)}
    with torch.no_grad():
        try:
            got = row.opt(**kwargs)
        except CaptureError:
            return  # refusing the new length is fine; a wrong answer is not
        assert torch.equal(got, row.model(**kwargs))
