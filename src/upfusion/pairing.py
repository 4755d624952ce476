"""Pairing source files by name (file stem), never by listing order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UpfusionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass
class Pairing:
    """Matched stems with one path per folder, and the files that found no partner."""

    pairs: list[tuple[str, tuple[Path, ...]]] = field(default_factory=list)
    unmatched: list[Path] = field(default_factory=list)


def list_images(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem; two files sharing a stem is an error (ambiguous pair)."""
    folder = Path(folder)
    if not folder.exists():
        raise UpfusionError(f"{folder}: no such file or directory")
    if not folder.is_dir():
        raise UpfusionError(f"{folder}: not a directory")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in by_stem:
                raise UpfusionError(
                    f"{path}: stem {path.stem!r} also used by {by_stem[path.stem].name}; pairing is ambiguous"
                )
            by_stem[path.stem] = path
    return by_stem


def pair_by_stem(*folders: Path) -> Pairing:
    """Pairs (or triples) the images of several folders by file stem, sorted by stem."""
    listings = [list_images(f) for f in folders]
    common = set(listings[0]).intersection(*listings[1:])
    result = Pairing()
    for stem in sorted(common):
        result.pairs.append((stem, tuple(listing[stem] for listing in listings)))
    for listing in listings:
        result.unmatched.extend(path for stem, path in sorted(listing.items()) if stem not in common)
    return result
