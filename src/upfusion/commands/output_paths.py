"""Checks that an output path can become a file or a folder, made before a command's long work.

A command that measures or scores for minutes calls these first, so that a path it could not
write fails at once, in one line naming the option and the path, not after the work is done.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UpfusionError


def _check_ancestor(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder, or ``path`` can never be made."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UpfusionError(f"{option} {path}: {parent} is not a folder")


def check_output_file(path: str | Path, option: str) -> None:
    """Fails before the work, not after it, where ``path`` (given as ``option``) cannot become a file."""
    path = Path(path)
    if path.is_dir():
        raise UpfusionError(f"{option} {path}: is a folder, not a file")
    _check_ancestor(path, option)


def check_output_folder(path: str | Path, option: str) -> None:
    """Fails before the work, not after it, where ``path`` (given as ``option``) cannot become a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UpfusionError(f"{option} {path}: is a file, not a folder")
    _check_ancestor(path, option)
