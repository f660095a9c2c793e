import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mcgraph.video.flow_matching import sigma_schedule
from mcgraph.video.schedule import diffusion_forcing_schedule, num_rows


def skyreels_reference(num_chunks, ar_step, steps, num_pre_ready_chunks):
    """SkyReels-V2 `generate_timestep_matrix` recurrence in its own convention (done-and-idle = steps + 1)."""
    n_iter = steps + 1
    pre = [0] * num_chunks
    for i in range(num_pre_ready_chunks):
        pre[i] = n_iter
    index, mask = [], []
    while not all(v >= n_iter - 1 for v in pre):
        new = [0] * num_chunks
        for i in range(num_chunks):
            if i == 0 or pre[i - 1] >= n_iter - 1:
                new[i] = pre[i] + 1
            else:
                new[i] = new[i - 1] - ar_step
        new = [min(max(v, 0), n_iter) for v in new]
        mask.append([a != b and a != n_iter for a, b in zip(new, pre)])
        index.append(new)
        pre = new
    return torch.tensor(index), torch.tensor(mask)


def test_skyreels_run_row_counts():
    # SkyReels-V2 DF headline run: 25 latent frames, causal_block_size 5, ar_step 5, 50 steps
    first = diffusion_forcing_schedule(25, causal_block_size=5, ar_step=5, steps=50)
    second = diffusion_forcing_schedule(25, causal_block_size=5, ar_step=5, steps=50, num_prefix_frames=5)
    assert first.num_rows == 70 and second.num_rows == 65
    assert first.update_mask.sum(0).tolist() == [50] * 5
    assert second.update_mask.sum(0).tolist() == [0, 50, 50, 50, 50]
    assert 2 * (first.num_rows + second.num_rows) == 270  # transformer calls with CFG (spec 1.1)


def test_synchronous_mode_keeps_chunks_together():
    s = diffusion_forcing_schedule(12, causal_block_size=4, ar_step=0, steps=10)
    assert s.num_rows == 10
    assert (s.step_index == torch.arange(1, 11)[:, None]).all()
    assert s.update_mask.all()


def test_short_last_chunk_and_frame_expansion():
    s = diffusion_forcing_schedule(10, causal_block_size=4, ar_step=2, steps=3)
    assert s.chunk_sizes == (4, 4, 2)
    assert s.chunk_of_frame.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert s.step_index.T.tolist() == [[1, 2, 3, 3, 3, 3, 3], [0, 0, 1, 2, 3, 3, 3], [0, 0, 0, 0, 1, 2, 3]]
    assert torch.equal(s.frame_update_mask()[:, 8:], s.update_mask[:, 2:3].expand(-1, 2))


def test_frame_timesteps_follow_input_levels():
    s = diffusion_forcing_schedule(6, causal_block_size=2, ar_step=1, steps=4, num_prefix_frames=2)
    sig = sigma_schedule(4, shift=3.0)
    t = s.frame_timesteps(sig)
    assert t.shape == (s.num_rows, 6)
    assert t[0, :2].eq(0).all() and t[0, 2:].eq(1000).all()  # prefix clean, the rest pure noise
    # a frame updated in row r is fed the level it enters the row with: one below its new index
    idx, upd = s.frame_step_index(), s.frame_update_mask()
    assert torch.allclose(t[upd], 1000 * sig[idx[upd] - 1])
    with pytest.raises(ValueError, match="sigmas"):
        s.frame_timesteps(sig[:-1])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_frames=0), "num_frames"),
        (dict(num_frames=8, causal_block_size=0), "causal_block_size"),
        (dict(num_frames=8, ar_step=-1), "ar_step"),
        (dict(num_frames=8, steps=0), "steps"),
        (dict(num_frames=8, steps=2.5), "steps"),
        (dict(num_frames=8, causal_block_size=4, num_prefix_frames=2), "num_prefix_frames"),
        (dict(num_frames=8, causal_block_size=4, num_prefix_frames=8), "num_prefix_frames"),
        (dict(num_frames=True), "num_frames"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        diffusion_forcing_schedule(**kwargs)


@st.composite
def schedules(draw):
    cbs = draw(st.integers(1, 6))
    frames = draw(st.integers(1, 24))
    n_chunks = -(-frames // cbs)
    prefix_chunks = draw(st.integers(0, n_chunks - 1))
    return dict(
        num_frames=frames,
        causal_block_size=cbs,
        ar_step=draw(st.integers(0, 8)),
        steps=draw(st.integers(1, 12)),
        num_prefix_frames=prefix_chunks * cbs,
    )


@settings(max_examples=300)
@given(schedules())
def test_schedule_properties(kw):
    s = diffusion_forcing_schedule(**kw)
    steps, ar, p = kw["steps"], kw["ar_step"], s.num_prefix_chunks
    n = s.num_chunks
    idx, upd, before = s.step_index, s.update_mask, s.input_index

    # shape, frame expansion
    assert sum(s.chunk_sizes) == kw["num_frames"]
    cbs = kw["causal_block_size"]
    assert all(c == cbs for c in s.chunk_sizes[:-1]) and s.chunk_sizes[-1] <= cbs
    assert s.frame_step_index().shape == (s.num_rows, kw["num_frames"])
    assert torch.equal(s.frame_update_mask(), upd[:, s.chunk_of_frame])

    # row count, finished at the end and not before
    assert s.num_rows == num_rows(n - p, ar, steps)
    assert (idx[-1] == steps).all()
    assert s.num_rows == 1 or (idx[-2] < steps).any()

    # every generated chunk gets exactly `steps` updates, one level at a time; prefix chunks none
    assert upd[:, p:].sum(0).eq(steps).all()
    assert not upd[:, :p].any() and idx[:, :p].eq(steps).all()
    assert torch.equal(upd, idx != before)
    assert ((idx - before) >= 0).all() and ((idx - before) <= 1).all()

    # the first generated chunk advances one per row; chunk i lags chunk i-1 by ar_step until it is done
    assert idx[:, p].tolist() == [min(r + 1, steps) for r in range(s.num_rows)]
    for i in range(p + 1, n):
        running = before[:, i - 1] < steps
        assert torch.equal(idx[running, i], (idx[running, i - 1] - ar).clamp(min=0))
        assert torch.equal(idx[~running, i], (before[~running, i] + 1).clamp(max=steps))

    # identical to SkyReels-V2's recurrence once its extra "done and idle" index is folded into `steps`
    ref_idx, ref_mask = skyreels_reference(n, ar, steps, p)
    assert torch.equal(ref_idx.clamp(max=steps), idx)
    assert torch.equal(ref_mask, upd)
