"""Every data source behind one call, ``load(source, ...)``, returning a clean, cached tensor dataset.

Source strings (the same in Python, on the CLI and as a papermill parameter):

- a folder path: images found recursively (PNG, JPEG, BMP, TIFF incl. 16-bit, DICOM ``.dcm``/``.dicom``
  and extension-less files with the DICOM ``DICM`` marker); hidden files/folders and ``__MACOSX`` are ignored;
- ``medmnist:<flag>`` or ``medmnist:<flag>:<train|val|test>`` (all three splits combined by default);
- ``phantom`` (2,000 images) or ``phantom:<N>``: the embedded synthetic chest-radiograph generator.
  ``phantom`` always means the generator; write ``./phantom`` for a folder of that name.

Folder labels. For each image take the folders between the root and the file, drop split folders
(``train``/``training``, ``val``/``valid``/``validation``, ``test``/``testing``; the split is recorded),
then drop leading folders that every image shares as long as each image keeps at least one folder.
The class is the first folder left; images with none left take the root folder's name. So
``root/Cancer/x.png`` -> ``Cancer``, ``chest_xray/train/NORMAL/x.jpeg`` -> ``NORMAL``,
``root/Cancer/patient7/x.png`` -> ``Cancer`` and a flat folder is one class named after it.
``class_names`` are sorted, or follow ``classes=`` when given (which also selects those classes).

Folders: a nested copy of the tree (the Kaggle archive's ``chest_xray/chest_xray``) is left out and
named in the report; files not read are counted by reason (``report.ignored``); constant images are
left out (all sources). See docs/data.md for every rule.

Preprocessing, in this order, each a recorded option: decode to floating point (EXIF orientation
applied; 8-bit kept; higher bit depths scaled by ``bit_scaling``: the bits each image uses, the most
bits of the load, or the file type's bits; DICOM through its modality LUT then its VOI LUT or window,
MONOCHROME1 inverted; colour to luma, transparency composited on black), ``crop="center"`` square
crop (or ``"none"``: resize directly), bilinear antialiased resize, rounding to 8 bits, optional
histogram equalisation, then ``channels`` copies scaled to ``[-1, 1]``. Exact duplicates (MD5 of the
original file bytes, or of the raw array for medmnist/phantom) are reported and, with ``dedup=True``,
only the first (by sorted path) is kept; a class emptied that way is an error. The result is cached
as 8-bit images under ``cache_dir/<key>.pt``, keyed on the source, its files (path, size, mtime), the
options that change pixels and ``FORMAT_VERSION``. Every keyword of ``load`` passes through
``cxr_utils.config.coerce``, so papermill's ``"false"`` is False.

Modules: ``source`` (source strings, option checks), ``folder`` (layout discovery, labels, split folders),
``decode`` (PNG/JPEG/BMP/TIFF/DICOM pixel pipelines), ``preprocess`` (crop, resize, equalisation),
``medmnist``, ``dataset`` (:class:`CXRDataset`, class selection, de-duplication), ``cache``,
``report`` (:class:`DataReport`, ``report.json``/``report.txt``) and ``loader`` (``load``).
Figures of the data live in :mod:`cxr_utils.plots`; the ``data-report`` command in
:mod:`cxr_utils.data_report`.
"""

from __future__ import annotations

from .cache import FORMAT_VERSION
from .dataset import CXRDataset
from .decode import IMAGE_SUFFIXES
from .loader import BIT_SCALINGS, LOAD_TYPES, load
from .medmnist import MEDMNIST_SPLITS
from .report import DataReport, write_report
from .source import DEFAULT_PHANTOM_N, SOURCE_FORMS, SUPPORTED_SIZES, parse_source

__all__ = ["BIT_SCALINGS", "LOAD_TYPES", "CXRDataset", "DataReport", "DEFAULT_PHANTOM_N", "FORMAT_VERSION",
           "IMAGE_SUFFIXES", "MEDMNIST_SPLITS", "SOURCE_FORMS", "SUPPORTED_SIZES", "load", "parse_source",
           "write_report"]
