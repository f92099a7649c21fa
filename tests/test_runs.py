"""Reading runs back: load_run, sample, and `python -m cxr_utils generate`."""

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_utils import cli, runs
from cxr_utils.errors import RunError
from cxr_utils.train import make_config, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One epoch of a tiny EMA run (so G and G_ema differ) on smooth random images."""
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.avg_pool2d(torch.rand(32, 3, 36, 36, generator=g) * 2 - 1, 5, 1)
    cfg = make_config("stable", image_size=32, base=4, latent_dim=8, batch_size=16, epochs=1, n_fixed=4,
                      ema_kimg=0.01, precision="fp32", grid_epochs=(1,))
    out = tmp_path_factory.mktemp("runs") / "ema"
    train(cfg, out, images=images, progress=False)
    return out


def test_load_run_prefers_ema_weights_in_eval_mode(run_dir):
    cfg, G = runs.load_run(run_dir)
    payload = torch.load(run_dir / "network-final.pt", weights_only=True)
    assert cfg.ema_kimg == 0.01 and cfg.latent_dim == 8 and not G.training
    state = G.state_dict()
    assert all(torch.equal(state[k], v) for k, v in payload["G_ema"].items())
    assert not all(torch.equal(state[k], v) for k, v in payload["G"].items())


def test_sample_is_seeded_and_batch_independent(run_dir):
    _, G = runs.load_run(run_dir)
    a = runs.sample(G, 10, seed=3, batch=4)
    b = runs.sample(G, 10, seed=3, batch=256)
    assert a.shape == (10, 3, 32, 32) and a.dtype == torch.float32 and a.abs().max() <= 1
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, runs.sample(G, 10, seed=4))


def test_generate_cli_writes_grayscale_pngs_and_grid(run_dir, tmp_path):
    out = tmp_path / "gen"
    assert cli.main(["generate", str(run_dir), "--n", "5", "--out", str(out), "--seed", "7", "--grid"]) == 0
    pngs = sorted(out.glob("sample_*.png"))
    assert [p.name for p in pngs] == [f"sample_{i:05d}.png" for i in range(5)]
    assert (out / "grid.png").is_file()
    _, G = runs.load_run(run_dir)
    expected = runs.sample(G, 5, seed=7)
    for png, img in zip(pngs, expected):
        pil = Image.open(png)
        assert pil.mode == "L" and pil.size == (32, 32)
        mean_gray = ((img.mean(0) + 1) * 127.5).round().numpy()  # channels averaged
        assert np.abs(np.asarray(pil, float) - mean_gray).max() <= 1


def test_generate_without_grid_flag(run_dir, tmp_path):
    assert cli.main(["generate", str(run_dir), "--n", "2", "--out", str(tmp_path / "g")]) == 0
    assert len(list((tmp_path / "g").glob("*.png"))) == 2


def test_write_pngs_averages_channels(tmp_path):
    x = torch.stack([torch.full((4, 4), -1.0), torch.full((4, 4), 0.0), torch.full((4, 4), 1.0)])[None]
    (path,) = runs.write_pngs(x, tmp_path)
    assert np.asarray(Image.open(path)).tolist() == [[128] * 4] * 4  # mean 0 -> 127.5 -> 128


def test_missing_run_or_weights_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run folder not found") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no network-final.pt"):
        runs.load_run(tmp_path / "empty")
