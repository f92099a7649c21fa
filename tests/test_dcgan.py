"""DCGAN architecture against the reference table; expected numbers are computed here by formula."""

import pytest
import torch
from torch import nn

from cxr_utils.models import dcgan
from cxr_utils.models.dcgan import Discriminator, Generator, init_dcgan_weights


def layer_rows(seq: nn.Module) -> list[tuple]:
    """(type, in, out, kernel, stride, padding, bias) for convs, (type, features) for BN, (type,) else."""
    rows = []
    for m in seq:
        name = type(m).__name__
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            rows.append((name, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                         m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            rows.append((name, m.num_features))
        elif isinstance(m, nn.LeakyReLU):
            rows.append((name, m.negative_slope))
        else:
            rows.append((name,))
    return rows


def reference_d_rows(c: int) -> list[tuple]:
    """Reference A's discriminator: BatchNorm on every conv but the last (the first included)."""
    rows = []
    for cin, cout in [(c, 64), (64, 128), (128, 256), (256, 512)]:
        rows += [("Conv2d", cin, cout, 4, 2, 1, False), ("BatchNorm2d", cout), ("LeakyReLU", 0.2)]
    return rows + [("Conv2d", 512, 1, 4, 1, 0, False), ("Sigmoid",)]


def reference_g_rows(latent: int, c: int) -> list[tuple]:
    rows = [("ConvTranspose2d", latent, 512, 4, 1, 0, False), ("BatchNorm2d", 512), ("ReLU",)]
    for cin, cout in [(512, 256), (256, 128), (128, 64)]:
        rows += [("ConvTranspose2d", cin, cout, 4, 2, 1, False), ("BatchNorm2d", cout), ("ReLU",)]
    return rows + [("ConvTranspose2d", 64, c, 4, 2, 1, False), ("Tanh",)]


def n_params(convs: list[tuple[int, int]], bns: list[int], k: int = 4) -> int:
    """cin * cout * k * k per bias-free conv, plus weight and bias per BatchNorm channel."""
    return sum(cin * cout * k * k for cin, cout in convs) + sum(2 * c for c in bns)


@pytest.mark.parametrize("c", [3, 1])
def test_discriminator_matches_reference_table(c):
    D = Discriminator(channels=c)
    assert layer_rows(list(D.main) + [D.head]) == reference_d_rows(c)
    expected = n_params([(c, 64), (64, 128), (128, 256), (256, 512), (512, 1)], [64, 128, 256, 512])
    assert sum(p.numel() for p in D.parameters()) == expected


@pytest.mark.parametrize("c", [3, 1])
def test_generator_matches_reference_table(c):
    G = Generator(latent_dim=128, channels=c)
    assert layer_rows(G.main) == reference_g_rows(128, c)
    expected = n_params([(128, 512), (512, 256), (256, 128), (128, 64), (64, c)], [512, 256, 128, 64])
    assert sum(p.numel() for p in G.parameters()) == expected
    assert (G.latent_dim, G.channels) == (128, c)


def test_shapes_ranges_and_latent_forms():
    torch.manual_seed(0)
    G, D = Generator(latent_dim=16, channels=3, base=8), Discriminator(channels=3, base=8)
    z = torch.randn(5, 16)
    x = G(z)
    assert x.shape == (5, 3, 64, 64) and x.abs().max() <= 1
    G.eval()
    assert torch.equal(G(z), G(z[:, :, None, None]))
    p = D(x)
    assert p.shape == (5,) and ((p > 0) & (p < 1)).all()
    assert torch.allclose(p, torch.sigmoid(D.logits(x)))


@pytest.mark.parametrize("size", [16, 32, 128])
def test_other_sizes_change_the_block_count(size):
    n_blocks = size.bit_length() - 1 - 2  # stride-2 layers between 4x4 and size
    G, D = Generator(latent_dim=8, channels=1, base=4, image_size=size), Discriminator(1, 4, size)
    convs_g = [m for m in G.main if isinstance(m, nn.ConvTranspose2d)]
    convs_d = [m for m in D.main if isinstance(m, nn.Conv2d)]
    assert len(convs_g) == len(convs_d) == n_blocks + 1
    assert max(m.out_channels for m in convs_d) == 4 * min(2 ** (n_blocks - 1), 8)  # capped at 8*base
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 1, size, size) and D(x).shape == (2,)


def test_128_adds_one_capped_block():
    G = Generator(latent_dim=128, channels=3, image_size=128)
    rows = layer_rows(G.main)
    assert rows[0] == ("ConvTranspose2d", 128, 512, 4, 1, 0, False)
    assert rows[3] == ("ConvTranspose2d", 512, 512, 4, 2, 1, False)  # the extra block
    assert rows[6:] == reference_g_rows(128, 3)[3:]


def test_bad_size_is_rejected():
    with pytest.raises(ValueError):
        Generator(image_size=48)


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    G = Generator()
    G.apply(init_dcgan_weights)
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(w.mean()) < 1e-3 and abs(w.std() - 0.02) < 5e-4
    bn = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    gamma = torch.cat([m.weight for m in bn])
    assert abs(gamma.mean() - 1) < 5e-3 and abs(gamma.std() - 0.02) < 5e-3
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bn)


def test_stabilised_discriminator_switches():
    torch.manual_seed(0)
    D = Discriminator(channels=1, base=8, image_size=32, spectral_norm=True, batch_norm=False, sigmoid=False)
    D.apply(init_dcgan_weights)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    convs = [m for m in D.main if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None and hasattr(m, "parametrizations") for m in convs)
    assert isinstance(D.head, nn.Identity)
    x = torch.randn(4, 1, 32, 32)
    for _ in range(30):  # power iteration converges in training-mode forwards
        D(x)
    D.eval()
    sigma = [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item() for m in convs]
    assert all(abs(s - 1) < 0.05 for s in sigma), sigma


def test_builders_follow_the_config():
    from cxr_utils.train import make_config

    cfg = make_config("stable", base=8, image_size=32, channels=1, latent_dim=16)
    G, D = dcgan.build_generator(cfg), dcgan.build_discriminator(cfg)
    assert (G.latent_dim, G.channels, G.image_size) == (16, 1, 32)
    assert isinstance(D.head, nn.Identity)  # hinge loss -> raw scores
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
