"""The one home of uint8 conversion, grids, PNGs and GIFs."""

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_utils import images


def test_uint8_round_trip_is_exact():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(images.to_uint8(images.from_uint8(u)), u)
    assert images.from_uint8(u).min() == -1 and images.from_uint8(u).max() == 1


def test_to_gray_uint8_averages_channels():
    x = torch.stack([torch.full((4, 4), -1.0), torch.zeros(4, 4), torch.ones(4, 4)])[None]
    out = images.to_gray_uint8(x)
    assert out.shape == (1, 4, 4) and out.dtype == np.uint8
    assert (out == 128).all()  # mean 0 -> 127.5 -> rounds to 128


def test_grid_places_each_image_in_its_cell():
    x = torch.stack([torch.full((1, 3, 5), v) for v in (-1.0, 1.0, 0.0)])  # 3 images, 3 x 5
    g = images.grid(x, nrow=2, padding=1, pad_value=7)
    assert g.shape == (1 + 2 * (3 + 1), 1 + 2 * (5 + 1))
    assert (g[1:4, 1:6] == 0).all() and (g[1:4, 7:12] == 255).all() and (g[5:8, 1:6] == 128).all()
    assert g[0, 0] == 7 and (g[5:8, 7:12] == 7).all()  # make_grid fills the empty cell with the pad value


def test_grid_of_uint8_frames_and_rgb():
    frames = np.stack([np.full((2, 2), 10, np.uint8), np.full((2, 2), 20, np.uint8)])
    g = images.grid(frames, nrow=2, padding=0)
    assert g.tolist() == [[10, 10, 20, 20], [10, 10, 20, 20]]
    rgb = images.grid(torch.zeros(2, 3, 4, 4), padding=0)
    assert rgb.shape == (4, 8, 3)


def test_save_gif_frames_and_boomerang(tmp_path):
    frames = [np.full((4, 4), v, np.uint8) for v in (0, 100, 200)]
    path = images.save_gif(frames, tmp_path / "a.gif", durations_ms=50, boomerang=True)
    with Image.open(path) as im:
        assert im.n_frames == 4  # 0, 100, 200, 100


def test_save_png_round_trip(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(np.asarray(Image.open(images.save_png(arr, tmp_path / "x" / "a.png"))), arr)


def test_image_grid_tiles_pixels_exactly():
    u8 = torch.arange(5 * 16, dtype=torch.uint8).reshape(5, 1, 4, 4) * 3
    grid = images.grid(images.from_uint8(u8), nrow=3, padding=2)
    assert grid.shape == (2 * 6 + 2, 3 * 6 + 2) and grid.dtype == np.uint8
    assert (grid[2:6, 2:6] == u8[0, 0].numpy()).all()      # first row, first column
    assert (grid[8:12, 8:12] == u8[4, 0].numpy()).all()    # second row, second column
    assert (grid[8:12, 14:18] == 0).all()                  # empty slot stays background
    assert (grid[:2] == 0).all() and (grid[:, 6:8] == 0).all()  # padding


def test_image_grid_colour_and_clipping():
    x = torch.full((2, 3, 4, 4), -1.0)
    x[:, 1] = 5.0  # out of range: clipped to white
    grid = images.grid(x, nrow=2, padding=0)
    assert grid.shape == (4, 8, 3)
    assert (grid[..., 0] == 0).all() and (grid[..., 1] == 255).all()
    with pytest.raises(ValueError):
        images.grid(torch.zeros(1, 2, 4, 4), nrow=1)
