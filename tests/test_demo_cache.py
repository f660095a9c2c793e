"""`mcgraph demo --cache ...` end to end (tiny weights), and the heat-map drawing on synthetic decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mcgraph.runtime.session import StepRecord
from mcgraph.cli.main import main
from mcgraph.bench.demo_run import run_demo
from mcgraph.bench.settings import make_cache_config
from mcgraph.eval.metrics import psnr
from mcgraph.eval.heatmap import (
    COMPUTED,
    REUSED,
    HeatmapStep,
    colormap,
    mask_frames,
    recompute_frequency,
    record_grid,
    write_heatmap_gif,
    write_summary_png,
)


def run(*argv):
    return main([str(a) for a in argv])


def test_demo_motioncache_end_to_end(tiny_weights, tmp_path, capsys):
    code = run("demo", "--cache", "motioncache", "--steps", 3, "--frames", 12, "--window", 8, "--overlap", 4,
               "--out", tmp_path, "--weights", tiny_weights, "--threads", 1, "--no-progress")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "speedup vs uncached:" in out and "PSNR vs uncached:" in out
    assert "tokens computed" in out and "motioncache" in out
    # windows [0, 8) and [4, 12): 2 chunks of 4 frames, ar_step 4 capped at 3 steps -> 6 + 3 rows, CFG x2
    assert "12 frames in 2 window(s), 9 rows, 18 model calls" in out
    with Image.open(tmp_path / "demo_heatmap.gif") as gif:
        assert gif.n_frames == 9  # one per schedule row
        width, height = gif.size
        assert width >= 8 * 64 and height >= 3 * 64  # video row + cond + uncond rows, 8 frames at scale 2
    with Image.open(tmp_path / "demo_heatmap.png") as png:
        assert png.width >= 12 * 64
    with Image.open(tmp_path / "demo_strip.png") as strip:  # cached, uncached, scene rendering
        assert strip.size == (12 * 64 + 11 * 2, 3 * 64 + 2 * 2)


def test_demo_threshold_zero_matches_uncached(tiny_weights, tmp_path):
    torch.set_num_threads(1)
    logged = []
    # windows [0, 8) and [4, 10): two shapes, both captured before the timed runs
    result = run_demo(tmp_path, steps=3, frames=10, window_frames=8, overlap_frames=4, weights=tiny_weights,
                      progress=False, cache="motioncache", threshold=0.0, heatmap=False, log=logged.append)
    assert any("2 window shape(s)" in line for line in logged)
    c = result.cache
    assert c.max_abs_diff <= 1e-5 and c.psnr_db > 80
    assert c.computed_fraction == 1.0 and c.decided_fraction == 1.0
    assert set(c.calls_by_path) == {"full"}
    assert c.heatmap_gif is None and not (tmp_path / "demo_heatmap.gif").exists()


@pytest.mark.parametrize("policy", ["none", "teacache", "flowcache"])
def test_demo_other_policies(policy, tiny_weights, tmp_path):
    torch.set_num_threads(1)
    result = run_demo(tmp_path, steps=2, frames=4, window_frames=4, overlap_frames=0, weights=tiny_weights,
                      progress=False, cache=policy, log=lambda s: None)
    c = result.cache
    assert 0 < c.computed_fraction <= 1 and c.uncached_wall_time_s > 0 and c.cached_wall_time_s > 0
    assert c.heatmap_png.is_file() and c.heatmap_gif.is_file()
    if policy == "none":
        assert c.psnr_db == float("inf") or c.max_abs_diff <= 1e-5
        assert c.computed_fraction == 1.0


def test_demo_cache_usage_errors(tiny_weights, tmp_path, capsys):
    base = ("demo", "--weights", tiny_weights, "--out", tmp_path, "--steps", 1)
    assert run(*base, "--cache", "bogus") == 2
    assert run(*base, "--threshold", 0.1) == 2  # needs --cache
    assert "need a cache policy" in capsys.readouterr().err
    assert run(*base, "--cache", "flowcache", "--motion-source", "latent") == 2
    assert "motioncache" in capsys.readouterr().err
    assert run(*base, "--cache", "motioncache", "--motion-source", "bogus") == 2
    assert "motion_source" in capsys.readouterr().err
    assert run(*base, "--cache", "none", "--threshold", 0.2) == 2
    assert run(*base, "--cache", "motioncache", "--threshold", -1) == 2
    assert run(*base, "--cache", "motioncache", "--threshold", "nan") == 2
    assert run("demo", "--help") == 0
    help_text = capsys.readouterr().out
    for option in ("--cache", "--threshold", "--motion-source", "--no-heatmap"):
        assert option in help_text


def test_make_cache_config_defaults_final_timestep_from_schedule():
    from mcgraph.video.flow_matching import final_timestep

    cfg = make_cache_config("motioncache", steps=30, shift=3.0, motion_source="clean")
    assert cfg.final_timestep == pytest.approx(final_timestep(30, 3.0))
    assert cfg.motion_source == "clean" and cfg.threshold == 0.1
    assert make_cache_config("flowcache", steps=50, shift=2.0, threshold=0.15).threshold == 0.15


def test_psnr_is_the_mean_of_per_frame_psnr(monkeypatch):
    import builtins

    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1] += 0.02  # frame 0 identical (counts as 100 dB), frame 1 off by 0.02 on a peak of 2
    want = (100 + 10 * np.log10(4 / 0.0004)) / 2
    assert psnr(a, a) == float("inf")
    assert psnr(b, a) == pytest.approx(want)
    real_import = builtins.__import__

    def no_metrics(name, *args, **kwargs):  # the standalone fallback gives the same numbers
        if name.endswith("metrics"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_metrics)
    assert psnr(a, a) == float("inf")
    assert psnr(b, a) == pytest.approx(want)


# ------------------------------------------------------------------------------------------- heat maps


def _records(frames=3, h=2, w=4):
    """Two calls per row (cond, uncond), known masks: row 0 all, row 1 a checkerboard / nothing."""
    L = frames * h * w
    checker = (torch.arange(L) % 2 == 0)[None]
    return [
        StepRecord("cond", torch.ones(1, L, dtype=torch.bool), L, L, frames, "full"),
        StepRecord("uncond", torch.ones(1, L, dtype=torch.bool), L, L, frames, "full"),
        StepRecord("cond", checker, int(checker.sum()), L, frames, "subset"),
        StepRecord("uncond", torch.zeros(1, L, dtype=torch.bool), 0, L, frames, "skip"),
    ]


def test_mask_frames_colours_exactly_the_computed_tokens():
    recs = _records()
    grid = record_grid(recs[2].computed, 3, (2, 4))
    assert grid.shape == (3, 2, 4)
    img = mask_frames(grid, (8, 16))  # each token a 4 x 4 block
    assert img.shape == (3, 8, 16, 3) and img.dtype == np.uint8
    for f in range(3):
        for y in range(2):
            for x in range(4):
                block = img[f, 4 * y : 4 * y + 4, 4 * x : 4 * x + 4].reshape(-1, 3)
                want = COMPUTED if grid[f, y, x] else REUSED
                assert (block == np.array(want, np.uint8)).all()
    # token order is frame-major, then row-major over the grid
    flat = recs[2].computed[0].numpy()
    assert (grid.reshape(-1) == flat).all()
    assert not (mask_frames(np.zeros((2, 2, 4), bool)) == np.array(COMPUTED, np.uint8)).all(-1).any()


def test_record_grid_unions_the_batch_and_checks_sizes():
    m = torch.zeros(2, 8, dtype=torch.bool)
    m[0, 1] = m[1, 6] = True
    g = record_grid(m, 2, (2, 2))
    assert g.sum() == 2 and g[0, 0, 1] and g[1, 1, 0]
    assert record_grid(m, 2, (2, 2), sample=0).sum() == 1
    with pytest.raises(ValueError, match="tokens"):
        record_grid(m, 3, (2, 2))


def test_recompute_frequency_and_files(tmp_path):
    recs = _records()
    steps = []
    for row in range(2):
        pair = recs[2 * row : 2 * row + 2]
        steps.append(HeatmapStep(f"row {row}", {r.context: record_grid(r.computed, 3, (2, 4)) for r in pair},
                                 frames=np.zeros((3, 8, 16, 3), np.uint8), start_frame=1))
    freq = recompute_frequency(steps, total_frames=4)
    assert freq.shape == (4, 2, 4)
    assert np.isnan(freq[0]).all()  # frame 0 never seen
    checker = recs[2].computed[0].view(3, 2, 4).numpy()
    np.testing.assert_allclose(freq[1:], (2 + checker) / 4)  # 4 calls saw frames 1..3
    assert steps[1].fractions == {"cond": 0.5, "uncond": 0.0}

    gif = write_heatmap_gif(steps, tmp_path / "h.gif", scale=2)
    with Image.open(gif) as im:
        assert im.n_frames == 2
        im.seek(1)
        rgb = np.asarray(im.convert("RGB"))
    # second frame (frames 8 x 16 px at scale 2): the uncond row (last 16 pixel rows) shows no computed
    # token, the cond row above it (a 2 px gap) exactly the checkerboard
    is_computed = (np.abs(rgb.astype(int) - np.array(COMPUTED)).sum(-1) < 30)
    assert not is_computed[-16:].any()
    cond_row = is_computed[-34:-18, 52:]  # after the label margin
    for f in range(3):
        tokens = cond_row[:, f * 34 : f * 34 + 32][::8, ::8]  # one pixel per token (8 x 8 px each)
        assert (tokens == checker[f]).all()
    png = write_summary_png(steps, tmp_path / "s.png", video=np.zeros((4, 8, 16, 3), np.uint8), title="t")
    with Image.open(png) as im:
        assert im.width >= 4 * 32


def test_heatmaps_with_more_video_frames_than_token_frames(tmp_path):
    """A temporal patch > 1 gives fewer token frames than video frames: both rows still fit."""
    step = HeatmapStep("r", {"cond": np.ones((2, 2, 2), bool)}, frames=np.zeros((4, 4, 4, 3), np.uint8))
    with Image.open(write_heatmap_gif([step], tmp_path / "a.gif", scale=1)) as im:
        assert im.width >= 4 * 4
    with Image.open(write_summary_png([step], tmp_path / "a.png", video=np.zeros((4, 4, 4, 3), np.uint8),
                                      scale=1)) as im:
        assert im.width >= 4 * 4


def test_colormap_endpoints():
    c = colormap(np.array([0.0, 1.0, np.nan, 2.0]))
    assert tuple(c[0]) == (68, 1, 84) and tuple(c[1]) == (253, 231, 37) and tuple(c[2]) == (128, 128, 128)
    assert tuple(c[3]) == tuple(c[1])
