"""FastGAN networks: shapes, ranges, exact parameter counts, SLE gating, the projected D's frozen parts.

The feature network is a randomly initialised timm ``tf_efficientnet_lite0`` (no weights are needed).
"""

from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

from cxr_utils.errors import ConfigError
from cxr_utils.models import fastgan
from cxr_utils.models.fastgan import (DetailDiscriminator, Generator, HybridDiscriminator, ProjectedDiscriminator,
                                      RandomProjection, ScratchDiscriminator, WithDetail, build_discriminator,
                                      build_generator)


def lite0() -> nn.Module:
    torch.manual_seed(1)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def frozen_state(D: ProjectedDiscriminator) -> dict[str, torch.Tensor]:
    """Copies of every tensor of the feature network and the CCM/CSM (weights and BN statistics)."""
    state = {f"features.{k}": v.clone() for k, v in D.features.state_dict().items()}
    state.update({f"projection.{k}": v.clone() for k, v in D.projection.state_dict().items()})
    return state


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def hinge_d_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """The documented convention: hinge averaged over each head's patches, then over heads."""
    per_head = [torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real, fake)]
    return torch.stack(per_head).mean()


def expected_g_params(z: int, c: int, size: int) -> int:
    """By formula from the width table: transposed init conv + BN, up blocks (conv to 2*cout + BN),
    SLE (4x4 conv lo->hi, 1x1 conv hi->hi, no biases), 3x3 output conv with bias."""
    w = {4: 256, 8: 128, 16: 64, 32: 32, 64: 16, 128: 16, 256: 8}
    total = z * 2 * w[4] * 16 + 2 * 2 * w[4]
    r = 8
    while r <= size:
        total += w[r // 2] * 2 * w[r] * 9 + 2 * 2 * w[r]
        r *= 2
    for lo, hi in [(4, 32), (8, 64), (16, 128), (32, 256)]:
        if hi <= size:
            total += w[lo] * w[hi] * 16 + w[hi] * w[hi]
    return total + w[size] * c * 9 + c


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("c", [1, 3])
def test_generator_shapes_range_and_count(size, c):
    torch.manual_seed(0)
    G = Generator(z_dim=32, image_size=size, channels=c)
    x = G(torch.randn(3, 32))
    assert x.shape == (3, c, size, size)
    assert x.abs().max() < 1 and x.std() > 0.01
    G.eval()
    z = torch.randn(2, 32)
    assert torch.equal(G(z), G(z[:, :, None, None]))  # (N, z) and (N, z, 1, 1) are one latent
    assert n_params(G) == expected_g_params(32, c, size)


def test_generator_default_count_and_256():
    assert n_params(Generator(128, 64, 1)) == expected_g_params(128, 1, 64) == 1_999_185  # ~2.0 M
    assert n_params(Generator(128, 64, 3)) == 1_999_475
    torch.manual_seed(0)
    G = Generator(z_dim=16, image_size=256, channels=1)
    x = G(torch.randn(1, 16))
    assert x.shape == (1, 1, 256, 256) and x.abs().max() < 1
    assert sorted(G.sle_source.items()) == [(32, 4), (64, 8), (128, 16), (256, 32)]


def test_width_multiplier_and_noise():
    G = Generator(16, 64, 1, width=0.5)
    assert G.widths == {4: 128, 8: 64, 16: 32, 32: 16, 64: 8}
    torch.manual_seed(0)
    Gn = Generator(16, 64, 1, noise=True).eval()
    z = torch.randn(2, 16)
    assert torch.equal(Gn(z), Gn(z))  # zero-initialised strength: noise has no effect yet
    with torch.no_grad():
        for m in Gn.modules():
            if isinstance(m, fastgan.NoiseInjection):
                m.strength.fill_(0.5)
    assert not torch.equal(Gn(z), Gn(z))


def _bilinear_x2_reference(a: "np.ndarray") -> "np.ndarray":
    """x2 bilinear upsampling of an (h, w) array by its definition (half-pixel centres, edges clamped),
    written out independently of torch: output pixel i samples source coordinate (i + 0.5) / 2 - 0.5."""
    import numpy as np

    def axis(n: int) -> tuple:
        src = (np.arange(2 * n) + 0.5) / 2 - 0.5
        src = np.clip(src, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, src - lo

    (r0, r1, fr), (c0, c1, fc) = axis(a.shape[0]), axis(a.shape[1])
    rows = a[r0] * (1 - fr)[:, None] + a[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc)[None, :] + rows[:, c1] * fc[None, :]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_generator_upsampling_modes(mode):
    import numpy as np

    torch.manual_seed(0)
    G = Generator(16, 64, 1, width=0.25, upsample=mode)
    assert n_params(G) == n_params(Generator(16, 64, 1, width=0.25))  # a fixed filter: no parameters
    seen = {}
    G.ups["8"].conv.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    z = torch.randn(2, 16)
    with torch.no_grad():
        x4 = torch.nn.functional.glu(G.init_bn(G.init(z[:, :, None, None])), dim=1)
        G(z)
    up = seen["x"]
    assert up.shape == (2, x4.shape[1], 8, 8)
    for n in range(2):
        for c in range(x4.shape[1]):
            a = x4[n, c].double().numpy()
            ref = _bilinear_x2_reference(a) if mode == "bilinear" else np.kron(a, np.ones((2, 2)))
            assert np.allclose(up[n, c].double().numpy(), ref, atol=1e-5)
    cfg = SimpleNamespace(latent_dim=16, image_size=64, channels=1, fastgan_upsample=mode)
    assert all(b.upsample == mode for b in build_generator(cfg).ups.values())


def test_sle_gates_in_unit_interval_and_modulate():
    torch.manual_seed(0)
    G = Generator(z_dim=16, image_size=64, channels=1)
    sle = G.sles["32"]
    low_a, low_b = torch.randn(4, 256, 4, 4), torch.randn(4, 256, 4, 4)
    high = torch.randn(4, 32, 32, 32)
    gate = sle.gate(low_a)
    assert gate.shape == (4, 32, 1, 1) and ((gate > 0) & (gate < 1)).all()
    out_a, out_b = sle(low_a, high), sle(low_b, high)
    assert torch.allclose(out_a, high * gate)
    # Another low-res input rescales each high-res channel by one factor over all pixels.
    ratio = out_b / out_a
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), rtol=1e-4, atol=1e-5)
    assert (ratio[:, :, 0, 0] - 1).abs().max() > 1e-2
    # In G the 4x4 and 8x8 maps gate the 32x32 and 64x64 maps.
    seen = {}
    for name, mod in G.sles.items():
        mod.register_forward_hook(
            lambda m, inp, out, name=name: seen.update({name: (inp[0].shape, inp[1].shape)}))
    G(torch.randn(2, 16))
    assert seen == {"32": ((2, 256, 4, 4), (2, 32, 32, 32)), "64": ((2, 128, 8, 8), (2, 16, 64, 64))}


def expected_scratch_d_params(c: int, size: int) -> int:
    """By formula from the width table; spectral norm adds buffers (u, v), no parameters."""
    w = {128: 12, 64: 24, 32: 48, 16: 96, 8: 192, 4: 192}
    conv = lambda cin, cout, k, bias=True: cin * cout * k * k + (cout if bias else 0)  # noqa: E731
    total = conv(c, w[size], 3)
    r = size
    while r > 4:
        cin, cout = w[r], w[r // 2]
        total += conv(cin, cout, 4) + conv(cout, cout, 3) + conv(cin, cout, 1)
        r //= 2
    total += 2 * (conv(192, 96, 3) + conv(96, 1, 1))  # heads on 8x8 and 4x4
    total += conv(192, 96, 3, False) + 2 * 96 + conv(48, 48, 3, False) + 2 * 48 + conv(24, c, 3)  # decoder
    return total


@pytest.mark.parametrize("size", [64, 128])
def test_scratch_discriminator_heads_and_reconstruction(size):
    torch.manual_seed(0)
    D = ScratchDiscriminator(size, 1)
    x = torch.rand(3, 1, size, size) * 2 - 1
    logits = D(x)
    assert [t.shape for t in logits] == [(3, 1, 8, 8), (3, 1, 4, 4)]
    assert n_params(D) == expected_scratch_d_params(1, size)
    assert n_params(ScratchDiscriminator(size, 3)) == expected_scratch_d_params(3, size)
    D.eval()  # spectral norm's power iteration is frozen in eval mode
    logits2, recon = D.forward_with_reconstruction(x)
    assert all(torch.equal(a, b) for a, b in zip(D(x), logits2))
    assert recon.shape == (3, 1, 32, 32) and recon.abs().max() < 1
    target = D.reconstruction_target(x)
    k = size // 32
    assert torch.allclose(target, x.reshape(3, 1, 32, k, 32, k).mean(dim=(3, 5)), atol=1e-6)
    with pytest.raises(ConfigError, match="no reconstruction decoder"):
        ScratchDiscriminator(size, 1, decoder=False).forward_with_reconstruction(x)


@pytest.mark.parametrize("arch, feature_size, expected", [
    ("scratch", 64, 2_326_299),
    ("projected", 64, 275_268),
    ("projected", 128, 406_468),
    ("hybrid", 64, 2_326_299 + 275_268),
])
def test_discriminator_parameter_counts(arch, feature_size, expected):
    cfg = SimpleNamespace(d_arch=arch, image_size=64, channels=1, feature_size=feature_size)
    D = build_discriminator(cfg, feature_network=lite0() if arch != "scratch" else None)
    assert n_params(D) == sum(p.numel() for p in fastgan.trainable_parameters(D)) == expected
    if arch != "scratch":
        P = D if arch == "projected" else D.projected
        assert list(P.features.parameters()) == [] and list(P.projection.parameters()) == []
        assert n_params(P) == n_params(P.heads)
        # the frozen network (~3 M weights) sits in buffers, outside the trainable count
        frozen_weights = sum(b.numel() for n, b in P.features.named_buffers() if "running" not in n
                             and "num_batches" not in n)
        assert frozen_weights == n_params(lite0()) == 2_958_848


def test_projected_frozen_parts_survive_optimiser_steps_and_train_mode():
    torch.manual_seed(0)
    D = ProjectedDiscriminator(lite0(), image_size=64, channels=1, feature_size=64)
    before = frozen_state(D)
    heads_before = [p.detach().clone() for p in D.heads.parameters()]
    D.train()
    D.requires_grad_(True)  # what a training loop does after a generator step
    assert not D.features.training and not D.projection.training and D.heads.training
    opt = torch.optim.Adam(D.parameters(), lr=1e-2)
    real, fake = torch.rand(4, 1, 64, 64) * 2 - 1, torch.rand(4, 1, 64, 64) * 2 - 1
    for _ in range(2):
        opt.zero_grad()
        hinge_d_loss(D(real), D(fake)).backward()
        opt.step()
    assert_same(before, frozen_state(D))
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, D.heads.parameters()))
    # Control: in train mode the same forward would have moved the BatchNorm statistics.
    D.features.train()
    D(real)
    moved = frozen_state(D)
    assert any(not torch.equal(before[k], moved[k]) for k in before if "running_mean" in k)


def test_hybrid_keeps_frozen_parts_in_eval_and_concatenates_heads():
    torch.manual_seed(0)
    cfg = SimpleNamespace(d_arch="hybrid", image_size=64, channels=3, feature_size=64)
    D = build_discriminator(cfg, feature_network=lite0())
    assert isinstance(D, HybridDiscriminator)
    before = frozen_state(D.projected)
    D.eval().train()
    assert not D.projected.features.training and D.scratch.training
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    logits = D(x)
    assert D.head_names == ["scratch8", "scratch4", "proj0", "proj1", "proj2", "proj3"]
    assert [t.shape for t in logits] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 8, 8), (2, 1, 8, 8),
                                         (2, 1, 4, 4), (2, 1, 2, 2)]
    logits2, recon = D.forward_with_reconstruction(x)
    assert len(logits2) == 6 and recon.shape == (2, 3, 32, 32)
    assert torch.allclose(D.reconstruction_target(x), torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    assert_same(before, frozen_state(D.projected))


def test_gradients_reach_images_and_generator_through_projected_d():
    torch.manual_seed(0)
    G = Generator(z_dim=16, image_size=64, channels=1)
    D = ProjectedDiscriminator(lite0(), image_size=64, channels=1, feature_size=128)
    D.requires_grad_(False)  # generator step: D's heads frozen, gradients still pass through
    x = G(torch.randn(2, 16))
    x.retain_grad()
    loss = -torch.stack([t.mean() for t in D(x)]).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert G.to_img.weight.grad.abs().sum() > 0 and G.init.weight.grad.abs().sum() > 0


def test_gray_is_replicated_and_normalisation_follows_the_network():
    torch.manual_seed(0)
    net = lite0()
    D1 = ProjectedDiscriminator(net, image_size=64, channels=1, feature_size=64).eval()
    D3 = ProjectedDiscriminator(lite0(), image_size=64, channels=3, feature_size=64).eval()
    D3.load_state_dict(D1.state_dict())
    assert torch.equal(D1.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # timm Lite0: [-1, 1] passes through
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    for a, b in zip(D1(x), D3(x.expand(-1, 3, -1, -1))):
        assert torch.equal(a, b)
    # the feature network sees the image itself at feature_size 64 (no resize)
    with torch.no_grad():
        direct = D1.projection([f for f in D1.features(x.expand(-1, 3, -1, -1))][-4:])
    assert all(torch.equal(a, b) for a, b in zip(D1.project(x), direct))


def test_random_projection_depends_only_on_its_seed():
    torch.manual_seed(0)
    a = RandomProjection([24, 40, 112, 320], seed=7)
    torch.manual_seed(123)
    b = RandomProjection([24, 40, 112, 320], seed=7)
    c = RandomProjection([24, 40, 112, 320], seed=8)
    assert_same(a.state_dict(), b.state_dict())
    assert not torch.equal(a.ccm[0].weight, c.ccm[0].weight)
    assert abs(a.ccm[3].weight.std().item() - 320 ** -0.5) < 0.1 * 320 ** -0.5  # N(0, 1/fan_in)


def test_builders_read_config_fields():
    cfg = SimpleNamespace(latent_dim=24, image_size=128, channels=1, fastgan_width=0.5)
    G = build_generator(cfg)
    assert (G.z_dim, G.image_size, G.channels, G.widths[4]) == (24, 128, 1, 128)
    D = build_discriminator(cfg)  # d_arch defaults to scratch
    assert isinstance(D, ScratchDiscriminator) and D.image_size == 128
    G = build_generator(SimpleNamespace())
    assert (G.z_dim, G.image_size, G.channels) == (128, 64, 3)


def expected_detail_params(c: int) -> int:
    """4x4 convs 2c->16 and 16->32, 3x3 conv 32->32, 1x1 conv 32->1, all with biases."""
    return (2 * c * 16 * 16 + 16) + (16 * 32 * 16 + 32) + (32 * 32 * 9 + 32) + (32 + 1)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [64, 128])
def test_detail_discriminator_shape_count_and_laplacian_input(c, size):
    torch.manual_seed(0)
    D = DetailDiscriminator(size, c)
    x = torch.rand(2, c, size, size) * 2 - 1
    seen = {}
    D.net[0].register_forward_pre_hook(lambda m, args: seen.setdefault("input", args[0].detach()))
    (logits,) = D(x)
    assert logits.shape == (2, 1, size // 4, size // 4) and D.head_names == ["detail"]
    assert n_params(D) == expected_detail_params(c)
    # the second half of the input is 4x the 4-neighbour Laplacian with edge replication, computed
    # independently with scipy (mode="nearest" repeats the edge pixel)
    import numpy as np
    from scipy import ndimage
    ref = np.stack([[ndimage.laplace(x[n, k].double().numpy(), mode="nearest") for k in range(c)] for n in range(2)])
    assert torch.equal(seen["input"][:, :c], x)
    assert np.allclose(seen["input"][:, c:].double().numpy(), 4 * ref, atol=1e-5)
    # a flat image has no detail: its Laplacian half is zero
    seen.clear()
    D(torch.full((1, c, size, size), 0.3))
    assert torch.count_nonzero(seen["input"][:, c:]) == 0


@pytest.mark.parametrize("arch, heads", [
    ("scratch", ["scratch8", "scratch4", "detail"]),
    ("projected", ["proj0", "proj1", "proj2", "proj3", "detail"]),
    ("hybrid", ["scratch8", "scratch4", "proj0", "proj1", "proj2", "proj3", "detail"]),
])
def test_detail_head_joins_every_arch_and_keeps_its_reconstruction(arch, heads):
    cfg = SimpleNamespace(d_arch=arch, image_size=64, channels=1, feature_size=64, detail_head=True)
    torch.manual_seed(0)
    D = build_discriminator(cfg, feature_network=lite0() if arch != "scratch" else None)
    torch.manual_seed(0)
    plain = build_discriminator(SimpleNamespace(**{**vars(cfg), "detail_head": False}),
                                feature_network=lite0() if arch != "scratch" else None)
    assert isinstance(D, WithDetail) and D.head_names == heads
    assert n_params(D) == n_params(plain) + expected_detail_params(1)
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    D.eval()  # no spectral-norm power iteration between the two calls below
    logits = D(x)
    assert len(logits) == len(heads) and logits[-1].shape == (3, 1, 16, 16)
    # the base's logits are exactly what the base alone gives
    for a, b in zip(logits[:-1], D.base(x)):
        assert torch.equal(a, b)
    assert hasattr(D, "forward_with_reconstruction") == (arch != "projected")
    if arch != "projected":
        logits2, recon = D.forward_with_reconstruction(x)
        assert len(logits2) == len(heads) and recon.shape == (3, 1, 32, 32)
        assert torch.equal(D.reconstruction_target(x), D.base.reconstruction_target(x))


@pytest.mark.parametrize("make, message", [
    (lambda: Generator(image_size=32), "image_size"),
    (lambda: Generator(channels=2), "channels"),
    (lambda: Generator(width=0), "fastgan_width"),
    (lambda: Generator(widths={64: 0}), "widths"),
    (lambda: Generator(upsample="bicubic"), "upsample must be one of"),
    (lambda: build_discriminator(SimpleNamespace(d_arch="stylegan")), "d_arch"),
    (lambda: ProjectedDiscriminator(nn.Conv2d(3, 8, 3), feature_size=64), "at least 4 feature maps"),
    (lambda: ProjectedDiscriminator(lite0(), feature_size=16), "feature_size"),
    (lambda: Generator(z_dim=8)(torch.randn(2, 9)), "latents"),
    (lambda: ScratchDiscriminator(64, 1)(torch.randn(2, 3, 64, 64)), "expects images"),
    (lambda: DetailDiscriminator(64, 1)(torch.randn(2, 1, 32, 32)), "expects images"),
    (lambda: DetailDiscriminator(48, 1), "image_size"),
    (lambda: WithDetail(ScratchDiscriminator(64, 1), DetailDiscriminator(128, 1)), "disagree"),
])
def test_bad_input_is_a_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_timm_classification_model_gives_the_same_features():
    torch.manual_seed(0)
    cls = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    feats = lite0()
    missing, unexpected = feats.load_state_dict(cls.state_dict(), strict=False)
    assert missing == [] and {k.split(".")[0] for k in unexpected} == {"conv_head", "bn2", "classifier"}
    Dc = ProjectedDiscriminator(cls, image_size=64, channels=1, feature_size=64).eval()
    Df = ProjectedDiscriminator(feats, image_size=64, channels=1, feature_size=64).eval()
    assert Dc.feature_channels == Df.feature_channels == [24, 40, 112, 320]
    assert Dc.feature_resolutions == [16, 8, 4, 2]
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    assert all(torch.equal(a, b) for a, b in zip(Dc.project(x), Df.project(x)))


def test_default_feature_network_comes_from_the_pretrained_module(monkeypatch):
    import sys
    from types import ModuleType

    import cxr_utils

    fake = ModuleType("cxr_utils.pretrained")
    monkeypatch.setitem(sys.modules, "cxr_utils.pretrained", fake)
    monkeypatch.setattr(cxr_utils, "pretrained", fake, raising=False)
    cfg = SimpleNamespace(d_arch="projected", image_size=64, channels=1, feature_size=64)
    with pytest.raises(ConfigError, match="neither efficientnet_lite0_features nor efficientnet_lite0"):
        build_discriminator(cfg)
    fake.efficientnet_lite0 = lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert n_params(build_discriminator(cfg)) == 275_268
    fake.efficientnet_lite0_features = lite0  # preferred when both exist
    assert isinstance(build_discriminator(cfg).features, type(lite0()))
