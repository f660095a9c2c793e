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
from mcgraph.errors import McGraphError, StructureNotFound

# reshapes that regroup the token axis (e.g. tokens into frames): named when the subset check fails
_REGROUPING_OPS = ("view", "reshape", "_unsafe_view", "unflatten", "flatten", "expand", "repeat")


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
    check_subset_rows(subsets[1], split.stack, stack_in, h_l, kv)
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



def check_subset_rows(subset_stack, stack, stack_in: list, h_l: torch.Tensor, kv: list) -> None:
    """The token-subset stack must give exactly the full stack's rows for the tokens it runs (given fresh K/V).

    The rewrite gathers token rows and keeps every other op as is, which is right only when the blocks treat
    tokens independently outside attention. A block that regroups the token axis (per-frame modulation applied
    by `unflatten(1, (frames, -1))`, a convolution over tokens, a mean over tokens) breaks that silently: rows
    land in the wrong frame. Checked on an irregular subset (no stride lines up with frames or rows), so such a
    model is refused at build time instead of answering wrong at run time."""
    tokens = h_l.shape[1]
    if tokens < 3:
        return
    g = torch.Generator().manual_seed(0)
    count = max(1, tokens // 3 + 1)
    index = torch.randperm(tokens, generator=g)[:count].sort().values.to(h_l.device)
    suspects = _regrouping_nodes(stack)
    node = suspects[0] if suspects else None
    hint = ("the first reshape that changes the token axis inside the blocks is named below" if suspects else
            "no token-axis reshape found: look for ops that reduce or convolve over the token axis")
    try:
        with torch.no_grad():
            h_sel, *_ = subset_stack(*stack_in, index, *kv)
        want = h_l.index_select(1, index)
        error = (h_sel.float() - want.float()).abs().max().item()
        scale = want.float().abs().max().item() + 1e-6
    except Exception as exc:  # the regrouping reshape fails outright for most subset sizes
        raise StructureNotFound("token_subset", f"the blocks cannot run on a subset of {count} of {tokens} tokens "
                                f"({type(exc).__name__}: {str(exc)[:160]}); {hint}", node) from exc
    if error > 1e-3 * scale:
        raise StructureNotFound("token_subset", f"on a subset of {count} of {tokens} tokens the blocks give other "
                                f"rows than the full stack (max error {error:.2e}, output scale {scale:.2e}): they "
                                f"mix tokens outside attention; {hint}", node)


def _regrouping_nodes(stack) -> list:
    """Reshapes in the stack whose input and output disagree on dim 1, the token axis of [B, tokens, D]."""
    out = []
    for n in stack.graph.nodes:
        name = getattr(getattr(n.target, "_overloadpacket", None), "__name__", "")
        if n.op != "call_function" or name not in _REGROUPING_OPS or not n.args:
            continue
        before = getattr(n.args[0], "meta", {}).get("val")
        after = n.meta.get("val")
        if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) and before.dim() >= 2 \
                and after.dim() >= 2 and str(before.shape[1]) != str(after.shape[1]):
            out.append(n)
    return out
