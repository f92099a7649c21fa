"""The augmentation study: resumable cells, no generator leakage, verdicts computed from the numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr_utils import classify, splits, stats, study
from cxr_utils import train as gan_train
from cxr_utils.data import load
from cxr_utils.errors import ConfigError, DataError, RunError

TINY = dict(source="phantom:96", image_size=64, backbone="smallcnn", fractions=(1.0,), ratios=(1.0,),
            seeds=(0, 1, 2), generators=("lungcancer-dcgan",), gan_epochs=1, gan_base=4, gan_batch_size=16,
            clf_epochs=1, clf_batch_size=16, clf_patience=0, n_boot=100, device="cpu")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = study.make_study_config(**TINY, out=str(tmp_path_factory.mktemp("study")))
    return cfg, study.run_study(cfg, progress=False)


def _fail(*args, **kwargs):
    raise AssertionError("nothing may be trained on a re-run")


def test_end_to_end_writes_tables_plot_and_verdict(finished):
    cfg, report = finished
    for path in report.paths.values():
        assert path.is_file() and path.stat().st_size > 0
    results = pd.read_csv(report.paths["results_csv"])
    assert len(results) == len(study.grid(cfg)) == 3 * 4
    assert set(results["condition"]) == {"real", "real+classic", "real+lungcancer-dcganx1",
                                         "synthetic-only:lungcancer-dcgan"}
    assert (results["auc_ci_low"] <= results["auc"]).all() and (results["auc"] <= results["auc_ci_high"]).all()
    assert results.loc[results["condition"] == "real", "dauc_vs_real"].isna().all()
    assert set(results["weights"]) == {"scratch"}
    assert "scratch" in report.verdict[0] and "scratch" in report.paths["table_md"].read_text()
    # mixed cells add ratio x n_real synthetic images; synthetic-only cells have no real ones
    mixed = results[results["condition"] == "real+lungcancer-dcganx1"]
    assert (mixed["n_train_synthetic"] == mixed["n_train_real"]).all()
    assert (results.loc[results["condition"].str.startswith("synthetic"), "n_train_real"] == 0).all()


def test_equal_epochs_give_mixed_cells_more_steps(finished):
    """The default budget is equal epochs: real + 1x synthetic takes about twice real-only's steps."""
    cfg, report = finished
    r = report.results.set_index(["condition", "seed"])
    for seed in cfg.seeds:
        real, mixed = r.loc[("real", seed)], r.loc[("real+lungcancer-dcganx1", seed)]
        assert real["epochs_run"] == mixed["epochs_run"] == cfg.clf_epochs
        assert mixed["optimizer_steps"] > 1.5 * real["optimizer_steps"]
    assert "equal epochs" in report.paths["verdict"].read_text()


def test_paired_delta_matches_classify(finished):
    cfg, report = finished
    cell = json.loads((study.project_path(cfg.out) / "cells" / "real+classic__f1__s1.json").read_text())
    ref = json.loads((study.project_path(cfg.out) / "cells" / "real__f1__s1.json").read_text())
    expected = stats.paired_bootstrap_delta(np.array(cell["test_labels"]), np.array(ref["test_scores"]),
                                               np.array(cell["test_scores"]), n_boot=cfg.n_boot, seed=1)
    row = report.results[(report.results["condition"] == "real+classic") & (report.results["seed"] == 1)].iloc[0]
    assert row["dauc_vs_real"] == pytest.approx(expected["delta"])
    assert row["dauc_vs_real_ci_low"] == pytest.approx(expected["ci_low"])
    summary = report.summary.set_index("condition").loc["real+classic"]
    per_seed = report.results[report.results["condition"] == "real+classic"]["dauc_vs_real"]
    assert summary["dauc_vs_real"] == pytest.approx(per_seed.mean())
    assert summary["dauc_vs_real_adj_low"] <= summary["dauc_vs_real_ci_low"]


def test_rerun_trains_nothing(finished, monkeypatch):
    cfg, report = finished
    monkeypatch.setattr(classify, "train_classifier", _fail)
    monkeypatch.setattr(gan_train, "train", _fail)
    again = study.run_study(cfg, progress=False)
    pd.testing.assert_frame_equal(again.results, report.results)


def test_no_test_image_in_any_generator_training_set(finished):
    cfg, _ = finished
    ds = load(cfg.source, image_size=cfg.image_size, channels=1, progress=False)
    gen_dirs = sorted((study.project_path(cfg.out) / "generators").iterdir())
    assert len(gen_dirs) == 3 * 2  # one per class and seed
    for seed in cfg.seeds:
        test = splits.make_splits(ds.labels.numpy(), ds.groups, fractions=cfg.split, seed=seed)["test"]
        test_md5 = {ds.md5s[i] for i in test}
        for d in gen_dirs:
            if d.name.endswith(f"__s{seed}"):
                used = json.loads((d / "train_md5s.json").read_text())
                assert used and not test_md5 & set(used)


@pytest.mark.parametrize("damage", ["leak", "missing"])
def test_cached_generator_is_checked_for_leakage(finished, tmp_path, damage):
    """A cached generator whose recorded training set holds a test image (or is unknown) is refused."""
    cfg, _ = finished
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(study.project_path(cfg.out), out)
    next((out / "cells").glob("real+lungcancer*__s0.json")).unlink()
    md5_file = next((out / "generators").glob("*__s0")) / "train_md5s.json"
    if damage == "missing":
        md5_file.unlink()
        error, match = RunError, "cannot be checked"
    else:
        ds = load(cfg.source, image_size=cfg.image_size, channels=1, progress=False)
        test = splits.make_splits(ds.labels.numpy(), ds.groups, fractions=cfg.split, seed=0)["test"]
        md5_file.write_text(json.dumps(json.loads(md5_file.read_text()) + [ds.md5s[test[0]]]))
        error, match = DataError, "generator"
    with pytest.raises(error, match=match):
        study.run_cells(study.make_study_config(**TINY, out=str(out)), progress=False)


def test_generator_killed_before_its_checkpoint_is_retrained(finished, tmp_path):
    cfg, _ = finished
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(study.project_path(cfg.out), out)
    cell = next((out / "cells").glob("real+lungcancer*__s1.json"))
    cell.unlink()
    gen = next((out / "generators").glob("*__s1"))
    for name in ("network-final.pt", "training-state.pt", "train_md5s.json"):
        (gen / name).unlink()
    study.run_cells(study.make_study_config(**TINY, out=str(out)), progress=False)
    assert cell.is_file() and (gen / "network-final.pt").is_file()
    assert json.loads((gen / "train_md5s.json").read_text())


def test_folder_from_before_a_new_field_still_resumes(finished, tmp_path, monkeypatch):
    """A study_config.json without a later field counts as that field's default, not as a change."""
    cfg, _ = finished
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(study.project_path(cfg.out), out)
    saved = json.loads((out / "study_config.json").read_text())
    for name in ("clf_budget", "gan_kimg"):
        del saved[name]
    (out / "study_config.json").write_text(json.dumps(saved))
    monkeypatch.setattr(classify, "train_classifier", _fail)
    monkeypatch.setattr(gan_train, "train", _fail)
    study.run_cells(study.make_study_config(**TINY, out=str(out)), progress=False)
    with pytest.raises(ConfigError, match="clf_budget"):
        study.run_cells(study.make_study_config(**TINY, clf_budget="steps", out=str(out)), progress=False)


def test_classifier_budget_in_epochs_or_steps():
    cfg = study.make_study_config(clf_epochs=20)
    assert [study.classifier_epochs(cfg, 100, n) for n in (100, 200, 300)] == [20, 20, 20]
    cfg = study.make_study_config(clf_epochs=20, clf_budget="steps")
    assert [study.classifier_epochs(cfg, 100, n) for n in (100, 150, 200, 300, 10_000)] == [20, 13, 10, 7, 1]
    # as classify._train_epoch batches: a lone last image is skipped (BatchNorm needs two)
    assert [study.steps_per_epoch(n, 32) for n in (1, 2, 32, 33, 34, 64)] == [1, 1, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="clf_budget"):
        study.make_study_config(clf_budget="minutes")


def test_study_with_a_stylegan2_generator_and_equal_steps(tmp_path):
    """A StyleGAN2-ADA preset works as a study generator (tiny budget); equal-steps cells stay level."""
    preset = "stylegan2-cpu-small"
    cfg = study.make_study_config(**dict(TINY, generators=(preset,), gan_kimg=0.016, gan_batch_size=None,
                                         augment_classes=("nodule",), synthetic_only=False, clf_epochs=4,
                                         clf_budget="steps"), out=str(tmp_path))
    report = study.run_study(cfg, progress=False)
    r = report.results.set_index(["condition", "seed"])
    assert set(report.results["condition"]) == {"real", "real+classic", f"real+{preset}x1"}
    gen_dirs = sorted((tmp_path / "generators").iterdir())
    assert [d.name.split("__")[1] for d in gen_dirs] == ["nodule"] * 3  # only the augmented class
    options = json.loads((gen_dirs[0] / "training_options.json").read_text())
    assert (options["model"], options["batch_size"], options["channels"]) == ("stylegan2", 16, 1)
    assert options["kimg"] == 0.016  # the study's budget, not the preset's own 10 kimg
    for seed in cfg.seeds:
        real, mixed = r.loc[("real", seed)], r.loc[(f"real+{preset}x1", seed)]
        n_mixed = mixed["n_train_real"] + mixed["n_train_synthetic"]
        assert mixed["n_train_synthetic"] > 0 and real["epochs_run"] == 4
        assert mixed["epochs_run"] == study.classifier_epochs(cfg, real["n_train_real"], n_mixed) < 4
        assert 0.75 < mixed["optimizer_steps"] / real["optimizer_steps"] < 1.25


def test_crash_mid_cell_leaves_no_partial_file(tmp_path, monkeypatch):
    cfg = study.make_study_config(**dict(TINY, synthetic_only=False, generators=()), out=str(tmp_path))
    real_train = classify.train_classifier
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(classify, "train_classifier", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        study.run_cells(cfg, progress=False)
    files = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert files == ["real__f1__s0.json"]
    json.loads((tmp_path / "cells" / files[0]).read_text())  # complete JSON


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    from cxr_utils import runs

    monkeypatch.setattr(runs.os, "replace", broken_replace)
    with pytest.raises(OSError):
        study.write_json_atomic({"a": 1}, tmp_path / "cell.json")
    assert list(tmp_path.iterdir()) == []


def test_out_folder_with_other_settings_is_refused(finished):
    cfg, _ = finished
    with pytest.raises(ConfigError, match="clf_epochs"):
        study.run_cells(study.make_study_config(**dict(TINY, clf_epochs=2), out=cfg.out), progress=False)


def test_config_needs_three_seeds_and_known_presets():
    with pytest.raises(ConfigError, match="3 distinct seeds"):
        study.make_study_config(seeds=(0, 1))
    with pytest.raises(ConfigError, match="unknown generator"):
        study.make_study_config(generators=("nope",))
    assert study.make_study_config(fractions="0.1,1").fractions == (0.1, 1.0)


def _summary(rows: list[tuple]) -> pd.DataFrame:
    """Summary rows (condition, fraction, d_real, lo, hi, d_classic, lo, hi) with the adjusted CIs set."""
    cols = ["condition", "fraction", "dauc_vs_real", "dauc_vs_real_adj_low", "dauc_vs_real_adj_high",
            "dauc_vs_classic", "dauc_vs_classic_adj_low", "dauc_vs_classic_adj_high"]
    return pd.DataFrame(rows, columns=cols)


NAN = float("nan")


def test_verdict_reports_a_gan_whose_ci_excludes_zero():
    summary = _summary([
        ("real", 0.1, NAN, NAN, NAN, -0.01, -0.03, 0.01),
        ("real+classic", 0.1, 0.01, -0.01, 0.03, NAN, NAN, NAN),
        ("real+stablex1", 0.1, 0.03, 0.01, 0.05, 0.02, 0.005, 0.04),
        ("real+stablex2", 0.1, -0.04, -0.07, -0.02, -0.05, -0.08, -0.02),
    ])
    lines = study.verdict(summary, "imagenet", "resnet50")
    assert "ImageNet weights" in lines[0]
    assert "real+stablex1 improves AUC over real-only at fraction 0.1: delta +0.030 [+0.010, +0.050]" in lines
    assert "real+stablex2 lowers AUC over real-only at fraction 0.1: delta -0.040 [-0.070, -0.020]" in lines
    assert ("real+stablex1 beats the classic augmentation control at fraction 0.1: "
            "delta +0.020 [+0.005, +0.040]") in lines
    assert not any("real+classic improves" in v for v in lines)


def test_verdict_says_nothing_beats_the_control_when_cis_include_zero():
    summary = _summary([
        ("real", 0.25, NAN, NAN, NAN, -0.02, -0.04, 0.0),
        ("real+classic", 0.25, 0.02, -0.005, 0.045, NAN, NAN, NAN),
        ("real+dcganx1", 0.25, 0.015, -0.01, 0.04, -0.005, -0.03, 0.02),
        ("synthetic-only:dcgan", 0.25, -0.01, -0.05, 0.03, -0.03, -0.07, 0.01),
    ])
    lines = study.verdict(summary, "scratch", "smallcnn")
    assert "trained from scratch" in lines[0]
    assert ("no condition differs from real-only at any fraction: every CI includes 0 "
            "(the widest spans 0.080 AUC)") in lines
    assert lines[-1] == ("no synthetic condition beats the classic augmentation control (best: real+dcganx1 at "
                         "fraction 0.25, delta -0.005 [-0.030, +0.020])")


def test_cli_runs_a_tiny_study(tmp_path, capsys):
    from cxr_utils.cli import main

    args = ["study", "--out", str(tmp_path), "--generators", "", "--synthetic-only", "false"]
    for k, v in TINY.items():
        if k != "generators":
            args += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    assert main(args + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trained from scratch" in out and (tmp_path / "auc_vs_fraction.png").is_file()


def _one_class_folder(root, n=24):
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "normal").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(root / "normal" / f"p{i}.png")
    return root


def _nothing_trained(monkeypatch):
    monkeypatch.setattr(classify, "train_classifier", _fail)
    monkeypatch.setattr(gan_train, "train", _fail)


def test_one_class_folder_fails_before_any_training(tmp_path, monkeypatch):
    _nothing_trained(monkeypatch)
    source = _one_class_folder(tmp_path / "data")
    cfg = study.make_study_config(**dict(TINY, source=str(source)), out=str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"has 1 class \(normal\).*at least 2 classes"):
        study.run_study(cfg, progress=False)
    assert not (tmp_path / "out" / "cells").exists() and not (tmp_path / "out" / "generators").exists()


def test_too_small_subset_for_a_gan_fails_before_any_training(tmp_path, monkeypatch):
    """phantom:96 at fraction 0.02: one image per class, and a GAN needs two."""
    _nothing_trained(monkeypatch)
    cfg = study.make_study_config(**dict(TINY, fractions=(0.02, 1.0)), out=str(tmp_path))
    with pytest.raises(DataError, match=r"seed 0, fraction 0.02: training subset too small: 'normal' has 1 "
                                        r"\(needs 2\)"):
        study.run_cells(cfg, progress=False)
    assert not (tmp_path / "cells").exists() and not (tmp_path / "study_config.json").exists()


def test_unwritable_out_folder_fails_first(tmp_path, monkeypatch):
    _nothing_trained(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="not writable"):
        study.run_cells(study.make_study_config(**TINY, out=str(blocker / "study")), progress=False)
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("field,value,match", [("fractions", (0.0, 1.0), "fractions must be in"),
                                               ("fractions", (1.5,), "fractions must be in"),
                                               ("ratios", (-1.0,), "ratios must be"),
                                               ("generators", ("nope",), "unknown generator"),
                                               ("backbone", "resnet9000", "backbone"),
                                               ("synthetic_only", "maybe", "synthetic_only"),
                                               ("pretrained", 1, "pretrained")])
def test_bad_settings_are_one_line_config_errors(field, value, match):
    with pytest.raises(ConfigError, match=match) as err:
        study.make_study_config(**{field: value})
    assert "\n" not in str(err.value)


def test_papermill_strings_are_coerced():
    cfg = study.make_study_config(fractions="[0.1, 1.0]", seeds="[3, 4, 5]", synthetic_only="false",
                                  pretrained="no", gan_kimg="None", generators="['stable']")
    assert (cfg.fractions, cfg.seeds, cfg.synthetic_only, cfg.pretrained, cfg.gan_kimg, cfg.generators) == (
        (0.1, 1.0), (3, 4, 5), False, False, None, ("stable",))


def test_progress_keyword_is_coerced_too(tmp_path, monkeypatch):
    _nothing_trained(monkeypatch)
    with pytest.raises(ConfigError, match="progress"):
        study.run_study(out=str(tmp_path), progress="maybe")
    with pytest.raises(ConfigError, match="progress"):
        study.run_cells(study.make_study_config(out=str(tmp_path)), progress="yes please")
    assert list(tmp_path.iterdir()) == []
