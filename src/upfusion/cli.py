"""``upfusion``: one program, one sub-command per job.

Each sub-command lives in ``upfusion.commands.<name>`` and provides ``register(subparsers)``;
the heavy imports (torch, scipy) happen inside the command, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UpfusionError
from .huge_pages import request_huge_pages

COMMANDS = ["fuse", "eval", "report", "train", "bench", "convert_official", "export_onnx"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="upfusion",
        description="UP-Fusion: unified multi-modality image fusion (infrared-visible, medical, microscopy).",
    )
    parser.add_argument("--version", action="version", version=f"upfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"upfusion.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"upfusion.commands.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    request_huge_pages()  # before any command imports torch
    # A file name that is not UTF-8 (surrogates in Python) prints as its own bytes, as ls prints
    # it, not as a UnicodeEncodeError in a UTF-8 locale (stderr already escapes such names).
    if callable(getattr(sys.stdout, "reconfigure", None)):
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UpfusionError as exc:
        print(f"upfusion {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"upfusion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
