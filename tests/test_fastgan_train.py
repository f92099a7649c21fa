"""FastGAN through the shared loop: registry and config, the per-head hinge and reconstruction losses
against hand formulas, bit-exact resume, frozen feature network after training, two gloo processes in
lockstep, a short phantom run that moves toward the data, and the tools that read a FastGAN run.

The feature network is a randomly initialised timm ``tf_efficientnet_lite0`` (seeded; no weights file),
put in place of ``cxr_utils.pretrained``'s loader.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from helpers import assert_identical

from cxr_utils import explorer, phantom, pretrained, runs
from cxr_utils.ada import AdaptiveAugment, from_train_config
from cxr_utils.errors import ConfigError
from cxr_utils.images import from_uint8
from cxr_utils.models import MODELS, family
from cxr_utils.models.fastgan import HybridDiscriminator, ScratchDiscriminator, build_discriminator
from cxr_utils.models.fastgan_loss import FastGANSteps, hinge_d_loss, hinge_g_loss
from cxr_utils.train import make_config, train

ROOT = Path(__file__).resolve().parents[1]

# Tiny hybrid recipe (scratch heads + reconstruction + projected heads): 64 px gray, width 1/8, batch 4.
TINY = dict(model="fastgan", image_size=64, channels=1, fastgan_width=0.125, latent_dim=16, batch_size=4,
            kimg=None, epochs=2, precision="fp32", n_fixed=8, grid_epochs=[1], checkpoint_every=1,
            d_arch="hybrid", feature_size=32, recon_weight=1.0, augment="diffaug", augment_p=0.5,
            ema_kimg=0.01, ema_rampup=0.05)


def lite0_features():
    """A seeded random EfficientNet-Lite0 feature network (the shape of the ImageNet one)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(123)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True)
    torch.random.set_rng_state(gen_state)  # building D must not move the training RNG differently
    return net.eval()


@pytest.fixture(autouse=True)
def random_lite0(monkeypatch):
    monkeypatch.setattr(pretrained, "efficientnet_lite0_features", lite0_features, raising=False)


def phantom_images(n: int = 8) -> torch.Tensor:
    """``n`` phantom radiographs at 64 px, one channel, in [-1, 1]."""
    return from_uint8(torch.from_numpy(phantom.generate(n, 64, seed=0).images))[:, None]


def without_time(history):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


# -------------------------------------------------------------------------------------- config, losses


def test_registry_presets_and_prefix_rule():
    assert "fastgan" in MODELS and family("fastgan").Steps is FastGANSteps
    cpu = make_config(model="fastgan")  # the family's default preset
    assert (cpu.model, cpu.image_size, cpu.channels, cpu.loss) == ("fastgan", 64, 1, "hinge")
    assert (cpu.lr_g, cpu.lr_d, cpu.beta1, cpu.beta2) == (2e-4, 2e-4, 0.5, 0.999)
    assert (cpu.augment, cpu.augment_pipeline, cpu.ema_rampup) == ("diffaug", "radiograph", 0.05)
    assert make_config("cpu", model="fastgan") == make_config("fastgan-cpu") == cpu
    gpu = make_config("projected-gpu", model="fastgan")
    assert gpu == make_config("fastgan-projected-gpu")
    assert (gpu.d_arch, gpu.feature_size, gpu.recon_weight) == ("projected", 224, 0.0) and gpu.image_size >= 128


@pytest.mark.parametrize("bad, message", [
    (dict(image_size=32), "fastgan image_size must be 64, 128 or 256"),
    (dict(loss="bce"), "fastgan trains with loss='hinge'"),
    (dict(d_arch="projected", recon_weight=1.0), "recon_weight > 0 needs a scratch part"),
    (dict(d_arch="patch"), "d_arch"),
    (dict(fastgan_width=0.0), "fastgan_width must be > 0"),
    (dict(feature_size=16), "feature_size must be >= 32"),
    (dict(recon_weight=-1.0), "recon_weight must be >= 0"),
    (dict(augment_pipeline="colour"), "augment_pipeline must be one of"),
    (dict(compile=True), "compile is wired for dcgan only"),
    (dict(fastgan_upsample="cubic"), "fastgan_upsample"),
])
def test_bad_fastgan_fields_are_one_line_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_config(model="fastgan", **bad)
    assert "\n" not in str(err.value)


def test_detail_head_is_a_fastgan_option():
    with pytest.raises(ConfigError, match="detail_head is a FastGAN option") as err:
        make_config("stable", detail_head=True)
    assert "\n" not in str(err.value)
    assert make_config(model="fastgan", detail_head=True).detail_head is True


def test_radiograph_pipeline_has_no_colour_ops_and_keeps_gray_gray():
    cfg = make_config(model="fastgan", augment_p=1.0)
    aug = from_train_config(cfg)
    assert aug.ops == {"xint", "cutout", "brightness", "contrast"} and aug.mode == "fixed"
    torch.manual_seed(0)
    x = phantom_images(4).repeat(1, 3, 1, 1)  # gray as RGB stays gray: no hue, no saturation
    y = aug(x)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2]) and not torch.equal(x, y)
    assert from_train_config(make_config("stable")).ops == AdaptiveAugment("diffaugment").ops  # default kept


def test_hinge_losses_average_each_head_then_the_heads():
    real = [torch.tensor([[[[0.5, 2.0], [-1.0, 0.0]]]]), torch.tensor([[[[3.0]]], [[[0.0]]]])]
    fake = [torch.tensor([[[[-2.0, 0.0], [1.0, -0.5]]]]), torch.tensor([[[[-1.5]]], [[[0.5]]]])]
    # head 0: real relu(1 - x) = .5, 0, 2, 1 -> .875; fake relu(1 + x) = 0, 1, 2, .5 -> .875
    # head 1: real 0, 1 -> .5; fake 0, 1.5 -> .75.  Mean over heads: (1.75 + 1.25) / 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.5)
    # G: -(mean(-2, 0, 1, -.5) + mean(-1.5, .5)) / 2 = -(-.375 - .5) / 2
    assert hinge_g_loss(fake).item() == pytest.approx(0.4375)


def test_d_step_adds_the_weighted_l1_reconstruction_of_the_augmented_reals():
    cfg = make_config(**{**TINY, "d_arch": "scratch", "augment": "none", "recon_weight": 2.5})
    torch.manual_seed(0)
    G, D = family("fastgan").build_generator(cfg), build_discriminator(cfg)
    assert isinstance(D, ScratchDiscriminator) and D.decoder is not None
    steps = FastGANSteps(G, D, cfg, torch.device("cpu"), None)
    real = phantom_images(4)
    state = {k: v.clone() for k, v in D.state_dict().items()}
    torch.manual_seed(5)
    stats = steps.d_step(real)
    D.load_state_dict(state)  # recompute the loss by hand from the same weights and latents
    torch.manual_seed(5)
    z = torch.randn(4, 16)
    with torch.no_grad():
        logits, recon = D.forward_with_reconstruction(real)
        fake_logits = D(G(z))
        target = F.interpolate(real, size=(32, 32), mode="area")
    assert stats["recon_l1"].item() == pytest.approx((recon - target).abs().mean().item(), rel=1e-5)
    assert stats["loss_D"].item() == pytest.approx(hinge_d_loss(logits, fake_logits).item(), rel=1e-5)
    # without the weight there is no decoder at all (and no reconstruction stat)
    off = make_config(**{**TINY, "d_arch": "scratch", "recon_weight": 0.0})
    assert build_discriminator(off).decoder is None


# ----------------------------------------------------------------------------------- resume, frozen


def test_resume_is_bit_identical_and_the_frozen_network_never_changes(tmp_path):
    images = phantom_images(8)
    train(make_config(**{**TINY, "epochs": 1}), tmp_path / "split", images=images, progress=False)
    train(make_config(**TINY), tmp_path / "split", images=images, resume=True, progress=False)
    straight = train(make_config(**TINY), tmp_path / "straight", images=images, progress=False)
    a = torch.load(tmp_path / "straight" / "training-state.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "training-state.pt", weights_only=True)
    for key in ("steps", "G_ema", "augment", "rng", "order", "history_len"):
        assert_identical(a[key], b[key], key)
    assert {**a["counters"], "seconds": 0} == {**b["counters"], "seconds": 0} == dict(
        epoch=2, iteration=4, images=16, seconds=0)
    rows = [[json.loads(line) for line in (tmp_path / r / "stats.jsonl").read_text().splitlines()]
            for r in ("straight", "split")]
    assert without_time(rows[0]) == without_time(rows[1]) and len(rows[0]) == 4
    assert {"recon_l1", "D_real", "D_fake", "augment_p"} <= set(straight.history[-1])
    assert straight.history[-1]["augment_p"] == 0.5  # fixed p
    # the projected part's frozen tensors (Lite0 weights, BN statistics, CCM/CSM) are exactly a fresh
    # build's after 4 steps, while its heads and the scratch part trained
    fresh = build_discriminator(make_config(**TINY)).state_dict()
    trained = a["steps"]["D"]
    frozen = [k for k in fresh if k.startswith(("projected.features.", "projected.projection."))]
    assert len(frozen) > 200 and any("running_var" in k for k in frozen)
    for k in frozen:
        assert torch.equal(trained[k], fresh[k]), k
    moved = [k for k in fresh if k.startswith(("projected.heads.", "scratch.")) and "weight" in k
             and not torch.equal(trained[k], fresh[k])]
    assert len(moved) > 10
    # the optimiser holds the trainable parameters only
    n_trainable = sum(1 for _ in build_discriminator(make_config(**TINY)).parameters())
    assert len(a["steps"]["opt_d"]["state"]) == n_trainable


def test_detail_head_trains_through_the_loop_and_resumes_exactly(tmp_path):
    """The detail discriminator is one more head for the loss: its weights train, the run resumes to the
    same state, and the saved D carries it (a run without it has no such keys)."""
    tiny = {**TINY, "d_arch": "projected", "recon_weight": 0.0, "detail_head": True}
    images = phantom_images(8)
    train(make_config(**{**tiny, "epochs": 1}), tmp_path / "split", images=images, progress=False)
    one = torch.load(tmp_path / "split" / "training-state.pt", weights_only=True)["steps"]["D"]
    train(make_config(**tiny), tmp_path / "split", images=images, resume=True, progress=False)
    train(make_config(**tiny), tmp_path / "straight", images=images, progress=False)
    a = torch.load(tmp_path / "straight" / "training-state.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "training-state.pt", weights_only=True)
    for key in ("steps", "G_ema", "rng"):
        assert_identical(a[key], b[key], key)
    detail = [k for k in one if k.startswith("detail.") and k.endswith("original")]
    assert len(detail) == 4  # four spectral-norm convs
    # the second epoch's two D steps moved every one of them
    assert all(not torch.equal(a["steps"]["D"][k], one[k]) for k in detail)
    assert not any(k.startswith("detail.") for k in build_discriminator(
        make_config(**{**tiny, "detail_head": False})).state_dict())


# ----------------------------------------------------------------------------- two gloo processes

SCRIPT = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
import test_fastgan_train as TF
from cxr_utils import distributed, pretrained
from cxr_utils import train as T

pretrained.efficientnet_lite0_features = TF.lite0_features
out, rank = Path(sys.argv[1]), int(__import__("os").environ["RANK"])
built = []
build = T._build
T._build = lambda *a, **k: built.append(build(*a, **k)) or built[-1]
cfg = T.make_config(**{**TF.TINY, "batch_size": 8, "augment_p": 0.0})
result = T.train(cfg, out / "ddp", images=TF.phantom_images(16), progress=False)
torch.save({"steps": built[-1].steps.state_dict(), "history": result.history}, out / f"rank{rank}.pt")
distributed.cleanup()
"""


def test_two_gloo_processes_stay_in_lockstep_and_match_one_process(tmp_path):
    """Two processes on halves of a global batch of 8 (2 epochs of 2 steps): weights, optimisers and
    the frozen feature network identical on both ranks; the first step's D(x) equals one process's."""
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "script.py"), str(tmp_path), str(Path(__file__).parent)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    s0, s1 = r0["steps"], r1["steps"]
    # BatchNorm running statistics of G and of D's reconstruction decoder are per process (each sees
    # its own half of the batch; in training mode neither is read); everything else is bitwise equal,
    # the frozen feature network included
    for net in ("G", "D"):
        differ = {k for k in s0[net] if not torch.equal(s0[net][k], s1[net][k])}
        assert differ == {k for k in s0[net] if "running_" in k and (net == "G" or "decoder" in k)}, net
    assert_identical(s0["opt_g"], s1["opt_g"], "opt_g")
    assert_identical(s0["opt_d"], s1["opt_d"], "opt_d")
    fresh = build_discriminator(make_config(**TINY)).state_dict()
    for k in (k for k in fresh if k.startswith("projected.features.")):
        assert torch.equal(s0["D"][k], fresh[k]), k
    assert [r["iteration"] for r in r0["history"]] == [1, 2, 3, 4]
    one = train(make_config(**{**TINY, "batch_size": 8, "augment_p": 0.0, "epochs": 1}), tmp_path / "one",
                images=phantom_images(16), progress=False).history[0]
    two = r0["history"][0]
    assert two["D_x"] == pytest.approx(one["D_x"], abs=1e-6)  # reals and D identical before D's update
    assert two["loss_D"] == pytest.approx(one["loss_D"], abs=2e-3)  # G's BatchNorm: per-process statistics


# ------------------------------------------------------------------------------- learning, tools


def _distance_to_data(fake: torch.Tensor, real: torch.Tensor) -> float:
    """L1 distance of mean images plus L1 distance of 32-bin intensity histograms, in numpy."""
    f, r = fake.numpy()[:, 0], real.numpy()[:, 0]
    mean_gap = float(np.abs(f.mean(0) - r.mean(0)).mean())
    bins = np.linspace(-1, 1, 33)
    hf, _ = np.histogram(f, bins=bins)
    hr, _ = np.histogram(r, bins=bins)
    return mean_gap + float(np.abs(hf / hf.sum() - hr / hr.sum()).sum())


def test_short_phantom_run_moves_toward_the_data_and_every_tool_reads_it(tmp_path):
    """Scratch D, 64 phantom images, batch 8, lr 1e-3 (a short budget), no EMA: the distance of 64
    samples to 16 held-out phantom images shrinks from the first checkpoint (epoch 1) to the last
    (epoch 5, 40 steps). Measured: seed 0 2.33 -> 0.94, seed 1 2.25 -> 0.81 (the histograms of the
    first samples barely overlap the data's: eval-mode BatchNorm statistics are still near their
    initial values)."""
    images = phantom_images(80)
    train_imgs, held_out = images[:64], images[64:]
    cfg = dict(TINY, d_arch="scratch", batch_size=8, ema_kimg=0.0, lr_g=1e-3, lr_d=1e-3)
    run = tmp_path / "run"
    train(make_config(**{**cfg, "epochs": 1}), run, images=train_imgs, progress=False)
    first = _distance_to_data(runs.sample(runs.load_run(run)[1], 64, seed=3), held_out)
    train(make_config(**{**cfg, "epochs": 5}), run, images=train_imgs, resume=True, progress=False)
    _, G = runs.load_run(run)
    last = _distance_to_data(runs.sample(G, 64, seed=3), held_out)
    assert last < 0.6 * first, (first, last)
    # the latent explorer works in z-space on it
    space = explorer.latent_space(G)
    assert type(space).__name__ == "LatentSpace" and space.dim == 16
    strip = explorer.interpolation_strip(G, 0, 1, steps=3)
    assert strip.shape[:3] == (3, 64, 64) and strip.dtype == np.uint8


def test_cli_generate_evaluate_compare_and_study_accept_fastgan(tmp_path, monkeypatch, capsys):
    """`train --model fastgan --preset cpu` from the CLI, `generate` and evaluate's `--fake RUN` reader on
    its run; compare's FastGAN contenders and the study's `fastgan-cpu` generator preset."""
    from cxr_utils import cli, compare, evaluate, study

    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "fastgan", "--preset", "cpu", "--source", "phantom:8", "--out", "run",
            "--fastgan-width", "0.125", "--latent-dim", "8", "--batch-size", "4", "--kimg", "0.008",
            "--n-fixed", "4", "--precision", "fp32", "--no-progress"]
    assert cli.main(args) == 0
    saved = json.loads((tmp_path / "run" / "training_options.json").read_text())
    assert (saved["model"], saved["d_arch"], saved["augment_pipeline"], saved["channels"]) == (
        "fastgan", "projected", "radiograph", 1)
    assert cli.main(["generate", "run", "--n", "3", "--out", "gen"]) == 0
    assert len(list((tmp_path / "gen").glob("*.png"))) == 3
    fake, info, cfg = evaluate.load_fake(str(tmp_path / "run"), 5, seed=0, image_size=None, progress=False)
    assert fake.shape == (5, 1, 64, 64) and info["kind"] == "run" and cfg.model == "fastgan"
    ccfg = compare.make_config(contenders=["FastGAN scratch", "FastGAN projected", "FastGAN hybrid"])
    built = {n: compare.contender_config(ccfg, n, 1.0, 400) for n in ccfg.contenders}
    assert [(c.model, c.d_arch, c.channels) for c in built.values()] == [
        ("fastgan", "scratch", 1), ("fastgan", "projected", 1), ("fastgan", "hybrid", 1)]
    assert compare.make_config().contenders == compare.STANDARD_CONTENDERS  # the default set is unchanged
    scfg = study.make_study_config(generators=["fastgan-cpu"])
    scfg.validate()
    assert scfg.generators == ("fastgan-cpu",)
