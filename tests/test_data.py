"""The data layer: every source, every preprocessing option, the cache, the report and the CLI.

All images are tiny and written by the tests themselves; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_utils import cli, data, phantom
from cxr_utils.images import from_uint8, to_uint8
from cxr_utils.errors import DataError
from cxr_utils.paths import project_path, repo_root
from helpers import image_u8, load_small, one_line

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# small test images, written by the tests


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _flat(value: int, size: int = 32) -> np.ndarray:
    return np.full((size, size), value, dtype=np.uint8)


def _ramp(seed: int, size: int = 32) -> np.ndarray:
    """A distinct 8-bit image per seed (so no accidental duplicates)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def _class_folder(root: Path, per_class: dict[str, int]) -> Path:
    seed = 0
    for name, n in per_class.items():
        for i in range(n):
            _png(root / name / f"img{i:02d}.png", _ramp(seed))
            seed += 1
    return root


def _dicom_bytes(pixels: np.ndarray | None, photometric: str = "MONOCHROME2", ts: str | None = None,
                 **elements) -> bytes:
    """A minimal secondary-capture DICOM: 16-bit, 12 bits stored; ``ts`` compressed -> bogus fragments."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ts or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = 32, 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in elements.items():
        setattr(ds, k, v)
    if ts:
        ds.PixelData = encapsulate([b"\x00\x01not-really-compressed" * 4])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


_load, _u8, _one_line_error = load_small, image_u8, one_line


# ---------------------------------------------------------------------------------------------
# source strings


def test_parse_source_forms():
    assert data.parse_source("phantom") == ("phantom", data.DEFAULT_PHANTOM_N)
    assert data.parse_source("phantom:12") == ("phantom", 12)
    assert data.parse_source("medmnist:pneumoniamnist") == ("medmnist", "pneumoniamnist")
    assert data.parse_source("medmnist:pneumoniamnist:val") == ("medmnist", "pneumoniamnist:val")
    assert data.parse_source("some/folder") == ("folder", "some/folder")


@pytest.mark.parametrize("source, words", [
    ("s3://bucket/x", ["unknown data source scheme", "medmnist:<flag>", "phantom"]),
    ("phantom:zero", ["positive image count"]),
    ("phantom:0", ["positive image count"]),
    ("medmnist:nosuchmnist", ["unknown medmnist flag", "pneumoniamnist"]),
    ("medmnist:pneumoniamnist:dev", ["unknown medmnist split", "train"]),
    ("medmnist:chestmnist", ["multi-label"]),
    ("medmnist:organmnist3d", ["3-D"]),
    ("", ["empty data source"]),
])
def test_parse_source_errors(source, words):
    with pytest.raises(DataError) as excinfo:
        data.parse_source(source)
    msg = _one_line_error(excinfo)
    assert all(w in msg for w in words), msg


# ---------------------------------------------------------------------------------------------
# folders


def test_folder_class_subfolders_and_filter(tmp_path):
    root = _class_folder(tmp_path / "set", {"Non-Cancer": 3, "Cancer": 2})
    ds = _load(root, tmp_path)
    assert ds.class_names == ["Cancer", "Non-Cancer"]
    assert len(ds) == 5 and ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.ids[0] == "Cancer/img00.png" and ds.groups == ds.ids
    assert ds.report.class_counts == {"Cancer": 2, "Non-Cancer": 3}
    # the stored pixels are the file's pixels (32x32 at image_size 32: no resampling)
    assert (_u8(ds, 2) == _ramp(0)).all()

    only = _load(root, tmp_path, classes=["Non-Cancer", "Cancer"])  # order given = label order
    assert only.class_names == ["Non-Cancer", "Cancer"] and only.labels.tolist() == [1, 1, 0, 0, 0]
    assert len(_load(root, tmp_path, classes="Cancer")) == 2

    with pytest.raises(DataError) as excinfo:
        _load(root, tmp_path, classes=["Cancer", "Benign"])
    msg = _one_line_error(excinfo)
    assert "Benign" in msg and "Cancer, Non-Cancer" in msg


def test_kermany_layout_split_folders_and_patient_groups(tmp_path):
    root = tmp_path / "chest_xray"
    _png(root / "train" / "NORMAL" / "IM-0115-0001.png", _ramp(1))
    _png(root / "train" / "NORMAL" / "IM-0115-0002.png", _ramp(2))
    _png(root / "train" / "PNEUMONIA" / "person1_bacteria_1.png", _ramp(3))
    _png(root / "test" / "PNEUMONIA" / "person1_virus_7.png", _ramp(4))
    _png(root / "val" / "NORMAL" / "NORMAL2-IM-1427-0001.png", _ramp(5))
    _png(root / ".hidden" / "NORMAL" / "x.png", _ramp(6))            # hidden folders are ignored
    _png(root / "__MACOSX" / "train" / "NORMAL" / "y.png", _ramp(7))  # so are macOS resource forks
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    ds = _load(root, tmp_path)
    assert ds.class_names == ["NORMAL", "PNEUMONIA"]
    by_id = {i: (ds.class_names[lab], g, s) for i, lab, g, s in zip(ds.ids, ds.labels.tolist(), ds.groups, ds.splits)}
    assert by_id == {
        "test/PNEUMONIA/person1_virus_7.png": ("PNEUMONIA", "person1", "test"),
        "train/NORMAL/IM-0115-0001.png": ("NORMAL", "IM-0115", "train"),
        "train/NORMAL/IM-0115-0002.png": ("NORMAL", "IM-0115", "train"),
        "train/PNEUMONIA/person1_bacteria_1.png": ("PNEUMONIA", "person1", "train"),
        "val/NORMAL/NORMAL2-IM-1427-0001.png": ("NORMAL", "NORMAL2-IM-1427", "val"),
    }
    assert ds.report.files_found == 5


def test_shared_prefix_nested_subfolders_and_flat_folder(tmp_path):
    nested = tmp_path / "nested"
    _png(nested / "export" / "Cancer" / "patient7" / "00001308_000.png", _ramp(1))
    _png(nested / "export" / "Healthy" / "patient8" / "a.png", _ramp(2))
    ds = _load(nested, tmp_path)
    assert ds.class_names == ["Cancer", "Healthy"]
    assert ds.groups[0] == "00001308"  # NIH-style file names give the patient id

    flat = tmp_path / "my_xrays"
    _png(flat / "a.png", _ramp(3))
    _png(flat / "b.png", _ramp(4))
    ds = _load(flat, tmp_path)
    assert ds.class_names == ["my_xrays"] and ds.labels.tolist() == [0, 0]


def test_16bit_png_scaled_by_bit_depth_with_float_precision(tmp_path):
    gradient = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    twelve = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 0..4092: 12 bits used
    _png(tmp_path / "g" / "a16.png", gradient)
    _png(tmp_path / "g" / "b12.png", twelve)
    ds = _load(tmp_path / "g", tmp_path)
    assert Image.open(tmp_path / "g" / "a16.png").mode.startswith("I;16")
    full = _u8(ds, 0)
    assert full.min() == 0 and full.max() == 255
    assert (full == np.round(gradient.astype(float) * 255 / 65535)).all()
    assert (_u8(ds, 1) == np.round(twelve.astype(float) * 255 / 4095)).all()
    assert ds.report.bit_depths == {"16": 1, "16 (12 used)": 1}


def test_rgb_jpeg_and_rgba_png_become_grayscale(tmp_path):
    colour = np.zeros((32, 32, 3), dtype=np.uint8)
    colour[:, :16] = (200, 40, 10)
    colour[:, 16:] = (10, 200, 250)  # a different luma: a constant image would be left out
    luma = lambda rgb: 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # noqa: E731
    Image.fromarray(colour).save(tmp_path / "c.jpg", quality=95)
    rgba = np.dstack([colour, np.full((32, 32), 128, np.uint8)])
    _png(tmp_path / "d.png", rgba)
    ds = _load(tmp_path, tmp_path, cache=False)
    assert ds.images.shape == (2, 1, 32, 32)
    img = _u8(ds, 0)  # c.jpg
    assert abs(img[16, 4] - luma((200, 40, 10))) <= 3 and abs(img[16, 28] - luma((10, 200, 250))) <= 3
    img = _u8(ds, 1)  # d.png: half transparent everywhere, composited on black
    assert abs(img[16, 4] - luma((200, 40, 10)) * 128 / 255) <= 1
    assert abs(img[16, 28] - luma((10, 200, 250)) * 128 / 255) <= 1
    assert ds.report.bit_depths == {"8": 2}
    assert ds.report.notes == {"transparency composited on black": 1}


def test_crop_center_versus_none(tmp_path):
    wide = np.zeros((32, 64), dtype=np.uint8)
    wide[:, 16:48] = 255  # only the centre square is white
    _png(tmp_path / "w" / "wide.png", wide)
    centre = _u8(_load(tmp_path / "w", tmp_path, crop="center"))
    squashed = _u8(_load(tmp_path / "w", tmp_path, crop="none"))
    assert (centre == 255).all()
    assert squashed[:, 0].max() == 0 and squashed[:, 16].min() == 255
    assert _load(tmp_path / "w", tmp_path).report.original_sizes == {"64x32": 1}


def test_resize_is_antialiased(tmp_path):
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    _png(tmp_path / "c" / "checker.png", checker)
    img = _u8(_load(tmp_path / "c", tmp_path, image_size=32))
    assert np.abs(img - 127.5).max() <= 3  # averaged to grey, not aliased to black/white


def test_dicom_monochrome1_is_inverted_monochrome2(tmp_path):
    pixels = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 0..4092
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a_mono2.dcm").write_bytes(_dicom_bytes(pixels, "MONOCHROME2"))
    (tmp_path / "m" / "b_mono1.dcm").write_bytes(_dicom_bytes(pixels, "MONOCHROME1"))
    ds = _load(tmp_path / "m", tmp_path)
    mono2, mono1 = _u8(ds, 0), _u8(ds, 1)
    expected = pixels.astype(float) * 255 / pixels.max()  # no window: the stored range is stretched
    assert np.abs(mono2 - expected).max() <= 0.5 + 1e-9
    assert (mono1 == 255 - mono2).all()
    assert ds.report.bit_depths == {"12": 2}


def test_dicom_rescale_then_window(tmp_path):
    stored = np.repeat(np.linspace(0, 4095, 32).round().astype(np.uint16)[None], 32, axis=0)
    center, width, intercept = 1000.0, 800.0, -1024.0
    raw = _dicom_bytes(stored, WindowCenter=center, WindowWidth=width, RescaleSlope=1, RescaleIntercept=intercept)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x.dcm").write_bytes(raw)
    got = _u8(_load(tmp_path / "w", tmp_path))
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR) by hand, on the rescaled values
    hu = stored.astype(float) + intercept
    frac = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    assert np.abs(got - frac * 255).max() <= 0.5 + 1e-6
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 5


def test_unsupported_and_corrupt_files_are_skipped_and_listed(tmp_path):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    root = tmp_path / "mixed"
    _png(root / "good.png", _ramp(1))
    (root / "jpegls.dcm").write_bytes(_dicom_bytes(None, ts=JPEGLSLossless))
    (root / "j2k.dcm").write_bytes(_dicom_bytes(None, ts=JPEG2000Lossless))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = io.BytesIO()
    Image.fromarray(_ramp(2)).save(good, format="PNG")
    (root / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    ds = _load(root, tmp_path)
    assert ds.ids == ["good.png"]
    reasons = dict(ds.report.skipped)
    assert set(reasons) == {"jpegls.dcm", "j2k.dcm", "broken.png", "truncated.png"}
    assert reasons["jpegls.dcm"].startswith("unsupported DICOM encoding JPEG-LS")
    assert "JPEG 2000" in reasons["j2k.dcm"]
    assert all("\n" not in r for r in reasons.values())
    assert (ds.report.files_found, ds.report.decoded) == (5, 1)


def test_only_unsupported_dicom_is_an_error(tmp_path):
    from pydicom.uid import JPEGLSLossless

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "scan.dcm").write_bytes(_dicom_bytes(None, ts=JPEGLSLossless))
    with pytest.raises(DataError) as excinfo:
        _load(tmp_path / "d", tmp_path)
    msg = _one_line_error(excinfo)
    assert "could be decoded" in msg and "JPEG-LS" in msg


def test_extensionless_dicom_is_found(tmp_path):
    pixels = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "IMG0001").write_bytes(_dicom_bytes(pixels))
    (tmp_path / "e" / "README").write_text("not dicom")
    assert _load(tmp_path / "e", tmp_path).ids == ["IMG0001"]


# ---------------------------------------------------------------------------------------------
# medmnist and phantom


def _write_medmnist(root: Path, size: int, n: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1).astype(np.uint8)
    arrays["val_images"][1] = arrays["train_images"][0]  # an exact duplicate across splits
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"pneumoniamnist_{size}.npz", **arrays)
    return arrays


def test_medmnist_npz_all_splits_and_selector(tmp_path, monkeypatch):
    monkeypatch.setattr(data.medmnist, "MEDMNIST_ROOT", str(tmp_path / "medmnist"))
    arrays = _write_medmnist(tmp_path / "medmnist", 64, {"train": 4, "val": 2, "test": 3})
    ds = _load("medmnist:pneumoniamnist", tmp_path, image_size=64)
    assert ds.class_names == ["normal", "pneumonia"]
    assert len(ds) == 8 and ds.report.duplicates_removed == 1
    assert ds.report.duplicate_groups == [["medmnist/train/0", "medmnist/val/1"]]
    assert ds.ids[:5] == ["medmnist/train/0", "medmnist/train/1", "medmnist/train/2", "medmnist/train/3",
                          "medmnist/val/0"]
    assert ds.splits.count("train") == 4 and ds.splits.count("test") == 3
    assert (to_uint8(ds.images[:4, 0]).numpy() == arrays["train_images"]).all()
    assert ds.labels[:4].tolist() == [0, 1, 0, 1]

    val = _load("medmnist:pneumoniamnist:val", tmp_path, image_size=64, classes=["pneumonia"])
    assert val.ids == ["medmnist/val/1"] and val.labels.tolist() == [0]


def test_medmnist_absent_file_offline_is_a_clear_error(tmp_path, monkeypatch):
    import medmnist.dataset

    monkeypatch.setattr(data.medmnist, "MEDMNIST_ROOT", str(tmp_path / "medmnist"))

    def offline(self):
        raise RuntimeError("Automatic download failed!\n  multi-line text")

    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", offline)
    with pytest.raises(DataError) as excinfo:
        _load("medmnist:pneumoniamnist", tmp_path, image_size=28)
    msg = _one_line_error(excinfo)
    assert "pneumoniamnist.npz" in msg and "offline" in msg and "zenodo" in msg.lower()
    assert not (tmp_path / "medmnist" / "pneumoniamnist.npz").exists()


def test_phantom_source_matches_generator(tmp_path):
    ds = _load("phantom:6", tmp_path, image_size=64, seed=3)
    ref = phantom.generate(6, size=64, seed=3)
    assert ds.class_names == list(phantom.CLASS_NAMES)
    assert (to_uint8(ds.images[:, 0]).numpy() == ref.images).all()
    assert ds.labels.tolist() == ref.labels.tolist()
    assert ds.ids[0] == "phantom/000000" and ds.groups == ds.ids
    assert ds.report.original_sizes == {"64x64": 6} and ds.report.options["seed"] == 3


@pytest.mark.parametrize("source, size", [("phantom:4", 32), ("phantom:4", 512), ("medmnist:pneumoniamnist", 100),
                                          ("FOLDER", 16), ("FOLDER", 2048)])
def test_unsupported_image_size(tmp_path, source, size):
    root = _class_folder(tmp_path / "f", {"a": 1})
    with pytest.raises(DataError) as excinfo:
        _load(source.replace("FOLDER", str(root)), tmp_path, image_size=size)
    assert "image_size" in _one_line_error(excinfo)


# ---------------------------------------------------------------------------------------------
# preprocessing options


def test_channels_range_and_uint8_round_trip(tmp_path):
    root = _class_folder(tmp_path / "f", {"a": 2, "b": 1})
    ds = _load(root, tmp_path, channels=3)
    assert ds.images.dtype == torch.float32 and ds.images.shape == (3, 3, 32, 32)
    assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 0], ds.images[:, 2])
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.images.min() == -1 and ds.images.max() == 1  # random 8-bit images hit 0 and 255
    u8 = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(u8)), u8)
    assert from_uint8(u8)[[0, 255]].tolist() == [-1.0, 1.0]
    image, label = ds[2]
    assert image.shape == (3, 32, 32) and label.dtype == torch.int64 and int(label) == 1
    for bad in ({"channels": 2}, {"crop": "pad"}):
        with pytest.raises(DataError):
            _load(root, tmp_path, **bad)


def test_equalize_spreads_the_histogram(tmp_path):
    rng = np.random.default_rng(0)
    _png(tmp_path / "e" / "dull.png", rng.integers(90, 150, (32, 32), dtype=np.uint8))
    plain = _u8(_load(tmp_path / "e", tmp_path))
    equalised = _u8(_load(tmp_path / "e", tmp_path, equalize=True))
    assert plain.max() - plain.min() <= 59
    assert equalised.min() == 0 and equalised.max() == 255
    order = np.argsort(plain.ravel(), kind="stable")
    assert (np.diff(equalised.ravel()[order]) >= 0).all()  # a monotone remapping of the grey levels
    assert 0.45 <= (equalised < 128).mean() <= 0.55  # about half the pixels below mid-grey: a flat histogram


def test_dedup_groups_counts_and_first_by_sorted_path(tmp_path):
    root = tmp_path / "d"
    for rel in ("b/copy2.png", "a/orig.png", "b/copy1.png"):
        _png(root / rel, _ramp(77))
    _png(root / "a" / "other.png", _ramp(1))
    _png(root / "b" / "own.png", _ramp(2))
    ds = _load(root, tmp_path)
    assert ds.ids == ["a/orig.png", "a/other.png", "b/own.png"]
    assert ds.report.duplicate_groups == [["a/orig.png", "b/copy1.png", "b/copy2.png"]]
    assert ds.report.duplicates_removed == 2 and ds.report.class_counts == {"a": 2, "b": 1}
    assert len(set(ds.md5s)) == 3

    kept = _load(root, tmp_path, dedup=False)
    assert len(kept) == 5 and kept.report.duplicates_removed == 0
    assert kept.report.duplicate_groups == ds.report.duplicate_groups
    assert "duplicate groups (1, all kept (dedup off))" in kept.report.format()


# ---------------------------------------------------------------------------------------------
# cache


def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = data.folder._decode_file

    def counting(path, raw):
        calls.append(path.name)
        return real(path, raw)

    monkeypatch.setattr(data.folder, "_decode_file", counting)
    return calls


def test_cache_hit_does_not_decode(tmp_path, monkeypatch):
    root = _class_folder(tmp_path / "f", {"a": 2, "b": 2})
    first = _load(root, tmp_path)
    assert not first.report.from_cache

    def fail(path, raw):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data.folder, "_decode_file", fail)
    second = _load(root, tmp_path)
    assert second.report.from_cache
    assert torch.equal(first.images, second.images) and first.ids == second.ids
    assert second.report.class_counts == first.report.class_counts
    assert _load(root, tmp_path, channels=3).report.from_cache  # channels are applied after the cache
    with pytest.raises(AssertionError, match="decoded although cached"):  # no cache: the decoder runs
        _load(root, tmp_path, cache=False)


def test_cache_invalidated_by_file_change_and_options(tmp_path, monkeypatch):
    root = _class_folder(tmp_path / "f", {"a": 2, "b": 1})
    _load(root, tmp_path)
    calls = _count_decodes(monkeypatch)
    _load(root, tmp_path)
    assert calls == []
    st = (root / "a" / "img00.png").stat()
    os.utime(root / "a" / "img00.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not _load(root, tmp_path).report.from_cache and len(calls) == 3
    _png(root / "b" / "img00.png", _ramp(42))  # modified content
    changed = _load(root, tmp_path)
    assert not changed.report.from_cache and (_u8(changed, 2) == _ramp(42)).all()
    calls.clear()
    assert not _load(root, tmp_path, equalize=True).report.from_cache and len(calls) == 3
    assert not _load(root, tmp_path, image_size=48).report.from_cache
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 5


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    root = _class_folder(tmp_path / "f", {"a": 2})
    first = _load(root, tmp_path)
    cache_file = Path(first.report.options["cache_file"])
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = _load(root, tmp_path)
    assert not again.report.from_cache and torch.equal(again.images, first.images)
    assert _load(root, tmp_path).report.from_cache  # rewritten, readable
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_failing_loads_leave_the_cache_alone(tmp_path):
    root = _class_folder(tmp_path / "f", {"a": 2})
    _load(root, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    for source, kw in ((tmp_path / "bad", {}), (root, {"classes": ["zzz"]}), (tmp_path / "missing", {})):
        with pytest.raises(DataError):
            _load(source, tmp_path, **kw)
    after = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}
    assert after == before


# ---------------------------------------------------------------------------------------------
# errors


def test_bad_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "textonly").mkdir()
    (tmp_path / "textonly" / "a.csv").write_text("x")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.png").write_bytes(b"junk")
    (tmp_path / "corrupt" / "b.jpg").write_bytes(b"")
    (tmp_path / "file.png").write_bytes(b"junk")
    expected = {
        "missing": "not an existing folder",
        "empty": "no image files",
        "textonly": "no image files",
        "corrupt": "none of the 2 image files",
        "file.png": "is a file",
    }
    for name, words in expected.items():
        with pytest.raises(DataError) as excinfo:
            _load(tmp_path / name, tmp_path)
        assert words in _one_line_error(excinfo)


# ---------------------------------------------------------------------------------------------
# report, subset, paths


def test_report_round_trip_and_format(tmp_path):
    root = _class_folder(tmp_path / "f", {"x": 2, "y": 1})
    (root / "y" / "bad.png").write_bytes(b"junk")
    ds = _load(root, tmp_path)
    d = json.loads(json.dumps(ds.report.to_dict()))
    back = data.DataReport.from_dict(d)
    assert back == ds.report and d["images"] == 3
    text = ds.report.format()
    for words in ("files found", "y/bad.png: not a readable image", "32x32", "x ", "66.7%", "image_size=32"):
        assert words in text or words.replace("files ", "") in text, words


def test_subset(tmp_path):
    root = _class_folder(tmp_path / "f", {"x": 2, "y": 2})
    ds = _load(root, tmp_path)
    sub = ds.subset([3, 0])
    assert sub.ids == [ds.ids[3], ds.ids[0]] and sub.labels.tolist() == [1, 0]
    assert torch.equal(sub.images[1], ds.images[0]) and sub.class_names == ds.class_names
    assert ds.subset(ds.labels == 1).ids == ds.ids[2:]


def test_project_path_from_a_subfolder_of_the_checkout(tmp_path, monkeypatch):
    assert repo_root() == ROOT
    monkeypatch.chdir(ROOT / "notebooks")
    assert project_path("results/x") == ROOT / "results" / "x"
    assert project_path(tmp_path) == tmp_path
    monkeypatch.chdir(tmp_path)
    assert project_path("results/x") == tmp_path / "results" / "x"


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_data_report_writes_its_files(tmp_path, capsys):
    root = _class_folder(tmp_path / "f", {"a": 3, "b": 2})
    out = tmp_path / "report"
    code = cli.main(["data-report", str(root), "--out", str(out), "--image-size", "32", "--classes", "b,a",
                     "--cache-dir", str(tmp_path / "cache"), "--equalize", "--no-dedup"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["histograms.png", "montage.png", "report.json", "report.txt"]
    report = json.loads((out / "report.json").read_text())
    assert report["class_counts"] == {"b": 2, "a": 3}
    assert report["options"]["equalize"] is True and report["options"]["dedup"] is False
    assert Image.open(out / "montage.png").size[0] > 100
    assert "class" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["data-report", "NOPE"], "not an existing folder"),
    (["data-report", "phantom:4", "--image-size", "20"], "image_size"),
    (["data-report", "ftp://host/x"], "unknown data source scheme"),
])
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, argv, words):
    argv = [str(tmp_path / a) if a == "NOPE" else a for a in argv] + ["--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "o").exists()


def test_cli_subprocess_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cxr_utils", "data-report", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_data_package_never_imports_plots(tmp_path):
    code = ("import sys, cxr_utils.data as d; d.load('phantom:4', cache=False, progress=False); "
            "print('cxr_utils.plots' in sys.modules, 'matplotlib' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_write_report_without_figures_writes_text_and_json(tmp_path):
    ds = _load(_class_folder(tmp_path / "f", {"a": 2}), tmp_path)
    paths = data.write_report(ds, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.json", "report.txt"]
    assert json.loads(paths["report.json"].read_text())["class_counts"] == {"a": 2}
