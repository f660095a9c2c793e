"""Build the cache-aware step for one captured specialisation: run the rewrite passes, check the new graphs
on the example inputs (which also records their real shapes), and verify them."""

from __future__ import annotations

import torch
import torch.fx._pytree as fx_pytree

from mcgraph.runtime.step import CachedStep
from mcgraph.compiler.capture import CapturedGraph
from mcgraph.config import ReuseConfig
from mcgraph.compiler.meta_prop import propagate
from mcgraph.compiler.pass_infra import PassManager
from mcgraph.compiler.structure import ModelStructure
from mcgraph.compiler.verifier import verify_graph


def build_cached_step(model, captured: CapturedGraph, structure: ModelStructure, config: ReuseConfig,
                      chunk_frames: int, dump_dir=None) -> CachedStep:
    from mcgraph.passes.split_stack import SplitStack
    from mcgraph.passes.token_subset import TokenSubsetStack

    gm = captured.graph_module
    split = PassManager([SplitStack()], dump_dir=dump_dir).run(gm).info["split_stack"]["split"]
    subset = PassManager([TokenSubsetStack(split)], verify=False, dump_dir=dump_dir).run(split.stack).graph_module
    # the out-of-place twin: compiled and exported step graphs must not mutate their inputs
    subset_functional = PassManager([TokenSubsetStack(split, inplace_kv=False)], verify=False).run(split.stack).graph_module

    # run every new graph once on the capture's example inputs: refreshes shape metadata, proves they execute
    example = getattr(captured, "example_bound", None)
    if example is None:
        raise RuntimeError("captured graph carries no example inputs")
    flat = fx_pytree.tree_flatten_spec(((), example), split.in_spec)
    pro = propagate(split.prologue, *flat)
    values = dict(zip(split.boundary, pro[:-1]))
    stack_in = [values[n] for n in split.stack_inputs]
    h_l, *kv = propagate(split.stack, *stack_in)
    tokens = h_l.shape[1]
    index = torch.arange(0, tokens, 2, device=h_l.device)
    propagate(subset, *stack_in, index, *kv)
    propagate(subset_functional, *stack_in, index, *kv)
    propagate(split.epilogue, h_l, *[values[n] for n in split.epilogue_inputs])
    for name, g in (("split_stack.prologue", split.prologue), ("split_stack.stack", split.stack),
                    ("token_subset", subset), ("token_subset.functional", subset_functional), ("split_stack.epilogue", split.epilogue)):
        verify_graph(g, name)

    batch = h_l.shape[0]
    kv_per_token = sum(t.numel() for t in kv) // max(1, batch * tokens)
    input_names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    return CachedStep(config=config, structure=structure, prologue=split.prologue, stack=split.stack,
                      subset_stack=subset, subset_stack_functional=subset_functional, epilogue=split.epilogue, boundary=split.boundary,
                      stack_inputs=split.stack_inputs, epilogue_inputs=split.epilogue_inputs,
                      stream_input=split.stream_input, input_names=input_names, chunk_frames=chunk_frames,
                      kv_floats_per_token=kv_per_token, kv_example_shapes=[tuple(t.shape) for t in kv],
                      example_batch=batch, kv_dtype=kv[0].dtype if kv else h_l.dtype)
