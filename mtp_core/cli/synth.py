"""``mtp synth``: synthetic scenes with building labels (a development tool: ``mtp_tools.synthetic``)."""
from __future__ import annotations

import argparse
from typing import Sequence

NAME = "synth"


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(NAME, help="write synthetic 0.5 m scenes (GeoTIFF + building GeoJSON); see `mtp synth -h`",
                   add_help=False)


def main(argv: Sequence[str]) -> int:
    from mtp_tools.synthetic.cli import main as synth_main

    return synth_main(argv)
