"""`compiler.lean_code.lean_function`: the plain-Python runner of captured graphs (the eager path of
`CapturedGraph.__call__` and `StepGraphs.run`) computes bit for bit what the GraphModule computes, keeps export's
shape guards, skips only proven no-ops, frees intermediates as fx does, and reads parameters live."""

from __future__ import annotations

import ast
import re
import weakref

import pytest
import torch
import torch.fx
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

from mcgraph.compiler.capture import bind_call, capture
from mcgraph.compiler.lean_code import lean_function
from mcgraph.zoo import subjects

from .construct_zoo import CONSTRUCTS

ATEN = torch.ops.aten


def _both(captured, model, kwargs, fn=None):
    """(the GraphModule's flat outputs, the lean function's) on `kwargs`."""
    bound = bind_call(model, (), kwargs)
    fn = fn or lean_function(captured.graph_module)
    ref = captured.graph_module(**bound)
    out = fn(*captured.flatten(bound))
    assert pytree.tree_structure(captured.unflatten(out)) == pytree.tree_structure(ref)
    return pytree.tree_leaves(ref), pytree.tree_leaves(out)


def _assert_equal(ref, out):
    assert len(ref) == len(out) and ref
    for a, b in zip(ref, out):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


def _check_frees(fn):
    """Every variable the source assigns is `del`eted or returned, and only variables are deleted."""
    func = ast.parse(fn.__mcgraph_source__).body[0]
    params = {a.arg for a in func.args.args}
    assigned, freed, returned = [], set(), set()
    for stmt in func.body:
        if isinstance(stmt, ast.Assign):
            assigned += [t.id for t in stmt.targets]
        elif isinstance(stmt, ast.Delete):
            freed |= {t.id for t in stmt.targets}
        elif isinstance(stmt, ast.Return):
            returned = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    assert assigned and freed
    assert [v for v in assigned if v not in freed | returned] == []
    assert freed <= params | set(assigned)  # never a bound constant (a parameter)


def _called(fn) -> list:
    """What the lean source calls, as the objects it binds (ATen ops appear as `OpOverload._op`)."""
    return [fn.__globals__[name] for name in re.findall(r"\b(c\d+)\(", fn.__mcgraph_source__)]


SUBJECTS = {
    "reference": subjects.reference_subject,
    "wan-tiny": lambda: subjects.wan_subject("tiny"),
    "skyreels-tiny": lambda: subjects.skyreels_subject("tiny"),
    "plain-dit": subjects.plain_subject,
}


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_subjects_bit_exact(name):
    subject = SUBJECTS[name]()
    captured = capture(subject.model, (), subject.kwargs)
    fn = lean_function(captured.graph_module)
    with torch.no_grad():
        for kwargs in (subject.kwargs, subject.make_kwargs(seed=1)):  # reusable: a second call, other values
            _assert_equal(*_both(captured, subject.model, kwargs, fn))
        # the runtime's entry point takes the lean path and returns the model's structure
        bound = bind_call(subject.model, (), subject.kwargs)
        _assert_equal(pytree.tree_leaves(captured.graph_module(**bound)), pytree.tree_leaves(captured(bound)))
    assert captured._lean is not None
    _check_frees(fn)


@pytest.mark.parametrize("name", ["manual_attention", "autocast_region", "additive_mask", "bool_mask",
                                  "flex_attention"])
def test_constructs_bit_exact(name):
    model, kwargs, make_call = CONSTRUCTS[name]()
    captured = capture(model, (), kwargs)
    fn = lean_function(captured.graph_module)
    with torch.no_grad():
        for step in (0, 3):
            _assert_equal(*_both(captured, model, make_call(step), fn))
    _check_frees(fn)


class _Cond(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: self.lin(x).sin(), lambda x: self.lin(x).cos() * 2, (x,))


class _Regions(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.lin(x) * x
        with torch.enable_grad():
            h = h.float().exp()
        return h


def test_higher_order_ops():
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    for model, hop in ((_Cond(), torch.ops.higher_order.cond),
                       (_Regions(), torch.ops.higher_order.wrap_with_autocast)):
        captured = capture(model.eval(), (), {"x": x})
        assert hop in {n.target for n in captured.graph.nodes}
        fn = lean_function(captured.graph_module)
        for sign in (1, -1):  # both branches of the cond
            ref, out = _both(captured, model, {"x": sign * x.abs()}, fn)
            _assert_equal(ref, out)
            if hop is torch.ops.higher_order.cond:
                expected = model.lin(sign * x.abs()).sin() if sign > 0 else model.lin(-x.abs()).cos() * 2
                assert torch.equal(out[0], expected)


class _NoOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x, y):
        h = self.lin(x).to(x.dtype)  # no-op: same dtype
        h = F.dropout(h, 0.3, training=False)  # no-op: not training
        h = h.type_as(y)  # no-op: same dtype and device
        kept = F.dropout(h, 0.0, training=True)  # training: a real call
        return h.to(torch.float64) + y.double(), kept, x.to(x.dtype)


def test_no_ops_are_skipped_and_real_conversions_kept():
    torch.manual_seed(0)
    model = _NoOps().eval()
    kwargs = dict(x=torch.randn(3, 8), y=torch.randn(3, 8))
    captured = capture(model, (), kwargs)
    targets = [n.target for n in captured.graph.nodes]
    assert targets.count(ATEN.to.dtype) == 4 and targets.count(ATEN.dropout.default) == 2
    assert targets.count(ATEN.type_as.default) == 1
    fn = lean_function(captured.graph_module)
    called = _called(fn)
    assert called.count(ATEN.to.dtype._op) == 2  # the two conversions to float64 only
    assert called.count(ATEN.dropout.default._op) == 1  # the training one only
    assert ATEN.type_as.default._op not in called
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            ref, out = _both(captured, model, kwargs, fn)
        _assert_equal(ref, out)
        assert out[0].dtype == torch.float64
        assert out[2] is kwargs["x"] and ref[2] is kwargs["x"]  # `to` the same dtype returns the input itself
    # gradients flow through the skipped ops exactly as through the calls
    params = list(captured.graph_module.parameters())
    grads = []
    for run in (lambda b: captured.graph_module(**b), lambda b: fn(*captured.flatten(b))):
        loss = sum(t.sum() for t in pytree.tree_leaves(run(bind_call(model, (), kwargs))) if t.dtype.is_floating_point)
        grads.append(torch.autograd.grad(loss, params))
    _assert_equal(*grads)


def _graph(build) -> torch.fx.GraphModule:
    """A hand-built graph (as a rewrite makes them): `build(graph, x)` returns the output; every value 2 floats."""
    g = torch.fx.Graph()
    x = g.placeholder("x")
    g.output(build(g, x))
    for node in g.nodes:
        if node.op != "output":
            node.meta["val"] = torch.empty(2)
    return torch.fx.GraphModule(nn.Module(), g)


def test_no_op_rules_read_keyword_arguments():
    x = torch.randn(2)
    same = [  # keyword forms of the no-ops: skipped, the input itself comes back
        lambda g, x: g.call_function(ATEN.to.dtype, (x,), {"dtype": torch.float32}),
        lambda g, x: g.call_function(ATEN.type_as.default, (x,), {"other": x}),
        lambda g, x: g.call_function(ATEN.dropout.default, (x, 0.5), {"train": False}),
    ]
    copies = [  # not no-ops: a copy is asked for, or another dtype
        lambda g, x: g.call_function(ATEN.to.dtype, (x, torch.float32, False, True)),
        lambda g, x: g.call_function(ATEN.to.dtype, (x, torch.float32), {"copy": True}),
        lambda g, x: g.call_function(ATEN.to.dtype, (x,), {"dtype": torch.float64}),
    ]
    for build in same + copies:
        gm = _graph(build)
        fn = lean_function(gm)
        assert (fn(x) is x) == (build in same) == (gm(x) is x), fn.__mcgraph_source__
        assert torch.equal(fn(x), gm(x)) and fn(x).dtype == gm(x).dtype


_REFS: dict[str, weakref.ref] = {}
_ALIVE: list[list[str]] = []


@torch.fx.wrap
def _fresh(name, t):
    out = t + 1
    _REFS[name] = weakref.ref(out)
    return out


@torch.fx.wrap
def _probe(t):
    _ALIVE.append(sorted(k for k, ref in _REFS.items() if ref() is not None))
    return t


class _Chain(nn.Module):
    def forward(self, x):
        _fresh("unused", x)  # a value nothing reads
        buf = _fresh("buf", x)
        buf[0:2].copy_(x[0:2])  # an in-place op: it returns a view of buf that nothing reads
        h = x * buf
        for i in range(5):
            h = _probe(_fresh(f"h{i}", h))
        return h


def test_intermediates_are_freed_at_last_use():
    gm = torch.fx.symbolic_trace(_Chain())
    fn = lean_function(gm)
    x = torch.randn(4, 4)
    expected = [[f"h{i}"] for i in range(5)]  # only the value being read; the earlier ones are gone
    for run in (gm, fn):
        _REFS.clear()
        _ALIVE.clear()
        out = run(x)
        assert _ALIVE == expected, run
    assert torch.equal(out, gm(x))
    _check_frees(fn)


def test_guards_reject_another_shape():
    subject = subjects.plain_subject()
    captured = capture(subject.model, (), subject.kwargs, dynamic=False)
    fn = lean_function(captured.graph_module)
    # export's guard module is called as its plain function, not through nn.Module.__call__
    assert "_guards_fn" in {n.target for n in captured.graph.nodes}
    assert not any(isinstance(v, nn.Module) for v in fn.__globals__.values())
    with torch.no_grad():
        _assert_equal(*_both(captured, subject.model, subject.kwargs, fn))
        bound = bind_call(subject.model, (), subject.make_kwargs(frames=8))
        with pytest.raises(AssertionError, match="Guard failed"):
            captured.graph_module(**bound)
        with pytest.raises(AssertionError, match="Guard failed"):
            fn(*captured.flatten(bound))
        with pytest.raises(AssertionError, match="Guard failed"):
            captured(bound)


def test_parameters_updated_in_place_are_seen():
    torch.manual_seed(0)
    model = _NoOps().eval()
    kwargs = dict(x=torch.randn(3, 8), y=torch.randn(3, 8))
    captured = capture(model, (), kwargs)
    fn = lean_function(captured.graph_module)
    with torch.no_grad():
        before, _ = _both(captured, model, kwargs, fn)
        for p in captured.graph_module.parameters():
            p.data.mul_(2)
        ref, out = _both(captured, model, kwargs, fn)
    _assert_equal(ref, out)
    assert not torch.equal(before[0], out[0])
