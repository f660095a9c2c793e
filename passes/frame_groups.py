"""Per-frame regroupings of the token axis that a token subset runs by gathering (SkyReels-V2's per-frame adaLN).

Matches: in the block-stack graph, a *split* of a token-axis value on its token dim d into (F frames, L / F
tokens each): `aten.unflatten.int`, or a view / reshape that splits exactly that dim; its value then only
combined by pointwise ATen ops (tagged `pointwise`: mul, add, sub, div, gelu, where, ..., and dtype casts) with
operands whose size is F or 1 on the frame dim d and 1 on the tokens-in-frame dim d + 1, and *merged* back by
`flatten(d, d + 1)` or a view / reshape that merges the two dims. The split's input is on the token axis when
its size on d is provably the stream's token count L, or F * (L // F) (a stream that went through an earlier
split and merge). A split, the pointwise ops it reaches and their merges form a group; splits combined by one
pointwise op are one group.
Requires: the stack graph with export's symbolic shape metadata (before shape propagation refreshes it with the
example's sizes), so sizes match as expressions, never by example value.
Guarantees: `find_frame_groups` returns every such group, and for every other split of the token axis the user
that keeps it from being gathered (a reduction, an attention, a reshape other than the merge back).
`FrameGather` emits a group's subset form, in which each selected token is a frame of one: the split becomes
`unsqueeze(d + 1)` ([B, k, 1, ...]), each per-frame operand is gathered by the selected tokens' frames
(`index_select(dim, token_index // (L // F))`, L the full token count), the merge flattens the two dims back.
So every selected row meets exactly its own frame's operands, as in the full graph. Blocked splits are left as
they are: the build's subset-rows check refuses them, naming the split and what blocks it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx

from mcgraph.compiler.shapes import ATEN, is_op, is_symbolic, same_size, shape

# besides ops tagged pointwise: casts, elementwise too (a bf16 modulation region)
_ELEMENTWISE = (ATEN.to.dtype, ATEN._to_copy.default, ATEN.type_as.default)
_RESHAPES = (ATEN.view, ATEN.reshape, ATEN._unsafe_view)


@dataclass(eq=False)
class FrameGroup:
    dim: int  # the frame dim d of the split values; d + 1 holds the tokens of one frame
    rank: int  # rank of the split values
    frames: object  # F and L / F as the metadata has them (SymInt or int)
    per_frame: object
    args: tuple  # F and L / F as the first split passes them (a node, an int, or -1 for the inferred one)
    splits: list = field(default_factory=list)
    ops: dict = field(default_factory=dict)  # pointwise op -> {per-frame operand: dim to gather it on}
    merges: list = field(default_factory=list)
    blocked: str = ""  # why the group cannot be gathered ("" when it can)


@dataclass
class FrameGroups:
    groups: list  # the gatherable groups
    blocked: dict  # split node name -> why it cannot be gathered

    def __post_init__(self):
        self.split_of = {n: grp for grp in self.groups for n in grp.splits}
        self.op_of = {n: grp for grp in self.groups for n in grp.ops}
        self.merge_of = {n: grp for grp in self.groups for n in grp.merges}

    @property
    def rewritten(self) -> set:
        """Names of the splits and merges the subset form replaces (no longer suspects when rows differ)."""
        return {n.name for n in (*self.split_of, *self.merge_of)}


def token_frames(index: torch.Tensor, per_frame) -> torch.Tensor:
    """The frame of each selected token (a position in the full grid, frames of `per_frame` tokens each)."""
    return torch.div(index, per_frame, rounding_mode="floor")


def _token_size(size, tokens, frames, per_frame) -> bool:
    """`size` is provably the full token count: L itself, or F * (L // F) (or (L // T) * T) after a merge."""
    if same_size(size, tokens):
        return True
    if isinstance(frames, int) and frames <= 0 or isinstance(per_frame, int) and per_frame <= 0:
        return False
    return same_size(size, frames * (tokens // frames)) or same_size(size, (tokens // per_frame) * per_frame)


def split_sizes(n: torch.fx.Node, tokens):
    """(d, F arg, L / F arg) when `n` splits a token-axis value's dim d in two, else None. The args are what the
    graph passes (a node, an int or -1); the metadata's sizes decide which dim and whether it is the token axis."""
    if n.op != "call_function" or not n.args:
        return None
    before, after = shape(n.args[0]), shape(n)
    if before is None or after is None or len(after) != len(before) + 1:
        return None
    if n.target is ATEN.unflatten.int:
        d = n.args[1] % len(before)
        sizes = list(n.args[2])
    elif is_op(n, *_RESHAPES) and isinstance(n.args[1], (list, tuple)):
        d = next((i for i in range(len(before)) if _same(before[:i], after[:i])
                  and _same(before[i + 1:], after[i + 2:])), None)
        if d is None:
            return None
        sizes = list(n.args[1])[d:d + 2]
    else:
        return None
    if len(sizes) != 2 or not _token_size(before[d], tokens, after[d], after[d + 1]):
        return None
    return d, sizes[0], sizes[1]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(same_size(x, y) for x, y in zip(a, b))


def find_frame_groups(stack: torch.fx.GraphModule, stream_input: str) -> FrameGroups:
    """The frame groups of the stack graph (see the module docstring), in graph order."""
    stream = next(n for n in stack.graph.nodes if n.op == "placeholder" and n.name == stream_input)
    tokens = shape(stream)[1]
    owner: dict[torch.fx.Node, FrameGroup] = {}  # split or pointwise value -> its group
    found: list[FrameGroup] = []
    for n in stack.graph.nodes:
        split = split_sizes(n, tokens)
        if split is not None:
            after = shape(n)
            grp = FrameGroup(split[0], len(after), after[split[0]], after[split[0] + 1], split[1:], splits=[n])
            owner[n] = grp
            found.append(grp)
            continue
        mine = {owner[a] for a in n.all_input_nodes if a in owner}
        if not mine:
            continue
        grp = _join(mine, owner, found)
        if grp.blocked:
            continue
        if _is_merge(n, owner, grp, tokens):
            grp.merges.append(n)
            continue
        gathers, why = _pointwise(n, owner, grp)
        if why:
            grp.blocked = f"its value reaches {n.name!r} ({n.target}), which {why}"
        else:
            grp.ops[n] = gathers
            owner[n] = grp
    blocked = {s.name: f"the split {s.name!r} regroups the token axis into frames and {grp.blocked}; a token subset "
               "can gather per-frame values only through pointwise ops and the merge back"
               for grp in found if grp.blocked for s in grp.splits}
    return FrameGroups([grp for grp in found if not grp.blocked], blocked)


def _join(mine: set, owner: dict, found: list) -> FrameGroup:
    """One group of the groups a node combines: the first, the others folded into it (blocked if they differ)."""
    first, *rest = sorted(mine, key=found.index)
    for other in rest:
        if other.dim != first.dim or other.rank != first.rank or not (
                same_size(other.frames, first.frames) and same_size(other.per_frame, first.per_frame)):
            first.blocked = first.blocked or "combines values split into frames differently"
        first.blocked = first.blocked or other.blocked
        first.splits += other.splits
        first.ops.update(other.ops)
        first.merges += other.merges
        for node, grp in owner.items():
            if grp is other:
                owner[node] = first
        found.remove(other)
    return first


def _is_merge(n: torch.fx.Node, owner: dict, grp: FrameGroup, tokens) -> bool:
    """`n` merges the frame dim and the tokens-in-frame dim of one group value back into the token axis."""
    if n.op != "call_function" or not n.args or owner.get(n.args[0]) is not grp:
        return False
    if any(a in owner for a in n.all_input_nodes if a is not n.args[0]):
        return False
    d, rank = grp.dim, grp.rank
    if n.target is ATEN.flatten.using_ints:
        start, end = (list(n.args[1:3]) + [0, -1][len(n.args) - 1:])[:2]
        return start % rank == d and end % rank == d + 1
    if not is_op(n, *_RESHAPES):
        return False
    before, after = shape(n.args[0]), shape(n)
    return (after is not None and len(after) == rank - 1 and _same(before[:d], after[:d])
            and _same(before[d + 2:], after[d + 1:])
            and (same_size(after[d], before[d] * before[d + 1])
                 or _token_size(after[d], tokens, grp.frames, grp.per_frame)))


def _pointwise(n: torch.fx.Node, owner: dict, grp: FrameGroup) -> tuple[dict, str]:
    """({per-frame operand: dim to gather it on}, "") when `n` is a pointwise op a token subset can run on its
    group's values; else ({}, why not)."""
    target = n.target
    tagged = isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags
    if n.op != "call_function" or not (tagged or target in _ELEMENTWISE):
        return {}, "is not pointwise"
    out = shape(n)
    d, rank = grp.dim, grp.rank
    if out is None or len(out) != rank or not (same_size(out[d], grp.frames) and same_size(out[d + 1],
                                                                                           grp.per_frame)):
        return {}, "broadcasts the frames to another shape"
    gathers = {}
    for a in n.all_input_nodes:
        size = shape(a)
        if a in owner or size is None:  # a group value, or a scalar (a SymInt)
            continue
        at = len(size) - rank + d  # the operand's dim aligned with the frame dim (broadcasting aligns the right)
        if at + 1 >= 0 and not same_size(size[at + 1], 1):
            return {}, f"combines it with {a.name!r}, which varies within a frame"
        if at >= 0 and not same_size(size[at], 1):
            if not same_size(size[at], grp.frames):
                return {}, f"combines it with {a.name!r}, whose size on the frame dim is not the frame count"
            gathers[a] = at
    return gathers, ""


class FrameGather:
    """Emits the subset form of the frame groups into a new graph `g` (see the module docstring).

    `env` maps the stack's nodes to their subset copies, `lookup` too (parameters created on first use);
    `index` is the token_index placeholder, `grid_tokens` the full token count L (the raw stream's size) and
    `tokens` the stack's token count as its metadata has it (sizes equal to it become L in size arithmetic)."""

    def __init__(self, groups: FrameGroups, g: torch.fx.Graph, env: dict, lookup, index, grid_tokens, tokens):
        self.groups, self.g, self.env, self.lookup = groups, g, env, lookup
        self.index, self.grid_tokens, self.tokens = index, grid_tokens, tokens
        self._frames: dict = {}  # split's (F, L / F) args -> the selected tokens' frames (one per frame layout)
        self._gathered: dict = {}  # (operand, dim, group) -> the operand gathered by those frames
        self._full: dict = {}  # size node of the stack -> its full-grid value in g

    def emit(self, n: torch.fx.Node) -> bool:
        """Put `n`'s subset form in `env` if `n` belongs to a group; False when it does not."""
        grp = self.groups.split_of.get(n)
        if grp is not None:  # [B, k, ...] -> [B, k, 1, ...]: each selected token a frame of one
            new = self.g.call_function(ATEN.unsqueeze.default, (self.lookup(n.args[0]), grp.dim + 1))
        elif n in self.groups.merge_of:
            grp = self.groups.merge_of[n]
            new = self.g.call_function(ATEN.flatten.using_ints, (self.lookup(n.args[0]), grp.dim, grp.dim + 1))
        elif n in self.groups.op_of:
            grp = self.groups.op_of[n]
            gathers = grp.ops[n]
            new = self.g.node_copy(n, lambda a: self._gather(a, gathers[a], grp) if a in gathers else self.lookup(a))
        else:
            return False
        new.meta = {k: v for k, v in n.meta.items() if k != "val"}  # sizes differ on the subset
        self.env[n] = new
        return True

    def _gather(self, a, dim: int, grp: FrameGroup):
        key = (a, dim, grp)
        if key not in self._gathered:
            self._gathered[key] = self.g.call_function(ATEN.index_select.default,
                                                       (self.lookup(a), dim, self._token_frames(grp)))
        return self._gathered[key]

    def _token_frames(self, grp: FrameGroup):
        if grp.args not in self._frames:
            frames, per_frame = grp.args
            if isinstance(per_frame, int) and per_frame == -1:  # (F, -1): L // F tokens per frame
                per_frame = self.g.call_function(operator.floordiv, (self.grid_tokens, self._full_size(frames, grp)))
            else:
                per_frame = self._full_size(per_frame, grp)
            self._frames[grp.args] = self.g.call_function(token_frames, (self.index, per_frame))
        return self._frames[grp.args]

    def _full_size(self, a, grp: FrameGroup):
        """A split's size arg as the full grid has it: the subset copy of a size computed from the token count
        (T = y.shape[1] // F in the blocks) would count the selected tokens instead."""
        if not isinstance(a, torch.fx.Node):
            return a
        if a not in self._full:
            val = a.meta.get("val")
            if is_symbolic(val) and _token_size(val, self.tokens, grp.frames, grp.per_frame):
                self._full[a] = self.grid_tokens
            elif (a.op == "call_function" and isinstance(val, torch.SymInt)
                  and not any(isinstance(x.meta.get("val"), torch.Tensor) for x in a.all_input_nodes)):
                args = torch.fx.node.map_arg(a.args, lambda x: self._full_size(x, grp))
                self._full[a] = self.g.call_function(a.target, args, dict(a.kwargs))
            else:  # a stack input, or a size of a non-token dim: the same on the subset
                self._full[a] = self.lookup(a)
        return self._full[a]
