"""What the analyses find: per-node facts live in `node.meta` under the keys below; the graph-level summary
(`ModelStructure`) is kept in `graph_module.meta[STRUCTURE]` and filled in by each analysis in turn."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch.fx

# node.meta keys
TOKEN_DIMS = "mcgraph.token_dims"  # tuple[int, ...]: dims of this value that are the hidden stream's token axis
BLOCK = "mcgraph.block"  # int: index of the repeated block this node belongs to
ATTENTION = "mcgraph.attention"  # AttentionSite, on the attention call node
MODULATION = "mcgraph.modulation"  # ModulationInput, on timestep-dependent values entering the blocks
# graph_module.meta key
STRUCTURE = "mcgraph.compiler.structure"


@dataclass
class AttentionSite:
    node: str
    kind: str  # "self" | "cross" | "other" (self-attention over a sequence that is not the token stream)
    module: str
    block: int | None
    q_proj: str | None
    k_proj: str | None
    v_proj: str | None
    query_input: str | None  # the value the Q projection reads
    kv_input: str | None  # the value the K/V projections read
    mask: str | None
    query_len: str
    kv_len: str


@dataclass
class BlockInfo:
    index: int
    module: str
    module_class: str
    stream_input: str  # residual-stream value entering the block
    stream_output: str  # residual-stream value leaving the block
    nodes: list[str] = field(repr=False, default_factory=list)
    external_inputs: list[str] = field(repr=False, default_factory=list)


@dataclass
class ModulationInput:
    node: str
    per_token: bool  # True when it varies per token (one timestep per frame: diffusion forcing)
    shape: str
    sources: list[str]  # graph inputs it depends on
    blocks: list[int]  # blocks that read it


@dataclass
class TokenGrid:
    frames: str
    height: str
    width: str
    example: tuple[int, int, int]
    patch_size: tuple[int, ...]  # (1, 1, 1) when the latent input is already tokens
    patch_embed: str  # node making the tokens: a convolution ([B, D, F, H, W], ...) or a projection
    latent_input: str | None
    # what the latent input holds: "video" [B, C, F, H, W], "image" [B, C, H, W], "frames in batch" (a Conv2d
    # over its frames folded into the batch) or "tokens" [B, L, C] (patchified outside the model)
    latent_layout: str
    # how a call's grid is read from its inputs (sizes are symbolic: one capture serves many shapes): frames,
    # height and width as trees over size symbols (an int, a symbol's name, or (op, *operands) with op one of
    # + * // %), and where each symbol is read: name -> (input, dim, divisor), dim None for a Python int input
    formulas: tuple
    size_inputs: dict[str, tuple[str, int | None, int]]
    # tokens outside the grid in the self-attention sequence (text, registers): L_seq = offset + grid + extra,
    # as formulas like `formulas` (text length may be symbolic). `joint`: "" (the sequence is the grid),
    # "sequence" (concatenated before the blocks: the residual stream holds every row), "attention"
    # (concatenated inside each block, `concat` in block 0: the stream holds the grid rows only)
    offset: object = 0
    extra: object = 0
    joint: str = ""
    concat: str | None = None  # the concatenation that builds the sequence (block 0's, for "attention")
    grid_value: str | None = None  # the concatenation's grid part ("attention": block 0's indicator)

    def evaluate(self, sizes: dict) -> tuple:
        """(frames, height, width) of a call whose size symbols have these values (plain Python: traceable)."""
        return tuple(_evaluate(f, sizes) for f in self.formulas)

    def around(self, sizes: dict) -> tuple:
        """(offset, extra): the non-grid rows before and after the grid in a call's attention sequence."""
        return _evaluate(self.offset, sizes), _evaluate(self.extra, sizes)


def _evaluate(tree, sizes: dict):
    if isinstance(tree, int):
        return tree
    if isinstance(tree, str):
        return sizes[tree]
    op, *args = tree
    values = [_evaluate(a, sizes) for a in args]
    out = values[0]
    for v in values[1:]:
        out = out + v if op == "+" else out * v if op == "*" else out // v if op == "//" else out % v
    return out


@dataclass
class ModelStructure:
    model_class: str
    token_count: str | None = None
    token_count_example: int | None = None
    token_axis_exact: bool = False
    token_values: list[str] = field(default_factory=list)
    grid: TokenGrid | None = None
    attention: list[AttentionSite] = field(default_factory=list)
    blocks: list[BlockInfo] = field(default_factory=list)
    modulation: list[ModulationInput] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # graph input name -> role

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def self_attention(self) -> list[AttentionSite]:
        return [a for a in self.attention if a.kind == "self"]

    @property
    def cross_attention(self) -> list[AttentionSite]:
        return [a for a in self.attention if a.kind == "cross"]

    def report(self) -> str:
        """Human-readable summary, what `mcgraph inspect` prints."""
        lines = [f"model: {self.model_class}"]
        exact = "symbolic, exact" if self.token_axis_exact else "static sizes: matched by value"
        lines.append(f"tokens: {self.token_count} (= {self.token_count_example} here; {exact})")
        if self.grid:
            g = self.grid
            lines.append(
                f"token grid: frames x height x width = {g.frames} x {g.height} x {g.width} "
                f"(= {g.example[0]} x {g.example[1]} x {g.example[2]}), patch {g.patch_size}, "
                f"patch embedding {g.patch_embed!r} reading input {g.latent_input!r} ({g.latent_layout})"
            )
            if g.joint:
                lines.append(f"attention sequence: {g.offset} + grid + {g.extra} tokens, concatenated at "
                             f"{g.concat!r} ({'before the blocks' if g.joint == 'sequence' else 'in each block'})")
        if self.inputs:
            lines.append("inputs: " + ", ".join(f"{k} ({v})" for k, v in self.inputs.items()))
        if self.blocks:
            b0 = self.blocks[0]
            lines.append(f"blocks: {len(self.blocks)} x {b0.module_class.rsplit('.', 1)[-1]} "
                         f"({self.blocks[0].module} .. {self.blocks[-1].module}), residual stream "
                         f"{b0.stream_input!r} -> {self.blocks[-1].stream_output!r}")
        lines.append(f"attention sites: {len(self.self_attention)} self, {len(self.cross_attention)} cross")
        for a in self.attention:
            lines.append(f"  {a.kind:5s} {a.node} in {a.module or '<root>'} (block {a.block}): "
                         f"q={a.q_proj} k={a.k_proj} v={a.v_proj} mask={a.mask} "
                         f"len q={a.query_len} kv={a.kv_len}")
        lines.append(f"modulation entering blocks: {len(self.modulation)}")
        for m in self.modulation:
            kind = "per-token" if m.per_token else "per-sample"
            lines.append(f"  {m.node}: {kind} {m.shape} from {m.sources} -> blocks {m.blocks[:3]}"
                         f"{'...' if len(m.blocks) > 3 else ''}")
        lines.append(f"values carrying the token axis: {len(self.token_values)}")
        return "\n".join(lines)


def structure_of(gm: torch.fx.GraphModule) -> ModelStructure:
    if STRUCTURE not in gm.meta:
        gm.meta[STRUCTURE] = ModelStructure(model_class=gm.meta.get("mcgraph.model_class", type(gm).__name__))
    return gm.meta[STRUCTURE]
