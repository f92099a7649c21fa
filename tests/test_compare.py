"""Notebook 03's comparison engine: same split for every contender, resumable rows, computed verdict."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from cxr_utils import compare, phantom
from cxr_utils.images import from_uint8
from cxr_utils.errors import ConfigError

TINY = {"base": 8, "sg2_arch": "tiny", "latent_dim": 16, "n_fixed": 4, "precision": "fp32"}


def _row(name, milestone, kimg, fid, budget="image", train_s=10.0, **kw):
    base = dict(contender=name, preset=compare.DEFAULT_CONTENDERS[name][0], budget=budget, milestone=milestone,
                kimg=kimg, batch=16, train_s=train_s, img_per_s=kimg * 1000 / train_s, fid=fid,
                fid_baseline=1.0, kid=0.0, swd=0.0, precision=0.5, recall=0.5, msssim=0.3, msssim_real=0.3,
                copy_rate=0.0, mode_collapse=False)
    return {**base, **kw}


def _comparison(rows, milestones=2):
    cfg = compare.make_config(milestones=milestones, equal_wall_time=False)
    empty = torch.zeros(0, 3, 8, 8)
    return compare.Comparison(cfg, rows, compare.project_path("results"), empty, empty)


def test_split_is_disjoint_deterministic_and_complete():
    images = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1)
    train, hold = compare.split_images(images, 0.2, seed=3)
    again, _ = compare.split_images(images, 0.2, seed=3)
    assert torch.equal(train, again) and len(hold) == 10 and len(train) == 40
    assert sorted(torch.cat([train, hold]).flatten().tolist()) == list(range(50))
    with pytest.raises(ConfigError, match="too few"):
        compare.split_images(images[:12], 0.2)


def test_config_rejects_unknown_contenders_and_bad_budgets():
    with pytest.raises(ConfigError, match="unknown contender"):
        compare.make_config(contenders=["GPT"])
    with pytest.raises(ConfigError):
        compare.make_config(kimg=0)
    with pytest.raises(ConfigError):
        compare.make_config(kimg="lots")


def test_milestones_fall_on_whole_epochs_without_repeats():
    assert compare.milestone_kimg(4.0, 4, 1920, 128) == [1.92, 3.84, 5.76]  # 3 epochs cannot make 4 points
    assert compare.milestone_kimg(5.76, 3, 1920, 16) == [1.92, 3.84, 5.76]
    assert compare.milestone_kimg(2.0, 2, 80, 16) == [0.96, 2.0]  # 25 epochs of 80 images


def test_batch_is_cut_to_fit_a_small_training_set():
    cfg = compare.make_config()
    assert compare.contender_config(cfg, "DCGAN lungcancer-dcgan", 1.0, 2000).batch_size == 128
    assert compare.contender_config(cfg, "DCGAN lungcancer-dcgan", 1.0, 80).batch_size == 32
    sg2 = compare.contender_config(cfg, "StyleGAN2 no ADA", 1.0, 80)
    assert sg2.model == "stylegan2" and sg2.augment == "none" and sg2.batch_size == 16
    gpu = compare.make_config(stylegan2_preset="stylegan2-auto64")
    assert compare.contender_config(gpu, "StyleGAN2-ADA", 1.0, 2000).sg2_arch == "auto64"
    with pytest.raises(ConfigError, match="stylegan2_preset"):
        compare.make_config(stylegan2_preset="stable")


def test_verdict_follows_the_numbers():
    """The same code names a different winner and the opposite ADA finding when the numbers flip."""
    names = list(compare.DEFAULT_CONTENDERS)
    fids = {names[0]: (300.0, 280.0), names[1]: (40.0, 30.0), names[2]: (60.0, 45.0), names[3]: (70.0, 65.0)}
    rows = [_row(n, m + 1, (m + 1) * 2.0, f[m]) for n, f in fids.items() for m in range(2)]
    text = compare.verdict(_comparison(rows))
    assert "Best: DCGAN stable" in text and "ADA helped" in text
    assert "StyleGAN2-ADA trails the best DCGAN (DCGAN stable) by 15.00 FID" in text
    # FID per kimg: StyleGAN2-ADA -7.5, DCGAN stable -5 -> the gap closes at 2.5 per kimg: 6 more kimg
    assert "after about 6.0 more kimg" in text
    flipped = [dict(r, fid=200.0 - r["fid"]) if r["contender"] != names[0] else r for r in rows]
    text = compare.verdict(_comparison(flipped))
    assert "Best: StyleGAN2 no ADA" in text and "ADA did not help" in text
    assert "beats the best DCGAN" in text


def test_verdict_flags_collapse_and_copying():
    names = list(compare.DEFAULT_CONTENDERS)
    rows = [_row(names[0], 1, 2.0, 300.0, mode_collapse=True), _row(names[1], 1, 2.0, 40.0, copy_rate=0.2)]
    text = compare.verdict(_comparison(rows, milestones=1))
    assert "Mode collapse flagged" in text and names[0] in text
    assert "Copy rate above 5 %" in text and "DCGAN stable (20.0%)" in text
    assert "Highest precision + recall" in text
    one = [_row(n, 1, 2.0, f) for n, f in ((names[1], 40.0), (names[2], 60.0))]  # one milestone: no slope
    text = compare.verdict(_comparison(one, milestones=1))
    assert "trails the best DCGAN (DCGAN stable) by 20.00 FID" in text and "no trend" in text and "nan" not in text
    zero = [dict(r, precision=0.0, recall=0.0) for r in rows]
    assert "precision and recall 0" in compare.verdict(_comparison(zero, milestones=1))


def test_tiny_comparison_runs_resumes_and_guards_its_folder(tmp_path):
    ph = phantom.generate(40, 64, seed=0)  # 32 px: the phantom renders >= 64, so pool it
    images = F.avg_pool2d(from_uint8(torch.from_numpy(ph.images))[:, None], 2).repeat(1, 3, 1, 1)
    cfg = compare.make_config(source="phantom:40", image_size=32, kimg=0.064, milestones=2, n_eval=16,
                              contenders=["DCGAN stable", "StyleGAN2-ADA"], train_overrides=TINY,
                              extractors=["offline"])
    comp = compare.run(cfg, tmp_path / "cmp", images=images, progress=False)
    assert all(r.get("c2st_auc") is None and "got 8" in r["c2st_skipped"] for r in comp.rows)
    image_rows = [r for r in comp.rows if r["budget"] == "image"]
    assert [(r["contender"], r["milestone"]) for r in image_rows] == [
        ("DCGAN stable", 1), ("DCGAN stable", 2), ("StyleGAN2-ADA", 1), ("StyleGAN2-ADA", 2)]
    assert all(r["fid"] is not None and r["fid_baseline"] is not None for r in comp.rows)
    assert image_rows[1]["kimg"] > image_rows[0]["kimg"]  # the second milestone resumed the same run
    # the faster contender gets an equal-wall-time point unless both took about as long
    walls = [r for r in comp.rows if r["budget"] == "wall"]
    assert all(r["train_s"] >= 0 for r in walls)
    lines = (tmp_path / "cmp" / "rows.jsonl").read_text().splitlines()
    again = compare.run(cfg, tmp_path / "cmp", images=images, progress=False)  # everything measured: nothing re-run
    assert (tmp_path / "cmp" / "rows.jsonl").read_text().splitlines() == lines and len(again.rows) == len(lines)
    assert json.loads(lines[0])["contender"] == "DCGAN stable"
    text = compare.verdict(again)
    assert "equal image budget" in text
    fig = compare.plot_samples(again, n=4)
    assert len(fig.axes) == 3
    with pytest.raises(ConfigError, match="other settings"):
        compare.run(compare.make_config(**{**dataclasses.asdict(cfg), "kimg": 0.096}), tmp_path / "cmp",
                    images=images, progress=False)


def test_holdout_is_patient_disjoint():
    images = torch.arange(60, dtype=torch.float32).view(60, 1, 1, 1)
    groups = [f"patient{i // 4}" for i in range(60)]  # four images per patient
    train, hold = compare.split_images(images, 0.25, seed=1, groups=groups)
    train_patients = {groups[int(v)] for v in train.flatten()}
    hold_patients = {groups[int(v)] for v in hold.flatten()}
    assert not train_patients & hold_patients and len(hold) % 4 == 0 and len(train) + len(hold) == 60
    assert len(hold_patients) == 4  # a quarter of the 15 patients, rounded by the greedy allocation


def test_papermill_strings_are_coerced_and_bad_ones_are_one_line_errors():
    cfg = compare.make_config(equal_wall_time="false", contenders="['DCGAN stable']", kimg="2.5",
                              train_overrides="{'base': 8}", extractors="offline")
    assert (cfg.equal_wall_time, cfg.contenders, cfg.kimg, cfg.train_overrides, cfg.extractors) == (
        False, ("DCGAN stable",), 2.5, {"base": 8}, ("offline",))
    for name, value in (("equal_wall_time", "maybe"), ("equal_wall_time", 1), ("train_overrides", "[1]")):
        with pytest.raises(ConfigError, match=name) as err:
            compare.make_config(**{name: value})
        assert "\n" not in str(err.value)


def test_bad_contender_settings_fail_before_any_training(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("nothing may train")

    monkeypatch.setattr(compare.train, "train", fail)
    images = torch.zeros(40, 3, 8, 8).uniform_(-1, 1)
    cfg = compare.make_config(contenders=["DCGAN stable", "StyleGAN2-ADA"], train_overrides={"lr_d": "fast"})
    with pytest.raises(ConfigError, match="lr_d"):
        compare.run(cfg, tmp_path / "cmp", images=images, progress=False)
    with pytest.raises(ConfigError, match="too few"):
        compare.run(compare.make_config(), tmp_path / "cmp2", images=images[:12], progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        compare.run(compare.make_config(), blocker / "cmp", images=images, progress=False)
    assert not list((tmp_path / "cmp").glob("*/network-final.pt")) and blocker.read_text() == "x"


def test_run_progress_keyword_is_coerced(tmp_path):
    with pytest.raises(ConfigError, match="progress"):
        compare.run(compare.make_config(), tmp_path / "cmp", images=torch.zeros(40, 3, 8, 8), progress="maybe")
    assert not (tmp_path / "cmp").exists()


def test_fixed_wall_budget_trains_every_contender_to_it_and_scores_c2st_against_held_out(tmp_path):
    ph = phantom.generate(60, 64, seed=1)
    images = F.avg_pool2d(from_uint8(torch.from_numpy(ph.images))[:, None], 2).repeat(1, 3, 1, 1)
    cfg = compare.make_config(source="phantom:60", image_size=32, kimg=0.032, milestones=1, n_eval=16,
                              contenders=["DCGAN stable"], train_overrides=TINY, extractors=["offline"],
                              seconds=1.5)
    comp = compare.run(cfg, tmp_path / "cmp", images=images, progress=False)
    image, wall = comp.final("image")["DCGAN stable"], comp.final("wall")["DCGAN stable"]
    assert image["budget"] == "image" and image["train_s"] < 1.5
    # the loop stops after the iteration that reaches the budget (a whole epoch here is 3 iterations)
    assert wall["budget"] == "wall" and 1.5 <= wall["train_s"] < 1.5 + 2.0 and wall["kimg"] > image["kimg"]
    for r in (image, wall):  # 12 held-out images vs 16 generated: C2ST runs on 12 of each
        assert 0.0 <= r["c2st_auc"] <= 1.0 and r["c2st_n"] == 12
        lo, hi = r["c2st_auc_ci95"]
        assert lo <= r["c2st_auc"] <= hi and 0.0 <= r["c2st_accuracy"] <= 1.0
    assert image["c2st_floor"] == wall["c2st_floor"]  # computed once per comparison
    assert "c2st_auc" in compare.format_table(comp)
    for r in (image, wall):  # where the first seed's classifier found its evidence: 32 px -> 4 x 4 cells
        assert len(r["c2st_evidence_map"]) == 4 and all(len(row) == 4 for row in r["c2st_evidence_map"])
    fig = compare.plot_evidence(comp, budget="wall", path=tmp_path / "ev.png")
    titled = [ax for ax in fig.axes if ax.get_title().startswith("DCGAN stable")]
    assert len(titled) == 1 and f"AUC {wall['c2st_auc']:.3f}" in titled[0].get_title()
    assert titled[0].images[1].get_array().shape == (4, 4) and (tmp_path / "ev.png").exists()


def test_evidence_figure_says_when_rows_have_no_map():
    comp = _comparison([_row("DCGAN stable", 1, 2.0, 10.0)], milestones=1)
    fig = compare.plot_evidence(comp)
    assert any("no C2ST evidence" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_verdict_names_who_beats_stable_on_c2st_only_with_separate_intervals():
    names = ["DCGAN stable", "FastGAN scratch", "FastGAN hybrid"]
    c2st = {"DCGAN stable": (0.99, [0.98, 1.0]), "FastGAN scratch": (0.90, [0.86, 0.94]),
            "FastGAN hybrid": (0.97, [0.95, 0.99])}
    rows = [_row(n, 1, 2.0, 10.0, c2st_auc=a, c2st_auc_ci95=ci, c2st_floor=0.5, c2st_floor_ci95=[0.45, 0.55])
            for n, (a, ci) in ((n, c2st[n]) for n in names)]
    text = compare.verdict(_comparison(rows, milestones=1))
    assert "Below DCGAN stable's C2ST AUC with non-overlapping intervals: FastGAN scratch." in text
    assert "per band" not in text  # no band columns, no band line
    assert "MS-SSIM diversity" not in text  # rows from before the interval existed: no line
    for r, gap in zip(rows, ([0.05, 0.09], [-0.01, 0.03], [-0.2, -0.1])):
        r |= {"msssim": 0.3 + sum(gap) / 2, "msssim_gap_ci95": gap}
    assert ("MS-SSIM diversity, generated minus real [95% interval] (0: the real variety; above 0: less varied), "
            "closest first: FastGAN scratch +0.010 [-0.010, +0.030]; DCGAN stable +0.070 [+0.050, +0.090]; "
            "FastGAN hybrid -0.150 [-0.200, -0.100].") in compare.verdict(_comparison(rows, milestones=1))
    for r, (coarse, detail) in zip(rows, ((0.99, 1.0), (0.71, 0.98), (0.8, 1.0))):
        r |= {"c2st_coarse_auc": coarse, "c2st_detail_auc": detail, "c2st_coarse_floor": 0.51,
              "c2st_detail_floor": 0.49}
    banded = compare.verdict(_comparison(rows, milestones=1))
    assert ("C2ST per band, coarse (layout) / detail (texture) (floors 0.510 / 0.490): FastGAN scratch "
            "0.710 / 0.980; FastGAN hybrid 0.800 / 1.000; DCGAN stable 0.990 / 1.000.") in banded
    assert compare.separated(rows[1], rows[0]) and not compare.separated(rows[2], rows[0])
    assert text.index("FastGAN scratch 0.900") < text.index("FastGAN hybrid 0.970")  # lower AUC first
    with pytest.raises(ConfigError, match="seconds"):
        compare.make_config(seconds=0)


def test_with_channels_gives_the_gray_image_in_either_layout():
    gray = torch.linspace(-1, 1, 2 * 4 * 4).reshape(2, 1, 4, 4)
    tinted = torch.cat([gray - 0.1, gray, gray + 0.1], dim=1)  # channel mean = gray
    torch.testing.assert_close(compare.with_channels(tinted, 1), gray)
    three = compare.with_channels(gray, 3)
    assert three.shape == (2, 3, 4, 4) and all(torch.equal(three[:, c:c + 1], gray) for c in range(3))


def test_fastgan_contender_trains_on_one_channel_and_is_scored_in_gray(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "C2ST_STEPS", 30)  # six C2STs of up to 20 seeds here; shape, not power
    ph = phantom.generate(60, 64, seed=2)
    images = from_uint8(torch.from_numpy(ph.images))[:, None].repeat(1, 3, 1, 1)  # replicated gray, as loaded
    tiny_fastgan = {"fastgan_width": 0.125, "n_fixed": 4, "precision": "fp32", "latent_dim": 16}
    cfg = compare.make_config(source="phantom:60", image_size=64, kimg=0.032, milestones=1, n_eval=16,
                              contenders=["FastGAN scratch"], train_overrides=tiny_fastgan, extractors=["offline"],
                              equal_wall_time=False, c2st_bands=True)
    comp = compare.run(cfg, tmp_path / "cmp", images=images, progress=False)
    options = json.loads((tmp_path / "cmp" / "fastgan-scratch" / "training_options.json").read_text())
    assert options["channels"] == 1 and options["d_arch"] == "scratch" and options["detail_head"] is False
    (row,) = comp.rows
    assert row["c2st_n"] == 12 and 0.0 <= row["c2st_auc"] <= 1.0 and row["fid"] is not None
    for band in ("coarse", "detail"):  # the band tests ran, each with its own floor
        lo, hi = row[f"c2st_{band}_auc_ci95"]
        assert lo <= row[f"c2st_{band}_auc"] <= hi and 0.0 <= row[f"c2st_{band}_floor"] <= 1.0
    assert "c2st_detail_auc" in compare.format_table(comp)
    detail = compare.contender_config(cfg, "FastGAN projected+detail", 1.0, 48)
    assert detail.detail_head and detail.d_arch == "projected" and detail.channels == 1
