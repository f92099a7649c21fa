"""Run a notebook through papermill for every point of a parameter grid.

A grid file (YAML)::

    notebook: notebooks/02_dcgan_training.ipynb
    out: results/sweeps/dcgan            # one sub-folder per point
    output_parameter: out_root           # notebook parameter that receives the point's folder
    parameters: {source: "phantom:256"}  # fixed for every point
    grid: {epochs: [1, 2], batch_size: [16, 32]}

Each point gets ``<out>/<name>/`` with ``parameters.json``, the executed ``notebook.ipynb`` and
``status.json``. A failed point is recorded and the others go on; a re-run skips points whose status is
``done``. At the end every ``metrics.json`` written under a point folder is flattened into
``<out>/summary.csv``.

Every grid key, fixed parameter and the ``output_parameter`` must be assigned in the notebook's
``parameters`` cell; anything else is a ConfigError before the first point runs (papermill would inject
it unused, and summary.csv would list an axis that was never applied).
"""

from __future__ import annotations

import itertools
import json
import re
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as C
from .errors import ConfigError

STATUS = "status.json"


@dataclass
class SweepSpec:
    notebook: Path
    out: Path
    grid: dict[str, list[Any]]
    parameters: dict[str, Any] = field(default_factory=dict)
    output_parameter: str | None = None
    kernel: str = "python3"

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a grid file; paths in it are relative to the current directory."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep grid file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep grid file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    known = {"notebook", "out", "grid", "parameters", "output_parameter", "kernel"}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ConfigError(f"sweep grid file {path}: unknown keys {sorted(set(raw) - known)}; known: {sorted(known)}")
    for key in ("notebook", "out", "grid"):
        if key not in raw:
            raise ConfigError(f"sweep grid file {path}: missing key {key!r}")
    grid = raw["grid"]
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"sweep grid file {path}: 'grid' must map parameter names to non-empty lists")
    notebook = Path(raw["notebook"])
    if not notebook.is_file():
        raise ConfigError(f"sweep notebook not found: {notebook}")
    spec = SweepSpec(notebook=notebook, out=Path(raw["out"]), grid=grid,
                     parameters=dict(raw.get("parameters") or {}),
                     output_parameter=raw.get("output_parameter"), kernel=raw.get("kernel", "python3"))
    check_parameters(spec)
    return spec


def notebook_parameters(notebook: str | Path) -> set[str]:
    """The names assigned in the notebook's cell tagged ``parameters`` (papermill's convention).

    Raises ConfigError when the notebook cannot be read, has no such cell, or the cell is not Python.
    """
    import ast

    import nbformat

    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except Exception as exc:  # not JSON, not a notebook
        raise ConfigError(f"cannot read notebook {notebook}: {type(exc).__name__}") from None
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ConfigError(f"notebook {notebook} has no cell tagged 'parameters'")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise ConfigError(f"the parameters cell of {notebook} is not valid Python: {exc.msg}") from None
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def check_parameters(spec: SweepSpec) -> None:
    """ConfigError naming every grid key / fixed parameter the notebook's parameters cell lacks."""
    known = notebook_parameters(spec.notebook)
    given = {**{k: "grid" for k in spec.grid}, **{k: "parameters" for k in spec.parameters}}
    if spec.output_parameter:
        given[spec.output_parameter] = "output_parameter"
    unknown = sorted(k for k in given if k not in known)
    if unknown:
        where = ", ".join(f"{k} ({given[k]})" for k in unknown)
        raise ConfigError(f"{spec.notebook} has no parameter(s) {where}; its parameters cell sets: "
                          f"{', '.join(sorted(known))}")


def point_name(point: dict[str, Any]) -> str:
    """A readable, file-system safe folder name, e.g. ``epochs-1_batch_size-16``."""
    parts = [f"{k}-{v}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts))


def _read_status(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_point(spec: SweepSpec, point: dict[str, Any]) -> dict[str, Any]:
    """Execute the notebook for one point; never raises, the outcome is in the returned status."""
    import papermill

    folder = spec.out / point_name(point)
    folder.mkdir(parents=True, exist_ok=True)
    params = {**spec.parameters, **point}
    if spec.output_parameter:
        params[spec.output_parameter] = str(folder)
    _write_json(folder / "parameters.json", params)
    start = time.time()
    status: dict[str, Any] = {"point": point, "status": "running", "started": start}
    _write_json(folder / STATUS, status)
    try:
        papermill.execute_notebook(str(spec.notebook), str(folder / "notebook.ipynb"), parameters=params,
                                   kernel_name=spec.kernel, progress_bar=False, cwd=None)
        status.update(status="done")
    except Exception as exc:  # a failed point is recorded, the sweep goes on
        lines = str(exc).strip().splitlines()
        status.update(status="failed", error=f"{type(exc).__name__}: {lines[-1] if lines else ''}",
                      traceback=traceback.format_exc(limit=3))
    status["seconds"] = round(time.time() - start, 2)
    _write_json(folder / STATUS, status)
    return status


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def summarise(spec: SweepSpec) -> Path:
    """Write ``summary.csv``: one row per point with its parameters, status, time and metrics."""
    import pandas as pd

    rows = []
    for point in spec.points():
        folder = spec.out / point_name(point)
        status = _read_status(folder)
        row: dict[str, Any] = {"point": point_name(point), **point,
                               "status": status.get("status", "not run"), "seconds": status.get("seconds")}
        for metrics_file in sorted(folder.rglob("metrics.json")):
            try:
                _flatten("", json.loads(metrics_file.read_text()), row)
            except json.JSONDecodeError:
                row["metrics_error"] = f"unreadable {metrics_file.name}"
        rows.append(row)
    path = spec.out / "summary.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@C.typed_keywords
def run_sweep(spec: SweepSpec, jobs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run every unfinished point, ``jobs`` at a time, then write the summary.

    ``jobs`` and ``progress`` may be strings (``"2"``, ``"false"``), read by ``config.coerce``. The grid
    is checked against the notebook's parameters first (:func:`check_parameters`).
    """
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    check_parameters(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    points = spec.points()
    todo = [p for p in points if _read_status(spec.out / point_name(p)).get("status") != "done"]
    skipped = len(points) - len(todo)
    results = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_point, spec, p) for p in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="sweep", disable=not progress):
            results.append(fut.result())
    summary = summarise(spec)
    failed = [r for r in results if r["status"] != "done"]
    return {"points": len(points), "skipped": skipped, "ran": len(results), "failed": len(failed),
            "summary": str(summary)}


def cli_add_arguments(parser: Any) -> None:
    parser.add_argument("grid", help="YAML grid file (see cxr_utils/sweep.py docstring)")
    parser.add_argument("--jobs", type=int, default=1, help="points run at the same time")


def cli_run(args: Any) -> int:
    outcome = run_sweep(load_spec(args.grid), jobs=args.jobs)
    print(f"sweep: {outcome['points']} points, {outcome['skipped']} already done, {outcome['ran']} run, "
          f"{outcome['failed']} failed; summary: {outcome['summary']}")
    return 1 if outcome["failed"] else 0
