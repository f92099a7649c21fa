"""evaluate(): the metrics.json contract, the flags, the table, and `python -m cxr_utils evaluate`."""

import json

import numpy as np
import pandas as pd
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


def test_fresh_samples_pass_and_every_value_is_labelled(real, tmp_path):
    train, holdout = real
    fake = _phantom(100, seed=1).expand(-1, 3, -1, -1)  # 3 = replicated gray is accepted
    out = tmp_path / "eval"
    d = evaluate(train, holdout, fake, extractors="offline,xrv", seed=5, out_dir=out, progress=False,
                 c2st=True, c2st_max_seeds=2, c2st_steps=30, c2st_bands=True)

    assert d["counts"] == {"real_train": 120, "real_holdout": 40, "fake": 100} and d["seed"] == 5
    for key in ("fid", "kid", "precision_recall", "density_coverage"):
        entry = d[key]["offline"]
        assert (entry["extractor"], entry["n_real"], entry["n_fake"], entry["seed"]) == ("offline", 120, 100, 5)
        assert "torchxrayvision" in d[key]["xrv"]["skipped"]
    assert d["kid"]["offline"]["subset_size"] == 100  # below 1,000 samples: the smaller set
    assert d["fid"]["offline"]["value"] < 5 * d["fid"]["offline"]["real_baseline"]
    assert not d["diversity"]["mode_collapse"]
    assert not d["memorisation"]["pixel"]["flagged"] and not d["memorisation"]["offline"]["flagged"]
    assert "4 scales" in d["diversity"]["settings"]
    div = d["diversity"]  # fresh phantom samples: the gap's interval covers 0 and is the two sets' combined
    half = [(hi - lo) / 2 for lo, hi in (div["generated_ci95"], div["real_ci95"], div["difference_ci95"])]
    assert div["difference"] == pytest.approx(div["generated"] - div["real"])
    assert half[2] == pytest.approx(np.hypot(half[0], half[1])) and half[0] > 0 and half[1] > 0
    assert div["difference_ci95"][0] < 0 < div["difference_ci95"][1]

    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(d))
    for name in ("nn_pairs.png", "nn_distances.png", "c2st_evidence.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    table = format_metrics(d)
    assert "FID" in table and "skipped" in table and "copy rate" in table and "C2ST AUC" in table

    c = d["c2st"]
    assert c["n_seeds"] == 2 and c["n_per_set"] == 100 and c["real_baseline_n_per_set"] == 40
    assert c["auc_ci95"][0] <= c["auc"] <= c["auc_ci95"][1]
    assert set(c["bands"]) == {"coarse", "detail"}
    ev = c["evidence"]  # the first seed's classifier: 64 px -> 8 x 8 cells of 8 px
    assert np.asarray(ev["map"]).shape == (8, 8) and ev["cell_px"] == 8 and ev["seed"] == 5
    assert ev["auc"] == pytest.approx(c["per_seed_auc"][0], abs=1e-9)
    for b, t in c["bands"].items():
        assert t["n_seeds"] == 2 and t["auc_ci95"][0] <= t["auc"] <= t["auc_ci95"][1]
        assert d["summary"][f"c2st_{b}_auc"]["value"] == pytest.approx(t["auc"])
        assert d["summary"][f"c2st_{b}_auc"]["real_baseline"] == pytest.approx(t["real_baseline"])
    assert "C2ST AUC, detail band" in table
    assert d["precision_recall"]["offline"]["real_baseline_recall"] > 0.5
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["metric", "value", "real_baseline", "ratio_to_baseline", "n"]
    fid = summary.set_index("metric").loc["fid_offline"]
    assert fid["value"] == pytest.approx(d["fid"]["offline"]["value"])
    assert fid["ratio_to_baseline"] == pytest.approx(fid["value"] / fid["real_baseline"])
    assert fid["n"] == "120/100" and "c2st_auc" in summary["metric"].values
    assert d["summary"]["fid_offline"]["value"] == pytest.approx(fid["value"])  # flat in metrics.json


def test_inception_runs_by_default_with_baselines_and_a_feature_cache(tmp_path, capsys):
    x = _phantom(10)  # few images: Inception runs at 299 px whatever the input size
    train, holdout, fake = x[:6], x[6:], _phantom(5, seed=1)
    d = evaluate(train, holdout, fake, seed=0, feature_cache=tmp_path / "features", progress=True,
                 k_precision_recall=2, k_density_coverage=2)
    fid = d["fid"]["inception"]
    assert (fid["extractor"], fid["n_real"], fid["n_fake"], fid["n_holdout"]) == ("inception", 6, 5, 4)
    assert fid["value"] > 0 and fid["real_baseline"] > 0 and d["extractors"]["inception"]["dim"] == 2048
    assert "TF1-compatible bilinear" in d["extractors"]["inception"]["preprocessing"]
    assert "skipped" in d["fid"]["xrv"]  # torchxrayvision's weights do not ship in a wheel
    assert len(list((tmp_path / "features").glob("inception-*.npy"))) == 2  # training and held-out real
    assert {"fid_inception", "kid_inception", "coverage_inception"} <= set(d["summary"])
    assert "skipped" in d["c2st"]  # too few images for C2ST by default
    assert "fid_inception" in capsys.readouterr().out  # the summary is printed

    # deep_max: Inception sees seeded subsets of at most 4 images per set, the offline extractor all of them
    capped = evaluate(train, holdout, fake, extractors="offline,inception", seed=0, feature_cache=None,
                      progress=False, k_precision_recall=2, k_density_coverage=2, deep_max=4)
    fid = capped["fid"]["inception"]
    assert (fid["n_real"], fid["n_fake"], fid["n_holdout"]) == (4, 4, 4)
    assert (capped["fid"]["offline"]["n_real"], capped["fid"]["offline"]["n_fake"]) == (6, 5)
    assert capped["fid"]["offline"]["value"] == pytest.approx(d["fid"]["offline"]["value"])

def test_a_generator_collapsed_onto_a_training_image_is_flagged_twice(real):
    train, holdout = real
    g = torch.Generator().manual_seed(0)
    fake = (train[3:4].expand(60, -1, -1, -1) + 0.02 * torch.randn(60, 1, 64, 64, generator=g)).clamp(-1, 1)
    d = evaluate(train, holdout, fake, extractors="offline", progress=False, c2st=False)
    assert d["diversity"]["mode_collapse"] and d["diversity"]["generated"] > 0.9
    lo, hi = d["diversity"]["difference_ci95"]
    assert lo > 0.1  # far less varied than real, beyond its interval
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


def test_cli_on_a_folder_of_pngs(in_tmp):
    folder = in_tmp / "fake"
    folder.mkdir()
    for i, img in enumerate(phantom.generate(70, 64, seed=2).images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    rc = cli.main(["evaluate", "--fake", "fake", "--real", "phantom:100", "--out", "ev", "--n", "60",
                   "--extractor", "offline", "--no-c2st"])
    assert rc == 0
    d = json.loads((in_tmp / "ev" / "metrics.json").read_text())
    assert d["fake_source"]["kind"] == "folder" and d["fake_source"]["files"] == 70
    assert d["counts"]["fake"] == 60 and d["counts"]["real_train"] + d["counts"]["real_holdout"] == 60
    assert d["real_source"] == {"source": "phantom:100", "available": 100, "used": 60, "holdout_fraction": 0.2}


def test_cli_c2st_bands_flag_reaches_evaluate(in_tmp, monkeypatch):
    from cxr_utils import evaluate as E

    seen = {}

    def fake_evaluate(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    folder = in_tmp / "fake"
    folder.mkdir()
    for i, img in enumerate(phantom.generate(12, 64, seed=2).images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    for flags, expected in (([], False), (["--c2st-bands"], True)):
        with pytest.raises(SystemExit):
            cli.main(["evaluate", "--fake", "fake", "--real", "phantom:20", "--out", "ev", "--n", "12",
                      "--extractor", "offline", *flags])
        assert seen["c2st_bands"] is expected


def test_cli_on_a_run_uses_its_training_set(in_tmp):
    cfg = make_config("stable", image_size=64, base=4, latent_dim=8, batch_size=16, source="phantom",
                      num_data=80, precision="fp32")
    run = in_tmp / "run"
    run.mkdir()
    torch.save(runs.network_payload(cfg, build_generator(cfg), None, 0.0, 0), run / runs.NETWORK_FINAL)
    rc = cli.main(["evaluate", "--fake", "run", "--out", "ev", "--n", "50", "--seed", "1", "--extractor", "offline",
                   "--no-c2st"])
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


def test_run_with_a_held_out_part_is_scored_against_images_it_never_trained_on(tmp_path):
    from cxr_utils.train import held_out_images, make_config, train, training_images

    cfg = make_config("stable", source="phantom:40", image_size=64, base=8, latent_dim=16, batch_size=16,
                      epochs=1, precision="fp32", n_fixed=4, grid_epochs=(1,), holdout_fraction=0.25)
    train(cfg, tmp_path / "run", progress=False)
    from cxr_utils.evaluate import evaluate_run

    m = evaluate_run(tmp_path / "run", n=16, extractors="offline", progress=False, c2st=False)
    assert m["counts"] == {"real_train": 16, "real_holdout": 10, "fake": 16}
    assert "never trained on" in m["real_source"]["source"]
    seen = {x.numpy().tobytes() for x in training_images(cfg, progress=False).mean(1, keepdim=True)}
    assert len(seen) == 30 and all(x.numpy().tobytes() not in seen
                                   for x in held_out_images(cfg, progress=False).mean(1, keepdim=True))


def test_an_evaluation_without_c2st_removes_an_earlier_evidence_figure(real, tmp_path):
    train, holdout = real
    (tmp_path / "c2st_evidence.png").write_bytes(b"an earlier evaluation's figure")
    d = evaluate(train[:20], holdout[:8], _phantom(20, seed=2), extractors="offline", progress=False, c2st=False,
                 out_dir=tmp_path)
    assert "c2st" not in d and not (tmp_path / "c2st_evidence.png").exists()
    assert (tmp_path / "metrics.json").exists()
