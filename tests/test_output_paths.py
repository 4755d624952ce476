"""Output paths that cannot be written fail at once, in one line, before a command's long work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upfusion.cli import main
from upfusion.commands.output_paths import check_output_file, check_output_folder
from upfusion.errors import UpfusionError

# (command, option): every command that checks its outputs with upfusion.commands.output_paths
OUTPUTS = [("bench", "--json"), ("bench", "--markdown"), ("eval", "--json"), ("eval", "--csv"), ("report", "--out")]


def _never(*args, **kwargs):
    raise AssertionError("the long work started although an output cannot be written")


def _argv(command: str, option: str, value: Path, inputs: Path) -> list[str]:
    if command == "bench":
        return ["bench", "--size", "16x16", "--device", "cpu", "--runs", "1", "--warmup", "0", option, str(value)]
    sources = ["--a", str(inputs / "A"), "--b", str(inputs / "B")]
    if command == "eval":
        return ["eval", *sources, "--fused", str(inputs / "F"), "--metrics", "EN", "--workers", "1", option, str(value)]
    method = ["--method", f"M={inputs / 'F'}", "--metrics", "EN", "--workers", "1", "--grid-pairs", "0"]
    return ["report", *sources, *method, option, str(value)]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``, with a file's content (None for a folder)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


CASES = [(c, o, case) for c, o in OUTPUTS for case in ("existing folder", "under a file")]
CASES.append(("report", "--out", "existing file"))


@pytest.mark.parametrize("command,option,case", CASES, ids=[" ".join(c) for c in CASES])
def test_unwritable_output_fails_at_once(command, option, case, tmp_path, capsys, monkeypatch):
    import upfusion.benchmark
    import upfusion.evaluate

    monkeypatch.setattr(upfusion.benchmark, "run_isolated", _never)
    monkeypatch.setattr(upfusion.evaluate, "evaluate_folders", _never)
    inputs = tmp_path / "inputs"
    for key in "ABF":
        (inputs / key).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(inputs / key / "p.png")
    (tmp_path / "file").write_text("x")
    folder_option = option == "--out"  # report's --out names a folder that receives table.md and table.csv
    if case == "existing folder":  # the file to write is a folder
        path = tmp_path / "out" / ("table.md" if folder_option else "result")
        path.mkdir(parents=True)
        value, message = path.parent if folder_option else path, "is a folder, not a file"
    elif case == "under a file":  # the output's nearest existing ancestor is a regular file
        value = path = tmp_path / "file" / "result"
        message = f"{tmp_path / 'file'} is not a folder"
    else:  # report's folder to write into is a regular file
        value = path = tmp_path / "file"
        message = "is a file, not a folder"
    before = _tree(tmp_path)

    assert main(_argv(command, option, value, inputs)) == 1
    captured = capsys.readouterr()
    assert captured.err == f"upfusion {command}: error: {option} {path}: {message}\n"
    assert captured.out == ""
    assert _tree(tmp_path) == before  # nothing written, no folder made


def test_writable_outputs_pass(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    check_output_file(tmp_path / "file", "--json")  # replaced
    check_output_file(tmp_path / "new" / "deeper" / "r.json", "--json")  # folders made
    check_output_file("relative.json", "--json")
    check_output_folder(tmp_path / "folder", "--out")
    check_output_folder(tmp_path / "new" / "deeper", "--out")
    with pytest.raises(UpfusionError, match=r"^--out .*file: is a file, not a folder$"):
        check_output_folder(tmp_path / "file", "--out")
