"""Pass contract, pipeline and verifier: broken graphs are caught with messages naming pass and node."""

from __future__ import annotations

import pytest
import torch

from mcgraph import PassError, VerificationError, capture
from mcgraph.compiler.pass_infra import GraphPass, PassManager, PassResult
from mcgraph.compiler.verifier import verify_graph


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.lin(x)) + 1


@pytest.fixture()
def gm():
    return capture(Tiny(), (torch.randn(3, 8),)).graph_module


def _first(gm, name):
    return next(n for n in gm.graph.nodes if name in n.name)


class Sneaky(GraphPass):
    """Claims to be read-only but rewrites relu into sigmoid."""

    name = "sneaky"

    def call(self, gm):
        node = _first(gm, "relu")
        node.target = torch.ops.aten.sigmoid.default
        return PassResult(gm, modified=False)


class DropsMeta(GraphPass):
    name = "drops_meta"
    mutates = True

    def call(self, gm):
        node = _first(gm, "relu")
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(torch.ops.aten.neg.default, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
        return PassResult(gm, modified=True)


class Dangling(GraphPass):
    name = "dangling"
    mutates = True

    def call(self, gm):
        node = _first(gm, "relu")
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(torch.ops.aten.neg.default, (node,))
        new.meta["val"] = node.meta["val"]
        return PassResult(gm, modified=True)


class NeedsSomething(GraphPass):
    name = "needs_something"

    def requires(self, gm):
        self.fail("requires the token_axis analysis")

    def call(self, gm):  # pragma: no cover - never reached
        return PassResult(gm, modified=False)


class Crashes(GraphPass):
    name = "crashes"

    def call(self, gm):
        raise KeyError("oops")


class Rewrite(GraphPass):
    """A correct mutating pass: x + 1 -> x + 2 (keeps metadata)."""

    name = "add_two"
    mutates = True

    def call(self, gm):
        node = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.add.Tensor)
        node.args = (node.args[0], 2)
        return PassResult(gm, modified=True)


def test_read_only_pass_that_mutates_is_caught(gm):
    with pytest.raises(PassError, match=r"\[sneaky\] declared read-only"):
        PassManager([Sneaky()]).run(gm)


def test_missing_metadata_is_caught_naming_the_node(gm):
    with pytest.raises(VerificationError, match=r"\[drops_meta\] node has no shape metadata.*'neg_default'"):
        PassManager([DropsMeta()]).run(gm)


def test_dangling_node_is_caught(gm):
    with pytest.raises(VerificationError, match=r"\[dangling\] dangling node.*'neg_default'"):
        PassManager([Dangling()]).run(gm)


def test_malformed_graph_is_caught(gm):
    relu = _first(gm, "relu")
    lin = _first(gm, "linear")
    relu.args = (relu,)  # uses itself: not topologically valid
    with pytest.raises(VerificationError, match="malformed"):
        verify_graph(gm, "manual_edit")
    relu.args = (lin,)
    verify_graph(gm, "manual_edit")


def test_precondition_and_crash_name_the_pass(gm):
    with pytest.raises(PassError, match=r"\[needs_something\] requires the token_axis"):
        PassManager([NeedsSomething()]).run(gm)
    with pytest.raises(PassError, match=r"\[crashes\] crashed with KeyError"):
        PassManager([Crashes()]).run(gm)


def test_mutating_pass_runs_and_is_recompiled(gm, tmp_path):
    x = torch.randn(3, 8)
    before = gm(x=x)
    result = PassManager([Rewrite()], dump_dir=tmp_path).run(gm)
    assert result.modified
    torch.testing.assert_close(result.graph_module(x=x), before + 1)
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == ["00_add_two_after.txt", "00_add_two_before.txt"]
    assert "2)" in (tmp_path / "00_add_two_after.txt").read_text()


def test_uuid_is_stable_and_config_sensitive():
    class Configured(GraphPass):
        name = "configured"

        def __init__(self, threshold):
            self.threshold = threshold

        def config(self):
            return {"threshold": self.threshold}

    assert Configured(0.1).uuid() == Configured(0.1).uuid()
    assert Configured(0.1).uuid() != Configured(0.2).uuid()


def test_error_message_names_module_and_source():
    from mcgraph.errors import describe_node
    from mcgraph.zoo.subjects import reference_subject

    s = reference_subject()
    gm = capture(s.model, (), s.kwargs).graph_module
    node = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default)
    text = describe_node(node)
    assert "blocks.0.attn1" in text and "causal_dit.py" in text
