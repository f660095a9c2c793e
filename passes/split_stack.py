"""Rewrite: split the analysed graph at the block stack into prologue, stack and epilogue graphs.

Matches: the residual chain found by block_stack (stream input of block 0 -> stream output of the last block).
Requires: all structural analyses. Guarantees (checked): three GraphModules that together compute exactly
what the original graph computes:

- prologue(flat inputs) -> (boundary values..., indicator): everything before the stack (patch embedding,
  timestep embedding, rotary tables, masks) and, extra, the *indicator*: the first block's modulated
  input to its self-attention Q projection, a per-token value that changes exactly when the token's own
  latent or timestep changes (the per-token step distance is measured on it);
- stack(stack inputs...) -> (h_L, K_0, V_0, K_1, V_1, ...): the blocks, also returning every
  self-attention's K and V (the per-layer K/V cache is filled from them);
- epilogue(h_L, epilogue inputs...) -> flat outputs: the head (final norm, projection, unpatchify).

The original graph is left unchanged (a new set of graphs is built), so this pass is declared read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from mcgraph.errors import PassError
from mcgraph.compiler.graph_walk import PASS_THROUGH
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, is_op
from mcgraph.compiler.structure import ATTENTION, TOKEN_DIMS, structure_of

# export's runtime shape assertions: they hold for the full token count, not for a token subset
SHAPE_ASSERTS = (ATEN._assert_scalar, ATEN._assert_tensor_metadata, ATEN.sym_constrain_range_for_size)


@dataclass
class StackSplit:
    prologue: torch.fx.GraphModule
    stack: torch.fx.GraphModule
    epilogue: torch.fx.GraphModule
    boundary: list[str]  # prologue outputs (before the indicator), by original node name
    stack_inputs: list[str]  # which boundary values the stack reads, in placeholder order
    epilogue_inputs: list[str]  # which boundary values the head reads (after h_L)
    stream_input: str
    self_attention: list[str]  # original SDPA node names, in cache order
    token_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)  # boundary name -> token dims
    mask_inputs: set[str] = field(default_factory=set)  # boundary values used as self-attention masks
    in_spec: object = None
    out_spec: object = None


def _is_shape_assert(node: torch.fx.Node) -> bool:
    return is_op(node, *SHAPE_ASSERTS)


def arg_lookup(g: torch.fx.Graph, env: dict) -> callable:
    """Map an original node to its copy in `g`; parameters (get_attr) are re-created on first use."""

    def lookup(a: torch.fx.Node) -> torch.fx.Node:
        if a not in env:
            if a.op != "get_attr":
                raise KeyError(a.name)
            env[a] = g.get_attr(a.target)
            env[a].meta = dict(a.meta)
        return env[a]

    return lookup


def _new_module(root: torch.fx.GraphModule, graph: torch.fx.Graph) -> torch.fx.GraphModule:
    graph.lint()
    return torch.fx.GraphModule(root, graph)


class SplitStack(GraphPass):
    name = "split_stack"

    def requires(self, gm):
        st = structure_of(gm)
        if not st.blocks or st.grid is None or not st.self_attention:
            raise PassError(self.name, "requires the structural analyses (blocks, token grid, attention) first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        st = structure_of(gm)
        nodes = list(gm.graph.nodes)
        by_name = {n.name: n for n in nodes}
        stack = {by_name[name] for b in st.blocks for name in b.nodes}
        stream_in = by_name[st.blocks[0].stream_input]
        stream_out = by_name[st.blocks[-1].stream_output]
        output = next(n for n in nodes if n.op == "output")

        # post: what depends on the stack's output (the head); pre: everything else outside the stack
        post: set[torch.fx.Node] = set()
        for n in nodes:
            if n in stack or n is output:
                continue
            if any((a is stream_out) or (a in post) for a in n.all_input_nodes):
                post.add(n)
        for n in post | {output}:
            for a in n.all_input_nodes:
                if a in stack and a is not stream_out:
                    self.fail(f"the head reads {a.name!r} from inside block {a.meta.get('mcgraph.block')}, not only "
                              "the residual stream; the stack cannot be cached as one unit", n)
        pre = [n for n in nodes if n not in stack and n not in post and n is not output]
        pre_set = set(pre)
        for n in stack:
            for a in n.all_input_nodes:
                if a not in stack and a not in pre_set:
                    self.fail(f"block node reads {a.name!r} which is computed after the stack", n)

        def used_by(group) -> list[torch.fx.Node]:
            seen = []
            for n in nodes:
                if n in group:
                    for a in n.all_input_nodes:
                        if a in pre_set and a.op != "get_attr" and a not in seen:
                            seen.append(a)
            return seen

        stack_inputs = used_by(stack)
        epilogue_inputs = [a for a in used_by(post | {output}) if a is not stream_out]
        if stream_in not in stack_inputs:
            self.fail(f"the stream input {stream_in.name!r} is not produced before the stack", stream_in)
        boundary = list(dict.fromkeys(stack_inputs + epilogue_inputs))

        # indicator: block 0's self-attention query input, recomputed in the prologue from boundary values
        site0 = next(a for a in st.self_attention if a.block == 0)
        indicator = by_name[site0.query_input]
        if TOKEN_DIMS not in indicator.meta or indicator.meta[TOKEN_DIMS] != (1,):
            self.fail("block 0's self-attention input is not a [B, tokens, D] value", indicator)
        ind_nodes = []
        stack_order = [n for n in nodes if n in stack]
        needed = {indicator}
        for n in reversed(stack_order):
            if n in needed:
                ind_nodes.append(n)
                needed.update(a for a in n.all_input_nodes if a in stack)
        ind_nodes.reverse()

        # prologue
        g = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for n in pre:
            env[n] = g.node_copy(n, arg_lookup(g, env))
        for n in ind_nodes:
            if not _is_shape_assert(n):
                env[n] = g.node_copy(n, arg_lookup(g, env))
        g.output(tuple(env[b] for b in boundary) + (env[indicator],))
        prologue = _new_module(gm, g)

        # full stack, returning every self-attention's K and V
        g = torch.fx.Graph()
        env = {b: g.placeholder(b.name) for b in stack_inputs}
        for b in stack_inputs:
            env[b].meta = dict(b.meta)
        sdpas = []
        for n in stack_order:
            env[n] = g.node_copy(n, arg_lookup(g, env))
            if ATTENTION in n.meta and n.meta[ATTENTION].kind == "self":
                sdpas.append(n)
        kv = [env[x] for n in sdpas for x in n.args[1:3]]
        g.output((env[stream_out], *kv))
        stack_gm = _new_module(gm, g)

        # epilogue
        g = torch.fx.Graph()
        env = {stream_out: g.placeholder("stack_output")}
        env[stream_out].meta = dict(stream_out.meta)
        for b in epilogue_inputs:
            env[b] = g.placeholder(b.name)
            env[b].meta = dict(b.meta)
        for n in nodes:
            if n in post:
                env[n] = g.node_copy(n, arg_lookup(g, env))
        g.output(torch.fx.node.map_arg(output.args[0], arg_lookup(g, env)))
        epilogue = _new_module(gm, g)

        masks = set()
        for n in sdpas:
            mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
            while isinstance(mask, torch.fx.Node) and mask in stack and is_op(mask, *PASS_THROUGH):
                mask = mask.args[0]
            if isinstance(mask, torch.fx.Node):
                masks.add(mask.name)

        info = gm.graph._codegen.pytree_info if hasattr(gm.graph._codegen, "pytree_info") else None
        split = StackSplit(
            prologue=prologue, stack=stack_gm, epilogue=epilogue,
            boundary=[b.name for b in boundary], stack_inputs=[b.name for b in stack_inputs],
            epilogue_inputs=[b.name for b in epilogue_inputs], stream_input=stream_in.name,
            self_attention=[n.name for n in sdpas],
            token_dims={b.name: b.meta[TOKEN_DIMS] for b in boundary if TOKEN_DIMS in b.meta},
            mask_inputs=masks,
            in_spec=info.in_spec if info else None, out_spec=info.out_spec if info else None,
        )
        return PassResult(gm, modified=False, product=split,
                          info={"prologue_nodes": len(pre), "stack_nodes": len(stack), "epilogue_nodes": len(post)})


