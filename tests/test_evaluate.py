"""evaluate(): the metrics.json contract, the flags, the table, and `python -m cxr_utils evaluate`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_utils import cli, phantom, runs
from cxr_utils.errors import ConfigError
from cxr_utils.evaluate import evaluate, format_metrics
from cxr_utils.metrics import single_threaded
from cxr_utils.models import build_generator
from cxr_utils.train import make_config


@pytest.fixture(autouse=True)
def one_thread():
    """One BLAS/torch thread, as evaluate() runs its maths: threads only cost on a busy 2-core box."""
    with single_threaded():
        yield


def _phantom(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(phantom.generate(n, 64, seed).images).float().div(127.5).sub(1)[:, None]


@pytest.fixture(scope="module")
def real():
    x = _phantom(160)
    return x[:120], x[120:]


@pytest.fixture
def empty_hub(monkeypatch, tmp_path):
    """No cached Inception weights, whatever this machine holds."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def test_fresh_samples_pass_and_every_value_is_labelled(real, empty_hub, tmp_path):
    train, holdout = real
    fake = _phantom(100, seed=1).expand(-1, 3, -1, -1)  # 3 = replicated gray is accepted
    out = tmp_path / "eval"
    d = evaluate(train, holdout, fake, extractors="offline,inception", seed=5, out_dir=out, progress=False)

    assert d["counts"] == {"real_train": 120, "real_holdout": 40, "fake": 100} and d["seed"] == 5
    for key in ("fid", "kid", "precision_recall", "density_coverage"):
        entry = d[key]["offline"]
        assert (entry["extractor"], entry["n_real"], entry["n_fake"], entry["seed"]) == ("offline", 120, 100, 5)
        assert "--inception-weights" in d[key]["inception"]["skipped"]
    assert d["kid"]["offline"]["subset_size"] == 100  # below 1,000 samples: the smaller set
    assert d["fid"]["offline"]["value"] < 5 * d["fid"]["offline"]["real_baseline"]
    assert not d["diversity"]["mode_collapse"]
    assert not d["memorisation"]["pixel"]["flagged"] and not d["memorisation"]["offline"]["flagged"]
    assert "4 scales" in d["diversity"]["settings"]

    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(d))
    for name in ("nn_pairs.png", "nn_distances.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    table = format_metrics(d)
    assert "FID" in table and "skipped" in table and "copy rate" in table


def test_a_generator_collapsed_onto_a_training_image_is_flagged_twice(real):
    train, holdout = real
    g = torch.Generator().manual_seed(0)
    fake = (train[3:4].expand(60, -1, -1, -1) + 0.02 * torch.randn(60, 1, 64, 64, generator=g)).clamp(-1, 1)
    d = evaluate(train, holdout, fake, progress=False)
    assert d["diversity"]["mode_collapse"] and d["diversity"]["generated"] > 0.9
    assert d["precision_recall"]["offline"]["recall"] < 0.1
    pixel = d["memorisation"]["pixel"]
    assert pixel["flagged"] and pixel["copy_rate"] == 1.0
    assert {c["real"] for c in pixel["closest"]} == {3}


def test_unknown_extractor_is_a_config_error(real):
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        evaluate(*real, real[0], extractors="offline,clip")


@pytest.fixture
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # data caches and outputs stay in the test's folder
    return tmp_path


def test_cli_on_a_folder_of_pngs(in_tmp, empty_hub):
    folder = in_tmp / "fake"
    folder.mkdir()
    for i, img in enumerate(phantom.generate(70, 64, seed=2).images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    rc = cli.main(["evaluate", "--fake", "fake", "--real", "phantom:100", "--out", "ev", "--n", "60"])
    assert rc == 0
    d = json.loads((in_tmp / "ev" / "metrics.json").read_text())
    assert d["fake_source"]["kind"] == "folder" and d["fake_source"]["files"] == 70
    assert d["counts"]["fake"] == 60 and d["counts"]["real_train"] + d["counts"]["real_holdout"] == 60
    assert d["real_source"] == {"source": "phantom:100", "available": 100, "used": 60, "holdout_fraction": 0.2}


def test_cli_on_a_run_uses_its_training_set(in_tmp):
    cfg = make_config("stable", image_size=64, base=4, latent_dim=8, batch_size=16, source="phantom",
                      num_data=80, precision="fp32")
    run = in_tmp / "run"
    run.mkdir()
    torch.save(runs.network_payload(cfg, build_generator(cfg), None, 0.0, 0), run / runs.NETWORK_FINAL)
    rc = cli.main(["evaluate", "--fake", "run", "--out", "ev", "--n", "50", "--seed", "1"])
    assert rc == 0
    d = json.loads((in_tmp / "ev" / "metrics.json").read_text())
    assert d["fake_source"]["kind"] == "run" and d["fake_source"]["sample_seed"] == 1
    assert d["real_source"]["source"] == "the run's training set" and d["real_source"]["available"] == 80
    assert d["image_size"] == [64, 64] and d["seed"] == 1


def test_cli_errors_are_one_line(in_tmp, capsys):
    (in_tmp / "pngs").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(in_tmp / "pngs" / "a.png")
    assert cli.main(["evaluate", "--fake", "pngs", "--out", "ev"]) == 2
    assert "--real is required" in capsys.readouterr().err
    assert cli.main(["evaluate", "--fake", "pngs", "--out", "ev", "--real", "phantom",
                     "--holdout-fraction", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --holdout-fraction") and err.count("\n") == 1
