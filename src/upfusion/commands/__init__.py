"""The ``upfusion`` subcommands, one module each; options they share are defined here."""

from __future__ import annotations

import argparse

COMPILE_SCOPES = ("blocks", "model")  # upfusion.inference.COMPILE_SCOPES (not imported: no torch at start-up)


def add_compile_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--compile [blocks|model]``: torch.compile's scope, ``blocks`` when the flag stands alone."""
    parser.add_argument("--compile", nargs="?", const="blocks", choices=COMPILE_SCOPES, help=help)
