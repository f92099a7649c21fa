"""Real data sets as people have them: archive layouts, PACS exports, string parameters from papermill,
DICOM display tags, EXIF orientation, transparency and 16-bit scaling. Every input is built here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_utils import data
from cxr_utils.errors import ConfigError, DataError
from cxr_utils.splits import patient_id_from_name
from helpers import image_u8, load_small, one_line


def _ramp(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


_load, _u8, _one_line = load_small, image_u8, one_line


def _dicom(pixels: np.ndarray, preamble: bool = True, photometric: str = "MONOCHROME2", **elements) -> bytes:
    """Explicit VR little endian, 16 bits allocated, 12 stored, through pydicom's FileDataset."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()


STORED = np.repeat(np.linspace(0, 4095, 32).round().astype(np.uint16)[None], 32, axis=0)
STORED_F = STORED.astype(float)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window to 0..255, by hand."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255


# ---------------------------------------------------------------------------------------------
# 1. layout discovery


def _kaggle_archive(parent: Path) -> Path:
    """chest_xray/{train,test}/{NORMAL,PNEUMONIA}, 2 images each, the whole tree again under
    chest_xray/chest_xray, and __MACOSX AppleDouble files."""
    seed = 0
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            for i in range(2):
                name = f"IM-{seed:04d}-0001.jpeg" if cls == "NORMAL" else f"person{seed}_bacteria_{i}.jpeg"
                for top in ("chest_xray", "chest_xray/chest_xray"):
                    _save(parent / top / split / cls / name, _ramp(seed), format="PNG")
                for top in ("__MACOSX/chest_xray", "__MACOSX/chest_xray/chest_xray"):
                    (parent / top / split / cls).mkdir(parents=True, exist_ok=True)
                    (parent / top / split / cls / f"._{name}").write_bytes(b"\0\5\26\7" + b"\0" * 60)
                seed += 1
    (parent / "chest_xray" / ".DS_Store").write_bytes(b"\0" * 10)
    return parent / "chest_xray"


def test_kaggle_archive_with_nested_copy_and_macosx(tmp_path):
    root = _kaggle_archive(tmp_path / "archive")
    ds = _load(root, tmp_path)
    assert ds.report.class_counts == {"NORMAL": 4, "PNEUMONIA": 4}
    assert ds.report.duplicate_trees == ["chest_xray = ."]
    assert ds.report.ignored == {data.folder.IGNORED_DUPLICATE_TREE: 8, data.folder.IGNORED_HIDDEN: 1}
    assert ds.report.duplicates_removed == 0 and sorted(set(ds.splits)) == ["test", "train"]
    assert "nested duplicate trees left out (1, copy = original):" in ds.report.format()
    assert "chest_xray = ." in ds.report.format()
    assert ds.groups == [patient_id_from_name(i) for i in ds.ids]  # the one patient-id rule

    parent = _load(tmp_path / "archive", tmp_path)  # the archive's parent folder: same classes
    assert parent.report.class_counts == {"NORMAL": 4, "PNEUMONIA": 4}
    assert parent.report.duplicate_trees == ["chest_xray/chest_xray = chest_xray"]
    assert parent.report.ignored[data.folder.IGNORED_MACOS] == 16
    assert parent.report.ignored[data.folder.IGNORED_DUPLICATE_TREE] == 8
    assert [i.split("/", 1)[1] for i in parent.ids] == ds.ids
    assert all(np.array_equal(_u8(parent, k), _u8(ds, k)) for k in range(len(ds)))


def test_a_different_file_keeps_the_inner_tree(tmp_path):
    root = tmp_path / "x"
    _save(root / "A" / "a.png", _ramp(1))
    _save(root / "x" / "A" / "a.png", _ramp(2)[:, :31])  # another size: not a copy
    ds = _load(root, tmp_path)
    assert ds.report.duplicate_trees == [] and len(ds) == 2


def test_class_emptied_by_dedup_is_an_error(tmp_path):
    root = tmp_path / "d"
    _save(root / "a" / "1.png", _ramp(1))
    _save(root / "a" / "2.png", _ramp(2))
    _save(root / "b" / "copy.png", _ramp(1))
    with pytest.raises(DataError) as excinfo:
        _load(root, tmp_path)
    msg = _one_line(excinfo)
    assert "['b']" in msg and "empty after de-duplication" in msg and "a/1.png = b/copy.png" in msg
    assert len(_load(root, tmp_path, dedup=False)) == 3


def test_pacs_export_named_by_uid_and_dicom_without_preamble(tmp_path):
    root = tmp_path / "pacs"
    root.mkdir()
    (root / "1.2.840.113619.2.55.3.1234.5678").write_bytes(_dicom(STORED))
    (root / "1.2.840.113619.2.55.3.1234.5679").write_bytes(_dicom(STORED[:, ::-1].copy()))
    (root / "raw.dcm").write_bytes(_dicom(STORED.T.copy(), preamble=False))  # no preamble: by suffix
    (root / "1.2.840.113619.2.55.3.1234.9999").write_bytes(b"not dicom at all" * 20)
    (root / "DICOMDIR.txt").write_text("index")
    ds = _load(root, tmp_path)
    assert ds.ids == ["1.2.840.113619.2.55.3.1234.5678", "1.2.840.113619.2.55.3.1234.5679", "raw.dcm"]
    assert ds.groups == ds.ids  # UIDs are distinct patients/images, never cut at a dot
    expected = STORED.astype(float) * 255 / 4095
    assert np.abs(_u8(ds, 0) - expected).max() <= 0.5 + 1e-9
    assert np.abs(_u8(ds, 2) - expected.T).max() <= 0.5 + 1e-9
    assert ds.report.ignored == {data.folder.IGNORED_NOT_IMAGE: 2}
    assert "files not read (2), by reason:" in ds.report.format()


def test_no_images_names_what_was_ignored(tmp_path):
    root = tmp_path / "e"
    (root / "__MACOSX").mkdir(parents=True)
    (root / "__MACOSX" / "._a.png").write_bytes(b"\0" * 10)
    (root / "notes.txt").write_text("x")
    with pytest.raises(DataError) as excinfo:
        _load(root, tmp_path)
    msg = _one_line(excinfo)
    assert "no image files" in msg and "1 macOS metadata" in msg and "1 not an image" in msg


# ---------------------------------------------------------------------------------------------
# 2. parameters arriving as strings


def test_load_keywords_go_through_the_config_coercion(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "e" / "a.png", rng.integers(90, 150, (32, 32), dtype=np.uint8))
    _save(tmp_path / "e" / "b.png", rng.integers(90, 150, (32, 32), dtype=np.uint8))
    plain = _load(tmp_path / "e", tmp_path)
    for false in ("false", "no", "0", "False", "off"):
        ds = _load(tmp_path / "e", tmp_path, equalize=false, image_size="32", channels="1", dedup="true")
        assert np.array_equal(_u8(ds), _u8(plain)) and ds.report.options["equalize"] is False
    eq = _load(tmp_path / "e", tmp_path, equalize="yes", cache="false", progress="0")
    assert _u8(eq).min() == 0 and _u8(eq).max() == 255 and eq.report.options["cache_file"] is None
    assert _load(tmp_path / "e", tmp_path, image_size=32.0).images.shape[-1] == 32
    assert _load(tmp_path / "e", tmp_path, classes="e").class_names == ["e"]
    for bad, word in (({"equalize": "maybe"}, "equalize"), ({"dedup": 1}, "dedup"),
                      ({"image_size": 32.5}, "image_size"), ({"seed": "x"}, "seed"), ({"classes": 3}, "classes")):
        with pytest.raises(ConfigError) as excinfo:
            _load(tmp_path / "e", tmp_path, **bad)
        assert word in _one_line(excinfo)
    with pytest.raises(DataError) as excinfo:
        _load(tmp_path / "e", tmp_path, bit_scaling="log")
    assert "bit_scaling" in _one_line(excinfo)


# ---------------------------------------------------------------------------------------------
# 3. DICOM display tags


@pytest.mark.parametrize("tags, expected", [
    ({}, STORED_F * 255 / 4095),
    ({"WindowCenter": "", "WindowWidth": ""}, STORED_F * 255 / 4095),  # empty window: as if absent
    ({"WindowCenter": 1000}, STORED_F * 255 / 4095),  # a centre without a width is no window
    ({"RescaleSlope": "", "RescaleIntercept": ""}, STORED_F * 255 / 4095),  # empty rescale: 1 and 0
    ({"RescaleSlope": "", "RescaleIntercept": "", "WindowCenter": 1000, "WindowWidth": 800},
     _window(STORED, 1000, 800)),
    ({"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": 1000, "WindowWidth": 800},
     _window(STORED * 2.0 - 1024, 1000, 800)),
    ({"RescaleSlope": 2, "RescaleIntercept": "", "WindowCenter": 1000, "WindowWidth": 800},
     _window(STORED * 2.0, 1000, 800)),
    ({"WindowCenter": [1500, 40], "WindowWidth": [1000, 400]}, _window(STORED, 1500, 1000)),  # first value
    ({"WindowCenter": 1000, "WindowWidth": 0}, STORED_F * 255 / 4095),  # width < 1 is not a window
])
def test_dicom_rescale_and_window_combinations(tmp_path, tags, expected):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.dcm").write_bytes(_dicom(STORED, **tags))
    ds = _load(tmp_path / "d", tmp_path)
    assert ds.report.skipped == []
    assert np.abs(_u8(ds) - expected).max() <= 0.5 + 1e-6
    mono1 = tmp_path / "m1"
    mono1.mkdir()
    (mono1 / "x.dcm").write_bytes(_dicom(STORED, photometric="MONOCHROME1", **tags))
    assert np.array_equal(_u8(_load(mono1, tmp_path)), 255 - _u8(ds))  # inversion comes last


def test_dicom_voi_lut_sequence_wins_over_the_window(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = list(range(4095, -1, -1))  # an inverting 12-bit LUT
    item["LUTDescriptor"].VR, item["LUTData"].VR = "US", "US"
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x.dcm").write_bytes(_dicom(STORED, VOILUTSequence=Sequence([item]),
                                                  WindowCenter=1000, WindowWidth=800))
    got = _u8(_load(tmp_path / "v", tmp_path))
    assert np.abs(got - (4095 - STORED_F) * 255 / 4095).max() <= 0.5 + 1e-6


def test_dicom_8bit_voi_lut_with_4096_entries_after_a_rescale(tmp_path):
    """An 8-bit LUT over 12-bit values: every stored value must index its own entry (no wrap at 256)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = [int(v) for v in np.arange(4096)[::-1] // 16]  # inverting, 16 inputs per grey level
    item["LUTDescriptor"].VR, item["LUTData"].VR = "US", "US"
    (tmp_path / "v").mkdir()
    stored = STORED // 2  # 0..2048 before the rescale
    (tmp_path / "v" / "x.dcm").write_bytes(_dicom(stored, VOILUTSequence=Sequence([item]),
                                                  RescaleSlope=2, RescaleIntercept=0))
    got = _u8(_load(tmp_path / "v", tmp_path))
    assert np.array_equal(got, (4095 - stored.astype(int) * 2) // 16)


def test_presentation_lut_shape_inverse(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.dcm").write_bytes(_dicom(STORED, PresentationLUTShape="INVERSE"))
    assert np.abs(_u8(_load(tmp_path / "p", tmp_path)) - (255 - STORED_F * 255 / 4095)).max() <= 0.5 + 1e-6


def test_constant_images_are_left_out_and_reported(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "blank.dcm").write_bytes(_dicom(np.full((32, 32), 700, np.uint16), WindowCenter=1000, WindowWidth=800))
    _save(root / "white.png", np.full((32, 32), 255, np.uint8))
    _save(root / "good.png", _ramp(3))
    ds = _load(root, tmp_path)
    assert ds.ids == ["good.png"]
    reasons = dict(ds.report.skipped)
    assert reasons["white.png"].startswith("constant image (every pixel is 255)")
    assert reasons["blank.dcm"].startswith("constant image")
    assert (ds.report.files_found, ds.report.decoded) == (3, 1)
    kept = _load(root, tmp_path, keep_constant=True)  # e.g. generated samples whose collapse is measured
    assert kept.ids == ["blank.dcm", "good.png", "white.png"] and (_u8(kept, 2) == 255).all()


def test_constant_phantom_free_array_sources_are_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(data.medmnist, "MEDMNIST_ROOT", str(tmp_path / "medmnist"))
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    arrays["train_images"][1] = 0
    (tmp_path / "medmnist").mkdir()
    np.savez(tmp_path / "medmnist" / "pneumoniamnist.npz", **arrays)
    ds = _load("medmnist:pneumoniamnist", tmp_path, image_size=28)
    assert len(ds) == 4 and "medmnist/train/1" not in ds.ids
    assert dict(ds.report.skipped)["medmnist/train/1"].startswith("constant image (every pixel is 0)")


# ---------------------------------------------------------------------------------------------
# 4. what the file says about its own display


UPRIGHT = np.zeros((32, 32), np.uint8)
UPRIGHT[2:10, 2:20] = 255  # a bar near the top left
UPRIGHT[20:30, 24:28] = 120  # and a block lower right
UPRIGHT += np.arange(32, dtype=np.uint8)[:, None]  # and a vertical ramp

# what to store so that EXIF orientation k displays UPRIGHT (inverse of the EXIF 2.3 transforms)
STORE_FOR = {1: lambda u: u, 2: np.fliplr, 3: lambda u: np.rot90(u, 2), 4: np.flipud, 5: lambda u: u.T,
             6: lambda u: np.rot90(u, 1), 7: lambda u: np.rot90(u, 2).T, 8: lambda u: np.rot90(u, -1)}


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("TIFF", "tif")])
def test_exif_orientation_loads_upright(tmp_path, fmt, suffix):
    root = tmp_path / "o"
    for k, store in STORE_FOR.items():
        exif = Image.Exif()
        exif[0x0112] = k
        _save(root / f"o{k}.{suffix}", np.ascontiguousarray(store(UPRIGHT)), format=fmt, exif=exif)
    ds = _load(root, tmp_path, dedup=False)
    assert ds.ids == [f"o{k}.{suffix}" for k in range(1, 9)]
    for i in range(8):
        assert np.array_equal(_u8(ds, i), UPRIGHT), f"orientation {i + 1}"
    if fmt == "PNG":  # (Pillow turns TIFF tiles upright while reading and drops the tag)
        assert ds.report.notes == {f"EXIF orientation {k} applied": 1 for k in range(2, 9)}


def test_exif_orientation_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(tmp_path / "j" / "x.jpeg", np.ascontiguousarray(STORE_FOR[6](UPRIGHT)), quality=100, exif=exif)
    assert np.abs(_u8(_load(tmp_path / "j", tmp_path)) - UPRIGHT.astype(int)).mean() < 3


def test_transparency_is_black_whatever_colour_lies_under_it(tmp_path):
    root = tmp_path / "t"
    gray = _ramp(5)
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:, :8] = 0  # a transparent band; the colour under it is white
    under = gray.copy()
    under[:, :8] = 255
    _save(root / "la.png", np.dstack([under, alpha]))  # LA
    rgba = np.dstack([under, under, under, alpha])
    _save(root / "rgba.png", rgba)
    pal = Image.fromarray(under).convert("P")
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])  # the white palette entry
    pal.save(root / "p.png", transparency=int(np.asarray(pal)[0, 0]))
    ds = _load(root, tmp_path, dedup=False)
    for i in range(3):
        img = _u8(ds, i)
        assert (img[:, :8] == 0).all(), ds.ids[i]
    assert np.array_equal(_u8(ds, ds.ids.index("la.png"))[:, 8:], gray[:, 8:])
    assert ds.report.notes == {"transparency composited on black": 3}


def test_16bit_scaling_options_and_cache(tmp_path):
    root = tmp_path / "b"
    bright16 = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 0..4092: 12 bits used
    _save(root / "bright.png", bright16)
    _save(root / "dim.png", bright16 // 2)  # 0..2046: 11 bits used, half as bright
    bright, dim = bright16.astype(float), (bright16 // 2).astype(float)
    per = _load(root, tmp_path)
    assert np.array_equal(_u8(per, 0), np.round(bright * 255 / 4095))
    assert np.array_equal(_u8(per, 1), np.round(dim * 255 / 2047))  # stretched: looks as bright
    dataset = _load(root, tmp_path, bit_scaling="dataset")
    assert not dataset.report.from_cache  # another option, another cache entry
    assert np.array_equal(_u8(dataset, 1), np.round(dim * 255 / 4095))  # relative brightness kept
    assert _u8(dataset, 1).max() == 127
    fixed = _load(root, tmp_path, bit_scaling="fixed")
    assert np.array_equal(_u8(fixed, 0), np.round(bright * 255 / 65535))
    assert dataset.report.options["bit_scaling"] == "dataset"
    assert "bit scaling: dataset: 2 image(s) above 8 bits divided by 2^12 - 1" in dataset.report.format()
    assert _load(root, tmp_path, bit_scaling="dataset").report.from_cache


def test_cli_bit_scaling(tmp_path, capsys):
    from cxr_utils import cli

    _save(tmp_path / "b" / "x.png", (np.arange(32 * 32).reshape(32, 32) * 2).astype(np.uint16))
    assert cli.main(["data-report", str(tmp_path / "b"), "--out", str(tmp_path / "r"), "--image-size", "32",
                     "--bit-scaling", "fixed", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "bit scaling: fixed: 1 image(s) above 8 bits divided by 2^(bits of the file type) - 1" in \
        capsys.readouterr().out


def test_old_cache_files_are_not_reused():
    assert data.FORMAT_VERSION >= 2
