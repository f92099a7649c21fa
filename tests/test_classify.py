"""Classifier: 1-channel backbones, local-only ImageNet weights, seeded training, metrics and CIs."""

import dataclasses

import numpy as np
import pytest
import torch

from cxr_utils.classify import (ClassifierConfig, CLASSIFIER_PRESETS, build_classifier, classic_augment,
                                evaluate_classifier, load_classifier, predict_scores, save_classifier,
                                train_classifier)
from cxr_utils import phantom
from cxr_utils.config import apply_overrides, from_preset
from cxr_utils.errors import ConfigError

SMOKE = from_preset(ClassifierConfig, CLASSIFIER_PRESETS, "smoke", {"precision": "fp32", "device": "cpu"})


def _blobs(n: int, size: int = 16, seed: int = 0, classes: int = 2):
    """Noise images; class k > 0 adds a bright square at a class-specific place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g) * 0.3 - 0.3
    y = torch.arange(n) % classes
    for k in range(1, classes):
        r = (k - 1) * size // 2
        x[y == k, :, r:r + size // 4, size // 4:size // 2] += 0.8
    return x.clamp(-1, 1), y


# -------------------------------------------------------------------------------------- models


def test_resnet50_takes_one_channel():
    model = build_classifier("resnet50", num_classes=2, image_size=32, seed=0)
    assert model.net.conv1.in_channels == 1
    assert model.weights == "scratch"
    with torch.no_grad():
        assert model.eval()(torch.zeros(3, 1, 40, 40)).shape == (3, 2)


@pytest.mark.parametrize("backbone", ["resnet18", "smallcnn"])
def test_other_backbones_forward_multiclass(backbone):
    model = build_classifier(backbone, num_classes=3, image_size=32, seed=0).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)  # RGB input is averaged to grey


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache; any download attempt fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def test_missing_imagenet_weights_fall_back_to_scratch(empty_hub):
    with pytest.warns(UserWarning, match="not found"):
        model = build_classifier("resnet50", pretrained=True, image_size=32)
    assert model.weights.startswith("scratch (imagenet weights not found at ")
    assert str(empty_hub) in model.weights
    with pytest.warns(UserWarning):
        model = build_classifier("resnet18", pretrained=True, weights_path=empty_hub / "nope.pth")
    assert model.weights == f"scratch (imagenet weights not found at {empty_hub / 'nope.pth'})"


def test_local_imagenet_weights_are_used_with_grey_conv1(empty_hub):
    from torchvision.models import resnet18

    reference = resnet18(weights=None).state_dict()
    (empty_hub / "checkpoints").mkdir()
    torch.save(reference, empty_hub / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_classifier("resnet18", pretrained=True, image_size=32)
    assert model.weights == "imagenet"
    assert torch.equal(model.net.conv1.weight, reference["conv1.weight"].mean(dim=1, keepdim=True))
    assert torch.equal(model.net.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    assert model.net.fc.out_features == 2


def test_weights_label_reaches_history_and_results(empty_hub):
    x, y = _blobs(16, size=16)
    cfg = apply_overrides(SMOKE, backbone="resnet18", pretrained=True, image_size=16, epochs=1)
    with pytest.warns(UserWarning):
        model, history = train_classifier(cfg, x, y, x, y, progress=False)
    result = evaluate_classifier(model, x, y, n_boot=10)
    assert history["weights"] == result["weights"] == model.weights
    assert result["weights"].startswith("scratch (imagenet weights not found")


def test_config_is_overridable_and_checked():
    cfg = apply_overrides(ClassifierConfig(), {"backbone": "resnet18", "epochs": "7", "augment": "none"})
    assert (cfg.backbone, cfg.epochs, cfg.augment) == ("resnet18", 7, "none")
    with pytest.raises(ConfigError, match="backbone"):
        apply_overrides(ClassifierConfig(), backbone="vgg16")
    with pytest.raises(ConfigError, match="epochs"):
        apply_overrides(ClassifierConfig(), epochs=0)


def test_classic_augment_without_magnitudes_only_flips():
    x, _ = _blobs(8, size=16)
    out = classic_augment(x, torch.Generator().manual_seed(0), max_degrees=0, max_shift=0, max_zoom=0,
                          max_brightness=0, max_contrast=0)
    for a, b in zip(x, out):
        assert torch.allclose(b, a, atol=1e-5) or torch.allclose(b, a.flip(-1), atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-5) and not torch.allclose(out, x.flip(-1), atol=1e-5)


def test_classic_augment_is_seeded_and_in_range():
    x, _ = _blobs(8, size=16)
    a = classic_augment(x, torch.Generator().manual_seed(1))
    b = classic_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x)


# ------------------------------------------------------------------------------------ training


def test_training_is_deterministic_and_restores_the_best_epoch():
    x, y = _blobs(64, seed=0)
    vx, vy = _blobs(32, seed=1)
    cfg = apply_overrides(SMOKE, image_size=16, epochs=4)
    (m1, h1), (m2, h2) = (train_classifier(cfg, x, y, vx, vy, progress=False) for _ in range(2))
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in h1["epochs"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in h2["epochs"]]
    tensors = [(*m.parameters(), *m.buffers()) for m in (m1, m2)]
    assert all(torch.equal(a, b) for a, b in zip(*tensors))
    p = predict_scores(m1, vx)
    best_loss = -np.mean(np.log(np.where(vy.numpy() == 1, p, 1 - p)))
    assert best_loss == pytest.approx(h1["best_val_loss"], rel=1e-5)
    assert h1["best_val_auc"] == max(row["val_auc"] for row in h1["epochs"])


def test_early_stopping_waits_patience_epochs():
    x, _ = _blobs(64, seed=0)
    y = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(0))  # nothing to learn
    cfg = apply_overrides(SMOKE, image_size=16, epochs=12, patience=2, monitor="loss", lr=0.01)
    _, history = train_classifier(cfg, x, y, x[:32], y[:32], progress=False)
    assert history["stopped_early"]
    assert len(history["epochs"]) == history["best_epoch"] + 2


def test_evaluate_uses_the_validation_threshold():
    x, y = _blobs(96, seed=0)
    cfg = apply_overrides(SMOKE, image_size=16, epochs=3)
    model, history = train_classifier(cfg, x[:64], y[:64], x[64:], y[64:], progress=False)
    result = evaluate_classifier(model, *_blobs(64, seed=2), n_boot=50)
    assert result["threshold_rule"] == "youden (validation)" == history["threshold_rule"]
    assert result["threshold"] == model.threshold == history["threshold"]
    assert result["auc"] > 0.9
    fixed = evaluate_classifier(model, *_blobs(64, seed=2), threshold=0.5, n_boot=0)
    assert fixed["threshold_rule"] == "fixed 0.5" and "auc_ci_low" not in fixed


def test_multiclass_training_and_metrics():
    x, y = _blobs(96, seed=0, classes=3)
    cfg = dataclasses.replace(SMOKE, image_size=16, epochs=3)
    model, _ = train_classifier(cfg, x[:72], y[:72], x[72:], y[72:], progress=False)
    result = evaluate_classifier(model, x[72:], y[72:], n_boot=20)
    assert model.num_classes == 3 and "sensitivity" not in result and "threshold_rule" not in result
    assert result["auc_ci_low"] <= result["auc"] <= result["auc_ci_high"]
    assert predict_scores(model, x[:5]).shape == (5, 3)


def test_saved_model_keeps_threshold_and_weights_label(tmp_path):
    x, y = _blobs(64, seed=0)
    model, _ = train_classifier(apply_overrides(SMOKE, image_size=16, epochs=2), x[:48], y[:48], x[48:], y[48:],
                                progress=False)
    save_classifier(model, tmp_path / "clf.pt")
    again = load_classifier(tmp_path / "clf.pt")
    assert (again.threshold, again.threshold_rule, again.weights) == (model.threshold, model.threshold_rule,
                                                                      "scratch")
    assert np.array_equal(predict_scores(again, x), predict_scores(model, x))


def _phantom_with_visible_lesions(n: int, size: int = 64, seed: int = 0):
    """Phantom anatomy with one conspicuous round lesion (peak +1.0, sigma 3 px) in a lung of label-1 images.

    A planted lesion at a random lung position checks that training learns a position-independent
    finding on realistic backgrounds; the phantom's own nodule class is checked below.
    """
    p = phantom.render(range(n), size=size, seed=seed, with_nodules=False)
    x = torch.from_numpy(p.images).float().div(127.5).sub(1).unsqueeze(1)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(p.labels):
        lung = np.argwhere(p.lung_masks[i])
        cy, cx = lung[rng.integers(len(lung))]
        x[i, 0] += torch.from_numpy(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0 ** 2))).float()
    return x.clamp(-1, 1), torch.from_numpy(p.labels)


def test_smallcnn_detects_lesions_on_phantom_radiographs():
    x, y = _phantom_with_visible_lesions(700)
    cfg = apply_overrides(SMOKE, image_size=64, epochs=10, augment="none")
    model, history = train_classifier(cfg, x[:400], y[:400], x[400:500], y[400:500], progress=False)
    result = evaluate_classifier(model, x[500:], y[500:], n_boot=200)
    assert result["auc"] > 0.9 and result["auc_ci_low"] > 0.8, (result, history["epochs"])


def test_smallcnn_detects_the_phantoms_own_nodule_class():
    """The study's sanity check: real images only, the phantom's normal vs nodule labels, AUC > 0.9.

    1,000 training / 200 validation / 400 test images, 10 epochs, 64 px, seed 0, fp32, one thread:
    20-55 s of training on the 2-core machine, depending on its load. Measured test AUC for seeds
    0-3: 0.977 / 0.979 / 0.963 / 0.985 (8 epochs: 0.925-0.965; 32 px: <= 0.972); with the labels
    shuffled, 0.51. A phantom whose nodules a CNN cannot see fails here.
    """
    p = phantom.generate(1600, size=64, seed=0)
    x = torch.from_numpy(p.images).float().div(127.5).sub(1).unsqueeze(1)
    y = torch.from_numpy(p.labels)
    assert 0.45 < float(y.float().mean()) < 0.55
    cfg = apply_overrides(SMOKE, image_size=64, epochs=10, augment="none", seed=0)
    model, history = train_classifier(cfg, x[:1000], y[:1000], x[1000:1200], y[1000:1200], progress=False)
    result = evaluate_classifier(model, x[1200:], y[1200:], n_boot=200)
    assert result["auc"] > 0.9 and result["auc_ci_low"] > 0.85, (result, history["epochs"])
