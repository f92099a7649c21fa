"""``python -m cxr_utils <subcommand>``.

Each subcommand lives in the module that does the work; that module defines
``cli_add_arguments(parser)`` and ``cli_run(args) -> int``. Modules are imported only when their
subcommand runs, so ``--help`` is instant. Any :class:`CXRError` becomes a one-line ``error:`` message
and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CXRError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data-report": ("cxr_utils.data_report", "load a data source and write its report, montage and histograms"),
    "train": ("cxr_utils.train", "train a GAN into a run folder (resumable)"),
    "generate": ("cxr_utils.runs", "write PNG samples and a grid from a trained run"),
    "evaluate": ("cxr_utils.evaluate", "FID/KID, precision/recall, diversity and memorisation audit"),
    "compare": ("cxr_utils.compare", "train generator recipes on the same images and budgets, score them"),
    "study": ("cxr_utils.study", "the synthetic-augmentation classifier study"),
    "sweep": ("cxr_utils.sweep", "run a notebook over a parameter grid with papermill"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_utils", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:  # import only the module whose arguments are needed
            importlib.import_module(module).cli_add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 0
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.cli_run(args) or 0)
    except CXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
