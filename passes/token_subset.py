"""Rewrite: the block stack on a subset of tokens, attending over a per-layer K/V cache.

Matches: the full stack graph from split_stack (its placeholders, their token dims, its self-attention calls, its
per-frame regroupings of the token axis: `frame_groups`).
Requires: split_stack; the stack's symbolic shape metadata (sizes equal to the token count are found by
expression). Guarantees: a GraphModule

    subset_stack(stack inputs..., token_index [n], K_0, V_0, K_1, V_1, ...) -> (h_sel [B, n, D], K_0', V_0', ...)

that runs every block on the n selected tokens only: every token-axis input is gathered (the residual
stream, per-token modulation, rotary tables; attention masks on their query rows only), each
self-attention writes the selected rows' fresh K/V into the layer's cache (`index_copy_`, in place by
default, or out of place with `inplace_kv=False`) and
lets the selected queries attend over all cached rows; cross-attention and MLPs see only the subset.
A per-frame regrouping (`y.unflatten(1, (F, -1)) * scale + shift`, flattened back: per-frame adaLN) runs with
each selected token as a frame of one, its per-frame operands gathered by the token's frame
(`frame_groups.FrameGather`); any other use of the token axis split into frames is copied as is, and the build's
subset-rows check refuses it.
Sizes equal to the token count are replaced by the subset's size, and export's shape assertions (which
hold for the full token count) are dropped. With all tokens selected it computes what the stack computes.
Shape metadata: sizes differ on a subset, so copied `val`s would lie; given `example_inputs` (stack inputs,
an index, K/V caches) the pass runs the new graph once on them and records real metadata, so the verifier
sees a complete graph. Product: `TokenSubset` (the number of attention layers cached, the frame groups
rewritten).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx

from mcgraph.compiler.graph_walk import along_first_operands
from mcgraph.compiler.meta_prop import propagate
from mcgraph.errors import PassError
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, dim_arg, is_op, is_symbolic, same_size
from mcgraph.compiler.structure import ATTENTION
from mcgraph.passes.frame_groups import FrameGather, find_frame_groups
from mcgraph.passes.token_grid import JOINT

from mcgraph.passes.split_stack import StackSplit, arg_lookup, is_shape_assert, new_module


@dataclass
class TokenSubset:
    layers: int  # self-attention layers with a K/V cache
    frame_groups: int = 0  # per-frame regroupings run by gathering (frame_groups)


def _is_token_count(val, token_count) -> bool:
    """A symbolic size provably equal to the stack's token count (it becomes the subset's size)."""
    return isinstance(val, torch.SymInt) and is_symbolic(val) and same_size(val, token_count)


def _split_subset(node: torch.fx.Node, token_count: int, n_sel) -> None:
    """A static capture splits a joined sequence by constant sizes (CogVideoX: `[text, 80]`): on a subset the
    grid's part is the subset's size. Only a split with exactly one part of the token count is rewritten (two
    would be ambiguous); the build-time rows check refuses whatever this gets wrong."""
    sizes = list(node.args[1])
    at = [i for i, size in enumerate(sizes) if isinstance(size, int) and size == token_count]
    if len(at) == 1:
        sizes[at[0]] = n_sel
        node.args = (node.args[0], sizes, *node.args[2:])


def joint_rows(index: torch.Tensor, grid: int, before: int, after: int) -> torch.Tensor:
    """Rows of a sequence of `before` other tokens, the grid's `grid` tokens and `after` other tokens that a
    subset of the grid's tokens (`index`, ascending) runs: every other row, and the grid's selected rows."""
    dev = index.device
    return torch.cat([torch.arange(before, device=dev), index + before,
                      torch.arange(before + grid, before + grid + after, device=dev)])


class TokenSubsetStack(GraphPass):
    name = "token_subset"

    def __init__(self, split: StackSplit, inplace_kv: bool = True, example_inputs: tuple | None = None):
        self.split = split
        self.example_inputs = example_inputs
        # in place: the eager runtime owns the cache tensors, and copying every layer's whole K/V per call
        # costs ~5% of a 25% subset call (measured, tools/bench_subset.py); export needs the functional form
        self.inplace_kv = inplace_kv

    def config(self):
        return {"inplace_kv": self.inplace_kv}

    def _inputs(self, g, placeholders, raw, stream, index, token_count, env):
        """Map every stack input to its subset form: gathered along its token dims, or as is."""
        split = self.split

        def gather(node, dim):
            return g.call_function(ATEN.index_select.default, (node, dim, index))

        h_sel = gather(raw[stream], 1)
        n_sel = g.call_function(ATEN.sym_size.int, (h_sel, 1))
        for p in placeholders:
            val = p.meta.get("val")
            dims = split.token_dims.get(p.name, ())
            if p is stream:
                env[p] = h_sel
            elif _is_token_count(val, token_count):
                env[p] = n_sel
            elif not dims:
                env[p] = raw[p]
            elif p.name in split.mask_inputs:
                rank = len(val.shape)
                if set(dims) != {rank - 2, rank - 1}:
                    self.fail(f"attention mask {p.name!r} has token dims {dims}, expected its last two", p)
                env[p] = gather(raw[p], rank - 2)  # query rows only: keys stay all tokens
            elif len(dims) == 1:
                env[p] = gather(raw[p], dims[0])
            else:
                self.fail(f"input {p.name!r} carries the token axis on dims {dims} and is not an attention mask; "
                          "cannot gather it for a token subset", p)
        return n_sel

    def _joint_rows(self, g, n, env, grid_tokens, index):
        """A concatenation of the grid's (gathered) tokens with other tokens in a block (joint attention): the
        cache rows its subset sequence fills, `joint_rows` over the full grid size."""
        dim = dim_arg(n)
        before, after, at = 0, 0, n.meta[JOINT]
        for i, part in enumerate(n.args[0]):
            if i != at:
                size = g.call_function(ATEN.sym_size.int, (env[part], dim))
                if i < at:
                    before = size if before == 0 else g.call_function(operator.add, (before, size))
                else:
                    after = size if after == 0 else g.call_function(operator.add, (after, size))
        return g.call_function(joint_rows, (index, grid_tokens, before, after))

    def _attention(self, g, n, env, cache, rows):
        """A self-attention that writes its fresh K/V rows into the layer's cache and attends over all of it."""
        q, k, v = (env[a] for a in n.args[:3])
        kc, vc = cache
        dim = n.args[1].meta["val"].dim() - 2
        write = ATEN.index_copy_.default if self.inplace_kv else ATEN.index_copy.default
        k_full = g.call_function(write, (kc, dim, rows, k))
        v_full = g.call_function(write, (vc, dim, rows, v))
        rest = tuple(torch.fx.node.map_arg(a, arg_lookup(g, env)) for a in n.args[3:])
        kwargs = torch.fx.node.map_arg(dict(n.kwargs), arg_lookup(g, env))
        env[n] = g.call_function(n.target, (q, k_full, v_full, *rest), kwargs)
        env[n].meta = {k_: v_ for k_, v_ in n.meta.items() if k_ != "val"}
        return [k_full, v_full]

    def call(self, stack: torch.fx.GraphModule) -> PassResult:
        split = self.split
        src = list(stack.graph.nodes)
        placeholders = [n for n in src if n.op == "placeholder"]
        stream = next(p for p in placeholders if p.name == split.stream_input)
        token_count = stream.meta["val"].shape[1]

        g = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        raw = {}
        for p in placeholders:
            raw[p] = g.placeholder(p.name)
            raw[p].meta = dict(p.meta)
        index = g.placeholder("token_index")
        index.meta["val"] = torch.empty(0, dtype=torch.long, device="meta")
        caches = [(g.placeholder(f"k_cache_{i}"), g.placeholder(f"v_cache_{i}"))
                  for i, _ in enumerate(split.self_attention)]
        n_sel = self._inputs(g, placeholders, raw, stream, index, token_count, env)
        grid_tokens = g.call_function(ATEN.sym_size.int, (raw[stream], 1))
        groups = find_frame_groups(stack, split.stream_input)
        frames = FrameGather(groups, g, env, arg_lookup(g, env), index, grid_tokens, token_count)
        joint: dict[torch.fx.Node, torch.fx.Node] = {}  # per-block concatenation -> the cache rows it fills
        new_caches = []
        for n in src:
            if n.op in ("placeholder", "output") or is_shape_assert(n):
                continue
            if _is_token_count(n.meta.get("val"), token_count):  # computed in the stack, e.g. F * H * W
                env[n] = n_sel
                continue
            if ATTENTION in n.meta and n.meta[ATTENTION].kind == "self":
                # the per-block join K is computed from (projection, head split, transpose, rotary update)
                cat = along_first_operands(n.args[1], joint.__contains__, 16)
                new_caches += self._attention(g, n, env, caches[len(new_caches) // 2],
                                              index if cat is None else joint[cat])
                continue
            for a in n.all_input_nodes:
                if a not in env and a.op != "get_attr":
                    raise PassError(self.name, f"dropped a shape assertion that {n.name!r} depends on", n)
            if frames.emit(n):  # split into frames, per-frame pointwise op or merge back: gathered by frame
                continue
            env[n] = g.node_copy(n, arg_lookup(g, env))
            env[n].meta.pop("val", None)  # sizes differ on the subset; refreshed by shape propagation
            if not is_symbolic(token_count) and is_op(n, ATEN.split_with_sizes):
                _split_subset(env[n], int(token_count), n_sel)
            if JOINT in n.meta:
                joint[n] = self._joint_rows(g, n, env, grid_tokens, index)
        out = next(n for n in src if n.op == "output")
        g.output((env[out.args[0][0]], *new_caches))
        g.eliminate_dead_code()
        gm = new_module(stack, g)
        if self.example_inputs is not None:
            # K/V caches are written in place by the in-place form: run it on copies
            propagate(gm, *[t.clone() if isinstance(t, torch.Tensor) else t for t in self.example_inputs])
        layers = len(new_caches) // 2
        info = {"layers": layers, "frame_groups": len(groups.groups)}
        return PassResult(gm, modified=True, info=info, product=TokenSubset(layers, len(groups.groups)))
