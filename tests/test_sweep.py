"""sweep.py: a papermill grid runs every point, records failures, skips finished points, summarises."""

import json

import nbformat
import pandas as pd
import pytest

from cxr_utils.errors import ConfigError
from cxr_utils.sweep import load_spec, point_name, run_sweep


def _toy_notebook(path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1\ny = 1\nout_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, pathlib\n"
        "assert x != 3, 'x=3 is the planted failure'\n"
        "p = pathlib.Path(out_dir); p.mkdir(parents=True, exist_ok=True)\n"
        "(p / 'metrics.json').write_text(json.dumps({'product': x * y, 'nested': {'sum': x + y}}))")
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _grid(tmp_path, xs):
    nbpath = tmp_path / "toy.ipynb"
    _toy_notebook(nbpath)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"notebook: {nbpath}\nout: {tmp_path / 'sweep'}\noutput_parameter: out_dir\n"
                    f"parameters: {{y: 10}}\ngrid: {{x: {xs}}}\n")
    return grid


def test_sweep_runs_records_failure_skips_done_and_summarises(tmp_path):
    spec = load_spec(_grid(tmp_path, [1, 2, 3]))
    outcome = run_sweep(spec, jobs=2, progress=False)
    assert (outcome["points"], outcome["ran"], outcome["failed"]) == (3, 3, 1)
    table = pd.read_csv(outcome["summary"]).set_index("x")
    assert table.loc[1, "product"] == 10 and table.loc[2, "nested.sum"] == 12
    assert table.loc[3, "status"] == "failed"
    status = json.loads((spec.out / point_name({"x": 3}) / "status.json").read_text())
    assert "planted failure" in status["error"]
    params = json.loads((spec.out / point_name({"x": 2}) / "parameters.json").read_text())
    assert params == {"y": 10, "x": 2, "out_dir": str(spec.out / "x-2")}

    again = run_sweep(spec, jobs=1, progress=False)  # only the failed point is re-run
    assert (again["skipped"], again["ran"], again["failed"]) == (2, 1, 1)


@pytest.mark.parametrize("text,match", [("notebook: nb.ipynb\nout: o\n", "missing key 'grid'"),
                                        ("notebook: nope.ipynb\nout: o\ngrid: {x: [1]}\n", "not found"),
                                        ("notebook: nb.ipynb\nout: o\ngrid: {x: []}\n", "non-empty"),
                                        ("notebook: nb.ipynb\nout: o\ngrid: {x: [1]}\nextra: 1\n", "unknown keys")])
def test_bad_grid_files(tmp_path, monkeypatch, text, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nb.ipynb").write_text("{}")
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_spec(tmp_path / "g.yaml")


def test_two_by_two_sweep_of_notebook_02_through_the_cli(tmp_path):
    """The real training notebook over a 2x2 grid (preset x seed), tiny parameters, 2 points at a time."""
    from pathlib import Path

    from cxr_utils import cli

    root = Path(__file__).resolve().parents[1]
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"notebook: {root / 'notebooks' / '02_dcgan_training.ipynb'}\nout: {tmp_path / 'sweep'}\n"
                    "output_parameter: out_root\n"
                    "parameters: {source: 'phantom:64', epochs: 1, batch_size: 32, n_eval: 32, run_name: run}\n"
                    "grid: {preset: [lungcancer-dcgan, stable], seed: [0, 1]}\n")
    assert cli.main(["sweep", str(grid), "--jobs", "2"]) == 0
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert len(table) == 4 and set(table["status"]) == {"done"}
    assert sorted(zip(table["preset"], table["seed"])) == [("lungcancer-dcgan", 0), ("lungcancer-dcgan", 1),
                                                          ("stable", 0), ("stable", 1)]
    fid = [c for c in table.columns if c.endswith("fid.offline.value")]
    assert fid and table[fid[0]].notna().all()  # every point trained, evaluated and was summarised
    for folder in (tmp_path / "sweep").iterdir():
        if folder.is_dir():
            assert (folder / "run" / "network-final.pt").exists() and (folder / "notebook.ipynb").exists()


@pytest.mark.parametrize("grid_line,match", [("grid: {z: [1, 2]}\n", r"z \(grid\)"),
                                             ("parameters: {w: 1}\ngrid: {x: [1]}\n", r"w \(parameters\)"),
                                             ("output_parameter: out\ngrid: {x: [1]}\n", r"out \(output_parameter\)")])
def test_keys_the_notebook_does_not_take_fail_before_any_point(tmp_path, grid_line, match):
    nbpath = tmp_path / "toy.ipynb"
    _toy_notebook(nbpath)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"notebook: {nbpath}\nout: {tmp_path / 'sweep'}\n{grid_line}")
    with pytest.raises(ConfigError, match=match) as err:
        load_spec(grid)
    assert "parameters cell sets: out_dir, x, y" in str(err.value) and "\n" not in str(err.value)
    # a spec built in Python is checked by run_sweep too, before a point folder exists
    from cxr_utils.sweep import SweepSpec

    spec = SweepSpec(notebook=nbpath, out=tmp_path / "sweep", grid={"z": [1, 2]})
    with pytest.raises(ConfigError, match=r"z \(grid\)"):
        run_sweep(spec, progress=False)
    assert not (tmp_path / "sweep").exists()


def test_notebook_without_a_parameters_cell_is_refused(tmp_path):
    nbpath = tmp_path / "plain.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, nbpath)
    (tmp_path / "g.yaml").write_text(f"notebook: {nbpath}\nout: {tmp_path / 'o'}\ngrid: {{x: [1]}}\n")
    with pytest.raises(ConfigError, match="no cell tagged 'parameters'"):
        load_spec(tmp_path / "g.yaml")


def test_run_sweep_keywords_arrive_as_strings(tmp_path):
    spec = load_spec(_grid(tmp_path, [1, 2]))
    outcome = run_sweep(spec, jobs="2", progress="false")
    assert (outcome["points"], outcome["ran"], outcome["failed"]) == (2, 2, 0)
    with pytest.raises(ConfigError, match="progress"):
        run_sweep(spec, progress="maybe")
    with pytest.raises(ConfigError, match="jobs"):
        run_sweep(spec, jobs="two")
