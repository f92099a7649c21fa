"""Image figures: grids are exact pixel tilings; each figure shows what its data says and saves when asked."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from cxr_utils import plots
from cxr_utils.data import CXRDataset, DataReport
from cxr_utils.images import from_uint8, grid


def _dataset(labels: list[int], class_names: list[str], size: int = 8, channels: int = 1) -> CXRDataset:
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (len(labels), 1, size, size), generator=g, dtype=torch.uint8)
    images = from_uint8(u8).repeat(1, channels, 1, 1)
    ids = [f"img{i}" for i in range(len(labels))]
    counts = {c: labels.count(i) for i, c in enumerate(class_names)}
    report = DataReport(source="test", files_found=len(labels), decoded=len(labels), class_counts=counts,
                        original_sizes={f"{size}x{size}": len(labels)}, bit_depths={"8": len(labels)})
    return CXRDataset(images=images, labels=torch.tensor(labels), class_names=class_names, ids=ids,
                      md5s=ids, groups=ids, report=report, source="test")


def test_montage_by_class_rows_and_empty_class(tmp_path):
    ds = _dataset([0, 1, 0, 0, 1], ["normal", "nodule", "empty"])
    fig = plots.montage_by_class(ds, per_class=2, path=tmp_path / "montage.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    first = fig.axes[0].images[0].get_array()
    assert (np.asarray(first) == grid(ds.images[[0, 2]], nrow=2)).all()
    assert fig.axes[0].images[0].get_clim() == (0, 255)
    assert not fig.axes[2].images and "n=0" in fig.axes[2].get_ylabel()
    assert Image.open(tmp_path / "montage.png").size[0] > 100


def test_mean_image_by_class_and_difference():
    ds = _dataset([0, 1, 0, 1], ["normal", "nodule"])
    fig = plots.mean_image_by_class(ds)
    assert len(fig.axes) == 4  # two means, the difference and its colour bar
    mean0 = (ds.images[[0, 2], 0].mean(0).numpy() * 0.5 + 0.5) * 255
    assert np.allclose(fig.axes[0].images[0].get_array(), mean0, atol=1e-4)
    diff = (ds.images[[1, 3], 0].mean(0) - ds.images[[0, 2], 0].mean(0)).numpy() * 0.5 * 255
    assert np.allclose(fig.axes[2].images[0].get_array(), diff, atol=1e-4)
    assert len(plots.mean_image_by_class(_dataset([0, 1, 2], ["a", "b", "c"])).axes) == 3


def test_intensity_histograms_one_density_per_class(tmp_path):
    ds = _dataset([0, 1, 1], ["a", "b"])
    fig = plots.intensity_histograms(ds, path=tmp_path / "h.png")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and (tmp_path / "h.png").exists()
    for line in lines:
        assert np.isclose(np.sum(line.get_ydata()), 1.0)  # a density over unit-wide bins


def test_class_balance_bar_heights():
    ds = _dataset([0, 1, 1, 1, 2], ["x", "y", "z"])
    fig = plots.class_balance(ds)
    assert [p.get_height() for p in fig.axes[0].patches] == [1, 3, 1]


def test_size_distribution_bars_or_scatter(tmp_path):
    few = DataReport(source="s", original_sizes={"64x64": 3, "128x100": 1}, bit_depths={"8": 3, "16": 1})
    fig = plots.size_distribution(few, path=tmp_path / "s.png")
    assert [p.get_width() for p in fig.axes[0].patches] == [1, 3]  # largest group drawn on top
    assert sorted(p.get_height() for p in fig.axes[1].patches) == [1, 3]
    many = DataReport(source="s", original_sizes={f"{100 + i}x{200 + i}": i + 1 for i in range(20)})
    scatter = plots.size_distribution(many)
    assert len(scatter.axes[0].collections[0].get_offsets()) == 20
    assert (tmp_path / "s.png").exists()


def test_c2st_evidence_figure_draws_the_mean_map_and_the_surest_generated_images(tmp_path):
    g = torch.Generator().manual_seed(0)
    maps_b = torch.randn(7, 4, 4, generator=g)
    evidence = {"auc": 0.9, "test_a": torch.rand(7, 1, 32, 32, generator=g) * 2 - 1,
                "test_b": torch.rand(7, 1, 32, 32, generator=g) * 2 - 1, "maps_a": torch.randn(7, 4, 4, generator=g),
                "maps_b": maps_b, "scores_b": maps_b.mean(dim=(1, 2)), "difference": np.ones((4, 4))}
    fig = plots.c2st_evidence(evidence, n=3, path=tmp_path / "ev.png")
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(image_axes) == 8  # 2 rows x (mean + 3 generated)
    titles = [ax.get_title() for ax in image_axes if ax.get_title().startswith("generated")]
    surest = torch.argsort(evidence["scores_b"], descending=True)[:3]
    assert titles == [f"generated, logit {float(maps_b[i].mean()):.1f}" for i in surest]
    overlays = [ax for ax in image_axes if len(ax.images) == 2]
    assert len(overlays) == 4 and overlays[0].images[1].get_array().shape == (4, 4)
    assert overlays[0].images[1].get_extent() == [-0.5, 31.5, 31.5, -0.5]  # 8 px cells over the 32 px image
    assert (tmp_path / "ev.png").stat().st_size > 1000
