"""The shared training loop: config, losses, a real tiny run, run folders, bitwise resume, kill-safety."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_utils import cli, device, phantom
from cxr_utils.images import from_uint8
from cxr_utils.errors import ConfigError, RunError
from helpers import assert_identical

from cxr_utils.losses import d_loss, g_loss
from cxr_utils.train import TrainConfig, config_from_args, make_config, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """64 phantom radiographs at 32 px (rendered at 64, 2x2-averaged), gray replicated to 3 channels."""
    ph = phantom.generate(64, 64, seed=0)
    return F.avg_pool2d(from_uint8(torch.from_numpy(ph.images))[:, None], 2).repeat(1, 3, 1, 1)


def tiny(preset: str = "lungcancer-dcgan", **overrides) -> TrainConfig:
    small = dict(image_size=32, base=8, latent_dim=16, batch_size=16, epochs=2, precision="fp32",
                 checkpoint_every=1, n_fixed=16, grid_epochs=(1,))
    return make_config(preset, **{**small, **overrides})


def without_time(history):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


# ------------------------------------------------------------------------------------------- config


def test_reference_preset_is_reference_a():
    cfg = make_config("lungcancer-dcgan")
    assert (cfg.image_size, cfg.channels, cfg.latent_dim, cfg.base) == (64, 3, 128, 64)
    assert (cfg.batch_size, cfg.epochs, cfg.lr_g, cfg.lr_d, cfg.beta1, cfg.beta2) == (128, 25, 2e-4, 2e-4, 0.5, 0.999)
    assert (cfg.loss, cfg.spectral_norm, cfg.d_batchnorm, cfg.ema_kimg, cfg.augment) == ("bce", False, True, 0, "none")
    assert cfg.grid_epochs == (1, 10, 25)
    kermany = make_config("kermany-dcgan")
    assert (kermany.batch_size, kermany.epochs) == (64, 200)


def test_stable_preset_has_every_ingredient():
    cfg = make_config("stable")
    assert cfg.spectral_norm and not cfg.d_batchnorm and cfg.loss in ("hinge", "ns")
    assert cfg.ema_kimg > 0 and cfg.lr_d > cfg.lr_g and cfg.augment == "diffaug" and cfg.augment_p > 0
    assert cfg.score_every_kimg == 2.0 and cfg.score_extractor == "offline"  # best checkpoint kept


@pytest.mark.parametrize("bad", [
    dict(bogus=1), dict(epochs="many"), dict(spectral_norm="maybe"), dict(loss="l2"), dict(image_size=48),
    dict(loss="hinge", label_smoothing=0.1), dict(batch_size=0), dict(precision="fp16"), dict(model="vae"),
])
def test_bad_fields_are_config_errors(bad):
    with pytest.raises(ConfigError):
        make_config("lungcancer-dcgan", **bad)


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("biggan")


def test_cli_flags_and_python_overrides_give_the_same_config(tmp_path):
    argv = ["train", "--preset", "stable", "--out", str(tmp_path / "run"), "--epochs", "3",
            "--spectral-norm", "false", "--classes", "a,b", "--kimg", "1.5", "--channels-last", "true",
            "--lr-d", "3e-4"]
    args = cli.build_parser(argv).parse_args(argv)
    from_cli = config_from_args(args)
    from_python = make_config("stable", epochs=3, spectral_norm=False, classes=["a", "b"], kimg=1.5,
                              channels_last=True, lr_d=3e-4)
    assert from_cli == from_python
    assert from_cli.epochs == 3 and from_cli.classes == ("a", "b") and from_cli.channels_last is True


def test_busy_cpu_warning_only_when_threads_would_wait(monkeypatch):
    cpu = torch.device("cpu")
    warn = device.busy_cpu_warning
    assert warn(cpu, threads=2, busy_cores=1.0, cores=2).startswith("warning: 1.0 of 2 CPU cores are busy")
    assert "OMP_NUM_THREADS=1" in warn(cpu, threads=2, busy_cores=1.0, cores=2)
    assert warn(cpu, threads=2, busy_cores=0.2, cores=2) is None     # a notebook's own leftovers: idle enough
    assert warn(cpu, threads=1, busy_cores=1.9, cores=2) is None     # one thread never waits on itself
    assert warn(cpu, threads=4, busy_cores=1.0, cores=16) is None    # enough free cores for every thread
    assert warn(torch.device("meta"), threads=2, busy_cores=2.0, cores=2) is None  # not a CPU run
    # the sample comes from psutil, and only when there is more than one thread
    import psutil

    calls = []
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: calls.append(interval) or 60.0)
    assert warn(cpu, threads=2, cores=2).startswith("warning: 1.2 of 2")
    assert warn(cpu, threads=1, cores=2) is None and calls == [0.25]


def test_device_choices():
    cpu = torch.device("cpu")
    assert device.resolve_precision("fp32", cpu) is None
    assert device.resolve_precision("bf16", cpu) is torch.bfloat16
    assert device.resolve_precision("auto", cpu) is (torch.bfloat16 if device.cpu_has_native_bf16() else None)
    assert device.resolve_channels_last("auto", cpu, None) is False
    assert device.resolve_channels_last("auto", cpu, torch.bfloat16) is True
    assert device.pick_device("cpu") == cpu
    with pytest.raises(ConfigError):
        device.resolve_precision("fp8", cpu)


def test_training_images_checks_and_caps(images):
    from cxr_utils.train import training_images

    capped = training_images(tiny(max_images=20, seed=1), images)
    assert torch.equal(capped, training_images(tiny(max_images=20, seed=2), images))  # not seed-dependent
    rows = {tuple(x.flatten()[:50].tolist()) for x in images}
    assert len(capped) == 20 and all(tuple(x.flatten()[:50].tolist()) in rows for x in capped)
    with pytest.raises(ConfigError, match="config expects"):
        training_images(tiny(), images[:, :1])
    with pytest.raises(ConfigError, match="larger than the data set"):
        training_images(tiny(batch_size=32), images[:20])


# ------------------------------------------------------------------------------------------- losses


def test_losses_against_hand_formulas():
    real = torch.tensor([2.0, -0.5, 0.3])
    fake = torch.tensor([-1.0, 0.7])
    sig = torch.sigmoid
    bce_d = -torch.log(sig(real)).mean() - torch.log(1 - sig(fake)).mean()
    assert torch.allclose(d_loss("bce", real, fake), bce_d)
    assert torch.allclose(d_loss("ns", real, fake), bce_d)  # same loss, softplus form
    assert torch.allclose(g_loss("bce", fake), -torch.log(sig(fake)).mean())
    assert torch.allclose(g_loss("ns", fake), -torch.log(sig(fake)).mean())
    smoothed = -(0.9 * torch.log(sig(real)) + 0.1 * torch.log(1 - sig(real))).mean() - torch.log(1 - sig(fake)).mean()
    assert torch.allclose(d_loss("bce", real, fake, smoothing=0.1), smoothed)
    # hinge: mean(relu(1 - r)) + mean(relu(1 + f)); r -> (0, 1.5, 0.7), f -> (0, 1.7)
    assert torch.allclose(d_loss("hinge", real, fake), torch.tensor(2.2 / 3 + 1.7 / 2))
    assert torch.allclose(g_loss("hinge", fake), torch.tensor(0.15))


# ------------------------------------------------------------------------------------ a tiny real run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, images):
    """4 epochs of the reference recipe (scaled down) on 64 phantom images; budget given in kimg."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny(kimg=0.256, epochs=1, base=16, latent_dim=32, grid_epochs=(1, 4), checkpoint_every=2)
    return train(cfg, run_dir, images=images, progress=False)


def test_discriminator_scores_move_apart_and_samples_change(tiny_run):
    h = tiny_run.history
    assert len(h) == 16 and tiny_run.epochs == 4  # 0.256 kimg = 256 images = 4 epochs of 64
    first_gap = h[0]["D_x"] - h[0]["D_G_z1"]
    last = h[-4:]
    d_x = np.mean([r["D_x"] for r in last])
    d_g = np.mean([r["D_G_z1"] for r in last])
    assert abs(first_gap) < 0.1 and d_x > 0.75 and d_g < 0.45 and d_x - d_g > 0.3
    a, b = (np.asarray(Image.open(tiny_run.run_dir / "samples" / f"epoch_00{e}.png"), float) for e in (1, 4))
    assert np.abs(a - b).mean() > 1.0  # grey levels


def test_run_folder_has_history_and_figures(tiny_run):
    run = tiny_run.run_dir
    for name in ["training_options.json", "stats.jsonl", "history.csv", "losses.png", "scores.png",
                 "progress.gif", "training-state.pt", "network-final.pt", "network-snapshot.pt"]:
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"epoch_00{e}.png" for e in range(1, 5)]
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 17))
    assert [r["epoch"] for r in rows] == [e for e in range(1, 5) for _ in range(4)]
    assert rows[-1]["kimg"] == pytest.approx(0.256)
    assert {"loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2", "time_s"} <= rows[0].keys()
    csv_lines = (run / "history.csv").read_text().splitlines()
    assert len(csv_lines) == 17 and csv_lines[0].startswith("iteration,epoch,kimg")
    assert Image.open(run / "progress.gif").n_frames == 4
    saved = json.loads((run / "training_options.json").read_text())
    assert saved["kimg"] == 0.256 and saved["base"] == 16


def test_time_budget_stops_after_the_iteration_that_reaches_it_and_resume_respects_it(tmp_path, images):
    run = tmp_path / "run"
    result = train(tiny(epochs=5, checkpoint_every=5, time_budget_s=1e-6), run, images=images, progress=False)
    # one iteration of the first epoch (64 images / batch 16 = 4 per epoch): the epoch ends early
    assert result.epochs == 1 and len(result.history) == 1 and result.kimg == 0.016
    assert (run / "training-state.pt").exists() and (run / "network-final.pt").exists()
    again = train(tiny(epochs=5, checkpoint_every=5, time_budget_s=1e-6), run, images=images, resume=True,
                  progress=False)
    assert again.epochs == 1  # its time is spent: nothing more is trained
    more = train(tiny(epochs=3, checkpoint_every=5, time_budget_s=None), run, images=images, resume=True,
                 progress=False)
    assert more.epochs == 3 and [r["epoch"] for r in more.history][-1] == 3
    with pytest.raises(ConfigError, match="time_budget_s"):
        tiny(time_budget_s=0)


def test_run_folder_is_not_overwritten_by_accident(tmp_path, images, capsys):
    run = tmp_path / "run"
    cfg = tiny(epochs=1)
    train(cfg, run, images=images, progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        train(cfg, run, images=images, progress=False)
    with pytest.raises(ConfigError, match="lr_d"):
        train(tiny(epochs=2, lr_d=1e-3), run, images=images, resume=True, progress=False)
    with pytest.raises(ConfigError):
        train(cfg, run, images=images, resume=True, overwrite=True, progress=False)
    with pytest.raises(RunError, match="nothing to resume"):
        train(cfg, tmp_path / "other", images=images, resume=True, progress=False)
    (run / "marker").write_text("old")
    train(cfg, run, images=images, overwrite=True, progress=False)
    assert "deleting the previous run" in capsys.readouterr().out and not (run / "marker").exists()


def test_resume_refuses_different_images(tmp_path, images):
    run = tmp_path / "run"
    train(tiny(epochs=1), run, images=images, progress=False)
    with pytest.raises(RunError, match="images differ"):
        train(tiny(epochs=2), run, images=images.flip(0), resume=True, progress=False)


# ------------------------------------------------------------------------------------- bitwise resume


@pytest.mark.parametrize("variant", [
    dict(),  # the reference recipe
    dict(preset="stable", precision="bf16", ema_kimg=0.05, augment_p=0.5, n_dis=2),
], ids=["reference", "stable-bf16-ema-augment-ndis2"])
def test_resume_is_bit_identical(tmp_path, images, variant):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny(epochs=2, **variant), straight, images=images, progress=False)
    train(tiny(epochs=1, **variant), split, images=images, progress=False)
    result = train(tiny(epochs=2, **variant), split, images=images, resume=True, progress=False)
    a = torch.load(straight / "training-state.pt", weights_only=True)
    b = torch.load(split / "training-state.pt", weights_only=True)
    for key in ("steps", "G_ema", "augment", "rng", "order", "history_len", "config"):
        assert_identical(a[key], b[key], key)
    a["counters"].pop("seconds"), b["counters"].pop("seconds")
    assert a["counters"] == b["counters"] == {"epoch": 2, "iteration": 8, "images": 128}
    h_straight = [json.loads(x) for x in (straight / "stats.jsonl").read_text().splitlines()]
    h_split = [json.loads(x) for x in (split / "stats.jsonl").read_text().splitlines()]
    assert without_time(h_split) == without_time(h_straight) == without_time(result.history)
    assert (straight / "samples/epoch_002.png").read_bytes() == (split / "samples/epoch_002.png").read_bytes()


# ------------------------------------------------------------------------------------------ kill -9

KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from cxr_utils.train import make_config, train
cfg = make_config("lungcancer-dcgan", image_size=16, base=4, latent_dim=8, batch_size=8, epochs=100000,
                  checkpoint_every=1, sample_every=100000, grid_epochs=(), n_fixed=4, precision="fp32")
x = torch.linspace(-1, 1, 16 * 3 * 16 * 16).reshape(16, 3, 16, 16)
train(cfg, sys.argv[1], images=x, resume=sys.argv[2] == "1", progress=False)
"""


def test_sigkill_never_corrupts_the_checkpoint(tmp_path):
    """Training that checkpoints every epoch (2 iterations) is killed at random moments; each time the
    checkpoint loads, resuming works, and the history has no gaps or duplicates."""
    run, rng = tmp_path / "run", random.Random(0)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    last_iteration = 0
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run), str(int(round_ > 0))], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        state = run / "training-state.pt"
        before = state.stat().st_mtime_ns if state.exists() else None
        deadline = time.monotonic() + 120
        while (not state.exists() or state.stat().st_mtime_ns == before) and proc.poll() is None:
            assert time.monotonic() < deadline  # wait for this process's first checkpoint
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.6))
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(state, weights_only=True)  # must never be torn
        torch.load(run / "network-snapshot.pt", weights_only=True)
        assert ckpt["counters"]["iteration"] >= last_iteration
        last_iteration = ckpt["counters"]["iteration"]
        rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()[: ckpt["history_len"]]]
        assert [r["iteration"] for r in rows] == list(range(1, last_iteration + 1))
    assert last_iteration > 2


# ---------------------------------------------------------------------------------------------- CLI


def test_train_cli_runs_refuses_and_resumes(tmp_path, monkeypatch, capsys):
    """`python -m cxr_utils train` on a folder source; a second call refuses, --resume extends it."""
    monkeypatch.chdir(tmp_path)  # relative paths (results/, data/cache) land in tmp_path
    rng = np.random.default_rng(0)
    (tmp_path / "xrays" / "normal").mkdir(parents=True)
    for i in range(32):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / "xrays" / "normal" / f"{i}.png")
    argv = ["train", "--preset", "lungcancer-dcgan", "--source", "xrays", "--out", "results/cli", "--epochs", "1",
            "--image-size", "32", "--base", "4", "--latent-dim", "8", "--batch-size", "16", "--precision", "fp32",
            "--grid-epochs", "1", "--no-progress"]
    assert cli.main(argv) == 0
    run = tmp_path / "results" / "cli"
    assert json.loads((run / "training_options.json").read_text())["source"] == "xrays"
    assert cli.main(argv) == 2 and "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "--out", "results/cli", "--resume", "--epochs", "2", "--no-progress"]) == 0
    rows = (run / "stats.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [1, 2, 3, 4]
    assert json.loads((run / "training_options.json").read_text())["epochs"] == 2


def test_steps_match_a_plain_reference_loop(images):
    """Our D and G steps (BCE on logits, summed D loss, D frozen in the G step) update the weights as the
    textbook loop does (BCELoss on sigmoid outputs, two D backwards), given the same init and noise."""
    from torch import nn

    from cxr_utils.models import build_discriminator, build_generator
    from cxr_utils.losses import GANSteps

    cfg = tiny()
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    G_ref, D_ref = build_generator(cfg), build_discriminator(cfg)
    G_ref.load_state_dict(G.state_dict())
    D_ref.load_state_dict(D.state_dict())
    steps = GANSteps(G, D, cfg, torch.device("cpu"), None)
    opt_d = torch.optim.Adam(D_ref.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    opt_g = torch.optim.Adam(G_ref.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    bce = nn.BCELoss()
    for i in range(3):
        real = images[16 * i: 16 * (i + 1)]
        torch.manual_seed(100 + i)
        ours = steps.d_step(real) | steps.g_step()
        torch.manual_seed(100 + i)
        D_ref.zero_grad()
        err_real = bce(D_ref(real), torch.ones(16))
        err_real.backward()
        fake = G_ref(torch.randn(16, cfg.latent_dim, 1, 1))
        err_fake = bce(D_ref(fake.detach()), torch.zeros(16))
        err_fake.backward()
        opt_d.step()
        G_ref.zero_grad()
        err_g = bce(D_ref(fake), torch.ones(16))
        err_g.backward()
        opt_g.step()
        assert ours["loss_D"].item() == pytest.approx((err_real + err_fake).item(), rel=1e-4)
        assert ours["loss_G"].item() == pytest.approx(err_g.item(), rel=1e-4)
    for mine, ref in [(G, G_ref), (D, D_ref)]:
        for (name, a), b in zip(mine.state_dict().items(), ref.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), name


# ----------------------------------------------------------------------------- best checkpoint (KID)

SCORED = dict(preset="stable", ema_kimg=0.05, score_every_kimg=0.032, score_n=24)  # a score every 2 iterations


def test_scoring_keeps_the_best_checkpoint_and_which_best_loads_it(tmp_path, images):
    from cxr_utils import metrics, runs

    run = tmp_path / "run"
    result = train(tiny(epochs=3, **SCORED), run, images=images, progress=False)
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    scored = [r for r in rows if r.get("kid") is not None]
    assert [r["iteration"] for r in scored] == [2, 4, 6, 8, 10, 12]  # every 32 images = 2 iterations of 16
    assert all(r["score_extractor"] == "offline" and r["kid_std"] >= 0 for r in scored)
    best_row = min(scored, key=lambda r: r["kid"])
    payload = torch.load(run / "network-best.pt", weights_only=True)
    assert payload["score"]["kid"] == best_row["kid"] and payload["score"]["iteration"] == best_row["iteration"]
    assert payload["kimg"] == pytest.approx(best_row["kimg"]) and result.best["kid"] == best_row["kid"]
    state = torch.load(run / "training-state.pt", weights_only=True)
    assert state["best"] == payload["score"]
    assert (run / "scores_kid.png").is_file() and (run / "network-final.pt").is_file()
    # which="best" loads those EMA weights; an independent scorer gives them the recorded KID
    cfg, G = runs.load_run(run, which="best")
    assert all(torch.equal(G.state_dict()[k], v) for k, v in payload["G_ema"].items())
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        again = metrics.CheckpointScorer(images, n=24, extractor="offline", seed=cfg.seed)(G)
    assert again["kid"] == pytest.approx(best_row["kid"], rel=1e-6, abs=1e-9)
    _, G_final = runs.load_run(run, which="final")
    if best_row["iteration"] != 12:
        assert not all(torch.equal(G.state_dict()[k], v) for k, v in G_final.state_dict().items())
    out = tmp_path / "gen"
    assert cli.main(["generate", str(run), "--which", "best", "--n", "3", "--out", str(out)]) == 0
    assert len(list(out.glob("sample_*.png"))) == 3


def test_scoring_leaves_the_training_trajectory_unchanged(tmp_path, images):
    plain, scored = tmp_path / "plain", tmp_path / "scored"
    train(tiny(epochs=2, **{**SCORED, "score_every_kimg": 0}), plain, images=images, progress=False)
    train(tiny(epochs=2, **SCORED), scored, images=images, progress=False)
    a = torch.load(plain / "training-state.pt", weights_only=True)
    b = torch.load(scored / "training-state.pt", weights_only=True)
    for key in ("steps", "G_ema", "augment", "rng", "order", "history_len"):
        assert_identical(a[key], b[key], key)
    assert a["best"] is None and b["best"]["kid"] is not None
    score_keys = {"kid", "kid_std", "fid", "score_extractor"}
    h_plain = [json.loads(x) for x in (plain / "stats.jsonl").read_text().splitlines()]
    h_scored = [{k: v for k, v in json.loads(x).items() if k not in score_keys}
                for x in (scored / "stats.jsonl").read_text().splitlines()]
    assert without_time(h_plain) == without_time(h_scored)
    assert (plain / "samples/epoch_002.png").read_bytes() == (scored / "samples/epoch_002.png").read_bytes()
    assert not (plain / "network-best.pt").exists()


def test_resume_with_scoring_is_bit_identical(tmp_path, images):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny(epochs=3, **SCORED), straight, images=images, progress=False)
    train(tiny(epochs=1, **SCORED), split, images=images, progress=False)
    train(tiny(epochs=3, **SCORED), split, images=images, resume=True, progress=False)
    a = torch.load(straight / "training-state.pt", weights_only=True)
    b = torch.load(split / "training-state.pt", weights_only=True)
    for key in ("steps", "G_ema", "augment", "rng", "order", "history_len", "config", "best"):
        assert_identical(a[key], b[key], key)
    best_a = torch.load(straight / "network-best.pt", weights_only=True)
    best_b = torch.load(split / "network-best.pt", weights_only=True)
    best_a["config"].pop("epochs"), best_b["config"].pop("epochs")  # the split run's first segment asked for 1
    assert_identical(best_a, best_b, "network-best")
    h_straight = [json.loads(x) for x in (straight / "stats.jsonl").read_text().splitlines()]
    h_split = [json.loads(x) for x in (split / "stats.jsonl").read_text().splitlines()]
    assert without_time(h_split) == without_time(h_straight)


# ----------------------------------------------------------------------------- standing statistics


def test_standing_statistics_are_the_average_of_batch_statistics():
    """Independent computation: hooks record each BatchNorm's input per batch; the running mean must be
    the mean of the per-batch means, the running variance the mean of the per-batch unbiased variances."""
    from cxr_utils.models import build_generator
    from cxr_utils.train import standing_statistics

    torch.manual_seed(0)
    cfg = tiny("stable")
    G = build_generator(cfg).eval()
    norms = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = {k: v.clone() for k, v in G.state_dict().items()}
    seen = {id(m): [] for m in norms}
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen[id(m)].append(inp[0].detach().clone()))
             for m in norms]
    rng_before = torch.get_rng_state()
    assert standing_statistics(G, cfg.latent_dim, n_batches=3, batch_size=8, seed=5)
    for h in hooks:
        h.remove()
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training streams are untouched
    assert not G.training and all(m.momentum == 0.1 for m in norms)
    for m in norms:
        xs = seen[id(m)]
        assert len(xs) == 3
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.permute(1, 0, 2, 3).flatten(1).var(dim=1, unbiased=True) for x in xs]).mean(0)
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.running_var, var, rtol=1e-4, atol=1e-5)
    weights = {k: v for k, v in G.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(v, before[k]) for k, v in weights.items())  # only the statistics moved
    again = build_generator(cfg)
    again.load_state_dict(before)
    standing_statistics(again, cfg.latent_dim, n_batches=3, batch_size=8, seed=5)
    assert_identical(again.state_dict(), G.state_dict(), "same seed, same statistics")


def test_ema_generator_is_saved_with_its_own_standing_statistics(tmp_path, images):
    """The saved EMA generator's BatchNorm statistics are its standing statistics (not G's copied
    running statistics); the raw G's stay its own; a run without EMA (the reference) is untouched."""
    from cxr_utils import runs
    from cxr_utils.models import build_generator
    from cxr_utils.train import standing_statistics

    cfg = tiny("stable", ema_kimg=0.05)
    train(cfg, tmp_path / "ema", images=images, progress=False)
    payload = torch.load(tmp_path / "ema" / "network-final.pt", weights_only=True)
    G = build_generator(cfg)
    G.load_state_dict(payload["G_ema"])
    expected = build_generator(cfg)
    expected.load_state_dict(payload["G_ema"])
    standing_statistics(expected, cfg.latent_dim, seed=cfg.seed)
    assert_identical(G.state_dict(), expected.state_dict(), "G_ema")
    stats = [k for k in payload["G"] if k.endswith("running_mean")]
    assert stats and not all(torch.equal(payload["G"][k], payload["G_ema"][k]) for k in stats)
    _, loaded = runs.load_run(tmp_path / "ema")
    assert_identical(loaded.state_dict(), expected.state_dict(), "load_run")


# ------------------------------------------------------------------------------------ held-out part


def test_holdout_fraction_keeps_a_fixed_disjoint_part_of_the_source_apart():
    from cxr_utils.train import held_out_images, training_images

    everything = training_images(tiny(image_size=64, source="phantom:40"), progress=False)
    cfg = tiny(image_size=64, source="phantom:40", holdout_fraction=0.25)
    train_part, held = training_images(cfg, progress=False), held_out_images(cfg, progress=False)
    assert (len(everything), len(train_part), len(held)) == (40, 30, 10)
    key = lambda x: x.numpy().tobytes()  # noqa: E731
    all_keys = [key(x) for x in everything]
    train_keys, held_keys = {key(x) for x in train_part}, {key(x) for x in held}
    assert train_keys.isdisjoint(held_keys) and train_keys | held_keys == set(all_keys)
    other_seed = tiny(image_size=64, source="phantom:40", holdout_fraction=0.25, seed=7)  # the split never follows cfg.seed
    assert torch.equal(held_out_images(other_seed, progress=False), held)
    assert len(held_out_images(tiny(image_size=64, source="phantom:40"), progress=False)) == 0
    with pytest.raises(ConfigError, match="hold out before passing"):
        training_images(cfg, everything)
    with pytest.raises(ConfigError, match="holdout_fraction"):
        tiny(holdout_fraction=1.0)
