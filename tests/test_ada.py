"""The ADA pipeline: each operation, exactness at p = 0, the adaptation of p, and its state."""

from types import SimpleNamespace

import pytest
import torch

from cxr_utils.ada import ALL_OPS, COLOR_OPS, GEOMETRIC_OPS, PIPELINES, AdaptiveAugment, from_train_config
from cxr_utils.errors import ConfigError


def _images(n=4, c=1, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _only(op, p=1.0, **kw):
    return AdaptiveAugment(pipeline=(op,), mode="fixed", p=p, **kw)


# --------------------------------------------------------------------------------------- operations

@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", ALL_OPS)
def test_each_op_keeps_shape_and_range_and_passes_gradients(op, channels):
    torch.manual_seed(0)
    x = _images(c=channels).requires_grad_(True)
    y = _only(op)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if op in GEOMETRIC_OPS or op == "cutout":  # resampling/masking: convex combinations of inputs (or 0)
        assert y.min() >= x.min() - 1e-5 and y.max() <= x.max() + 1e-5
    else:
        assert y.abs().max() < 5
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_identity_at_p_zero_is_exact_and_draws_nothing():
    x = _images(c=3)
    for pipeline in PIPELINES:
        state = torch.get_rng_state()
        assert AdaptiveAugment(pipeline=pipeline, p=0.0)(x) is x
        assert torch.equal(torch.get_rng_state(), state)


def test_xflip_and_rotate90_are_exact_pixel_permutations():
    torch.manual_seed(0)
    x = _images(n=32)
    y = _only("xflip")(x)
    flipped = torch.tensor([torch.allclose(a, b.flip(-1), atol=1e-6) for a, b in zip(y, x)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(y, x)])
    assert (flipped | kept).all() and flipped.any() and kept.any()  # flip chosen at random when applied
    y = _only("rotate90")(x)
    for a, b in zip(y, x):
        assert any(torch.allclose(a, torch.rot90(b, k, dims=(1, 2)), atol=1e-6) for k in range(4))


def test_integer_translation_moves_whole_pixels_with_reflection():
    torch.manual_seed(0)
    x = _images(n=16)
    y = _only("xint")(x)
    for a, b in zip(y, x):
        # Each output pixel is some input pixel: the shift is a whole number of pixels.
        assert torch.isclose(a.flatten()[:, None], b.flatten()[None, :], atol=1e-5).any(dim=1).all()
    assert not torch.equal(y, x)


def test_gray_intensity_ops_are_affine_and_luma_flip_inverts():
    torch.manual_seed(0)
    x = _images(n=64)
    y = _only("lumaflip")(x)
    inverted = torch.tensor([torch.equal(a, -b) for a, b in zip(y, x)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(y, x)])
    assert (inverted | kept).all() and inverted.any() and kept.any()
    y = AdaptiveAugment(pipeline=("brightness", "contrast"), mode="fixed", p=1.0)(x)
    for a, b in zip(y, x):  # a = c * (b + offset): an exact affine map of each image
        fit = torch.linalg.lstsq(torch.stack([b.flatten(), torch.ones(b.numel())], 1), a.flatten()[:, None])
        residual = torch.stack([b.flatten(), torch.ones(b.numel())], 1) @ fit.solution - a.flatten()[:, None]
        assert residual.abs().max() < 1e-5


def test_hue_and_saturation_leave_gray_rgb_gray_and_change_colour():
    torch.manual_seed(0)
    gray = _images(n=8).repeat(1, 3, 1, 1)
    y = AdaptiveAugment(pipeline=COLOR_OPS, mode="fixed", p=1.0)(gray)
    torch.testing.assert_close(y[:, 0], y[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 0], y[:, 2], atol=1e-5, rtol=0)
    colour = _images(n=8, c=3)
    for op in ("hue", "saturation"):
        y = _only(op)(colour)
        assert not torch.allclose(y, colour, atol=1e-3)
        # Both keep the mean over channels (the luma axis): they act orthogonally to it.
        torch.testing.assert_close(y.mean(1), colour.mean(1), atol=1e-5, rtol=0)
    y = _only("hue")(colour)  # a rotation: the length of each RGB vector is kept too
    torch.testing.assert_close(y.norm(dim=1), colour.norm(dim=1), atol=1e-5, rtol=0)


def test_ops_apply_per_sample_with_probability_p():
    torch.manual_seed(0)
    x = _images(n=2000, size=4)
    y = _only("brightness", p=0.3)(x)
    changed = (y != x).flatten(1).any(1).float().mean().item()
    assert changed == pytest.approx(0.3, abs=0.04)
    y = _only("rotate", p=0.3)(x)  # two rotations of probability 1 - sqrt(1 - p): any rotation with p
    changed = (y - x).abs().flatten(1).amax(1).gt(1e-4).float().mean().item()
    assert changed == pytest.approx(0.3, abs=0.04)


def test_unchosen_samples_stay_bit_exact_when_others_are_warped():
    torch.manual_seed(0)
    x = _images(n=64)
    y = AdaptiveAugment(pipeline="bg", mode="fixed", p=0.05)(x)
    same = torch.tensor([torch.equal(a, b) for a, b in zip(y, x)])
    assert same.any() and not same.all()


def test_bf16_inputs_stay_bf16():
    torch.manual_seed(0)
    x = _images(c=3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert AdaptiveAugment(pipeline="bgc-cutout", p=0.8)(x).dtype == torch.bfloat16


def test_bad_settings_are_config_errors():
    for kwargs in (dict(pipeline="bgx"), dict(pipeline=("xflip", "warp")), dict(mode="auto"), dict(p=1.5),
                   dict(shear_std=0.1), dict(interval=0)):
        with pytest.raises(ConfigError):
            AdaptiveAugment(**kwargs)


# --------------------------------------------------------------------------------------- adaptation

def test_p_rises_when_d_overfits_and_falls_when_it_does_not():
    aug = AdaptiveAugment(interval=4, kimg=1.0, target=0.6)
    for _ in range(3):
        aug.update(torch.ones(8, 1))
    assert aug.p == 0.0 and aug.r_t != aug.r_t  # no adjustment before `interval` minibatches (r_t NaN)
    aug.update(torch.ones(8, 1))
    assert aug.p == pytest.approx(32 / 1000) and aug.r_t == 1.0  # batch * interval / (kimg * 1000)
    for _ in range(8):
        aug.update(-torch.ones(8, 1))
    assert aug.p == 0.0 and aug.r_t == -1.0  # fell, and clamped at 0
    aug.p = 0.5
    for _ in range(4):  # r_t = 0.5 < target: p falls by one step
        aug.update(torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0]))
    assert aug.r_t == 0.5 and aug.p == pytest.approx(0.5 - 32 / 1000)


def test_p_is_capped():
    aug = AdaptiveAugment(interval=1, kimg=0.01, p_max=0.8)
    for _ in range(20):
        aug.update(torch.ones(16))
    assert aug.p == pytest.approx(0.8)


def test_fixed_mode_measures_rt_but_keeps_p():
    aug = AdaptiveAugment(mode="fixed", p=0.3, interval=2)
    for _ in range(4):
        aug.update(torch.ones(8))
    assert aug.p == pytest.approx(0.3) and aug.r_t == 1.0


def test_state_dict_restores_p_and_accumulators_exactly():
    aug = AdaptiveAugment(interval=4, kimg=0.5)
    logits = torch.linspace(-0.5, 5, 8)  # r_t = 0.75 > target
    for _ in range(6):  # one adjustment, then two minibatches accumulated
        aug.update(logits)
    other = AdaptiveAugment(interval=4, kimg=0.5)
    other.load_state_dict(aug.state_dict())
    assert other.p == aug.p and other.r_t == aug.r_t
    for _ in range(2):
        aug.update(logits)
        other.update(logits)
    assert other.p == aug.p > 0.0 and torch.equal(other.sign_sum, aug.sign_sum)


def test_from_train_config():
    fixed = from_train_config(SimpleNamespace(augment="diffaug", augment_p=0.3, ada_target=0.6))
    assert fixed.mode == "fixed" and fixed.p == pytest.approx(0.3) and fixed.ops == set(PIPELINES["diffaugment"])
    ada = from_train_config(SimpleNamespace(augment="ada", augment_p=0.0, ada_target=0.7, ada_kimg=50))
    assert ada.mode == "ada" and ada.target == 0.7 and ada.kimg == 50 and ada.ops == set(PIPELINES["bgc"])
    with pytest.raises(ConfigError):
        from_train_config(SimpleNamespace(augment="none", augment_p=0.0, ada_target=0.6))
