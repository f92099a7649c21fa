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
