import numpy as np
import pytest
import torch
from PIL import Image

from mcgraph.eval.video_io import save_gif, save_strip, to_uint8_frames


def ramp(frames=5, h=6, w=8):
    v = torch.zeros(frames, 3, h, w)
    for f in range(frames):
        v[f] = -1 + 2 * f / (frames - 1)  # black -> white
    return v


def test_to_uint8_frames():
    px = to_uint8_frames(torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(4, 1, 1, 1).expand(4, 3, 1, 1))
    assert px.dtype == np.uint8 and px.shape == (4, 1, 1, 3)
    assert px[:, 0, 0, 0].tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match="frames, 3, height, width"):
        to_uint8_frames(np.zeros((2, 4, 4)))


def test_gif(tmp_path):
    path = save_gif(ramp(), tmp_path / "sub" / "v.gif", scale=4, fps=10)
    with Image.open(path) as im:
        assert im.size == (32, 24) and im.n_frames == 5
        im.seek(4)
        assert im.convert("RGB").getpixel((0, 0)) == (255, 255, 255)


def test_strip_rows_for_comparison(tmp_path):
    a, b = ramp(5), ramp(3)
    path = save_strip([a, b], tmp_path / "s.png", scale=2, gap=1)
    with Image.open(path) as im:
        assert im.size == (5 * 16 + 4, 2 * 12 + 1)
        rgb = np.asarray(im.convert("RGB"))
    assert (rgb[0, 0] == 0).all()  # row 0, frame 0: black
    assert (rgb[-1, -1] == 255).all()  # row 1 has no 5th frame: background
    path = save_strip(torch.stack([a, a]), tmp_path / "b.png", scale=1, gap=0, max_frames=2)
    with Image.open(path) as im:
        assert im.size == (2 * 8, 2 * 6)
    with pytest.raises(ValueError, match="same frame size"):
        save_strip([ramp(h=6), ramp(h=4)], tmp_path / "x.png")
