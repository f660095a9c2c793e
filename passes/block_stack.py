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

from collections import defaultdict

import torch.fx

from mcgraph.errors import PassError, StructureNotFound
from mcgraph.compiler.graph_walk import ancestors, indexed_module
from mcgraph.compiler.pass_infra import GraphPass, PassResult
from mcgraph.compiler.shapes import ATEN, dim_arg, is_op, shape
from mcgraph.compiler.structure import ATTENTION, BLOCK, TOKEN_DIMS, BlockInfo, structure_of

# ops that hand the stream on unchanged in kind: casts and copies (Wan's `(x.float() + y).type_as(x)`)
_CARRY = (ATEN.to, ATEN._to_copy, ATEN.type_as, ATEN.contiguous, ATEN.clone, ATEN.alias)


def _stream_like(node: torch.fx.Node) -> bool:
    """A [B, L, D] value whose middle dim is the token axis: the shape of the residual stream."""
    s = shape(node)
    return s is not None and len(s) == 3 and node.meta.get(TOKEN_DIMS) == (1,)


def _carries(user: torch.fx.Node, value: torch.fx.Node) -> bool:
    """`user` hands `value` on along a residual stream: adds something to it (either operand of an add, the
    first of a sub), casts / copies it (its data operand, the first), joins it with other tokens along the
    token axis or takes rows back out of such a join (single-stream blocks that join the video and text
    streams for the block and split them after: every row still gets its own residual add)."""
    if is_op(user, ATEN.add):
        return value in user.args[:2]
    if is_op(user, ATEN.cat):
        return value in user.args[0] and dim_arg(user) == 1
    if is_op(user, ATEN.slice):
        return user.args[0] is value and dim_arg(user) == 1
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


def _external(nodes: list[torch.fx.Node]) -> list[torch.fx.Node]:
    """The values a block reads from outside itself (parameters aside), in first-use order."""
    inside = set(nodes)
    return list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in inside and a.op != "get_attr"))


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
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        stacks = self._stacks(gm, order)
        all_blocks = {n for _, members in stacks for _, _, nodes in members for n in nodes}
        chains: list[list[tuple]] = []  # blocks chained along one residual stream: (module, cls, nodes, in, out)
        refused: list[tuple[int, StructureNotFound]] = []  # module lists whose blocks are not a residual stack
        for container, members in stacks:
            previous = chains[-1] if chains else None
            try:
                links = self._links(container, members, previous, all_blocks, order)
                if links is None:  # does not continue the previous chain's stream: a chain of its own
                    previous, links = None, self._links(container, members, None, all_blocks, order)
            except StructureNotFound as exc:
                refused.append((len(members), exc))
                continue
            if previous is None:
                chains.append(links)
            else:
                previous.extend(links)
        longest = max((len(chain) for chain in chains), default=0)
        if refused and max(n for n, _ in refused) > longest:
            # the largest module list is not a residual stack: refuse with its reason rather than cache a
            # smaller one (a VACE-style hint stack beside the main blocks is smaller and just left out)
            raise max(refused, key=lambda r: r[0])[1]
        # the longest chain is the cached stack (the last of equal length: its stream is what the head reads);
        # the blocks of other chains run in the prologue
        chosen = max(reversed(chains), key=len)
        in_block = {n: b for b, link in enumerate(chosen) for n in link[2]}
        for node in gm.graph.nodes:
            if node in in_block:
                node.meta[BLOCK] = in_block[node]
            else:
                node.meta.pop(BLOCK, None)
        blocks = [BlockInfo(index=b, module=module, module_class=cls, stream_input=stream_in.name,
                            stream_output=stream_out.name, nodes=[n.name for n in nodes],
                            external_inputs=[a.name for a in _external(nodes)])
                  for b, (module, cls, nodes, stream_in, stream_out) in enumerate(chosen)]
        st = structure_of(gm)
        st.blocks = blocks
        for site in st.attention:
            site.block = next((bl.index for bl in blocks if site.node in set(bl.nodes)), None)
        containers = list(dict.fromkeys(link[0].rsplit(".", 1)[0] for link in chosen))
        return PassResult(gm, modified=False, info={"blocks": len(blocks), "container": ", ".join(containers)})

    def _links(self, container: str, members: list, chain: list | None, all_blocks: set, order: dict):
        """The blocks of one module list as chain links `(module, cls, nodes, stream in, stream out)`. With a
        `chain`, the first block must continue its stream (else None: this list starts a chain of its own)."""
        links = []
        upstream = {n for link in chain or () for n in link[2]}  # this chain's blocks so far
        for j, (idx, cls, nodes) in enumerate(members):
            module = f"{container}.{idx}"
            prev = links[-1] if links else chain[-1] if chain else None
            try:
                stream_in, stream_out = self._stream(module, nodes, prev[4] if prev else None, all_blocks)
            except StructureNotFound:
                if j == 0 and chain is not None:
                    return None
                raise
            if prev is not None:
                self._check_between(prev[0], module, prev[4], stream_in, all_blocks, upstream, order)
            links.append((module, cls, nodes, stream_in, stream_out))
            upstream.update(nodes)
        return links

    def _stacks(self, gm: torch.fx.GraphModule, order: dict) -> list[tuple[str, list[tuple[int, str, list]]]]:
        """The module lists whose members are blocks (each member contains self-attention over the token
        sequence), in execution order: (container, [(index, class, nodes in graph order)] by execution)."""
        found: dict[str, dict[int, tuple[str, list[torch.fx.Node]]]] = defaultdict(dict)
        for node in gm.graph.nodes:
            where = indexed_module(node)
            if where is not None:
                container, idx, cls = where
                found[container].setdefault(idx, (cls, []))[1].append(node)
        stacks = []
        for container, members in found.items():
            with_attn = [i for i, (_, nodes) in members.items()
                         if any(ATTENTION in n.meta and n.meta[ATTENTION].kind == "self" for n in nodes)]
            if with_attn and len(with_attn) == len(members):
                ordered = sorted(members, key=lambda i: order[members[i][1][0]])
                stacks.append((container, [(i, *members[i]) for i in ordered]))
        stacks.sort(key=lambda stack: order[stack[1][0][2][0]])
        if sum(len(members) for _, members in stacks) < 2:
            self.fail("no repeated transformer blocks found: expected >= 2 submodules '<name>.<i>' (one module list "
                      "or several run one after another), each containing self-attention (found module lists: "
                      f"{sorted(found)[:5] or 'none'})", cls=StructureNotFound)
        return stacks

    def _stream(self, module: str, nodes: list[torch.fx.Node], prev_out: torch.fx.Node | None,
                all_blocks: set[torch.fx.Node]) -> tuple[torch.fx.Node, torch.fx.Node]:
        """(stream input, stream output) of one block: the [B, tokens, D] input that its residual adds carry
        to the [B, tokens, D] value it hands on. After the first block the input must come from the previous
        block's output (itself, or with side inputs added between the blocks)."""
        inside = set(nodes)
        handed_on = [n for n in nodes if _stream_like(n) and any(u not in inside for u in n.users)]
        if len(handed_on) != 1:
            self.fail(f"block {module} should hand exactly one [B, tokens, D] value on along the residual stream, "
                      f"found {[n.name for n in handed_on]}", nodes[-1], cls=StructureNotFound)
        out = handed_on[0]
        readers = [a for a in _external(nodes) if _stream_like(a)]
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
                       all_blocks: set[torch.fx.Node], upstream: set[torch.fx.Node], order: dict) -> None:
        """Between two blocks the stream may only have side inputs added to it (or be cast), and a side input
        must not depend on a block of the stack (`upstream`): it becomes an input of the cached stack, computed
        before it (a VACE hint stack beside the main blocks runs in the prologue)."""
        path = _stream_path(prev_out, stream_in, all_blocks)
        for n in sorted(path, key=order.__getitem__):
            stream = [a for a in n.all_input_nodes if a is prev_out or a in path]
            if not any(_carries(n, a) for a in stream):
                self.fail(f"between {prev} and {module} the residual stream goes through {n.target} ({n.name!r}): "
                          "only side inputs added to it between blocks are supported", n, cls=StructureNotFound)
            for side in n.all_input_nodes:
                if side in stream or side.op == "get_attr":
                    continue
                if ancestors([side]) & upstream:
                    self.fail(f"side input {side.name!r} added to the residual stream between {prev} and {module} "
                              "depends on a block's value (a skip connection?): it cannot be computed before the "
                              "block stack", side, cls=StructureNotFound)
