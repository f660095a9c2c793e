"""Per-frame modulation by unflattening the token axis into frames (SkyReels-V2's adaLN), on a token subset
(`passes/frame_groups.py`, used by `passes/token_subset.py`).

The subset stack must give the selected tokens exactly the full stack's rows whatever tokens are selected (one
token, one frame's, random ones across frames): a frame's modulation landing on another frame's token shows,
since every frame has its own timestep. MotionCache at a positive threshold runs such subsets and must match the
same model written with per-token modulation (a layout the rewrite already ran), call for call. A use of the
frames that cannot be gathered (a mean over a frame's tokens, a merge back in another order) stays refused,
naming the split and what blocks it.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

import mcgraph
from mcgraph.config import MotionCacheConfig
from mcgraph.errors import StructureNotFound

from .construct_zoo import CONSTRUCTS, GRID, Block, ZooDiT, _build, norm

ROWS_TOL, TOL = 2e-5, 1e-5
FRAMES, PER_FRAME = GRID[0], GRID[1] * GRID[2]
TOKENS = FRAMES * PER_FRAME


# ------------------------------------------------------------------------------------------------ variants
class PerFrameBlock(Block):
    """construct_zoo's FrameModBlock with the split and the merge as methods, so variants change one of them."""

    def split(self, y, frames):
        return y.unflatten(1, (frames, -1))

    def merge(self, u):
        return u.flatten(1, 2)

    def per_frame(self, y, frames, scale, shift=0.0):
        return self.merge(self.split(y, frames) * scale + shift)

    def mlp_in(self, y, frames, scale, shift):
        return self.per_frame(y, frames, scale, shift)

    def forward(self, x, mod, ctx=None, mask=None):
        s1, c1, g1, s2, c2, g2 = (m[:, :, None] for m in (mod + self.table).unbind(2))
        f = mod.shape[1]
        x = x + self.per_frame(self.attn(self.per_frame(norm(x), f, 1 + c1, s1)), f, g1)
        x = x + self.cross(norm(x), ctx)
        return x + self.per_frame(self.mlp(self.mlp_in(norm(x), f, 1 + c2, s2)), f, g2)


class ViewBlock(PerFrameBlock):
    """Split and merge as view / reshape with explicit sizes."""

    def split(self, y, frames):
        return y.view(y.shape[0], frames, -1, y.shape[-1])

    def merge(self, u):
        return u.reshape(u.shape[0], -1, u.shape[-1])


class TokensPerFrameBlock(PerFrameBlock):
    """The tokens per frame given, computed from the token count in the block (the frame count inferred)."""

    def split(self, y, frames):
        return y.unflatten(1, (-1, y.shape[1] // frames))


class FrameMeanBlock(PerFrameBlock):
    """The MLP's input centred per frame: a mean over each frame's tokens, broadcast back (not gatherable)."""

    def mlp_in(self, y, frames, scale, shift):
        u = self.split(y, frames)
        return self.merge((u - u.mean(2, keepdim=True)) * scale + shift)


class FrameMajorBlock(PerFrameBlock):
    """The MLP's input merged back frame-minor (a permutation of the tokens, not the merge back)."""

    def mlp_in(self, y, frames, scale, shift):
        return (self.split(y, frames) * scale + shift).transpose(1, 2).flatten(1, 2)


def _frame_model(block):
    return lambda: _build(lambda: ZooDiT([block() for _ in "ab"], "frame"))


GATHERABLE = {"zoo per_frame_modulation": CONSTRUCTS["per_frame_modulation"], "view / reshape": _frame_model(ViewBlock),
              "tokens per frame given": _frame_model(TokensPerFrameBlock)}
REFUSED = {"mean over a frame's tokens": (_frame_model(FrameMeanBlock), "aten.mean.dim"),
           "merge back frame-minor": (_frame_model(FrameMajorBlock), "aten.transpose.int")}


@functools.cache
def _cached(name: str):
    """(model, kwargs, make_call, MotionCache at threshold 0), built once per module run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, kwargs, make_call = GATHERABLE[name]()
        mc = mcgraph.optimize(model, mcgraph.NoCache(), (), kwargs).with_config(MotionCacheConfig(threshold=0.0))
    return model, kwargs, make_call, mc


# -------------------------------------------------------------------------------------------- subset rows
def _subsets() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = {"one token": torch.tensor([37]), "last token": torch.tensor([TOKENS - 1]),
           "frame 1 only": torch.arange(PER_FRAME, 2 * PER_FRAME),
           "part of the last frame": torch.arange(TOKENS - PER_FRAME + 3, TOKENS, 4),
           "all tokens": torch.arange(TOKENS)}
    for count in (2, 7, 27, 53):  # not multiples of the frame count: a split of the subset fails or regroups
        out[f"random {count}"] = torch.randperm(TOKENS, generator=g)[:count].sort().values
    return out


@pytest.mark.parametrize("name", GATHERABLE)
def test_subset_stack_rows_match_the_full_stack(name):
    """Fresh K/V rows are written for the selected tokens (their stale rows zeroed first), both subset forms."""
    _, _, make_call, mc = _cached(name)
    graphs = mc.step.graphs
    with torch.no_grad():
        stack_in = mc.stack_inputs(**make_call(2))  # mid-trajectory: every frame its own timestep
        h_full, *kv = graphs.stack(*stack_in)
        assert h_full.shape[1] == TOKENS
        for label, index in _subsets().items():
            for form in (graphs.subset_stack, graphs.subset_stack_functional):
                stale = [t.clone().index_fill_(t.dim() - 2, index, 0.0) for t in kv]
                h_sel, *kv_new = form(*stack_in, index, *stale)
                where = f"{name}, {label} {index.tolist()}"
                assert h_sel.shape == (h_full.shape[0], index.numel(), h_full.shape[2]), where
                err = (h_sel - h_full.index_select(1, index)).abs().max().item()
                assert err <= ROWS_TOL, f"{where}: rows differ from the full stack by {err:.3g}"
                for fresh, full in zip(kv_new, kv, strict=True):
                    assert (fresh - full).abs().max().item() <= ROWS_TOL, f"{where}: K/V differ"


def test_subset_stack_gathers_instead_of_splitting():
    """No split of the token axis is left in the subset graph: each selected token is a frame of one."""
    graph = _cached("zoo per_frame_modulation")[3].step.graphs.subset_stack.graph
    splits = [n for n in graph.nodes if n.target is torch.ops.aten.unflatten.int and n.args[1] == 1]
    assert not splits, [n.name for n in splits]
    assert any(n.target is torch.ops.aten.index_select.default and n.args[1] == 1
               and getattr(n.args[2], "name", "").startswith("token_frames") for n in graph.nodes)


# ------------------------------------------------------------------------------------------- MotionCache
def _trajectory(calls=6):
    model, kwargs, make_call, _ = _cached("zoo per_frame_modulation")
    return model, kwargs, [make_call(step) for step in range(calls)]


def test_threshold_zero_is_exact():
    model, kwargs, steps = _trajectory()
    mc = _cached("zoo per_frame_modulation")[3]
    with torch.no_grad():
        for i, kw in enumerate(steps):
            err = (mc(**kw) - model(**kw)).abs().max().item()
            assert err <= TOL, f"call {i}: threshold 0 differs from eager by {err:.3g}"


@pytest.mark.parametrize("threshold", [0.05, 0.2])
def test_positive_threshold_matches_the_per_token_layout(threshold):
    """The same weights with the modulation expanded to every token before the blocks (ZooDiT's "token" layout,
    plain Block) compute the same function; MotionCache on both takes the same decisions and gives the same
    outputs, subsets included (the cost model is off: timing must not choose the full stack on one of them)."""
    model, kwargs, steps = _trajectory()
    twin = ZooDiT([Block() for _ in "ab"], "token").eval()
    twin.load_state_dict(model.state_dict())
    config = MotionCacheConfig(threshold=threshold, warmup_steps=1, phase1_computes=1, subset_cost_model=False)
    runs = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for m in (model, twin):
            opt = mcgraph.optimize(m, config, (), kwargs)
            records = opt.record_decisions()
            runs.append(([opt(**kw) for kw in steps], [r.executed for r in opt.decision_records]))
            assert len(records) == len(steps)
    (outs, executed), (twin_outs, twin_executed) = runs
    assert all(torch.isfinite(o).all() for o in outs)
    assert any(0 < e < TOKENS for e in executed), f"no call ran a token subset: {executed}"
    assert executed == twin_executed
    for i, (got, want) in enumerate(zip(outs, twin_outs, strict=True)):
        err = (got - want).abs().max().item()
        assert err <= TOL, f"call {i} ({executed[i]} tokens run): differs from the per-token layout by {err:.3g}"


# -------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", REFUSED)
def test_ungatherable_use_of_the_frames_is_refused_naming_the_split(name):
    make, blocker = REFUSED[name]
    model, kwargs, _ = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = mcgraph.optimize(model, mcgraph.NoCache(), (), kwargs)
        with pytest.raises(StructureNotFound) as info:
            base.with_config(MotionCacheConfig(threshold=0.05))
    exc, msg = info.value, str(info.value)
    nodes = {n.name: n for n in base.captured.graph_module.graph.nodes}
    split = nodes.get(exc.node_name)
    assert split is not None and split.target is torch.ops.aten.unflatten.int, msg
    assert f"{exc.node_name!r}" in msg, msg
    # the named split is the blocked one, not one of the gatherable splits before it (block 0's attention input
    # and gate), and what blocks it is named too
    blocking = [u for u in _reached(split, hops=3) if str(u.target) == blocker]
    assert blocking, f"named {exc.node_name!r}, which does not reach {blocker}: {msg}"
    assert any(f"{u.name!r}" in msg for u in blocking), msg


def _reached(node, hops: int) -> list:
    """The nodes `node`'s value reaches within `hops` uses."""
    seen, frontier = [], [node]
    for _ in range(hops):
        frontier = [u for n in frontier for u in n.users if u not in seen]
        seen += frontier
    return seen


# ------------------------------------------------------------------------------------- traced runtimes
def _traced_config():
    return MotionCacheConfig(threshold=0.3, warmup_steps=1, phase1_computes=0, capacity_buckets=(0.5, 1.0),
                             chunk_frames=1, temporal_voting=False, min_update_ratio=0.0, token_distance="token")


def test_onnx_runtime_matches_eager_per_frame(tmp_path):
    """Exported: the full branch's rows, merged back from frames as F * (L // F), cannot be equated with the
    state's L inside a cond, so the traced full branch runs the subset graph with every row; ORT makes the same
    decisions and gives eager's outputs."""
    import mcgraph.export

    model, kwargs, make_call = CONSTRUCTS["per_frame_modulation"]()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = mcgraph.optimize(model, _traced_config(), (), kwargs)
        assert opt.step.graphs.regroups_frames
        records = opt.record_decisions()
        want = [opt(**make_call(step)) for step in range(5)]
        info = mcgraph.export.onnx(opt, tmp_path / "per_frame.onnx", example_kwargs=kwargs)
        session = mcgraph.export.OrtSession(info.path, threads=1)
        ort_records = session.record_decisions()
        got = [session(**make_call(step)) for step in range(5)]
    assert [r.path for r in ort_records] == [r.path for r in records]
    assert {"full", "subset"} <= {r.path for r in records}
    assert max((a - b).abs().max().item() for a, b in zip(got, want)) <= 1e-5
