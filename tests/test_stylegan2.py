"""StyleGAN2 networks, losses and the training step, checked against independent computations."""

import copy
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_identical

from cxr_utils import ada, losses
from cxr_utils.errors import ConfigError
from cxr_utils.models import build_discriminator, build_generator
from cxr_utils.models import stylegan2 as sg
from cxr_utils.models import stylegan2_loss as sgl
from cxr_utils.train_config import make_config


TINY_NET = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16, mbstd_group=4)
# The step tests' TrainConfig: TINY_NET's architecture, batch 4, R1 every 2nd D step, path length on.
TINY = dict(sg2_arch="tiny", latent_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16,
            mbstd_group=4, image_size=64, channels=1, batch_size=4, kimg=None, r1_gamma=1.0, r1_interval=2,
            pl_weight=2.0, ema_kimg=0.01, ema_rampup=0.05, style_mixing=0.9, ada_interval=1, ada_kimg=0.1)


def _tiny_nets(image_size=64, channels=1, c_dim=0):
    net = {k: v for k, v in TINY_NET.items() if k != "mbstd_group"}
    return (sg.Generator(image_size=image_size, channels=channels, c_dim=c_dim, **net),
            sg.Discriminator(image_size=image_size, channels=channels, c_dim=c_dim, channel_base=256,
                             channel_max=16, mbstd_group=4))


def _steps(amp_dtype=None, **overrides):
    """The one StyleGAN2 training step (as the loop builds it), with its ADA pipeline."""
    cfg = make_config("stylegan2-cpu-small", **{**TINY, **overrides})
    augment = ada.from_train_config(cfg)
    return sgl.StyleGAN2Steps(build_generator(cfg), build_discriminator(cfg), cfg, torch.device("cpu"),
                              amp_dtype, augment)


def _tiny_G(image_size=64, channels=1, **kw):
    args = dict(z_dim=16, w_dim=16, image_size=image_size, channels=channels, mapping_layers=2,
                channel_base=256, channel_max=16)
    return sg.Generator(**{**args, **kw})


# ------------------------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("size", [64, 128, 256])
def test_shapes_at_each_resolution(size):
    torch.manual_seed(0)
    G, D = _tiny_nets(image_size=size, channels=3)
    z = torch.randn(2, G.latent_dim)
    img, ws = G(z, return_ws=True)
    assert img.shape == (2, 3, size, size) and torch.isfinite(img).all()
    assert G.num_ws == 2 * int(math.log2(size)) - 2 == ws.shape[1]  # 2 per resolution from 4x4 on
    assert G.channels == 3 and G.latent_dim == 16
    assert D(img).shape == (2, 1)


def test_invalid_sizes_and_impl_are_config_errors():
    with pytest.raises(ConfigError):
        _tiny_G(image_size=96)
    with pytest.raises(ConfigError):
        sg.Discriminator(image_size=4)
    with pytest.raises(ConfigError):
        _tiny_G(modconv_impl="fast")
    with pytest.raises(ConfigError):
        make_config("stylegan2-cpu-small", sg2_arch="nope")
    with pytest.raises(ConfigError):
        make_config("stylegan2-cpu-small", lr_typo=1.0)
    with pytest.raises(ConfigError):
        make_config("stylegan2-cpu-small", mapping_layers=0)


def test_the_networks_read_their_architecture_from_the_config_only():
    """sg2_arch sets the five architecture fields (explicit ones win); the networks read only those."""
    cfg = make_config("stylegan2-cpu-small", sg2_arch="tiny", channel_max=8)
    tiny = sg.STYLEGAN2_PRESETS["tiny"]
    assert (cfg.w_dim, cfg.mapping_layers, cfg.channel_base, cfg.mbstd_group) == \
        (tiny["w_dim"], tiny["mapping_layers"], tiny["channel_base"], tiny["mbstd_group"])
    assert cfg.channel_max == 8 and make_config("stylegan2-cpu-small").channel_max == 128
    G, D = build_generator(cfg), build_discriminator(cfg)
    assert G.init_kwargs["channel_max"] == D.init_kwargs["channel_max"] == 8
    assert G.w_dim == tiny["w_dim"] and len(G.mapping.layers) == tiny["mapping_layers"]
    assert D.mbstd_group == tiny["mbstd_group"]


def test_channel_widths_of_cpu_small():
    cfg = sg.STYLEGAN2_PRESETS["cpu-small"]
    widths = sg.channel_widths(64, cfg["channel_base"], cfg["channel_max"])
    assert widths == {4: 128, 8: 128, 16: 128, 32: 64, 64: 32}


def test_auto_presets_follow_the_ada_heuristic():
    p = sg.STYLEGAN2_PRESETS
    assert (p["auto64"]["batch_size"], p["auto128"]["batch_size"], p["auto256"]["batch_size"]) == (32, 32, 16)
    assert p["auto256"]["r1_gamma"] == pytest.approx(0.0002 * 256 ** 2 / 16)
    assert p["auto256"]["ema_kimg"] == pytest.approx(16 * 10 / 32)
    assert all(p[k]["mapping_layers"] == 2 for k in ("auto64", "auto128", "auto256"))


# ----------------------------------------------------------------------------- modulated convolution

def _reference_modconv(x, weight, styles, demodulate):
    """Explicit per-sample weight modulation (and demodulation), one convolution per sample."""
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n][None, :, None, None]
        if demodulate:
            w = w / torch.sqrt(w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        outs.append(F.conv2d(x[n:n + 1], w, padding=w.shape[-1] // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("impl", ["grouped", "activation"])
@pytest.mark.parametrize("kernel,demodulate", [(3, True), (3, False), (1, False)])
def test_modulated_conv_matches_per_sample_reference(impl, kernel, demodulate):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 4, kernel, kernel, generator=g, dtype=torch.float64)
    styles = torch.randn(3, 4, generator=g, dtype=torch.float64) + 1
    out = sg.modulated_conv2d(x, weight, styles, demodulate=demodulate, impl=impl)
    torch.testing.assert_close(out, _reference_modconv(x, weight, styles, demodulate), rtol=1e-10, atol=1e-10)


def test_both_forms_give_the_same_generator():
    torch.manual_seed(0)
    G_act = _tiny_G(modconv_impl="activation")
    G_grp = _tiny_G(modconv_impl="grouped")
    G_grp.load_state_dict(G_act.state_dict())
    z = torch.randn(3, 16)
    torch.testing.assert_close(G_act(z, noise_mode="const"), G_grp(z, noise_mode="const"), rtol=1e-4, atol=1e-4)


def test_auto_uses_the_activation_form_on_cpu():
    assert sg.resolve_modconv_impl("auto", torch.device("cpu")) == "activation"


# ------------------------------------------------------------------------------- equalised lr

@pytest.mark.parametrize("lr_multiplier", [1.0, 0.01])
def test_equalised_linear_scales_at_run_time(lr_multiplier):
    torch.manual_seed(0)
    layer = sg.EqualLinear(512, 256, bias_init=0.5, lr_multiplier=lr_multiplier)
    # Stored ~N(0, 1/lr_mult^2) so that Adam steps on the stored values are lr_mult times smaller.
    assert layer.weight.std().item() == pytest.approx(1 / lr_multiplier, rel=0.05)
    x = torch.randn(4096, 512)
    y = layer(x)
    expected = x @ (layer.weight * lr_multiplier / math.sqrt(512)).t() + layer.bias * lr_multiplier
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    assert (y - 0.5).var().item() == pytest.approx(1.0, rel=0.1)  # unit variance in, unit out
    assert y.mean().item() == pytest.approx(0.5, abs=0.05)  # bias_init is the effective initial bias


def test_equalised_conv_keeps_unit_variance():
    torch.manual_seed(0)
    conv = sg.EqualConv2d(64, 64, 3)
    x = torch.randn(8, 64, 16, 16)
    assert conv(x)[:, :, 1:-1, 1:-1].var().item() == pytest.approx(1.0, rel=0.1)


# ------------------------------------------------------------------------- mapping, truncation, mixing

def test_truncation_psi_zero_gives_w_avg_and_cutoff_keeps_later_layers():
    torch.manual_seed(0)
    G = _tiny_G()
    z = torch.randn(8, 16)
    w = G.mapping(z, update_w_avg=True)[:, 0]
    torch.testing.assert_close(G.mapping.w_avg, (1 - 0.995) * w.mean(0))
    for _ in range(3):
        G.mapping(torch.randn(8, 16), update_w_avg=True)
    ws = G.mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(ws, G.mapping.w_avg.expand_as(ws))
    ws_cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=4)
    torch.testing.assert_close(ws_cut[:, :4], G.mapping.w_avg.expand(8, 4, -1))
    torch.testing.assert_close(ws_cut[:, 4:], G.mapping(z)[:, 4:])


def test_style_mixing_changes_the_later_layers_only():
    torch.manual_seed(0)
    G = _tiny_G()
    z = torch.randn(6, 16)
    plain = G.mapping(z)
    mixed = G.mapping_mixed(z, mixing_prob=1.0)
    same = (mixed == plain).all(dim=2)  # N x num_ws
    assert same[:, 0].all() and not same[:, -1].any()
    # Each sample: a prefix from z, the rest from a second code (one crossover point).
    assert all(bool(row[: int(row.sum())].all()) for row in same)
    img_plain, img_mixed = G.synthesis(plain, noise_mode="const"), G.synthesis(mixed, noise_mode="const")
    assert (img_plain - img_mixed).abs().flatten(1).amax(1).min() > 1e-3
    torch.testing.assert_close(G.mapping_mixed(z, mixing_prob=0.0), plain)


def test_noise_modes():
    torch.manual_seed(0)
    G = _tiny_G()
    for layer in G.modules():
        if isinstance(layer, sg.SynthesisLayer):
            layer.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 16)
    torch.testing.assert_close(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert not torch.equal(G(z, noise_mode="random"), G(z, noise_mode="random"))
    assert not torch.equal(G(z, noise_mode="none"), G(z, noise_mode="const"))
    with pytest.raises(ValueError):
        G(z, noise_mode="loud")


def test_conditional_networks_need_labels():
    torch.manual_seed(0)
    G, D = _tiny_nets(64, 1, c_dim=2)
    z, c = torch.randn(2, 16), torch.eye(2)
    img = G(z, c, noise_mode="const")
    assert D(img, c).shape == (2, 1)
    assert not torch.allclose(img, G(z, c.flip(0), noise_mode="const"))
    with pytest.raises(ValueError):
        G(z)
    with pytest.raises(ValueError):
        _tiny_G()(z, c)


# ----------------------------------------------------------------------------- discriminator parts

def _reference_mbstd(x, groups):
    stats = torch.empty(x.shape[0])
    for members in groups:
        y = x[members]
        stats[members] = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    return stats


@pytest.mark.parametrize("n,groups", [(8, [[0, 1, 2, 3], [4, 5, 6, 7]]), (6, [[0, 1, 2, 3], [4, 5]]),
                                      (5, [[0, 1, 2, 3, 4]]), (3, [[0, 1, 2]]), (1, [[0]])])
def test_minibatch_stddev_handles_any_batch_size(n, groups):
    x = torch.randn(n, 5, 4, 4, generator=torch.Generator().manual_seed(n))
    out = sg.minibatch_stddev(x, group_size=4)
    assert out.shape == (n, 6, 4, 4)
    torch.testing.assert_close(out[:, :5], x)
    torch.testing.assert_close(out[:, 5, 0, 0], _reference_mbstd(x, groups))
    assert (out[:, 5] == out[:, 5, :1, :1]).all()


def test_downsample_is_the_normalised_1331_filter():
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    taps = [1 / 8, 3 / 8, 3 / 8, 1 / 8]
    padded = F.pad(x, (1, 1, 1, 1))[0, 0]
    expected = torch.tensor([[sum(taps[a] * taps[b] * padded[2 * i + a, 2 * j + b]
                                  for a in range(4) for b in range(4)) for j in range(4)] for i in range(4)],
                            dtype=torch.float64)
    torch.testing.assert_close(sg.downsample2x(x)[0, 0], expected)
    ones = sg.downsample2x(torch.ones(1, 1, 8, 8))
    assert ones[0, 0, 1:3, 1:3].eq(1).all()  # constant images stay constant away from the border


# -------------------------------------------------------------------------------------- losses

def test_r1_penalty_matches_finite_differences():
    torch.manual_seed(0)
    D = sg.Discriminator(image_size=8, channels=1, channel_base=32, channel_max=4, mbstd_group=2).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    penalty = losses.r1_penalty(D(x), x)
    h = 1e-6
    grad = torch.zeros_like(x)
    with torch.no_grad():
        flat = x.detach().clone().flatten()
        for i in range(flat.numel()):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += h
            minus[i] -= h
            grad.view(-1)[i] = (D(plus.view_as(x)).sum() - D(minus.view_as(x)).sum()) / (2 * h)
    torch.testing.assert_close(penalty.detach(), grad.square().sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-8)
    assert penalty.requires_grad  # the graph is kept so the penalty can be minimised


def test_path_length_penalty_on_a_linear_map():
    """For img = A w (every layer sharing w), J^T y = A^T y summed per layer; checked explicitly."""
    torch.manual_seed(0)
    A = torch.randn(16, 6, dtype=torch.float64)
    ws = torch.randn(3, 2, 6, dtype=torch.float64, requires_grad=True)
    img = (ws @ A.t()).sum(dim=1).reshape(3, 1, 4, 4)
    torch.manual_seed(1)
    penalty, new_mean = sgl.path_length_penalty(img, ws, torch.tensor(1.0, dtype=torch.float64), decay=0.5)
    torch.manual_seed(1)
    y = torch.randn(3, 1, 4, 4, dtype=torch.float64) / 4
    grad_per_layer = y.reshape(3, 16) @ A  # same for both layers
    lengths = grad_per_layer.square().sum(1).sqrt()
    expected_mean = 0.5 * 1.0 + 0.5 * lengths.mean()
    torch.testing.assert_close(new_mean, expected_mean)
    torch.testing.assert_close(penalty.detach(), (lengths - expected_mean).square())


def test_logistic_losses():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected_d = torch.log1p(torch.exp(fake)).mean() + torch.log1p(torch.exp(-real)).mean()
    torch.testing.assert_close(losses.d_loss("ns", real, fake), expected_d)
    torch.testing.assert_close(losses.g_loss("ns", fake), torch.log1p(torch.exp(-fake)).mean())


def test_lazy_adam_correction():
    opt = sgl.lazy_adam([torch.nn.Parameter(torch.zeros(1))], 0.0025, (0.0, 0.99), reg_interval=16)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.0025 * 16 / 17)
    assert group["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    plain = sgl.lazy_adam([torch.nn.Parameter(torch.zeros(1))], 0.0025, (0.0, 0.99), reg_interval=None)
    assert plain.param_groups[0]["lr"] == 0.0025


# ---------------------------------------------------------------------------------- training steps

def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_steps_update_only_their_network_and_run_the_regularisers():
    torch.manual_seed(0)
    steps = _steps()
    real = torch.rand(4, 1, 64, 64) * 2 - 1
    g0, d0 = _params(steps.G), _params(steps.D)
    d_stats = steps.d_step(real)  # iteration 0: the lazy R1 step is due
    assert {"loss_D", "D_real", "D_fake", "D_x", "D_G_z1", "r1_penalty"} <= set(d_stats)
    assert all(torch.isfinite(v) for v in d_stats.values())
    assert _changed(d0, steps.D) and not _changed(g0, steps.G)
    assert steps.nimg == 4

    d1 = _params(steps.D)
    g_stats = steps.g_step()  # iteration 0: the lazy path-length step is due
    assert {"loss_G", "D_G_z2", "pl_penalty", "pl_mean"} <= set(g_stats)
    assert _changed(g0, steps.G) and not _changed(d1, steps.D)
    assert all(p.requires_grad for p in steps.D.parameters())  # frozen only during the G step
    assert steps.G.mapping.w_avg.abs().sum() > 0
    assert "r1_penalty" not in steps.d_step(real)  # iteration 1: R1 every 2nd, path length every 4th
    assert "pl_penalty" not in steps.g_step()


def test_optimisers_carry_the_lazy_regularisation_correction():
    steps = _steps(lr_g=0.002, lr_d=0.003)
    g, d = steps.opt_g.param_groups[0], steps.opt_d.param_groups[0]
    assert g["lr"] == pytest.approx(0.002 * 4 / 5) and d["lr"] == pytest.approx(0.003 * 2 / 3)
    assert d["betas"] == pytest.approx((0.0, 0.99 ** (2 / 3)))
    plain = _steps(r1_gamma=0.0, pl_weight=0.0)
    assert plain.opt_d.param_groups[0]["lr"] == 0.0025 and plain.opt_g.param_groups[0]["lr"] == 0.0025


def test_bf16_steps_run():
    torch.manual_seed(0)
    steps = _steps(amp_dtype=torch.bfloat16, channels=3)
    d_stats = steps.d_step(torch.rand(4, 3, 64, 64) * 2 - 1)
    g_stats = steps.g_step()
    assert torch.isfinite(d_stats["loss_D"]) and torch.isfinite(g_stats["loss_G"])
    assert torch.isfinite(g_stats["pl_penalty"])


def test_ema_update_half_life_and_rampup():
    """StyleGAN2 uses the loop's EMA: half-life ema_kimg, capped at ema_rampup * images seen."""
    from cxr_utils.train import ema_beta, ema_update

    torch.manual_seed(0)
    steps = _steps()
    G_ema = copy.deepcopy(steps.G)
    ema_before = _params(G_ema)
    with torch.no_grad():
        for p in steps.G.parameters():
            p.add_(1.0)
    cfg = make_config("stylegan2-cpu-small", **{**TINY, "ema_kimg": 1.0, "ema_rampup": 0.5, "batch_size": 100})
    beta = ema_beta(cfg, images_seen=400)  # ramp-up: half-life min(1000, 0.5 * 400) = 200 images
    assert beta == pytest.approx(0.5 ** (100 / 200))
    ema_update(G_ema, steps.G, beta)
    for e0, e, g in zip(ema_before, G_ema.parameters(), steps.G.parameters()):
        torch.testing.assert_close(e, beta * e0 + (1 - beta) * g)


def test_state_dict_round_trip_restores_p_and_training():
    torch.manual_seed(0)
    steps = _steps()
    steps.augment.interval = 3  # leave the ADA accumulators mid-interval
    real = torch.rand(4, 1, 64, 64) * 2 - 1
    steps.augment.p = 0.3
    for _ in range(2):
        steps.d_step(real)
        steps.g_step()
    buffer = io.BytesIO()
    torch.save({"steps": steps.state_dict(), "augment": steps.augment.state_dict()}, buffer)

    torch.manual_seed(123)
    other = _steps()
    other.augment.interval = 3
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other.load_state_dict(state["steps"])
    other.augment.load_state_dict(state["augment"])
    assert other.augment.p == steps.augment.p and other.nimg == steps.nimg
    assert torch.equal(other.pl_mean, steps.pl_mean)
    for name in ("aug_p", "sign_sum", "sign_count", "batches"):
        assert torch.equal(getattr(other.augment, name), getattr(steps.augment, name))

    results = []
    for s in (steps, other):  # same seed from here: both continue identically
        torch.manual_seed(7)
        s.d_step(real)
        s.g_step()
        results.append((copy.deepcopy(s.G.state_dict()), copy.deepcopy(s.D.state_dict()), s.augment.p))
    assert results[0][2] == results[1][2]
    for net in (0, 1):
        for a, b in zip(results[0][net].values(), results[1][net].values()):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------- through the shared loop


def _loop_cfg(**overrides):
    from cxr_utils import train

    small = dict(sg2_arch="tiny", image_size=32, latent_dim=16, batch_size=8, epochs=2, precision="fp32",
                 checkpoint_every=1, n_fixed=8, grid_epochs=(1,), r1_interval=2, ada_interval=1,
                 augment_p=0.2, ada_kimg=0.5, ema_kimg=0.05, kimg=None)  # the preset's kimg would override epochs
    return train.make_config("stylegan2-cpu-small", **{**small, **overrides})


@pytest.fixture(scope="module")
def loop_images():
    from cxr_utils import phantom
    from cxr_utils.images import from_uint8

    ph = phantom.generate(32, 64, seed=0)
    return F.avg_pool2d(from_uint8(torch.from_numpy(ph.images))[:, None], 2).repeat(1, 3, 1, 1)


def test_model_and_short_preset_names_resolve_to_stylegan2_presets():
    from cxr_utils import train

    assert train.make_config(model="stylegan2").sg2_arch == "cpu-small"
    cfg = train.make_config("cpu-small", model="stylegan2")
    assert cfg == train.make_config("stylegan2-cpu-small")
    assert (cfg.lr_g, cfg.beta1, cfg.beta2, cfg.loss, cfg.augment) == (0.0025, 0.0, 0.99, "ns", "ada")
    assert cfg.r1_gamma == sg.STYLEGAN2_PRESETS["cpu-small"]["r1_gamma"]
    with pytest.raises(ConfigError, match="loss='ns'"):
        train.make_config("stylegan2-cpu-small", loss="hinge")
    with pytest.raises(ConfigError, match="sg2_arch"):
        train.make_config("stylegan2-cpu-small", sg2_arch="huge")


def test_loop_trains_stylegan2_logs_ada_and_resumes_exactly(tmp_path, loop_images):
    """An interrupted and resumed run equals a straight one bit for bit: weights, EMA, optimisers,
    ADA's p (which moved), history rows; R1 and ADA statistics are in the history."""
    from cxr_utils import explorer, runs, train

    straight = train.train(_loop_cfg(), tmp_path / "straight", images=loop_images, progress=False)
    train.train(_loop_cfg(epochs=1), tmp_path / "cut", images=loop_images, progress=False)
    train.train(_loop_cfg(), tmp_path / "cut", images=loop_images, resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / runs.STATE, weights_only=True)
    b = torch.load(tmp_path / "cut" / runs.STATE, weights_only=True)
    for part in ("steps", "G_ema", "augment"):
        assert_identical(a[part], b[part], part)
    assert 0 < float(a["augment"]["aug_p"]) < 0.2  # p really moved (from 0.2), so restoring it was tested
    rows = straight.history
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert strip(rows) == strip(train.read_history(tmp_path / "cut"))
    assert rows[0]["r1_penalty"] is not None and rows[1]["r1_penalty"] is None  # lazy: every 2nd step
    assert all(r["augment_p"] is not None and r["loss_G"] is not None for r in rows)
    assert (tmp_path / "straight" / "augment.png").exists()
    cfg, G = runs.load_run(tmp_path / "straight")
    assert cfg.model == "stylegan2" and isinstance(G, sg.Generator)
    assert torch.equal(G.synthesis.state_dict()[next(iter(G.synthesis.state_dict()))],
                       straight.G.synthesis.state_dict()[next(iter(G.synthesis.state_dict()))])
    assert runs.sample(G, 4, seed=0).shape == (4, 3, 32, 32)
    assert explorer.latent_space(G).kind == "w"


def test_train_cli_with_model_stylegan2(tmp_path, monkeypatch):
    from cxr_utils import cli, runs

    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--model", "stylegan2", "--preset", "cpu-small", "--source", "phantom:16",
                     "--image-size", "64", "--sg2-arch", "tiny", "--latent-dim", "16", "--batch-size", "8",
                     "--kimg", "0.016", "--n-fixed", "4", "--precision", "fp32", "--out", "run", "--no-progress"])
    assert code == 0
    saved = json.loads((tmp_path / "run" / runs.OPTIONS).read_text())
    assert saved["model"] == "stylegan2" and saved["kimg"] == 0.016 and saved["sg2_arch"] == "tiny"
