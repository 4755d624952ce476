"""``upfusion eval`` end to end on folders built from the reference triples."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, png_claiming_size
from upfusion.cli import main
from upfusion.errors import UpfusionError
from upfusion.evaluate import evaluate_folders, to_gray_u8

REFERENCE = SHARED / "reference" / "metrics"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference/metrics missing")

STEMS = ["t01", "t09", "t11"]  # t09: F = A, so SCD is NaN
CHEAP = "SSIM,Qabf,SCD,EN"


def _reference_values() -> dict[str, dict]:
    ref = json.loads((REFERENCE / "reference.json").read_text())
    return {t["id"]: t["values"] for t in ref["triples"]}


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, Path]:
    """A/, B/, F/ holding the reference triples named by stem (t01.png, ...)."""
    out = {}
    for key in "ABF":
        folder = tmp_path / key
        folder.mkdir()
        for stem in STEMS:
            shutil.copy(REFERENCE / "triples" / f"{stem}_{key}.png", folder / f"{stem}.png")
        out[key] = folder
    out["out"] = tmp_path / "out"
    out["out"].mkdir()
    return out


def _args(folders: dict[str, Path], *extra: str) -> list[str]:
    return ["eval", "--a", str(folders["A"]), "--b", str(folders["B"]), "--fused", str(folders["F"]), *extra]


def test_json_csv_and_markdown(folders, capsys) -> None:
    js, cs = folders["out"] / "m.json", folders["out"] / "m.csv"
    rc = main(_args(folders, "--metrics", CHEAP, "--json", str(js), "--csv", str(cs), "--workers", "1"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    names = CHEAP.split(",")

    data = json.loads(js.read_text())  # strict JSON: NaN must have become null
    assert set(data) >= {"per_image", "mean", "count", "metrics", "conventions", "compat"}
    assert list(data["per_image"]) == STEMS and data["metrics"] == names and data["compat"] is None
    ref = _reference_values()
    for stem in STEMS:
        for name in names:
            value, expected = data["per_image"][stem][name], ref[stem][name]
            if expected == "NaN":
                assert value is None
            else:
                assert value == pytest.approx(expected, rel=1e-6, abs=1e-6), (stem, name)
    assert data["per_image"]["t09"]["SCD"] is None
    assert data["count"] == {"SSIM": 3, "Qabf": 3, "SCD": 2, "EN": 3}
    # The mean leaves the NaN out.
    assert data["mean"]["SCD"] == pytest.approx((ref["t01"]["SCD"] + ref["t11"]["SCD"]) / 2, rel=1e-6)
    assert data["mean"]["EN"] == pytest.approx(np.mean([ref[s]["EN"] for s in STEMS]), rel=1e-6)

    rows = list(csv.reader(io.StringIO(cs.read_text())))
    assert rows[0] == ["stem", *names]
    assert [r[0] for r in rows[1:]] == [*STEMS, "(mean)", "(count)"]
    assert rows[2][names.index("SCD") + 1] == "nan"
    assert float(rows[4][names.index("EN") + 1]) == pytest.approx(data["mean"]["EN"], rel=1e-15)
    assert rows[5][1:] == ["3", "3", "2", "3"]

    lines = out.strip().splitlines()
    assert "3 images" in lines[0] and "MATLAB" in lines[0]
    assert lines[2] == "| | SSIM | Qabf | SCD | EN |"
    assert lines[3].startswith("|---|")
    assert lines[4].startswith("| mean | ") and f"{data['mean']['SSIM']:.4f}" in lines[4]
    assert lines[5] == "| n (not NaN) | 3 | 3 | 2 | 3 |"
    assert not list(folders["out"].glob(".*tmp"))  # atomic writes leave no temporary files


def test_paper_metrics_two_workers_match_reference(folders, capsys) -> None:
    for key in "ABF":  # one triple is enough here (Q_P is the slow one)
        for stem in STEMS[1:]:
            (folders[key] / f"{stem}.png").unlink()
    js = folders["out"] / "paper.json"
    assert main(_args(folders, "--json", str(js), "--workers", "2")) == 0
    data = json.loads(js.read_text())
    ref = _reference_values()["t01"]
    assert data["metrics"] == ["Q_NCIE", "Q_P", "VIF", "SSIM", "Qabf"]
    for name, value in data["per_image"]["t01"].items():
        tol = 1e-4 if name == "Q_P" else 1e-6
        assert value == pytest.approx(ref[name], abs=tol), name


def test_workers_do_not_change_values(folders) -> None:
    one = evaluate_folders(folders["A"], folders["B"], folders["F"], metrics="EN,CC,SCD", workers=1)
    two = evaluate_folders(folders["A"], folders["B"], folders["F"], metrics="EN,CC,SCD", workers=2)
    assert one.to_json() == two.to_json()
    assert one.count == {"EN": 3, "CC": 3, "SCD": 2}
    assert "| mean |" in one.to_markdown(per_image=True) and "| t09 |" in one.to_markdown(per_image=True)


def test_compat_cddfuse_is_labelled_everywhere(folders, capsys) -> None:
    js, cs = folders["out"] / "c.json", folders["out"] / "c.csv"
    args = _args(folders, "--metrics", "VIF,MI,EN", "--compat", "cddfuse", "--json", str(js), "--csv", str(cs))
    assert main([*args, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "CDDFuse" in out and "VIF_cddfuse" in out and "MI_cddfuse" in out
    data = json.loads(js.read_text())
    assert data["compat"] == "cddfuse" and "CDDFuse" in data["compat_label"]
    assert data["metrics"] == ["VIF_cddfuse", "MI_cddfuse", "EN"]
    assert "nats" in data["conventions"]["MI_cddfuse"]
    ref = _reference_values()["t01"]
    assert data["per_image"]["t01"]["VIF_cddfuse"] == pytest.approx(2 * ref["VIF"], rel=1e-6)
    assert data["per_image"]["t01"]["MI_cddfuse"] == pytest.approx(ref["MI"] * math.log(2), rel=1e-6)
    rows = list(csv.reader(io.StringIO(cs.read_text())))
    assert rows[0] == ["stem", "VIF_cddfuse", "MI_cddfuse", "EN", "compat"]
    assert all(r[-1] == "cddfuse" for r in rows[1:])


def test_unmatched_files_are_listed_on_stderr(folders, capsys) -> None:
    shutil.copy(folders["A"] / "t01.png", folders["A"] / "lonely.png")
    (folders["F"] / "t11.png").unlink()
    assert main(_args(folders, "--metrics", "EN", "--workers", "1")) == 0
    out, err = capsys.readouterr()
    assert "warning" in err and "lonely.png" in err and "t11.png" in err
    assert "2 images" in out


def test_colour_images_are_turned_grey(folders) -> None:
    grey = np.asarray(Image.open(folders["F"] / "t01.png"))
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folders["F"] / "t01.png")  # equal channels
    before = evaluate_folders(folders["A"], folders["B"], folders["F"], metrics="SSIM,EN", workers=1)
    assert before.per_image["t01"]["SSIM"] == pytest.approx(_reference_values()["t01"]["SSIM"], rel=1e-6)

    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    r, g, b = (rgb[..., k].astype(float) for k in range(3))
    assert np.array_equal(to_gray_u8(rgb), np.floor(0.299 * r + 0.587 * g + 0.114 * b + 0.5))
    rgba = np.concatenate([rgb, np.zeros((4, 5, 1), np.uint8)], axis=-1)
    assert np.array_equal(to_gray_u8(rgba), to_gray_u8(rgb))  # alpha ignored


def _assert_error(capsys, args: list[str], *fragments: str) -> None:
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("upfusion eval: error: ")
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_missing_folder(folders, capsys) -> None:
    missing = str(folders["A"].parent / "nope")
    _assert_error(capsys, ["eval", "--a", missing, "--b", str(folders["B"]), "--fused", str(folders["F"])], missing)


def test_no_pairs(folders, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_error(
        capsys,
        ["eval", "--a", str(folders["A"]), "--b", str(folders["B"]), "--fused", str(empty)],
        "no fused image",
    )


def test_corrupt_image(folders, capsys) -> None:
    bad = folders["F"] / "t09.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    js = folders["out"] / "never.json"
    _assert_error(
        capsys,
        _args(folders, "--metrics", "EN", "--workers", "1", "--json", str(js)),
        str(bad),
        "corrupt or truncated image",
    )
    assert not js.exists()  # nothing half-written
    # --skip-bad scores the others and records the bad one
    assert main(_args(folders, "--metrics", "EN", "--workers", "2", "--skip-bad", "--json", str(js))) == 0
    captured = capsys.readouterr()
    data = json.loads(js.read_text())
    assert list(data["per_image"]) == ["t01", "t11"] and "t09" in data["skipped"]
    assert "skipped t09" in captured.err
    for stem in ("t01", "t11"):
        (folders["F"] / f"{stem}.png").write_bytes(b"")
    _assert_error(  # every triple bad: the reason too, not only that none could be scored
        capsys,
        _args(folders, "--metrics", "EN", "--workers", "1", "--skip-bad"),
        f"{folders['F']}: none of the 3 image triples could be scored (the first: {folders['F'] / 't01.png'}: ",
    )


def test_image_over_pillows_pixel_limit_is_a_one_line_error(folders, capsys) -> None:
    # Pillow raises DecompressionBombError (not an OSError) before decoding such a file
    huge = png_claiming_size(folders["F"] / "t09.png", 20000, 10000)
    _assert_error(
        capsys,
        _args(folders, "--metrics", "EN", "--workers", "1"),
        str(huge),
        "too many pixels for Pillow to read",
        "exceeds",
    )
    assert main(_args(folders, "--metrics", "EN", "--workers", "2", "--skip-bad")) == 0
    assert f"skipped t09: {huge}: too many pixels for Pillow to read" in capsys.readouterr().err


def test_size_mismatch_and_16_bit(folders, capsys) -> None:
    small = folders["B"] / "t11.png"
    Image.open(small).crop((0, 0, 100, 80)).save(small)
    _assert_error(capsys, _args(folders, "--metrics", "EN", "--workers", "1"), str(small), "100x80", "differs")
    Image.open(folders["A"] / "t11.png").crop((0, 0, 100, 80)).save(folders["A"] / "t11.png")
    Image.open(folders["F"] / "t11.png").crop((0, 0, 100, 80)).save(folders["F"] / "t11.png")
    deep = folders["F"] / "t01.png"
    Image.fromarray(np.asarray(Image.open(deep)).astype(np.uint16) * 257).save(deep)
    _assert_error(capsys, _args(folders, "--metrics", "EN", "--workers", "1"), str(deep), "16-bit", "8-bit")


def test_one_row_images_are_scored_with_nan_where_undefined(tmp_path, capsys) -> None:
    # AG needs two rows and two columns: NaN (left out of the mean), not a ZeroDivisionError
    rng = np.random.default_rng(3)
    for key in "ABF":
        (tmp_path / key).mkdir()
        Image.fromarray(rng.integers(0, 256, (1, 9), dtype=np.uint8)).save(tmp_path / key / "thin.png")
    js = tmp_path / "m.json"
    args = ["eval", "--a", str(tmp_path / "A"), "--b", str(tmp_path / "B"), "--fused", str(tmp_path / "F")]
    assert main([*args, "--metrics", "AG,EN", "--workers", "1", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["mean"]["AG"] is None and data["count"] == {"AG": 0, "EN": 1}
    assert "| n (not NaN) | 0 | 1 |" in capsys.readouterr().out


def test_exif_rotated_sources_are_read_upright_as_fuse_reads_them(tmp_path) -> None:
    # A camera stores a portrait photo as landscape pixels plus EXIF orientation 6; upfusion fuse
    # turns it upright, so its (upright) result must be scored against the upright sources.
    rng = np.random.default_rng(4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    upright = {key: rng.integers(0, 256, (12, 8), dtype=np.uint8) for key in "ABF"}
    for key in "AB":
        for folder, pixels, options in (
            ("turned", np.rot90(upright[key]), {"exif": exif}),
            ("plain", upright[key], {}),
        ):
            (tmp_path / folder / key).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(pixels)).save(tmp_path / folder / key / "x.png", **options)
    (tmp_path / "F").mkdir()
    Image.fromarray(upright["F"]).save(tmp_path / "F" / "x.png")
    turned = evaluate_folders(tmp_path / "turned" / "A", tmp_path / "turned" / "B", tmp_path / "F", "EN,SSIM", 1)
    plain = evaluate_folders(tmp_path / "plain" / "A", tmp_path / "plain" / "B", tmp_path / "F", "EN,SSIM", 1)
    assert turned.per_image == plain.per_image


def test_file_names_that_are_not_utf8(tmp_path, monkeypatch) -> None:
    import os

    name = os.fsdecode(b"caf\xe9.png")  # Latin-1: Python holds the byte 0xe9 as a surrogate
    rng = np.random.default_rng(5)
    for key in "ABF":
        (tmp_path / key).mkdir()
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / key / name)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as in a UTF-8 locale
    monkeypatch.setattr("sys.stdout", stdout)
    table = tmp_path / "m.csv"
    args = ["eval", "--a", str(tmp_path / "A"), "--b", str(tmp_path / "B"), "--fused", str(tmp_path / "F")]
    assert main([*args, "--metrics", "EN", "--workers", "1", "--per-image", "--csv", str(table)]) == 0
    stdout.flush()
    assert b"| caf\xe9 | " in stdout.buffer.getvalue()  # the name's own bytes, as ls prints them
    assert table.read_bytes().splitlines()[1].startswith(b"caf\xe9,")


def test_bad_options(folders, capsys) -> None:
    _assert_error(capsys, _args(folders, "--metrics", "SSIM,NOPE"), "unknown metric 'NOPE'")
    _assert_error(capsys, _args(folders, "--workers", "0"), "--workers")
    (folders["out"] / "file").write_text("")
    target = folders["out"] / "file" / "x.json"
    _assert_error(
        capsys,
        _args(folders, "--metrics", "EN", "--json", str(target)),
        f"--json {target}: {folders['out'] / 'file'} is not a folder",
    )


def test_output_that_is_a_folder_fails_before_scoring(folders, capsys, monkeypatch) -> None:
    import upfusion.evaluate

    def never(*args, **kwargs):
        raise AssertionError("scored although the output cannot be written")

    monkeypatch.setattr(upfusion.evaluate, "evaluate_folders", never)
    for option in ("--json", "--csv"):
        _assert_error(
            capsys, _args(folders, option, str(folders["out"])), f"{option} {folders['out']}: is a folder, not a file"
        )


def test_write_error_is_one_line(folders, tmp_path) -> None:
    result = evaluate_folders(folders["A"], folders["B"], folders["F"], metrics="EN", workers=1)
    (tmp_path / "m.json").mkdir()
    with pytest.raises(UpfusionError, match=r"m\.json: cannot write \(Is a directory\)"):
        result.write_json(tmp_path / "m.json")


def test_outputs_go_into_new_folders(folders) -> None:
    js, table = folders["out"] / "new" / "m.json", folders["out"] / "other" / "deeper" / "m.csv"
    assert main(_args(folders, "--metrics", "EN", "--workers", "1", "--json", str(js), "--csv", str(table))) == 0
    assert json.loads(js.read_text())["metrics"] == ["EN"]
    assert table.read_text().splitlines()[0].startswith("stem")


def test_outputs_replace_existing_files(folders, capsys) -> None:
    js = folders["out"] / "m.json"
    js.write_text("old")
    assert main(_args(folders, "--metrics", "EN", "--workers", "1", "--json", str(js))) == 0
    assert json.loads(js.read_text())["metrics"] == ["EN"]
    assert sorted(p.name for p in folders["out"].iterdir()) == ["m.json"]


def test_python_api_error_is_upfusion_error(folders) -> None:
    with pytest.raises(UpfusionError, match="compat"):
        evaluate_folders(folders["A"], folders["B"], folders["F"], metrics="EN", compat="nope")


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--compat" in out and "--workers" in out and "paper" in out


def test_16_bit_colour_png_is_refused(tmp_path) -> None:
    # PIL opens a 48-bit RGB PNG as 8-bit RGB (dropping the low bits); it must be refused, not truncated.
    import struct
    import zlib

    from upfusion.evaluate import read_gray

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = 4, 5
    pixels = (np.arange(h * w * 3).reshape(h, w, 3) * 1000).astype(">u2")
    raw = b"".join(b"\x00" + pixels[i].tobytes() for i in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits per channel, colour type 2 (RGB)
    path = tmp_path / "deep.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    with pytest.raises(UpfusionError, match="16-bit.*8-bit"):
        read_gray(path)
