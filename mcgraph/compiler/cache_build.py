"""Build the cache-aware step for one captured specialisation: run the rewrite passes (each verified, with
real shape metadata from the example inputs, which also proves the new graphs execute) and hand the runtime
a typed `StepGraphs`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx._pytree as fx_pytree

from mcgraph.compiler.analysis import analysed_module
from mcgraph.compiler.capture import CapturedGraph
from mcgraph.compiler.lean_code import lean_function
from mcgraph.compiler.meta_prop import propagate
from mcgraph.compiler.pass_infra import PassManager
from mcgraph.compiler.verifier import verify_graph
from mcgraph.errors import McGraphError, PassError, StructureNotFound

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
    # the blocks regroup the token axis into frames (`frame_groups`): the full stack's rows come out as
    # F * (L // F), which the tracer cannot equate with L inside a cond branch; traced steps run the subset graph
    # with every row instead (the same values)
    regroups_frames: bool = False
    _lean: dict = field(default_factory=dict, repr=False, compare=False)

    def run(self, name: str, *args):
        """Run one graph (`prologue`, `stack`, `subset_stack`, ...): its lean function when run eagerly (see
        `compiler.lean_code`: the same kernels with less Python per op), the fx module itself under
        torch.compile and export, which trace it."""
        gm = getattr(self, name)
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or not isinstance(gm, torch.fx.GraphModule):
            return gm(*args)
        fn = self._lean.get(name)
        if fn is None:
            fn = self._lean[name] = lean_function(gm)
        return fn(*args)


def build_step_graphs(captured: CapturedGraph, dump_dir=None) -> StepGraphs:
    """Split the captured graph at the block stack and derive the token-subset stacks."""
    from mcgraph.passes.frame_groups import find_frame_groups
    from mcgraph.passes.split_stack import SplitStack
    from mcgraph.passes.token_subset import TokenSubsetStack

    # the module the analyses annotated: canonical_attention's copy where it rewrote hand-written attention
    split = PassManager([SplitStack()], dump_dir=dump_dir).run(analysed_module(captured)).product
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
    # before the stack's metadata is refreshed: the subset pass finds the token count by its symbolic size, and
    # which per-frame regroupings it gathers (a refusal names the others)
    groups = find_frame_groups(split.stack, split.stream_input)
    try:
        subsets = [PassManager([TokenSubsetStack(split, inplace_kv=inplace, example_inputs=example_subset)],
                               dump_dir=dump_dir).run(split.stack).graph_module
                   for inplace in (True, False)]  # in place for eager; out of place for compile / export
    except PassError as exc:
        if "crashed" not in str(exc):
            raise
        # the rewritten blocks fail on a subset: they regroup or re-size the token axis (a mask built from the
        # token count, a per-frame unflatten): a construct the subset rewrite does not support, named
        cause = exc.reason.removeprefix("crashed with ")[:200]
        raise _subset_refusal(split.stack, f"the blocks cannot run on a subset of the tokens ({cause})",
                              groups) from exc
    # run every split graph once on the example: real shape metadata, and proof that they execute
    propagate(split.prologue, *flat)
    propagate(split.stack, *stack_in)
    propagate(split.epilogue, h_l, *[values[n] for n in split.epilogue_inputs])
    for name, g in (("split_stack.prologue", split.prologue), ("split_stack.stack", split.stack),
                    ("split_stack.epilogue", split.epilogue)):
        verify_graph(g, name)
    check_subset_rows(subsets[1], split.stack, stack_in, groups)
    input_names = [n.name for n in captured.graph_module.graph.nodes if n.op == "placeholder"]
    return StepGraphs(prologue=split.prologue, stack=split.stack, subset_stack=subsets[0],
                      subset_stack_functional=subsets[1], epilogue=split.epilogue, boundary=split.boundary,
                      stack_inputs=split.stack_inputs, epilogue_inputs=split.epilogue_inputs,
                      stream_input=split.stream_input, input_names=input_names, stream_dim=h_l.shape[-1],
                      kv_example_shapes=[tuple(t.shape) for t in kv], example_batch=batch,
                      regroups_frames=bool(groups.groups),
                      kv_dtype=kv[0].dtype if kv else h_l.dtype,
                      kv_floats_per_token=sum(t.numel() for t in kv) // max(1, batch * tokens),
                      indicator_dim=pro[-1].shape[-1], indicator_dtype=pro[-1].dtype,
                      stream_dtype=values[split.stream_input].dtype)


def check_subset_rows(subset_stack, stack, stack_in: list, groups=None) -> None:
    """The token-subset stack must give exactly the full stack's rows for the tokens it runs (given fresh K/V).

    The rewrite gathers token rows and keeps every other op as is, which is right only when the blocks treat
    tokens independently outside attention. A block that regroups the token axis (per-frame modulation applied
    by `unflatten(1, (frames, -1))`, a convolution over tokens, a mean over tokens) breaks that silently: rows
    land in the wrong frame. Checked on perturbed inputs (every frame and token different, which the example
    need not be: a first call often has one timestep for every frame), on two irregular subsets and on the
    first tokens, so such a model is refused at build time instead of answering wrong at run time. `groups`
    (`frame_groups.find_frame_groups` of the stack): the per-frame regroupings the subset stack gathers, never
    named as the suspect; what keeps another one from being gathered is."""
    g = torch.Generator().manual_seed(0)
    inputs = [_perturbed(x, g) for x in stack_in]
    with torch.no_grad():
        h_full, *kv_full = stack(*inputs)
    tokens = h_full.shape[1]
    if tokens < 2:
        return
    # irregular subsets (no stride lines up with frames), and the first tokens (a causal mask rebuilt from the
    # subset's size would let them see later keys)
    subsets = [torch.randperm(tokens, generator=g)[:count].sort().values
               for count in sorted({max(1, tokens // 3 + 1), max(1, tokens // 2)})]
    subsets.append(torch.arange(max(1, (tokens + 2) // 3)))
    for index in subsets:
        index, count = index.to(h_full.device), index.numel()
        try:
            with torch.no_grad():
                h_sel, *_ = subset_stack(*inputs, index, *[t.clone() for t in kv_full])
        except Exception as exc:  # the regrouping reshape fails outright for most subset sizes
            raise _subset_refusal(stack, f"the blocks cannot run on a subset of {count} of {tokens} tokens "
                                  f"({type(exc).__name__}: {str(exc)[:160]})", groups) from exc
        want = h_full.index_select(1, index).float()
        error = (h_sel.float() - want).abs().max().item()
        scale = want.abs().max().item() + 1e-6
        if not error <= 1e-3 * scale:
            raise _subset_refusal(stack, f"on a subset of {count} of {tokens} tokens the blocks give other rows "
                                  f"than the full stack (max error {error:.2e}, output scale {scale:.2e}): they mix "
                                  "tokens outside attention", groups)


def _perturbed(x, g: torch.Generator):
    """A floating-point stack input with every element nudged (same shape, dtype and scale); others as is."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        return x
    if not bool(torch.isfinite(x).all()):  # an additive attention mask (-inf): kept as is
        return x
    noise = torch.randn(x.shape, generator=g, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    return x + 0.1 * noise * (x.float().abs().mean().to(x.dtype) + 1e-3)


def _subset_refusal(stack, reason: str, groups=None) -> StructureNotFound:
    # the regroupings the subset stack gathers by frame run right: the suspect is another one
    rewritten = groups.rewritten if groups is not None else set()
    suspects = [n for n in _regrouping_nodes(stack) if n.name not in rewritten]
    hint = ("the first reshape that changes the token axis inside the blocks is named below" if suspects else
            "no token-axis reshape found: look for ops that build masks from, reduce or convolve over the token axis")
    why = groups.blocked.get(suspects[0].name) if groups is not None and suspects else None
    hint = f"{hint} ({why})" if why else hint
    return StructureNotFound("token_subset", f"{reason}; {hint}", suspects[0] if suspects else None)


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
