"""The CLI front door: help lists every subcommand, errors are one line without a traceback."""

import subprocess
import sys

from cxr_utils import cli


def test_help_lists_subcommands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_every_subcommand_module_has_cli_hooks():
    import importlib

    for name, (module, _) in cli.COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.cli_add_arguments) and callable(mod.cli_run), name


def test_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "cxr_utils", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "data-report" in res.stdout


def test_which_is_checked_and_a_missing_best_is_one_line(tmp_path, capsys):
    import pytest

    run = tmp_path / "run"
    run.mkdir()
    (run / "network-final.pt").write_bytes(b"")
    assert cli.main(["generate", str(run), "--which", "best", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no network-best.pt in") and "--score-every-kimg" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", str(run), "--which", "newest", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "invalid choice: 'newest'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
