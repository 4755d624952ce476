"""Huge pages for PyTorch's CPU tensors: the ``upfusion`` command asks for them, users can say no."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from upfusion.huge_pages import ENV, request_huge_pages

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# minor page faults while PyTorch allocates and fills a 128 MiB tensor
_COUNT_FAULTS = """
import resource, torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(1 << 25)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(enabled: bool) -> int:
    env = {**os.environ, ENV: "1" if enabled else "0"}  # the child's setting only, not this process's
    out = subprocess.run([sys.executable, "-c", _COUNT_FAULTS], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip())


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
    reason="transparent huge pages are not available on this system",
)
def test_huge_pages_cut_page_faults_of_large_tensors():
    small_pages = _faults(False)
    huge_pages = _faults(True)
    assert small_pages > 128 * 2**20 // 4096 * 0.9  # one fault per 4 KiB page touched
    assert huge_pages < small_pages / 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_request_keeps_the_users_choice(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert request_huge_pages() is False  # the user's "0" stays
    monkeypatch.delenv(ENV)
    assert request_huge_pages() is True
    assert request_huge_pages(False) is False
    assert os.environ[ENV] == "0"
