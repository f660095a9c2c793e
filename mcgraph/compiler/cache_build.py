"""Build the cache-aware step for one captured specialisation: run the rewrite passes (each verified, with
real shape metadata from the example inputs, which also proves the new graphs execute) and hand the runtime
a typed `StepGraphs`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx._pytree as fx_pytree

from mcgraph.compiler.capture import CapturedGraph
from mcgraph.compiler.meta_prop import propagate
from mcgraph.compiler.pass_infra import PassManager
from mcgraph.compiler.verifier import verify_graph
from mcgraph.errors import McGraphError


@dataclass
class StepGraphs:
    """What the compiler hands the runtime for one specialisation."""

    prologue: torch.nn.Module  # flat inputs -> (boundary values..., indicator)
    stack: torch.nn.Module  # stack inputs -> (h_L, K_0, V_0, ...)
    subset_stack: torch.nn.Module  # (stack inputs, index, K/V...) -> (h_sel, K/V...), K/V written in place
    subset_stack_functional: torch.nn.Module  # the same, out of place (compile / export)
    epilogue: torch.nn.Module  # (h_L, epilogue inputs...) -> flat outputs
    boundary: list[str]
    stack_inputs: list[str]
    epilogue_inputs: list[str]
    stream_input: str
    input_names: list[str]  # flat input names (graph placeholders)
    stream_dim: int  # hidden size of the residual stream
    kv_example_shapes: list  # every layer's K and V shape on the build example (batch first, tokens second-last)
    example_batch: int
    kv_dtype: torch.dtype
    kv_floats_per_token: int = 0  # K+V elements per token summed over layers (per batch sample)
    # the cached indicator's width and dtype and the stream's dtype: a model may cast its inputs (the latent's
    # dtype says nothing about them), and the indicator need not be as wide as the stream
    indicator_dim: int = 0
    indicator_dtype: torch.dtype | None = None
    stream_dtype: torch.dtype | None = None


def build_step_graphs(captured: CapturedGraph, dump_dir=None) -> StepGraphs:
    """Split the captured graph at the block stack and derive the token-subset stacks."""
    from mcgraph.passes.split_stack import SplitStack
    from mcgraph.passes.token_subset import TokenSubsetStack

    split = PassManager([SplitStack()], dump_dir=dump_dir).run(captured.graph_module).product
    example = getattr(captured, "example_bound", None)
    if example is None:
        raise McGraphError("captured graph carries no example inputs")
    flat = fx_pytree.tree_flatten_spec(((), example), split.in_spec)
    with torch.no_grad():
        pro = split.prologue(*flat)
        values = dict(zip(split.boundary, pro[:-1]))
        stack_in = [values[n] for n in split.stack_inputs]
        h_l, *kv = split.stack(*stack_in)
    batch, tokens = h_l.shape[0], h_l.shape[1]
    example_subset = (*stack_in, torch.arange(0, tokens, 2, device=h_l.device), *kv)
    # before the stack's metadata is refreshed: the subset pass finds the token count by its symbolic size
    subsets = [PassManager([TokenSubsetStack(split, inplace_kv=inplace, example_inputs=example_subset)],
                           dump_dir=dump_dir).run(split.stack).graph_module
               for inplace in (True, False)]  # in place for eager; out of place for compile / export
    # run every split graph once on the example: real shape metadata, and proof that they execute
    propagate(split.prologue, *flat)
    propagate(split.stack, *stack_in)
    propagate(split.epilogue, h_l, *[values[n] for n in split.epilogue_inputs])
    for name, g in (("split_stack.prologue", split.prologue), ("split_stack.stack", split.stack),
                    ("split_stack.epilogue", split.epilogue)):
        verify_graph(g, name)
    input_names = [n.name for n in captured.graph_module.graph.nodes if n.op == "placeholder"]
    return StepGraphs(prologue=split.prologue, stack=split.stack, subset_stack=subsets[0],
                      subset_stack_functional=subsets[1], epilogue=split.epilogue, boundary=split.boundary,
                      stack_inputs=split.stack_inputs, epilogue_inputs=split.epilogue_inputs,
                      stream_input=split.stream_input, input_names=input_names, stream_dim=h_l.shape[-1],
                      kv_example_shapes=[tuple(t.shape) for t in kv], example_batch=batch,
                      kv_dtype=kv[0].dtype if kv else h_l.dtype,
                      kv_floats_per_token=sum(t.numel() for t in kv) // max(1, batch * tokens),
                      indicator_dim=pro[-1].shape[-1], indicator_dtype=pro[-1].dtype,
                      stream_dtype=values[split.stream_input].dtype)

