"""What an installed (non-editable) upfusion needs: extras that exist, package data that ships."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from upfusion.errors import UpfusionError
from upfusion.pretrained.extras import require

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "upfusion"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _extras_named_by_require() -> dict[str, set[str]]:
    """{extra: {file, ...}} for every ``require(module, "extra", ...)`` call in the package."""
    named: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            extra = node.args[1]
            if name == "require" and isinstance(extra, ast.Constant) and isinstance(extra.value, str):
                named.setdefault(extra.value, set()).add(str(path.relative_to(SRC)))
    return named


def test_every_extra_a_message_names_exists():
    named = _extras_named_by_require()
    assert {"wavelets", "report", "train", "onnx", "color16", "convnext", "clip", "minilm"} <= set(named)
    missing = {extra: sorted(files) for extra, files in named.items() if extra not in EXTRAS}
    assert not missing, f"messages name extras that pyproject.toml does not define: {missing}"


def test_readme_extras_table_matches_pyproject():
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([a-z0-9-]+)` \|", readme, flags=re.MULTILINE))
    assert table == set(EXTRAS) - {"test"}


def test_missing_core_dependency_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # what a --no-deps install looks like
    from upfusion.pretrained.backbones import load_classifier

    with pytest.raises(UpfusionError, match=r"pip install efficientnet-lite-pytorch$") as info:
        load_classifier("efficientnet_lite0", weights=None)
    assert "upfusion[" not in str(info.value)


def test_missing_extra_message_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pywt", None)
    with pytest.raises(UpfusionError) as info:
        require("pywt", "wavelets", "the dwt baseline")
    assert "\n" not in str(info.value) and str(info.value).endswith("pip install 'upfusion[wavelets]'")


def _matches(relative: str, pattern: str) -> bool:
    """setuptools' package-data glob semantics, enough for these patterns ('*' within a folder, '**' across)."""
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.fullmatch(regex, relative) is not None


def test_every_data_file_of_the_package_ships_in_the_wheel():
    """A file under src/upfusion that is not Python reaches a non-editable install only through package-data."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["upfusion"]
    data = [
        p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert {"weights/default.json", "weights/default.safetensors", "py.typed"} <= set(data)
    unlisted = [f for f in data if not any(_matches(f, pattern) for pattern in patterns)]
    assert not unlisted, f"not in [tool.setuptools.package-data]: {unlisted}"
    unused = [pattern for pattern in patterns if not any(_matches(f, pattern) for f in data)]
    assert not unused, f"package-data patterns that match nothing: {unused}"


def test_public_names_are_listed_visible_and_importable():
    import pydoc

    import upfusion

    assert set(upfusion.__all__) == {"__version__", *upfusion._LAZY}
    assert upfusion.__version__ == PYPROJECT["project"]["version"]
    assert set(upfusion.__all__) <= set(dir(upfusion))  # help(), dir() and tab completion see the lazy names
    for name in upfusion.__all__:
        assert getattr(upfusion, name) is not None
    assert "load(name_or_path" in pydoc.render_doc(upfusion)


def test_license_metadata_is_an_spdx_expression_with_its_file():
    """setuptools >= 77 takes an SPDX string; the TOML-table form is deprecated (unsupported from 2027-02)."""
    project = PYPROJECT["project"]
    assert isinstance(project["license"], str)
    for name in project["license-files"]:
        assert (ROOT / name).is_file()
    assert project["license"] in (ROOT / "LICENSE").read_text()
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # not with an SPDX license
