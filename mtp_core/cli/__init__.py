"""The ``mtp`` command line: one module per command (predict, change, vectorize, evaluate, merge, convert-ckpt, info,
demo, synth).

What a user can fix (:class:`~mtp_core.errors.UserError`: a missing file, a raster without georeference, a wrong band
count, ...) and I/O failures (a full disk, a read-only folder) are printed as one line that says what to do. Any
other exception is a bug: its traceback is kept, followed by a line saying where to report it.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Sequence

import mtp_core
from mtp_core.cli import change, convert_ckpt, demo, evaluate, info, merge, predict, synth, vectorize
from mtp_core.errors import UserError

TRACKER = "https://github.com/mtp-qgis/mtp-qgis/issues"
_COMMANDS = (predict, change, vectorize, evaluate, merge, info, convert_ckpt, synth, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp", description="MTP remote-sensing models: inspect, convert, run.")
    parser.add_argument("--version", action="version", version=f"mtp_core {mtp_core.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def report_error(command: str, exc: BaseException) -> int:
    """One line for what the user can fix (exit 2); the traceback and a bug line for anything else (exit 1)."""
    if isinstance(exc, (UserError, OSError)):
        print(f"\nmtp {command}: error: {exc}", file=sys.stderr)
        return 2
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"\nmtp {command}: this is a bug in mtp_core {mtp_core.__version__}, not a problem with your data; "
          f"please report it with the command and the traceback above: {TRACKER}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for command in (synth, demo):  # commands with their own parser (``mtp synth -h``)
        if argv[:1] == [command.NAME]:
            return command.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\nmtp {args.command}: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (sorted into user errors and bugs)
        return report_error(args.command, exc)
