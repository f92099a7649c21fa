"""The latent-space explorer: render functions against hand-built generators, and the widget wiring
driven by setting slider values (no browser)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cxr_utils import explorer as wd
from cxr_utils.errors import ConfigError, RunError

SIZE = 8


class TinyZGenerator(nn.Module):
    """A DCGAN stand-in: the image is tanh(0.6 z0 * left/right pattern + 0.2 z1 * top/bottom pattern),
    so the strongest image mode is driven by z0 alone and the second by z1 alone."""

    def __init__(self, latent_dim: int = 6, channels: int = 3):
        super().__init__()
        self.latent_dim, self.channels = latent_dim, channels
        lr = torch.ones(SIZE, SIZE)
        lr[:, SIZE // 2:] = -1
        tb = torch.ones(SIZE, SIZE)
        tb[SIZE // 2:] = -1
        weight = torch.zeros(SIZE * SIZE, latent_dim)
        weight[:, 0] = 0.6 * lr.flatten()
        weight[:, 1] = 0.2 * tb.flatten()
        self.fc = nn.Linear(latent_dim, SIZE * SIZE, bias=False)
        self.fc.weight.data.copy_(weight)

    def forward(self, z):
        x = torch.tanh(self.fc(z.flatten(1))).view(-1, 1, SIZE, SIZE)
        return x.expand(-1, self.channels, -1, -1)


class TinyMapping(nn.Module):
    """w = scale * z + offset; w_avg = offset, so truncation has a known centre."""

    def __init__(self, scale, num_ws):
        super().__init__()
        self.num_ws = num_ws
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("w_avg", torch.linspace(-0.5, 0.5, len(scale)))
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z, truncation_psi=1.0):
        w = z * self.scale + self.w_avg
        w = self.w_avg + truncation_psi * (w - self.w_avg)
        return w[:, None].repeat(1, self.num_ws, 1)


class TinySynthesis(nn.Module):
    """Layer l paints rows 2l and 2l+1, so which layer a code reached is visible in the image."""

    def __init__(self, w_dim, num_ws):
        super().__init__()
        self.proj = torch.randn(num_ws, w_dim, SIZE, generator=torch.Generator().manual_seed(1)) / w_dim**0.5

    def forward(self, ws, noise_mode="random"):
        assert noise_mode == "const"
        rows = torch.tanh(torch.einsum("nld,ldx->nlx", ws, self.proj))  # (N, L, SIZE)
        return rows.repeat_interleave(SIZE // ws.shape[1], dim=1)[:, None]


class TinyStyleGAN(nn.Module):
    def __init__(self, scale=(3.0, 2.0, 1.0, 0.5), num_ws=4):
        super().__init__()
        self.latent_dim, self.channels, self.num_ws = len(scale), 1, num_ws
        self.mapping = TinyMapping(scale, num_ws)
        self.synthesis = TinySynthesis(len(scale), num_ws)


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _png(widget_image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(bytes(widget_image.value))))


def _shown(explorer) -> np.ndarray:
    """The widget's image at its native resolution (the display copy is enlarged by whole pixels)."""
    img = _png(explorer.image)
    step = img.shape[0] // SIZE
    return img[::step, ::step]


def _descendants(box):
    for child in getattr(box, "children", ()):
        yield child
        yield from _descendants(child)


# ------------------------------------------------------------------------------------ plain functions


def test_render_averages_channels_into_uint8():
    class Constant(nn.Module):
        latent_dim, channels = 2, 3

        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.tensor([-1.0, -1.0, 1.0]))

        def forward(self, z):
            return self.p.view(1, 3, 1, 1).expand(z.shape[0], 3, 5, 4)

    G = Constant()
    one = wd.render(G, torch.zeros(2))
    many = wd.render(G, torch.zeros(3, 2))
    assert one.dtype == np.uint8 and one.shape == (5, 4) and many.shape == (3, 5, 4)
    assert (one == round((1 - 1 / 3) * 127.5)).all()  # mean of (-1, -1, 1) mapped from [-1, 1]


def test_render_uses_eval_mode_and_restores_it():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Unflatten(1, (4, 1, 1)), nn.Upsample(scale_factor=4), nn.BatchNorm2d(4),
                      nn.Conv2d(4, 1, 1), nn.Tanh())
    G.latent_dim, G.channels = 4, 1
    G[2].running_mean.fill_(0.3)
    z = torch.randn(4)
    G.train()
    out = wd.render(G, z)
    assert G.training
    G.eval()
    expected = ((G(z[None])[0, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(out, expected)


def test_seed_code_is_deterministic_and_maps_through_w():
    G, S = TinyZGenerator(), TinyStyleGAN()
    assert torch.equal(wd.seed_code(G, 3), wd.seed_code(G, 3))
    assert not torch.equal(wd.seed_code(G, 3), wd.seed_code(G, 4))
    w = wd.seed_code(S, 3)
    z = torch.randn(1, S.latent_dim, generator=torch.Generator().manual_seed(3))[0]
    assert torch.allclose(w, z * S.mapping.scale + S.mapping.w_avg)
    assert wd.latent_space(G).kind == "z" and wd.latent_space(S).kind == "w"


def test_truncation_zero_collapses_every_seed_to_the_centre():
    for G, centre in [(TinyZGenerator(), torch.zeros(6)), (TinyStyleGAN(), TinyStyleGAN().mapping.w_avg)]:
        codes = [wd.truncate(G, wd.seed_code(G, s), 0.0) for s in (0, 1)]
        assert torch.allclose(codes[0], centre) and torch.allclose(codes[1], centre)
        half = wd.truncate(G, wd.seed_code(G, 0), 0.5)
        assert torch.allclose(half, (wd.seed_code(G, 0) + centre) / 2)


def test_slerp_endpoints_orthogonal_midpoint_and_parallel_fallback():
    e0, e1 = torch.eye(3)[0], torch.eye(3)[1]
    out = wd.slerp(e0, e1, [0.0, 0.5, 1.0])
    assert torch.allclose(out[0], e0) and torch.allclose(out[2], e1, atol=1e-6)
    assert torch.allclose(out[1], (e0 + e1) / 2**0.5)
    third = wd.slerp(e0, e1, 1 / 3)
    assert torch.allclose(third, torch.tensor([np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0]).float())
    assert torch.allclose(wd.slerp(e0, 2 * e0, 0.5), 1.5 * e0)


def test_z_directions_recover_the_generating_axes():
    d = wd.latent_directions(TinyZGenerator(), n_samples=400, k=3, seed=0)
    assert d.components.shape == (3, 6) and d.mean.shape == (6,)
    assert torch.allclose(d.components.norm(dim=1), torch.ones(3))
    assert abs(_cos(d.components[0], torch.eye(6)[0])) > 0.95
    assert abs(_cos(d.components[1], torch.eye(6)[1])) > 0.95
    ev = d.explained_variance
    assert ev[0] > ev[1] > ev[2] and ev.sum() <= 1 + 1e-6 and ev[:2].sum() > 0.99


def test_w_directions_match_the_mapping_scales():
    scale = torch.tensor([3.0, 2.0, 1.0, 0.5])
    d = wd.latent_directions(TinyStyleGAN(), n_samples=2000, k=2, seed=0)
    for i in range(2):
        assert abs(_cos(d.components[i], torch.eye(4)[i])) > 0.99
    assert torch.allclose(d.components.norm(dim=1), scale[:2], rtol=0.06)  # one std of w per step
    assert torch.allclose(d.explained_variance, scale[:2] ** 2 / (scale**2).sum(), rtol=0.1)
    assert torch.allclose(d.mean, TinyStyleGAN().mapping.w_avg, atol=0.15)


def test_direction_walk_moves_the_code_along_each_component():
    G = TinyZGenerator()
    components = torch.eye(6)[:2]
    code = wd.seed_code(G, 0)
    walk = wd.direction_walk(G, code, components, [-1.0, 0.0, 2.0])
    assert walk.shape == (2, 3, SIZE, SIZE)
    assert np.array_equal(walk[1, 1], wd.render(G, code))
    assert np.array_equal(walk[0, 2], wd.render(G, code + 2 * components[0]))
    assert np.array_equal(walk[1, 0], wd.render(G, code - components[1]))


def test_style_mixing_takes_coarse_layers_from_code_and_fine_from_mix():
    S = TinyStyleGAN()
    a, b = wd.seed_code(S, 0), wd.seed_code(S, 1)
    img_a, img_b = wd.render(S, a), wd.render(S, b)
    mixed = wd.render(S, a, mix=b, crossover=1)
    rows = SIZE // S.num_ws
    assert np.array_equal(mixed[:rows], img_a[:rows]) and np.array_equal(mixed[rows:], img_b[rows:])
    assert np.array_equal(wd.render(S, a, mix=b, crossover=S.num_ws), img_a)
    assert np.array_equal(wd.render(S, a, mix=b, crossover=0), img_b)
    with pytest.raises(ConfigError, match="crossover"):
        wd.render(S, a, mix=b, crossover=S.num_ws + 1)
    with pytest.raises(ConfigError, match="StyleGAN2"):
        wd.render(TinyZGenerator(), torch.zeros(6), mix=torch.zeros(6), crossover=1)


@pytest.mark.parametrize("make", [TinyZGenerator, TinyStyleGAN])
def test_interpolation_strip_runs_from_seed_a_to_seed_b(make):
    G = make()
    strip = wd.interpolation_strip(G, 2, 7, steps=5)
    assert strip.shape == (5, SIZE, SIZE) and strip.dtype == np.uint8
    assert np.array_equal(strip[0], wd.render(G, wd.seed_code(G, 2)))
    assert np.array_equal(strip[-1], wd.render(G, wd.seed_code(G, 7)))
    assert len({f.tobytes() for f in strip}) == 5


def test_w_strip_is_a_straight_line():
    S = TinyStyleGAN()
    mid = wd.interpolation_strip(S, 2, 7, steps=3)[1]
    assert np.array_equal(mid, wd.render(S, (wd.seed_code(S, 2) + wd.seed_code(S, 7)) / 2))


def test_montage_places_frames_with_gaps():
    frames = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    grid = wd.montage(frames, pad=1, pad_value=255)
    assert grid.shape == (2 * 2 + 1, 3 * 2 + 2)
    assert np.array_equal(grid[3:5, 6:8], frames[1, 2]) and (grid[2] == 255).all()
    assert wd.montage(frames[0], pad=1).shape == (2, 8)


def _montage_by_hand(frames, pad, pad_value):
    """The strip layout written out pixel by pixel: gaps between tiles, none around the edge."""
    tiles = frames[None] if frames.ndim == 3 else frames
    rows, cols, h, w = tiles.shape
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), pad_value, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = tiles[r, c]
    return out


@pytest.mark.parametrize("shape, pad, pad_value", [((5, 7, 6), 2, 255), ((2, 3, 4, 5), 1, 255),
                                                   ((3, 4, 4), 0, 255), ((2, 2, 3, 3), 3, 0)])
def test_montage_on_images_grid_matches_the_hand_layout(shape, pad, pad_value):
    frames = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    assert np.array_equal(wd.montage(frames, pad=pad, pad_value=pad_value),
                          _montage_by_hand(frames, pad, pad_value))


def test_strip_png_and_gif_round_trip(tmp_path):
    from PIL import ImageSequence

    frames = wd.interpolation_strip(TinyZGenerator(), 0, 1, steps=4)
    png = wd.save_strip_png(frames, tmp_path / "a" / "strip.png", pad=2)
    back = np.asarray(Image.open(png))
    assert back.shape == (SIZE, 4 * SIZE + 3 * 2)
    assert np.array_equal(back[:, SIZE + 2: 2 * SIZE + 2], frames[1])
    with Image.open(wd.save_strip_gif(frames, tmp_path / "strip.gif")) as im:
        gif = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)]
    assert len(gif) == 4 + 2  # forward, then back without repeating the ends
    assert np.array_equal(gif[0], frames[0])


def test_explained_variance_and_walk_figures():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G = TinyZGenerator()
    d = wd.latent_directions(G, n_samples=64, k=3)
    fig = wd.figure_explained_variance(d)
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert np.allclose(bars, d.explained_variance.numpy() * 100)
    walk = wd.direction_walk(G, wd.seed_code(G, 0), d.components, [-2, 0, 2])
    fig2 = wd.figure_direction_walk(walk, [-2, 0, 2], d)
    assert [t.get_text() for t in fig2.axes[0].get_xticklabels()] == ["-2.0", "+0.0", "+2.0"]
    plt.close(fig)
    plt.close(fig2)


# ---------------------------------------------------------------------------------------- the widget


@pytest.fixture
def z_explorer(tmp_path):
    return wd.LatentExplorer(TinyZGenerator(), n_components=3, n_samples=64, seed=0, seed_b=1,
                             out_dir=tmp_path / "out")


def test_explorer_shows_the_seed_and_follows_the_sliders(z_explorer):
    ex, G = z_explorer, z_explorer.space.G
    assert np.array_equal(_shown(ex), wd.render(G, wd.seed_code(G, 0)))
    ex.seed.value = 5
    assert np.array_equal(_shown(ex), wd.render(G, wd.seed_code(G, 5)))
    before = bytes(ex.image.value)
    ex.sliders[0].value = 2.0
    assert bytes(ex.image.value) != before
    expected = wd.render(G, wd.seed_code(G, 5) + 2.0 * ex.directions.components[0])
    assert np.array_equal(_shown(ex), expected)
    ex.sliders[2].value = -1.0
    ex.reset_button.click()
    assert all(s.value == 0 for s in ex.sliders) and bytes(ex.image.value) == before


def test_explorer_layout_and_controls(z_explorer):
    import ipywidgets as W

    ex = z_explorer
    parts = list(_descendants(ex.widget))
    for w in [ex.seed, *ex.sliders, ex.image, ex.seed_b, ex.strip, ex.export_button, ex.out_dir]:
        assert w in parts
    assert len(ex.sliders) == 3 and all(not s.continuous_update for s in ex.sliders)
    assert ex.truncation is None and ex.crossover is None  # z-space: no truncation or mixing
    # seeds are typed into bounded text boxes, not picked on a 10,000-step slider
    assert isinstance(ex.seed, W.BoundedIntText) and isinstance(ex.seed_b, W.BoundedIntText)
    assert (ex.seed.min, ex.seed.max) == (0, 9999) and not ex.seed.continuous_update
    # one label width for every slider and the seed box, so their tracks start at one x
    widths = {w.style.description_width for w in [ex.seed, *ex.sliders]}
    assert len(widths) == 1 and widths != {"initial"}
    assert ex.export_button.layout.width == "auto"


def test_explorer_strip_follows_second_seed_and_exports(z_explorer, tmp_path):
    ex = z_explorer
    before = bytes(ex.strip.value)
    ex.seed_b.value = 9
    assert bytes(ex.strip.value) != before
    ex.export_button.click()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["interp_0000_0009.gif", "interp_0000_0009.png",
                                                    "seed_0000.png"]
    strip = np.asarray(Image.open(out / "interp_0000_0009.png"))
    assert np.array_equal(strip, wd.montage(wd.interpolation_strip(ex.space.G, 0, 9, steps=8)))
    assert "interp_0000_0009.gif" in ex.status.value


def test_w_explorer_truncation_and_mixing_sliders(tmp_path):
    S = TinyStyleGAN()
    ex = wd.LatentExplorer(S, n_components=2, n_samples=64, seed=0, seed_b=1, out_dir=tmp_path)
    assert all(not w.continuous_update for w in [ex.truncation, ex.mix_seed, ex.crossover])
    assert ex.crossover.value == S.num_ws  # no mixing until asked for
    ex.truncation.value = 0.0
    assert np.array_equal(_shown(ex), wd.render(S, S.mapping.w_avg))
    ex.truncation.value = 1.0
    ex.mix_seed.value = 3
    ex.crossover.value = 2
    rows = 2 * SIZE // S.num_ws
    shown = _shown(ex)
    assert np.array_equal(shown[:rows], wd.render(S, wd.seed_code(S, 0))[:rows])
    assert np.array_equal(shown[rows:], wd.render(S, wd.seed_code(S, 3))[rows:])


def test_explorer_for_missing_run_names_the_training_notebook(tmp_path):
    with pytest.raises(RunError, match="02_dcgan_training"):
        wd.explorer_for_run(tmp_path / "nope")


def test_real_dcgan_generator_renders_and_explores(tmp_path):
    dcgan = pytest.importorskip("cxr_utils.models.dcgan")
    torch.manual_seed(0)
    G = dcgan.Generator(latent_dim=16, channels=3, base=8, image_size=64)
    assert wd.render(G, wd.seed_code(G, 0)).shape == (64, 64)
    ex = wd.LatentExplorer(G, n_components=2, n_samples=32, out_dir=tmp_path)
    before = bytes(ex.image.value)
    ex.sliders[1].value = 3.0
    assert bytes(ex.image.value) != before


def test_explorer_for_run_loads_the_saved_generator(tmp_path):
    runs = pytest.importorskip("cxr_utils.runs")
    train = pytest.importorskip("cxr_utils.train")
    from cxr_utils.models import build_generator

    cfg = train.make_config("lungcancer-dcgan", image_size=16, latent_dim=8, base=4, channels=1)
    torch.manual_seed(0)
    G = build_generator(cfg)
    runs.atomic_save(runs.network_payload(cfg, G, None, kimg=0.0, epoch=0), tmp_path / runs.NETWORK_FINAL)
    ex = wd.explorer_for_run(tmp_path, n_components=2, n_samples=32, out_dir=tmp_path / "x")
    assert ex.space.kind == "z" and len(ex.sliders) == 2
    assert np.array_equal(_png(ex.image)[::16, ::16], wd.render(G, wd.seed_code(G, 0)))


def test_real_stylegan2_generator_explores_w_space(tmp_path):
    sg2 = pytest.importorskip("cxr_utils.models.stylegan2")
    torch.manual_seed(0)
    G = sg2.Generator(z_dim=8, w_dim=8, image_size=16, channels=1, mapping_layers=1, channel_base=64,
                      channel_max=8)
    space = wd.latent_space(G)
    assert space.kind == "w" and space.num_layers == G.num_ws
    a, b = wd.seed_code(G, 0), wd.seed_code(G, 1)
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    G.eval()
    with torch.no_grad():
        direct = G.synthesis(G.mapping(z), noise_mode="const")
    assert np.array_equal(wd.render(G, a), ((direct[0, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy())
    assert not np.array_equal(wd.render(G, a, mix=b, crossover=2), wd.render(G, a))
    ex = wd.LatentExplorer(G, n_components=2, n_samples=32, out_dir=tmp_path)
    before = bytes(ex.image.value)
    ex.crossover.value = 1
    assert bytes(ex.image.value) != before


def test_explorer_for_a_stylegan2_run_folder_has_truncation_and_mixing(tmp_path):
    """Notebook 05 on a StyleGAN2 run: the run's config rebuilds the generator, explored in W."""
    runs = pytest.importorskip("cxr_utils.runs")
    train = pytest.importorskip("cxr_utils.train")
    from cxr_utils.models import build_generator

    cfg = train.make_config("stylegan2-cpu-small", sg2_arch="tiny", image_size=16, latent_dim=8, channels=1)
    torch.manual_seed(0)
    G = build_generator(cfg)
    runs.atomic_save(runs.network_payload(cfg, G, G, kimg=0.0, epoch=0), tmp_path / runs.NETWORK_FINAL)
    ex = wd.explorer_for_run(tmp_path, n_components=2, n_samples=32, out_dir=tmp_path / "x")
    assert ex.space.kind == "w" and ex.truncation is not None and ex.crossover is not None
    before = bytes(ex.image.value)
    ex.truncation.value = 0.0
    assert bytes(ex.image.value) != before
