"""Rewrite: split the analysed graph at the block stack into prologue, stack and epilogue graphs.

Matches: the residual chain found by block_stack (stream input of block 0 -> stream output of the last block),
side inputs added to the stream between blocks included (their adds run in the stack, the side inputs
themselves are computed by the prologue and become stack inputs, gathered for a token subset like any other).
Requires: all structural analyses. Guarantees (checked): three GraphModules that together compute exactly
what the original graph computes:

- prologue(flat inputs) -> (boundary values..., indicator): everything before the stack (patch embedding,
  timestep embedding, rotary tables, masks) and, extra, the *indicator*: the first block's modulated
  input to its self-attention Q projection, a per-token value that changes exactly when the token's own
  latent or timestep changes (the per-token step distance is measured on it);
- stack(stack inputs...) -> (h_L, K_0, V_0, K_1, V_1, ...): the blocks and the adds between them, also returning
  every self-attention's K and V (the per-layer K/V cache is filled from them);
- epilogue(h_L, epilogue inputs...) -> flat outputs: the head (final norm, projection, unpatchify).

The original graph is left unchanged (a new set of graphs is built), so this pass is declared read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from mcgraph.errors import PassError
from mcgraph.compiler.graph_walk import PASS_THROUGH, along_first_operands
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, is_op
from mcgraph.compiler.structure import ATTENTION, TOKEN_DIMS, structure_of
from mcgraph.passes.block_stack import between_blocks

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


def is_shape_assert(node: torch.fx.Node) -> bool:
    """An export shape assertion (true of the full token count only, so left out of recomputed subsets)."""
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


def new_module(root: torch.fx.GraphModule, graph: torch.fx.Graph) -> torch.fx.GraphModule:
    """A GraphModule of `graph` (linted first) owning `root`'s parameters."""
    graph.lint()
    return torch.fx.GraphModule(root, graph)




@dataclass
class _Groups:
    """The original graph's nodes sorted into the three parts, and the values that cross between them."""

    nodes: list[torch.fx.Node]  # graph order
    stack: set[torch.fx.Node]  # the blocks' nodes and the adds of side inputs between them
    pre: list[torch.fx.Node]  # before the stack (graph order): becomes the prologue
    post: set[torch.fx.Node]  # depends on the stack's output: becomes the epilogue (with `output`)
    output: torch.fx.Node
    stream_in: torch.fx.Node
    stream_out: torch.fx.Node
    stack_inputs: list[torch.fx.Node]  # pre values the blocks read
    epilogue_inputs: list[torch.fx.Node]  # pre values the head reads (besides the stream)

    @property
    def boundary(self) -> list[torch.fx.Node]:
        """Everything the prologue hands on: stack inputs first, then what only the head reads."""
        return list(dict.fromkeys(self.stack_inputs + self.epilogue_inputs))

    @property
    def stack_order(self) -> list[torch.fx.Node]:
        return [n for n in self.nodes if n in self.stack]


def _used_by(nodes: list[torch.fx.Node], group, pre_set: set[torch.fx.Node]) -> list[torch.fx.Node]:
    """Values computed in `pre_set` (parameters aside) that nodes of `group` read, in first-use order."""
    seen = []
    for n in nodes:
        if n in group:
            for a in n.all_input_nodes:
                if a in pre_set and a.op != "get_attr" and a not in seen:
                    seen.append(a)
    return seen


def _indicator_nodes(groups: _Groups, indicator: torch.fx.Node) -> list[torch.fx.Node]:
    """The stack nodes the indicator depends on (itself included), in graph order: the prologue recomputes
    them from boundary values."""
    ind_nodes = []
    needed = {indicator}
    for n in reversed(groups.stack_order):
        if n in needed:
            ind_nodes.append(n)
            needed.update(a for a in n.all_input_nodes if a in groups.stack)
    ind_nodes.reverse()
    return ind_nodes


def _build_prologue(gm, groups: _Groups, indicator: torch.fx.Node, ind_nodes) -> torch.fx.GraphModule:
    """prologue(flat inputs) -> (boundary values..., indicator)."""
    g = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in groups.pre:
        env[n] = g.node_copy(n, arg_lookup(g, env))
    for n in ind_nodes:
        # the indicator path is recomputed for whatever tokens the prologue sees; export's shape
        # assertions inside the blocks would pin it to the full token count
        if not is_shape_assert(n):
            env[n] = g.node_copy(n, arg_lookup(g, env))
    g.output(tuple(env[b] for b in groups.boundary) + (env[indicator],))
    return new_module(gm, g)


def _build_stack(gm, groups: _Groups) -> tuple[torch.fx.GraphModule, list[torch.fx.Node]]:
    """stack(stack inputs...) -> (h_L, K_0, V_0, ...), and the original self-attention nodes in cache order."""
    g = torch.fx.Graph()
    env = {b: g.placeholder(b.name) for b in groups.stack_inputs}
    for b in groups.stack_inputs:
        env[b].meta = dict(b.meta)
    sdpas = []
    for n in groups.stack_order:
        env[n] = g.node_copy(n, arg_lookup(g, env))
        if ATTENTION in n.meta and n.meta[ATTENTION].kind == "self":
            sdpas.append(n)
    kv = [env[x] for n in sdpas for x in n.args[1:3]]
    g.output((env[groups.stream_out], *kv))
    return new_module(gm, g), sdpas


def _build_epilogue(gm, groups: _Groups) -> torch.fx.GraphModule:
    """epilogue(h_L, epilogue inputs...) -> the original flat outputs."""
    g = torch.fx.Graph()
    stream_out = groups.stream_out
    env = {stream_out: g.placeholder("stack_output")}
    env[stream_out].meta = dict(stream_out.meta)
    for b in groups.epilogue_inputs:
        env[b] = g.placeholder(b.name)
        env[b].meta = dict(b.meta)
    for n in groups.nodes:
        if n in groups.post:
            env[n] = g.node_copy(n, arg_lookup(g, env))
    g.output(torch.fx.node.map_arg(groups.output.args[0], arg_lookup(g, env)))
    return new_module(gm, g)


def _mask_inputs(sdpas: list[torch.fx.Node], stack: set[torch.fx.Node]) -> set[str]:
    """Names of the values the self-attentions use as masks, traced back through pass-through ops inside the
    stack to the (boundary) value they come from."""
    masks = set()
    for n in sdpas:
        mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
        while isinstance(mask, torch.fx.Node) and mask in stack and is_op(mask, *PASS_THROUGH):
            mask = mask.args[0]
        if isinstance(mask, torch.fx.Node):
            masks.add(mask.name)
    return masks


def _per_token(node: torch.fx.Node) -> bool:
    """A [B, tokens, D] value."""
    return node.meta.get(TOKEN_DIMS) == (1,) and len(node.meta["val"].shape) == 3


class SplitStack(GraphPass):
    name = "split_stack"

    def requires(self, gm):
        st = structure_of(gm)
        if not st.blocks or st.grid is None or not st.self_attention:
            raise PassError(self.name, "requires the structural analyses (blocks, token grid, attention) first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        st = structure_of(gm)
        by_name = {n.name: n for n in gm.graph.nodes}
        groups = self._groups(gm, st, by_name)
        indicator = self._indicator(st, by_name)
        prologue = _build_prologue(gm, groups, indicator, _indicator_nodes(groups, indicator))
        stack_gm, sdpas = _build_stack(gm, groups)
        epilogue = _build_epilogue(gm, groups)

        boundary = groups.boundary
        info = gm.graph._codegen.pytree_info if hasattr(gm.graph._codegen, "pytree_info") else None
        split = StackSplit(
            prologue=prologue, stack=stack_gm, epilogue=epilogue,
            boundary=[b.name for b in boundary], stack_inputs=[b.name for b in groups.stack_inputs],
            epilogue_inputs=[b.name for b in groups.epilogue_inputs], stream_input=groups.stream_in.name,
            self_attention=[n.name for n in sdpas],
            token_dims={b.name: b.meta[TOKEN_DIMS] for b in boundary if TOKEN_DIMS in b.meta},
            mask_inputs=_mask_inputs(sdpas, groups.stack),
            in_spec=info.in_spec if info else None, out_spec=info.out_spec if info else None,
        )
        return PassResult(gm, modified=False, product=split,
                          info={"prologue_nodes": len(groups.pre), "stack_nodes": len(groups.stack),
                                "epilogue_nodes": len(groups.post)})

    def _groups(self, gm: torch.fx.GraphModule, st, by_name: dict[str, torch.fx.Node]) -> _Groups:
        """Sort the nodes into prologue / stack / epilogue; fail where the stack is not one cacheable unit
        (the head reading inside a block, a block reading something computed after the stack)."""
        nodes = list(gm.graph.nodes)
        stack = {by_name[name] for b in st.blocks for name in b.nodes}
        in_blocks = set(stack)
        for prev, nxt in zip(st.blocks, st.blocks[1:]):
            # side inputs added to the stream between blocks (control hints): the adds run in the stack
            stack |= between_blocks(by_name[prev.stream_output], by_name[nxt.stream_input], in_blocks)
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
        for n in pre:  # the prologue runs before the stack: nothing in it may read a stack value
            for a in n.all_input_nodes:
                if a in stack:
                    self.fail(f"{n.name!r} reads {a.name!r} from the block stack but belongs neither to a block, nor "
                              "to the residual stream between blocks, nor to the head; the stack cannot be cached as "
                              "one unit", n)
        for n in stack:
            for a in n.all_input_nodes:
                if a not in stack and a not in pre_set:
                    self.fail(f"block node reads {a.name!r} which is computed after the stack", n)

        stack_inputs = _used_by(nodes, stack, pre_set)
        epilogue_inputs = [a for a in _used_by(nodes, post | {output}, pre_set) if a is not stream_out]
        if stream_in not in stack_inputs:
            self.fail(f"the stream input {stream_in.name!r} is not produced before the stack", stream_in)
        return _Groups(nodes, stack, pre, post, output, stream_in, stream_out, stack_inputs, epilogue_inputs)

    def _indicator(self, st, by_name: dict[str, torch.fx.Node]) -> torch.fx.Node:
        """Block 0's self-attention query input: per token, it changes exactly when that token's latent or
        timestep does, so the per-token step distance is measured on it (the prologue recomputes it). With joint
        attention concatenated in the block, the grid's part of that input."""
        site0 = next(a for a in st.self_attention if a.block == 0)
        indicator = by_name[site0.query_input]
        if st.grid.joint == "attention":  # the sequence concatenates other tokens in the block: its grid part
            # joined after the head split ([B, heads, tokens, d], MMDiT): the per-token [B, tokens, D] value the
            # grid part is projected from
            grid_part = by_name[st.grid.grid_value]
            indicator = along_first_operands(grid_part, _per_token, 9) or grid_part
        if not _per_token(indicator):
            self.fail("block 0's self-attention input is not a [B, tokens, D] value", indicator)
        return indicator
