"""Sharding pairs across torchrun processes: stable, complete, disjoint; and a real two-process run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upfusion.distributed import Rank, current_rank, owner, shard
from upfusion.errors import UpfusionError
from upfusion.model import ModelConfig
from upfusion.presets import build_model
from upfusion.pretrained.checkpoint import save_checkpoint

NAMES = [f"{i:05d}" for i in range(2000)] + ["FLIR_00006", "190001", "00004N", "ñame with space"]


def test_rank_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert current_rank() == Rank(0, 1, 0)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert current_rank() == Rank(5, 8, 1) and current_rank().is_distributed
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(UpfusionError, match="inconsistent"):
        current_rank()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UpfusionError, match="RANK='x' is not an integer"):
        current_rank()


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_every_item_goes_to_exactly_one_rank(world):
    shares = [shard(NAMES, Rank(r, world), key=str) for r in range(world)]
    assert sorted(sum(shares, [])) == sorted(NAMES)
    assert all(share == sorted(share, key=NAMES.index) for share in shares)  # order kept
    counts = [len(s) for s in shares]
    assert min(counts) > 0.8 * len(NAMES) / world  # a hash spreads the work evenly


def test_the_owner_depends_on_the_name_only():
    # the same rank whatever the other files, their order, or the process (Python's hash() is salted)
    subset = NAMES[::7][::-1]
    assert shard(subset, Rank(1, 3), key=str) == [n for n in subset if n in shard(NAMES, Rank(1, 3), key=str)]
    code = "from upfusion.distributed import owner; print([owner(n, 5) for n in ['a', 'b', '00004N', 'FLIR_00006']])"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout
        for seed in ("1", "2")
    }
    assert runs == {str([owner(n, 5) for n in ["a", "b", "00004N", "FLIR_00006"]]) + "\n"}


@pytest.mark.slow
def test_two_torchrun_processes_fuse_each_pair_exactly_once(tmp_path):
    rng = np.random.default_rng(5)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    stems = [f"pair{i}" for i in range(8)]
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(a / f"{stem}.png")
        Image.fromarray(rng.integers(0, 256, (16, 24), dtype=np.uint8)).save(b / f"{stem}.jpg")
    expected = {r: {s for s in stems if owner(s, 2) == r} for r in (0, 1)}
    assert expected[0] and expected[1]  # both ranks have work
    torch.manual_seed(0)
    config = ModelConfig(
        dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 4), num_refinement_blocks=1, semantic_backbone=None, text_dim=16
    )
    weights = save_checkpoint(
        build_model(config), tmp_path / "w" / "tiny", text_embedding=torch.randn(16), text_encoder="t", prompt="t"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "upfusion", "fuse", "--a", str(a), "--b", str(b), "--out", str(tmp_path / "out")]
    command += ["--weights", str(weights), "--device", "cpu", "--quiet", "--verbose"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    log = result.stdout + result.stderr
    wrote = re.findall(r"upfusion fuse \[rank (\d)/2\]: wrote (\S+)", log)
    assert Counter(Path(path).name for _, path in wrote) == Counter(f"{s}.png" for s in stems)  # once each
    for r in (0, 1):
        assert {Path(path).stem for rank, path in wrote if int(rank) == r} == expected[r]
        assert f"upfusion fuse [rank {r}/2]: fused {len(expected[r])} pair(s)" in log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{s}.png" for s in stems)
    for stem in stems:
        assert Image.open(tmp_path / "out" / f"{stem}.png").size == (24, 16)
