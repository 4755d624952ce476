"""Splitting work across processes started by ``torchrun`` (one or many machines).

``torchrun`` gives every process ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment;
a process started any other way is rank 0 of 1. No process group is needed: each rank picks
its share of the items by a rule that depends only on the item's name, so every item is
handled by exactly one rank, and a resumed run (even with files added or removed) sends each
item to the same rank as before.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from .errors import UpfusionError

T = TypeVar("T")


@dataclass(frozen=True)
class Rank:
    """This process's place among ``world_size`` processes, and its index on its own machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UpfusionError(f"environment variable {name}={value!r} is not an integer") from None


def current_rank() -> Rank:
    """The rank from torchrun's environment variables (rank 0 of 1 without them)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise UpfusionError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent")
    return Rank(rank, world, local)


def owner(name: str, world_size: int) -> int:
    """The rank that handles the item called ``name``: a stable hash of the name, modulo ``world_size``.

    sha256 rather than Python's ``hash`` (which changes between processes).
    """
    # surrogateescape: a file name that is not UTF-8 (Latin-1 from an old archive) hashes its own bytes
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % world_size


def shard(items: Iterable[T], rank: Rank, key: Callable[[T], str]) -> list[T]:
    """The items that ``rank`` handles, in their original order."""
    return [item for item in items if owner(key(item), rank.world_size) == rank.rank]
