"""Transparent huge pages for PyTorch's CPU tensors (Linux): far fewer page faults.

Every large activation PyTorch allocates on the CPU is fresh memory from the kernel, touched
4 KiB page by page: the paper preset at 640x480 takes about 2 million page faults per pair,
several seconds of system time (docs/performance.md). With ``THP_MEM_ALLOC_ENABLE=1``
PyTorch asks for 2 MiB pages for allocations of 2 MiB and more, which cuts the faults about
tenfold. PyTorch reads the variable once, at its first allocation, so it must be set before
torch is used: the ``upfusion`` command does so first thing; Python users set it in their
environment (or call ``request_huge_pages()`` before importing torch).
"""

from __future__ import annotations

import os
import sys

ENV = "THP_MEM_ALLOC_ENABLE"


def request_huge_pages(enabled: bool | None = None) -> bool:
    """Sets ``THP_MEM_ALLOC_ENABLE`` for this process (and its children); returns whether it is on.

    ``enabled=None`` turns it on unless the user's environment already says otherwise. It does
    nothing for a PyTorch that has already allocated, and nothing off Linux.
    """
    if not sys.platform.startswith("linux"):
        return False
    if enabled is None:
        os.environ.setdefault(ENV, "1")
    else:
        os.environ[ENV] = "1" if enabled else "0"
    return os.environ[ENV] == "1"
