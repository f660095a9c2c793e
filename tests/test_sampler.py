import contextlib

import pytest
import torch

from mcgraph.video.flow_matching import sigma_schedule
from mcgraph.video.sampler import SamplerConfig, expected_rows, plan_segments, sample
from mcgraph.video.schedule import diffusion_forcing_schedule
from mcgraph.zoo.causal_dit import CausalVideoDiT


def analytic_model(x, t, target):
    """The exact velocity towards `target` (the conditioning): v = (x - x0) / sigma = noise - x0 on the path."""
    s = (t / 1000.0).to(x.dtype)[:, None, :, None, None]
    return torch.where(s > 0, (x - target) / s.clamp(min=1e-12), torch.zeros_like(x))


def zero_model(x, t, c):
    return torch.zeros_like(x)


class Recorder:
    """Counts calls and records what the sampler hands the model, and which cache context it ran in."""

    def __init__(self, fn=analytic_model):
        self.fn = fn
        self.calls, self.context, self.log, self.events = 0, None, [], []

    def __call__(self, x, t, c):
        self.calls += 1
        self.log.append((self.context, x.clone(), t.clone()))
        return self.fn(x, t, c)

    @contextlib.contextmanager
    def cache_context(self, name):
        self.events.append(name)
        self.context = name
        try:
            yield
        finally:
            self.context = None

    def reset_cache(self):
        self.events.append("reset")


def target(shape, seed=5):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def tiny_dit(tiny_dit_config):
    torch.manual_seed(0)
    return CausalVideoDiT(tiny_dit_config).eval()


def test_same_seed_same_output_different_seed_differs(tiny_dit, tiny_dit_config):
    shape = (1, 4, 6, 4, 4)
    cond = torch.randn(1, 3, tiny_dit_config.context_dim, generator=torch.Generator().manual_seed(1))
    kw = dict(steps=3, causal_block_size=2, ar_step=1, guidance_scale=3.0, shift=2.0)
    a = sample(tiny_dit, shape, cond, torch.zeros_like(cond), seed=7, **kw)
    b = sample(tiny_dit, shape, cond, torch.zeros_like(cond), seed=7, **kw)
    c = sample(tiny_dit, shape, cond, torch.zeros_like(cond), seed=8, **kw)
    g = sample(tiny_dit, shape, cond, torch.zeros_like(cond), generator=torch.Generator().manual_seed(7), **kw)
    assert a.latent.shape == shape and torch.isfinite(a.latent).all()
    assert torch.equal(a.latent, b.latent) and torch.equal(a.latent, g.latent)
    assert not torch.allclose(a.latent, c.latent)


@pytest.mark.parametrize(
    "frames, cbs, ar_step, steps, shift", [(10, 3, 2, 7, 3.0), (8, 2, 0, 5, 1.0), (5, 1, 9, 4, 8.0)]
)
def test_exact_velocity_reproduces_the_target(frames, cbs, ar_step, steps, shift):
    x0 = target((2, 3, frames, 4, 4))
    r = sample(analytic_model, x0.shape, x0, steps=steps, shift=shift, causal_block_size=cbs, ar_step=ar_step)
    assert torch.allclose(r.latent, x0, atol=1e-5), (r.latent - x0).abs().max()


def test_every_frame_stays_on_its_flow_path():
    """After each row every frame is (1 - s) x0 + s * noise at the noise level its chunk has reached,
    and the model is fed t = 1000 * the level the frame entered the row with."""
    frames, cbs, ar, steps, shift = 7, 2, 2, 5, 2.0
    x0 = target((1, 2, frames, 3, 3))
    noise = sample(zero_model, x0.shape, None, steps=steps, causal_block_size=cbs, ar_step=ar, seed=3).latent
    sched = diffusion_forcing_schedule(frames, cbs, ar, steps)
    sig = sigma_schedule(steps, shift)
    seen = []

    def on_row(info):
        s = info.sigma.to(torch.float32)[None, None, :, None, None]
        expected = (1 - s) * x0 + s * noise
        assert torch.allclose(info.latent, expected, atol=1e-5), (info.row, (info.latent - expected).abs().max())
        assert torch.allclose(info.sigma, sig[sched.frame_step_index()[info.row]])
        assert torch.equal(info.update_mask, sched.frame_update_mask()[info.row])
        seen.append(info.timesteps[0].clone())

    r = sample(analytic_model, x0.shape, x0, steps=steps, shift=shift, causal_block_size=cbs, ar_step=ar, seed=3,
               on_row=on_row)
    assert len(seen) == sched.num_rows == r.rows
    assert torch.allclose(torch.stack(seen), sched.frame_timesteps(sig).float())


def test_cfg_combines_cond_and_uncond():
    # cond pulls to x0, uncond to x1: v = v_u + g (v_c - v_u) is the exact velocity to x1 + g (x0 - x1)
    x0, x1 = target((1, 2, 6, 3, 3), 1), target((1, 2, 6, 3, 3), 2)
    g = 2.5
    r = sample(analytic_model, x0.shape, x0, x1, guidance_scale=g, steps=4, causal_block_size=2, ar_step=1)
    assert torch.allclose(r.latent, x1 + g * (x0 - x1), atol=1e-4)


@pytest.mark.parametrize("negative, g, per_row", [(True, 4.0, 2), (True, 1.0, 1), (False, 4.0, 1)])
def test_model_calls_are_counted_honestly(negative, g, per_row):
    x0 = target((1, 2, 1, 2, 2))  # one frame: broadcasts over any window
    m = Recorder()
    cfg = SamplerConfig(steps=3, causal_block_size=2, ar_step=2, guidance_scale=g, window_frames=6, overlap_frames=2)
    r = sample(m, (1, 2, 9, 2, 2), x0, x0 if negative else None, config=cfg)
    # windows [0, 6) and [4, 9): 3 chunks, then 1 prefix chunk + 2 new ones (the last one frame long)
    assert r.rows == expected_rows(9, cfg) == (2 * 2 + 3) + (1 * 2 + 3)
    assert r.model_calls == m.calls == per_row * r.rows
    assert r.wall_time_s > 0


def test_cache_protocol_hooks():
    x0 = target((1, 2, 1, 2, 2))
    m = Recorder()
    r = sample(m, (1, 2, 10, 2, 2), x0, -x0, guidance_scale=2.0, steps=2, causal_block_size=2, ar_step=1,
               window_frames=6, overlap_frames=2)
    assert len(r.segments) == 2
    # one reset per window, then cond/uncond alternating, every call inside its context
    assert m.events[0] == "reset" and m.events.count("reset") == 2
    calls = [e for e in m.events if e != "reset"]
    assert calls == ["cond", "uncond"] * r.rows
    assert [ctx for ctx, _, _ in m.log] == calls


def test_plain_callable_needs_no_hooks():
    x0 = target((1, 1, 4, 2, 2))
    assert torch.allclose(sample(analytic_model, x0.shape, x0, steps=2, causal_block_size=2).latent, x0, atol=1e-5)


def test_plan_segments():
    assert [(s.start, s.length, s.prefix) for s in plan_segments(28, 16, 4)] == [(0, 16, 0), (12, 16, 4)]
    assert [(s.start, s.length, s.prefix) for s in plan_segments(19, 10, 4)] == [(0, 10, 0), (6, 10, 4), (12, 7, 4)]
    assert [(s.start, s.length) for s in plan_segments(8, 16, 4)] == [(0, 8)]
    assert [(s.start, s.length) for s in plan_segments(8, None, 0)] == [(0, 8)]
    # SkyReels-V2 long video: 45 latent frames, base 25, overlap 5 -> 2 windows (its n_iter)
    assert len(plan_segments(45, 25, 5)) == 2


def test_long_video_continues_from_the_prefix():
    frames, window, overlap, cbs = 19, 10, 4, 2
    # a frame-independent target, so every window, whatever its offset, denoises towards the same x0
    x0 = target((1, 2, 1, 3, 3))
    m = Recorder()
    windows = {}

    def on_row(info):
        windows.setdefault(info.segment.index, []).append((info.segment, info.latent.clone()))

    r = sample(m, (1, 2, frames, 3, 3), x0, steps=4, causal_block_size=cbs, ar_step=1, window_frames=window,
               overlap_frames=overlap, on_row=on_row, seed=1)
    assert r.latent.shape == (1, 2, frames, 3, 3)
    assert [(s.start, s.length, s.prefix) for s in r.segments] == [(0, 10, 0), (6, 10, 4), (12, 7, 4)]
    assert torch.allclose(r.latent, x0.expand_as(r.latent), atol=1e-5)
    for k in (1, 2):
        for seg, latent in windows[k]:
            # the clean history is the previous output, untouched in every row, and it is what the output keeps
            assert torch.equal(latent[:, :, :overlap], r.latent[:, :, seg.start : seg.start + overlap])
    # the model sees the history slightly re-noised (factor 0.02) at t = 20, fresh noise each row
    calls_w0 = len(windows[0])
    ctx, x_in, t_in = m.log[calls_w0]
    prefix_clean = r.latent[:, :, 6:10]
    assert t_in[:, :overlap].eq(20).all() and t_in[:, overlap:].eq(1000).all()
    diff = (x_in[:, :, :overlap] - prefix_clean).abs()
    assert 0 < diff.max() < 0.2
    assert not torch.equal(m.log[calls_w0][1][:, :, :overlap], m.log[calls_w0 + 1][1][:, :, :overlap])


def test_addnoise_zero_feeds_the_clean_prefix_at_t0():
    x0 = target((1, 1, 1, 2, 2))
    m = Recorder()
    r = sample(m, (1, 1, 6, 2, 2), x0, steps=2, causal_block_size=2, window_frames=4, overlap_frames=2,
               addnoise_condition=0)
    ctx, x_in, t_in = m.log[r.rows - 2]  # first call of the second window (2 rows per window)
    assert t_in[:, :2].eq(0).all()
    assert torch.equal(x_in[:, :, :2], r.latent[:, :, 2:4])


def test_progress_bar_counts_rows():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    x0 = target((1, 1, 6, 2, 2))
    r = sample(analytic_model, x0.shape, x0, steps=3, causal_block_size=2, ar_step=1, progress=bar)
    assert bar.n == r.rows
    sample(analytic_model, x0.shape, x0, steps=1, causal_block_size=2, progress=True)  # a real tqdm bar


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(overlap_frames=3, causal_block_size=2, window_frames=8), "overlap_frames"),
        (dict(overlap_frames=8, causal_block_size=2, window_frames=8), "overlap_frames"),
        (dict(steps=0), "steps"),
        (dict(shift=0.0), "shift"),
        (dict(window_frames=0), "window_frames"),
        (dict(addnoise_condition=-1), "addnoise_condition"),
    ],
)
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(zero_model, (1, 1, 8, 2, 2), None, **kwargs)


def test_bad_calls():
    with pytest.raises(TypeError, match="stepz"):
        sample(zero_model, (1, 1, 4, 2, 2), None, stepz=3)
    with pytest.raises(ValueError, match="shape"):
        sample(zero_model, (1, 4, 2, 2), None)
    with pytest.raises(ValueError, match="model returned shape"):
        sample(lambda x, t, c: x[:, :, :1], (1, 1, 4, 2, 2), None, steps=1)


def test_only_advancing_frames_take_a_step():
    # garbage velocity on finished (t = 0) frames must not leak into them: they are not stepped at all
    def model(x, t, c):
        v = analytic_model(x, t, c)
        return torch.where((t == 0)[:, None, :, None, None], torch.full_like(v, float("nan")), v)

    x0 = target((1, 2, 8, 2, 2))
    r = sample(model, x0.shape, x0, steps=3, causal_block_size=2, ar_step=2)
    assert torch.allclose(r.latent, x0, atol=1e-5)
