"""What a load found and did (:class:`DataReport`) and the report files: ``report.json``, ``report.txt``.

Figures of the data (montage, histograms) are drawn by :mod:`cxr_utils.plots`; ``write_report`` takes
them as callables so that the data package never imports plotting code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import DataError
from ..paths import project_path

if TYPE_CHECKING:
    from .dataset import CXRDataset


def _one_line(exc: BaseException) -> str:
    """The exception as one short line, without object addresses (reports must be reproducible)."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", " ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@dataclass
class DataReport:
    """What a load found and did; shown by the notebook and written by ``data-report``."""

    source: str
    files_found: int = 0
    decoded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    duplicates_removed: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    original_sizes: dict[str, int] = field(default_factory=dict)
    bit_depths: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False
    ignored: dict[str, int] = field(default_factory=dict)  # files not read, counted by reason
    duplicate_trees: list[str] = field(default_factory=list)  # "copy = original" folders, left out
    notes: dict[str, int] = field(default_factory=dict)  # e.g. "EXIF orientation 6 applied": count
    bit_scaling: str = ""  # how images above 8 bits became 8-bit

    @property
    def n_images(self) -> int:
        return sum(self.class_counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files_found": self.files_found,
            "decoded": self.decoded,
            "skipped": [list(s) for s in self.skipped],
            "duplicate_groups": [list(g) for g in self.duplicate_groups],
            "duplicates_removed": self.duplicates_removed,
            "class_counts": dict(self.class_counts),
            "original_sizes": dict(self.original_sizes),
            "bit_depths": dict(self.bit_depths),
            "options": dict(self.options),
            "from_cache": self.from_cache,
            "ignored": dict(self.ignored),
            "duplicate_trees": list(self.duplicate_trees),
            "notes": dict(self.notes),
            "bit_scaling": self.bit_scaling,
            "images": self.n_images,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataReport:
        kwargs = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        kwargs["skipped"] = [tuple(s) for s in d.get("skipped", [])]
        return cls(**kwargs)

    def format(self, max_rows: int = 10) -> str:
        """A plain-text report: counts, classes, sizes, bit depths, skipped files, duplicates, options."""
        title = f"data report: {self.source}" + ("  (from cache)" if self.from_cache else "")
        parts = [title, "=" * len(title)]
        parts += _table(["files", "count"], [
            ("found", self.files_found), ("decoded", self.decoded), ("skipped", len(self.skipped)),
            ("duplicates removed", self.duplicates_removed), ("images kept", self.n_images)])
        total = max(self.n_images, 1)
        parts += [""] + _table(["class", "count", "share"], [
            (name, n, f"{100 * n / total:.1f}%") for name, n in self.class_counts.items()])
        for title_, counts in (("original size", self.original_sizes), ("bit depth", self.bit_depths)):
            rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            parts += [""] + _table([title_, "count"], rows[:max_rows])
            if len(rows) > max_rows:
                parts.append(f"... and {len(rows) - max_rows} more")
        if self.skipped:
            parts += ["", f"skipped files ({len(self.skipped)}):"]
            parts += [f"  {path}: {reason}" for path, reason in self.skipped[:max_rows]]
            if len(self.skipped) > max_rows:
                parts.append(f"  ... and {len(self.skipped) - max_rows} more")
        if self.duplicate_trees:
            parts += ["", f"nested duplicate trees left out ({len(self.duplicate_trees)}, copy = original):"]
            parts += [f"  {t}" for t in self.duplicate_trees]
        if self.ignored:
            parts += ["", f"files not read ({sum(self.ignored.values())}), by reason:"]
            parts += [f"  {n:6d}  {why}" for why, n in self.ignored.items()]
        if self.notes:
            parts += ["", "applied while decoding:"]
            parts += [f"  {n:6d}  {what}" for what, n in sorted(self.notes.items())]
        if self.bit_scaling:
            parts += ["", f"bit scaling: {self.bit_scaling}"]
        if self.duplicate_groups:
            action = "first kept" if self.duplicates_removed else "all kept (dedup off)"
            parts += ["", f"duplicate groups ({len(self.duplicate_groups)}, {action}):"]
            parts += ["  " + " = ".join(g) for g in self.duplicate_groups[:max_rows]]
            if len(self.duplicate_groups) > max_rows:
                parts.append(f"  ... and {len(self.duplicate_groups) - max_rows} more")
        opts = " ".join(f"{k}={v}" for k, v in self.options.items())
        parts += ["", f"options: {opts}"]
        return "\n".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]



def write_report(ds: CXRDataset, out_dir: str | Path,
                 figures: Mapping[str, Callable[[CXRDataset, Path], Any]] | None = None) -> dict[str, Path]:
    """Write ``report.json`` and ``report.txt`` into ``out_dir``, then each ``figures[name](ds, path)``.

    ``figures`` maps a file name (e.g. ``"montage.png"``) to a function that writes that figure;
    :func:`cxr_utils.plots.write_data_report` passes the montage and histograms. Returns
    ``{file name: path}``. An uncreatable folder is a one-line :class:`DataError`.
    """
    out = project_path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create report folder {out} ({_one_line(exc)})") from None
    paths = {name: out / name for name in ("report.json", "report.txt", *(figures or {}))}
    paths["report.json"].write_text(json.dumps(ds.report.to_dict(), indent=2) + "\n")
    paths["report.txt"].write_text(ds.report.format() + "\n")
    for name, draw in (figures or {}).items():
        draw(ds, paths[name])
    return paths
