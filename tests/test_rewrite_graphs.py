"""Graph-level assertions on the rewrites (expected and forbidden op sets, in the style of executorch's and
Torch-TensorRT's pass tests): each rewrite must produce exactly the structure its docstring promises, on every
subject whose layout it understands."""

from __future__ import annotations

import collections

import pytest
import torch

import mcgraph
from mcgraph.compiler.pass_infra import PassManager
from mcgraph.compiler.shapes import ATEN
from mcgraph.compiler.verifier import verify_graph
from mcgraph.config import MotionCacheConfig
from mcgraph.passes.split_stack import SplitStack, StackSplit
from mcgraph.runtime.step_graph import StepGraph

from .analysed import analysed
from .cached import cached

SUBJECTS = ["reference-untrained", "wan-tiny", "skyreels-tiny"]
SDPA = ATEN._scaled_dot_product_flash_attention_for_cpu.default


def ops(gm: torch.fx.GraphModule) -> collections.Counter:
    """call_function targets of a graph and of every sub-graph it reaches (higher-order-op bodies)."""
    counts = collections.Counter()
    for node in gm.graph.nodes:
        if node.op == "call_function":
            counts[node.target] += 1
        elif node.op == "get_attr":
            sub = getattr(gm, str(node.target), None)
            if isinstance(sub, torch.fx.GraphModule):
                counts.update(ops(sub))
    return counts


def attention_ops(counts) -> int:
    return sum(n for target, n in counts.items() if "scaled_dot_product" in str(target))


@pytest.mark.parametrize("name", SUBJECTS)
def test_split_stack_puts_every_attention_in_the_stack(name):
    _, captured, structure = analysed(name)
    result = PassManager([SplitStack()]).run(captured.graph_module)
    split = result.product
    assert isinstance(split, StackSplit) and result.products["split_stack"] is split
    whole = attention_ops(ops(captured.graph_module))
    assert whole > 0
    assert attention_ops(ops(split.stack)) == whole
    assert attention_ops(ops(split.prologue)) == 0 == attention_ops(ops(split.epilogue))
    assert len(split.self_attention) == len(structure.blocks)  # one self-attention per block on these subjects


@pytest.mark.parametrize("name", SUBJECTS)
def test_token_subset_writes_each_layers_kv_rows_and_gathers_its_inputs(name):
    _, opt = cached(name, MotionCacheConfig(threshold=0.0))
    g = opt.step.graphs
    layers = len(g.kv_example_shapes) // 2
    stack, inplace, functional = ops(g.stack), ops(g.subset_stack), ops(g.subset_stack_functional)
    # the same attention calls, now over the cache; K and V rows written once per layer
    assert attention_ops(inplace) == attention_ops(stack) == attention_ops(functional)
    assert inplace[ATEN.index_copy_.default] == 2 * layers and inplace[ATEN.index_copy.default] == 0
    assert functional[ATEN.index_copy.default] == 2 * layers and functional[ATEN.index_copy_.default] == 0
    assert inplace[ATEN.index_select.default] >= 1  # at least the residual stream is gathered
    # export's full-size shape assertions cannot hold for a subset: none may survive
    for forbidden in (ATEN._assert_scalar.default, ATEN.sym_constrain_range_for_size.default):
        assert inplace[forbidden] == 0 and functional[forbidden] == 0
    # the stack itself is left as it was: no cache writes there
    assert stack[ATEN.index_copy_.default] == 0 == stack[ATEN.index_copy.default]
    for graph in (g.prologue, g.stack, g.subset_stack, g.subset_stack_functional, g.epilogue):
        verify_graph(graph)


def test_exported_step_graph_is_functional_with_the_decision_inside():
    _, opt = cached("reference-untrained", MotionCacheConfig(threshold=0.1, capacity_buckets=(0.5, 1.0)))
    spec, _, flat = opt.specialisation_for(**opt.latest.captured.example_bound)
    graph = StepGraph(spec.step, flat)
    with torch.no_grad():
        exported = torch.export.export(graph, (*flat, *graph.initial_state(flat)), strict=False)
    gm = exported.graph_module
    verify_graph(gm, "exported step")
    counts = ops(gm)
    conds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.higher_order.cond]
    assert conds, "the path must be chosen inside the graph"
    assert counts[ATEN.topk.default] >= 1  # the capacity bucket's token selection
    assert counts[ATEN.index_copy_.default] == 0  # no in-place write into a state input
    assert not any(str(t).endswith("item.default") or "_local_scalar_dense" in str(t) for t in counts)


def test_policy_registry_builds_one_policy_per_concrete_config():
    from mcgraph.config import CacheConfig, FlowCacheConfig, NoCache, OracleConfig, ReuseConfig, TeaCacheConfig
    from mcgraph.errors import ConfigError
    from mcgraph.runtime.policies import policy_for, registered_policies

    for config in (TeaCacheConfig(), FlowCacheConfig(), MotionCacheConfig(), OracleConfig()):
        policy = policy_for(config, 4)
        assert policy.config is config and isinstance(config, policy.config_type)
        assert CacheConfig.from_dict(config.to_dict()) == config
    assert set(registered_policies()) == {TeaCacheConfig, FlowCacheConfig, MotionCacheConfig, OracleConfig}
    for abstract in (ReuseConfig(), NoCache()):
        with pytest.raises(ConfigError):
            policy_for(abstract, 4)
    with pytest.raises(ConfigError, match="unknown policy 'reuse'"):
        CacheConfig.from_dict({"policy": "reuse"})
    subject_model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="ReuseConfig is abstract"):
        mcgraph.optimize(subject_model, ReuseConfig(), (torch.randn(1, 2),))
