"""The ``medviewer`` command line.

``medviewer [PATH...] [--model NAME|PATH] [--provider auto|cpu|cuda] [--demo] [--screenshot FILE]``
starts the workstation (see :mod:`medviewer.gui`); the subcommands ``info``, ``render``, ``infer`` and
``models`` are headless. Each subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``. Errors derived from :class:`medviewer.errors.MedViewerError` are printed as one
line on stderr with a non-zero exit code, never as a traceback. A reader that closes the pipe early
(``medviewer models show NAME --json | head``) ends the command quietly with status 141, as a command
killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from medviewer import __version__
from medviewer.errors import MedViewerError
from medviewer.providers import PROVIDER_CHOICES

__all__ = ["main", "SUBCOMMANDS", "EXIT_BROKEN_PIPE"]

#: exit status when stdout's reader went away (128 + SIGPIPE, what a shell reports for ``yes | head``)
EXIT_BROKEN_PIPE = 141

#: subcommand name -> module under medviewer.cli implementing add_parser()/run()
SUBCOMMANDS = {
    "info": "medviewer.cli.info",
    "render": "medviewer.cli.render",
    "infer": "medviewer.cli.infer",
    "models": "medviewer.cli.models",
    "pacs": "medviewer.cli.pacs",
    "anonymize": "medviewer.cli.anonymize",
    "audit": "medviewer.cli.audit",
    "serve": "medviewer.cli.serve",
}


def _subcommand_parser(command: str) -> argparse.ArgumentParser:
    """Parser for one subcommand; only that subcommand's module is imported (fast start, and a broken
    optional module cannot take the others down)."""
    import importlib

    parser = argparse.ArgumentParser(prog="medviewer", description="MedViewer headless commands.")
    parser.add_argument("--version", action="version", version=f"medviewer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    importlib.import_module(SUBCOMMANDS[command]).add_parser(sub)
    return parser


def gui_parser() -> argparse.ArgumentParser:
    """Parser of the workstation's own options (no subcommand)."""
    parser = argparse.ArgumentParser(
        prog="medviewer",
        description="MedViewer reading workstation. Subcommands: " + ", ".join(SUBCOMMANDS)
        + " (run 'medviewer SUBCOMMAND --help').",
    )
    parser.add_argument("--version", action="version", version=f"medviewer {__version__}")
    parser.add_argument("paths", nargs="*", help="DICOM/PNG/JPEG files or folders to open")
    parser.add_argument("--model", help="model name or package path to load")
    parser.add_argument("--provider", choices=PROVIDER_CHOICES, default=None,
                        help="ONNX Runtime execution provider (default: saved setting, else auto)")
    parser.add_argument("--demo", action="store_true",
                        help="open the two demo chest radiographs side by side (a paediatric CR within the "
                             "default model's intended use, the adult RG1_UNCR.dcm outside it) and run the "
                             "model on both")
    parser.add_argument("--screenshot", metavar="FILE",
                        help="wait until loading and inference finish, save the window to FILE (PNG), exit "
                             "with 0 saved, 1 FILE not written, 2 timed out after 180 s (saved anyway), "
                             "3 --demo cannot show what it promises (no model, a study or a result missing), "
                             "4 the window reported an error (a file that cannot be opened or decoded, a "
                             "--model that cannot be loaded)")
    parser.add_argument("--layout", choices=("1x1", "1x2", "2x2", "mpr"),
                        help="viewport layout; mpr: axial, coronal and sagittal planes of the first series "
                             "(a CT/MR volume) with a linked crosshair")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medviewer`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            args = _subcommand_parser(argv[0]).parse_args(argv)
            status = int(args.run(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit handler
            return status
        args = gui_parser().parse_args(argv)
        from medviewer.gui.app import run_app

        return int(run_app(args) or 0)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except MedViewerError as exc:
        print(f"medviewer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medviewer: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away, so the final flush at exit cannot raise again
    (the recipe of the Python documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout already closed or not a real file
        pass
