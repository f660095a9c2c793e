"""Model-quality gates (mcgraph.zoo.gates, tools/reference_gates.py): the metrics can fail, the real clips pass,
and the shipped weights' current numbers are documented."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mcgraph.zoo import gates as G
from mcgraph.zoo.scenes import PALETTE, Scene, Sprite, render

SEEDS = list(range(8))


@pytest.fixture(scope="module")
def clips():
    return G.real_clips(SEEDS, frames=G.DEFAULT_FRAMES)


def _score(video, i, clips, mode, start=None):
    scenes, real, masks = clips
    start = (4 if mode == "continuation" else 0) if start is None else start
    return G.score_video(video, real[i], masks[i], scenes[i], mode=mode, seed=i, start=start,
                         windows=[(start, 16), (16, G.DEFAULT_FRAMES)])


def _gates(videos, mode):
    return {g.name: g for g in G.gates_for(mode, G.aggregate(videos))}


# ---- metric units ------------------------------------------------------------------------------------------

def test_connected_components_are_4_connected():
    m = np.zeros((6, 6), bool)
    m[0:2, 0:2] = True  # a 2x2 block
    m[2, 2] = True  # touches the block only diagonally: separate
    m[4:6, 0:6] = True  # a bar
    lab, n = G.connected_components(m)
    assert n == 3
    assert len({int(lab[0, 0]), int(lab[2, 2]), int(lab[5, 5])}) == 3
    assert (lab[m] > 0).all() and (lab[~m] == 0).all()
    assert [b.area for b in G.blobs(m, min_size=1)] == [12, 4, 1]
    assert [b.area for b in G.blobs(m, min_size=4)] == [12, 4]


def test_component_count_equals_sprites_when_they_do_not_overlap():
    # three sprites, two of one colour, far apart, one moving: every frame has exactly three components
    sprites = (Sprite(0, 1, 6, 1.0, 1.0, -1, 0), Sprite(1, 1, 7, 22.0, 2.0, -1, 0), Sprite(2, 3, 8, 4.0, 20.0, 0, 1))
    scene = Scene(2, 4, sprites)
    video, masks = render(scene, frames=12, seed=5)
    assert (G.component_counts(video, scene) == 3).all()
    assert G.count_match(video, scene).all()
    assert G.label_colours_present(video, scene) == 1.0
    # the moving one (direction 0: +x at 1 px/frame) is tracked at its labelled velocity
    assert G.velocity_error_vs_label(video, scene) < 1e-6


def test_velocity_vs_label_handles_bounces_and_catches_wrong_direction():
    # speed 2 towards +x from x=20 (size 6): bounces at x=26 and comes back
    scene = Scene(0, 2, (Sprite(0, 0, 6, 20.0, 10.0, 0, 2),))
    video, _ = render(scene, frames=16, seed=1)
    track = G.sprite_tracks(video, scene)[0][0]
    assert np.nanmax(track[:, 1]) > 27 and track[-1, 1] < track[5, 1]  # it did bounce
    assert G.velocity_error_vs_label(video, scene) < 0.2
    # the same video scored against a label saying "moving -y": every step is wrong by ~2 * sqrt(2)
    wrong = Scene(0, 2, (replace(scene.sprites[0], direction=3),))
    assert G.velocity_error_vs_label(video, wrong) > 2.0


def test_real_clips_score_perfectly(clips):
    scenes, real, masks = clips
    for mode in G.MODES:
        videos = [_score(real[i], i, clips, mode) for i in range(len(SEEDS))]
        for v in videos:
            assert v.changing_ratio == pytest.approx(1.0)
            assert v.outside_fraction == 0.0
            assert v.background_error == pytest.approx(0.0, abs=1e-6)
            assert v.background_flicker == pytest.approx(0.0, abs=1e-6)
            assert v.count_match == 1.0 and v.count_std == 0.0
            assert v.label_colours == 1.0
            assert v.velocity_error < (1e-6 if mode == "continuation" else 0.25)  # free: clamped bounce steps
        gates = G.gates_for(mode, G.aggregate(videos))
        assert all(g.passed for g in gates), [g for g in gates if not g.passed]


def test_shuffled_frames_fail_motion_gates_but_keep_the_background(clips):
    scenes, real, masks = clips
    rng = np.random.default_rng(0)
    videos = []
    for i in range(len(SEEDS)):
        perm = np.concatenate([np.arange(4), 4 + rng.permutation(G.DEFAULT_FRAMES - 4)])
        videos.append(_score(real[i][perm], i, clips, "continuation"))
    gates = _gates(videos, "continuation")
    assert not gates["velocity error px/frame"].passed
    assert gates["velocity error px/frame"].value > 3
    assert not gates["changing-pixel ratio"].passed and gates["changing-pixel ratio"].value > 2
    for name in ("background error", "background flicker", "values outside +-1.05", "label colours present",
                 "count match (worst window)"):
        assert gates[name].passed, name


def test_noise_fails_value_background_and_change_gates(clips):
    scenes, real, masks = clips
    rng = np.random.default_rng(0)
    for mode in G.MODES:
        videos = [_score(real[i] + rng.normal(0, 0.3, real[i].shape).astype(np.float32), i, clips, mode)
                  for i in range(len(SEEDS))]
        gates = _gates(videos, mode)
        assert not gates["values outside +-1.05"].passed
        assert not gates["background flicker"].passed
        assert not gates["changing-pixel ratio"].passed
        assert not gates["count match (worst window)"].passed
        if mode == "continuation":
            assert not gates["background error"].passed


def test_frozen_video_fails_change_and_velocity(clips):
    scenes, real, masks = clips
    videos = [_score(np.repeat(real[i][3:4], G.DEFAULT_FRAMES, 0), i, clips, "continuation")
              for i in range(len(SEEDS))]
    gates = _gates(videos, "continuation")
    assert gates["changing-pixel ratio"].value == 0.0 and not gates["changing-pixel ratio"].passed
    assert not gates["velocity error px/frame"].passed


def test_wrong_background_colour_and_missing_sprites_fail_free_gates(clips):
    scenes, real, masks = clips
    videos = []
    for i, sc in enumerate(scenes):
        # the label's background pattern in another colour, and no sprites at all
        other = Scene(sc.pattern, (sc.colour + 3) % len(PALETTE), ())
        bg, _ = render(other, frames=G.DEFAULT_FRAMES, seed=i)
        videos.append(_score(bg, i, clips, "free"))
    gates = _gates(videos, "free")
    assert gates["background colour error"].value > 0.1 and not gates["background colour error"].passed
    assert gates["label colours present"].value == 0.0 and not gates["label colours present"].passed
    assert not gates["count match (worst window)"].passed
    assert not gates["velocity error px/frame"].passed  # nothing to track is a failure, not a skip
    assert gates["background flicker"].passed and gates["values outside +-1.05"].passed


def test_thresholds_sit_between_right_and_wrong_backgrounds():
    same, other = G.same_label_colour_spread(60)
    assert same.max() < G.BACKGROUND_COLOUR_MAX < other.min()
    assert G.BACKGROUND_ERROR_MAX < 0.55 * G.texture_loss_error(60).mean()  # half of ~0.10


# ---- generation ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mcgraph.zoo.causal_dit import CausalDiTConfig
    from mcgraph.zoo.scenes import LABEL_LENGTH, LABEL_VOCAB_SIZE
    from mcgraph.zoo.weights import build_reference, save_reference

    cfg = CausalDiTConfig(dim=24, num_heads=2, num_layers=2, ffn_dim=32, context_dim=16, freq_dim=16,
                          label_vocab_size=LABEL_VOCAB_SIZE, label_length=LABEL_LENGTH)
    torch.manual_seed(0)
    model, enc = build_reference(cfg)
    path = tmp_path_factory.mktemp("gates") / "tiny.safetensors"
    save_reference(path, model, enc, info={"step": 7})
    return path, model.eval(), enc.eval()


def test_batched_generation_matches_a_separate_call_where_the_noise_stream_allows(tiny, clips):
    _, model, enc = tiny
    scenes = clips[0][:2]
    cfg = replace(G.default_sampler_config(model), steps=2)
    batched = G.generate(model, enc, scenes, "free", 16, cfg, seed=0)  # one 16-frame window
    alone = G.generate(model, enc, scenes[:1], "free", 16, cfg, seed=0)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-4, rtol=1e-4)
    # sample 1 draws the noise after sample 0's: not the same as a separate call seeded with its own seed
    other = G.generate(model, enc, scenes[1:2], "free", 16, cfg, seed=1)
    assert not torch.allclose(batched[1], other[0], atol=1e-2)


def test_continuation_keeps_the_real_history(tiny, clips):
    _, model, enc = tiny
    scenes, real, _ = clips
    cfg = replace(G.default_sampler_config(model), steps=1)
    out = G.generate(model, enc, scenes[:2], "continuation", 20, cfg, seed=0, real=torch.from_numpy(real[:2, :20]))
    torch.testing.assert_close(out[:, :4], torch.from_numpy(real[:2, :4]), atol=1e-5, rtol=0)


def test_evaluate_and_tool_on_tiny_weights(tiny, tmp_path, capsys):
    path, model, enc = tiny
    report = G.evaluate(model, enc, seeds=[0, 1], frames=20, steps=1, keep_samples=True)
    assert len(report.videos) == 4 and len(report.gates) == 14
    assert not report.passed  # random weights
    json.dumps(report.to_json(), default=float)
    assert report.samples["free"].shape == (2, 20, 3, 32, 32)

    import importlib.util
    from pathlib import Path

    tool_path = Path(__file__).parents[1] / "tools" / "reference_gates.py"
    spec = importlib.util.spec_from_file_location("reference_gates", tool_path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out_json, out_png = tmp_path / "g.json", tmp_path / "s.png"
    rc = tool.main(["--weights", str(path), "--seeds", "2", "--frames", "20", "--steps", "1", "--json", str(out_json),
                    "--samples", str(out_png), "--compare", str(path)])
    text = capsys.readouterr().out
    assert rc == 1
    assert "velocity error px/frame" in text and "FAIL" in text and "(step 7)" in text
    data = json.loads(out_json.read_text())
    assert len(data) == 1 or len(data) == 2  # same file twice: one key
    assert out_png.is_file() and (tmp_path / "s_compare.png").is_file()
    with pytest.raises(SystemExit) as e:
        tool.main(["--help"])
    assert e.value.code == 0


# ---- the shipped weights: the current state ----------------------------------------------------------------

# Measured on the shipped weights (step 3939), seeds 0-7, 28 frames, gates.default_sampler_config (50 steps,
# shift 2, guidance 1, chunk 4, ar_step 4, window 16 / overlap 4), one thread; values: mean over seeds.
#   mode          ratio  outside  background  flicker  count(worst win)  velocity px/f  label colours
#   free          3.75   0.0017   0.033 (col) 0.018    0.094             4.54           0.50
#   continuation  4.38   0.0014   0.027       0.015    0.146             3.50           0.50
# The v1 weights keep the background and the value range but their sprites dissolve and flicker (too many
# changing pixels, components neither stable nor moving at the labelled velocity, half the label colours
# missing). Flip the FAIL rows to PASS when weights that pass land.
SHIPPED = {
    # (mode, gate): (passes, low, high)  -- bands around the measured mean
    ("free", "changing-pixel ratio"): (False, 2.5, 5.5),
    ("free", "values outside +-1.05"): (True, 0.0, 0.005),
    ("free", "background colour error"): (True, 0.015, 0.05),
    ("free", "background flicker"): (True, 0.01, 0.025),
    ("free", "count match (worst window)"): (False, 0.0, 0.3),
    ("free", "velocity error px/frame"): (False, 2.5, 7.0),
    ("free", "label colours present"): (False, 0.25, 0.75),
    ("continuation", "changing-pixel ratio"): (False, 3.0, 6.0),
    ("continuation", "values outside +-1.05"): (True, 0.0, 0.005),
    ("continuation", "background error"): (True, 0.015, 0.04),
    ("continuation", "background flicker"): (True, 0.008, 0.025),
    ("continuation", "count match (worst window)"): (False, 0.0, 0.35),
    ("continuation", "velocity error px/frame"): (False, 2.0, 6.0),
    ("continuation", "label colours present"): (False, 0.25, 0.75),
}


@pytest.mark.slow
def test_shipped_weights_gates():
    from mcgraph.zoo.weights import load_reference

    model, enc = load_reference()
    report = G.evaluate(model, enc, seeds=SEEDS)  # ~215 s CPU on one thread (two batched sampler calls)
    gates = {(g.mode, g.name): g for g in report.gates}
    assert set(gates) == set(SHIPPED)
    for key, (passes, low, high) in SHIPPED.items():
        g = gates[key]
        assert g.passed == passes, (key, g)
        assert low <= g.value <= high, (key, g)
    assert not report.passed
