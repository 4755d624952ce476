"""Atomic file writes: a temporary name in the same folder, then a rename over the target.

A reader (or a resumed run) never sees a half-written file, and a failure leaves the old file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically, with the usual permissions (0666 less the umask)."""
    path = Path(path)
    # A shortened name in the temporary one: the file system's limit (255 bytes) holds for the
    # target's own name, not for the target's name plus a prefix and a random suffix.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """``write_bytes_atomic`` for UTF-8 text (newlines written as given).

    File names that are not UTF-8 (held by Python as surrogates) are written as their own bytes.
    """
    write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))
