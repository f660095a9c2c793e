"""Analysis: the repeated transformer blocks along the residual stream, with their inputs and outputs.

Matches: submodules named `<container>.<i>` (an nn.ModuleList) of one class, at least two of them, that
contain self-attention; nodes are assigned to blocks by `nn_module_stack`, so no model registry is needed.
The residual stream is found from the dataflow, not from shapes: it is the [B, tokens, D] value a block reads
and hands on through its residual adds (`x = x + gate * f(norm(x))`, casts and copies allowed on the way) to
the [B, tokens, D] value it hands on. A per-token modulation of the same rank is only read (chunked,
multiplied), never added to and passed on, so it is not mistaken for the stream.
Requires: token_axis. Guarantees: `structure.blocks` in execution order, each with its residual-stream input
and output, chained: block i+1's stream input is block i's output, or that output with side inputs added to
it between the blocks (`x = block(x) + hint[i]`, control / hint stacks); a side input never depends on a
block's value, so it can be computed before the stack (`between_blocks` gives the nodes that add it). Every
node inside a block gets `meta[BLOCK]`; each attention site gets its block index. Refuses (StructureNotFound)
naming the node when the stream is ambiguous, when a block does not add its outputs to the stream it reads,
or when what happens between two blocks is not adding side inputs.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch.fx

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.graph_walk import ancestors
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, is_op, shape
from mcgraph.compiler.structure import ATTENTION, BLOCK, TOKEN_DIMS, BlockInfo, structure_of

_INDEXED = re.compile(r"^(.+)\.(\d+)$")
# ops that hand the stream on unchanged in kind: casts and copies (Wan's `(x.float() + y).type_as(x)`)
_CARRY = (ATEN.to, ATEN._to_copy, ATEN.type_as, ATEN.contiguous, ATEN.clone, ATEN.alias)


def _stream_like(node: torch.fx.Node) -> bool:
    """A [B, L, D] value whose middle dim is the token axis: the shape of the residual stream."""
    s = shape(node)
    return s is not None and len(s) == 3 and node.meta.get(TOKEN_DIMS) == (1,)


def _carries(user: torch.fx.Node, value: torch.fx.Node) -> bool:
    """`user` hands `value` on along a residual stream: adds something to it (either operand of an add, the
    first of a sub) or casts / copies it (its data operand, the first)."""
    if is_op(user, ATEN.add):
        return value in user.args[:2]
    if is_op(user, ATEN.sub, *_CARRY):
        return bool(user.args) and user.args[0] is value
    return False


def _residual_reach(start: torch.fx.Node, inside: set[torch.fx.Node]) -> set[torch.fx.Node]:
    """The values inside a block that `start` flows into through residual adds, casts and copies only."""
    seen: set[torch.fx.Node] = set()
    todo = [start]
    while todo:
        value = todo.pop()
        for u in value.users:
            if u in inside and u not in seen and _carries(u, value):
                seen.add(u)
                todo.append(u)
    return seen


def _stream_path(prev_out: torch.fx.Node, next_in: torch.fx.Node,
                 in_blocks: set[torch.fx.Node]) -> set[torch.fx.Node]:
    """The nodes outside every block on the way from one block's stream output to a value the next block reads
    (empty when that is the output itself, or when the output does not flow into it)."""
    if next_in is prev_out:
        return set()
    downstream: set[torch.fx.Node] = set()
    todo = [prev_out]
    while todo:
        for u in todo.pop().users:
            if u not in in_blocks and u not in downstream and u.op != "output":
                downstream.add(u)
                todo.append(u)
    path: set[torch.fx.Node] = set()
    todo = [next_in]
    while todo:
        n = todo.pop()
        if n in downstream and n not in path:
            path.add(n)
            todo.extend(n.all_input_nodes)
    return path


def between_blocks(prev_out: torch.fx.Node, next_in: torch.fx.Node,
                   in_blocks: set[torch.fx.Node]) -> set[torch.fx.Node]:
    """What runs between two blocks and belongs to the stack: the nodes that carry the stream from one block's
    output to the next block's input (the adds of side inputs), and export's assertions on those values
    (`_assert_tensor_metadata` of a cast: no users, reading only them), which must go where the values are."""
    path = _stream_path(prev_out, next_in, in_blocks)
    on_stream = path | {prev_out}
    checks = {u for v in on_stream for u in v.users
              if u.op == "call_function" and not u.users and u not in in_blocks
              and all(a in on_stream for a in u.all_input_nodes)}
    return path | checks


class BlockStackAnalysis(GraphPass):
    name = "block_stack"

    def requires(self, gm):
        if structure_of(gm).token_count is None:
            raise PassError(self.name, "requires token_axis to run first")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        container, members = self._container(gm)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        indices = sorted(members, key=lambda i: order[members[i][1][0]])  # execution order
        in_block = {n: b for b, idx in enumerate(indices) for n in members[idx][1]}
        for node in gm.graph.nodes:
            if node in in_block:
                node.meta[BLOCK] = in_block[node]
            else:
                node.meta.pop(BLOCK, None)
        all_blocks = set(in_block)
        blocks: list[BlockInfo] = []
        prev_out = None
        for b, idx in enumerate(indices):
            cls, nodes = members[idx]
            module = f"{container}.{idx}"
            inside = set(nodes)
            external = []
            for n in nodes:
                for a in n.all_input_nodes:
                    if a not in inside and a not in external and a.op != "get_attr":
                        external.append(a)
            stream_in, stream_out = self._stream(module, nodes, external, prev_out, all_blocks)
            if prev_out is not None:
                self._check_between(blocks[-1].module, module, prev_out, stream_in, all_blocks, order)
            blocks.append(BlockInfo(index=b, module=module, module_class=cls,
                                    stream_input=stream_in.name, stream_output=stream_out.name,
                                    nodes=[n.name for n in nodes], external_inputs=[a.name for a in external]))
            prev_out = stream_out
        st = structure_of(gm)
        st.blocks = blocks
        for site in st.attention:
            site.block = next((bl.index for bl in blocks if site.node in set(bl.nodes)), None)
        return PassResult(gm, modified=False, info={"blocks": len(blocks), "container": container})

    def _container(self, gm: torch.fx.GraphModule) -> tuple[str, dict[int, tuple[str, list[torch.fx.Node]]]]:
        """The module list whose members are the blocks: index -> (class, nodes in graph order)."""
        found: dict[str, dict[int, tuple[str, list[torch.fx.Node]]]] = defaultdict(dict)
        for node in gm.graph.nodes:
            for path, cls in (node.meta.get("nn_module_stack") or {}).values():
                m = _INDEXED.match(str(path))
                if m:
                    container, idx = m.group(1), int(m.group(2))
                    entry = found[container].setdefault(idx, (str(cls), []))
                    entry[1].append(node)
                    break  # outermost indexed module wins: blocks, not sub-layers inside a block
        candidates = []
        for container, members in found.items():
            classes = {cls for cls, _ in members.values()}
            with_attn = [i for i, (_, nodes) in members.items()
                         if any(ATTENTION in n.meta and n.meta[ATTENTION].kind == "self" for n in nodes)]
            if len(members) >= 2 and len(classes) == 1 and len(with_attn) == len(members):
                candidates.append((len(members), container))
        if not candidates:
            self.fail("no repeated transformer blocks found: expected >= 2 submodules '<name>.<i>' of one class, "
                      "each containing self-attention (found module lists: "
                      f"{sorted(found)[:5] or 'none'})", cls=StructureNotFound)
        _, container = max(candidates)
        return container, found[container]

    def _stream(self, module: str, nodes: list[torch.fx.Node], external: list[torch.fx.Node],
                prev_out: torch.fx.Node | None, all_blocks: set[torch.fx.Node]) -> tuple[torch.fx.Node, torch.fx.Node]:
        """(stream input, stream output) of one block: the [B, tokens, D] input that its residual adds carry
        to the [B, tokens, D] value it hands on. After the first block the input must come from the previous
        block's output (itself, or with side inputs added between the blocks)."""
        inside = set(nodes)
        handed_on = [n for n in nodes if _stream_like(n) and any(u not in inside for u in n.users)]
        if len(handed_on) != 1:
            self.fail(f"block {module} should hand exactly one [B, tokens, D] value on along the residual stream, "
                      f"found {[n.name for n in handed_on]}", nodes[-1], cls=StructureNotFound)
        out = handed_on[0]
        readers = [a for a in external if _stream_like(a)]
        if prev_out is not None:
            # the block's inputs the previous block's output flows into (itself, or via adds outside the blocks)
            readers = [a for a in readers if a is prev_out or _stream_path(prev_out, a, all_blocks)]
            if not readers:
                self.fail(f"block {module} does not read the previous block's output {prev_out.name!r}: blocks "
                          "are not chained along one residual stream", nodes[0], cls=StructureNotFound)
        streams = [a for a in readers if out in _residual_reach(a, inside)]
        if len(streams) == 1:
            return streams[0], out
        if prev_out is not None:
            self.fail(f"block {module} reads the previous block's output (as {[a.name for a in readers]}) but does "
                      f"not add its outputs to it on the way to {out.name!r}: no residual stream", nodes[0],
                      cls=StructureNotFound)
        if not streams:
            self.fail(f"cannot tell the residual stream entering {module}: none of its [B, tokens, D] inputs "
                      f"{[a.name for a in readers]} reaches the value it hands on ({out.name!r}) through residual "
                      "adds", nodes[0], cls=StructureNotFound)
        self.fail(f"cannot tell the residual stream entering {module}: inputs {[a.name for a in streams]} all reach "
                  f"the value it hands on ({out.name!r}) through residual adds", nodes[0], cls=StructureNotFound)

    def _check_between(self, prev: str, module: str, prev_out: torch.fx.Node, stream_in: torch.fx.Node,
                       all_blocks: set[torch.fx.Node], order: dict) -> None:
        """Between two blocks the stream may only have side inputs added to it (or be cast), and a side input
        must not depend on any block's value: it becomes an input of the cached stack, computed before it."""
        path = _stream_path(prev_out, stream_in, all_blocks)
        for n in sorted(path, key=order.__getitem__):
            stream = [a for a in n.all_input_nodes if a is prev_out or a in path]
            if not any(_carries(n, a) for a in stream):
                self.fail(f"between {prev} and {module} the residual stream goes through {n.target} ({n.name!r}): "
                          "only side inputs added to it between blocks are supported", n, cls=StructureNotFound)
            for side in n.all_input_nodes:
                if side in stream or side.op == "get_attr":
                    continue
                if ancestors([side]) & all_blocks:
                    self.fail(f"side input {side.name!r} added to the residual stream between {prev} and {module} "
                              "depends on a block's value (a skip connection?): it cannot be computed before the "
                              "block stack", side, cls=StructureNotFound)
