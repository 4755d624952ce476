"""``upfusion report``: the comparison table (best per column), the picture grid, and the command."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, png_claiming_size
from upfusion import report
from upfusion.cli import main
from upfusion.errors import UpfusionError
from upfusion.evaluate import EvalResult, evaluate_folders, read_gray
from upfusion.report import comparison_table, grid_size, picture_grid, table_from_results

MSRS = SHARED / "data" / "msrs" / "test"
NAN = float("nan")

VALUES = {
    "A": {"m1": 0.5, "m2": 0.2, "m3": NAN, "m4": NAN},
    "B": {"m1": 0.7, "m2": 0.2, "m3": 1.0, "m4": NAN},
    "C": {"m1": 0.6, "m2": 0.1, "m3": NAN, "m4": NAN},
}


# ---------------------------------------------------------------------------- the table


def test_best_per_column_with_ties_and_nan():
    table = comparison_table(VALUES)
    assert table.methods == ["A", "B", "C"] and table.metrics == ["m1", "m2", "m3", "m4"]
    assert table.best == {"m1": ["B"], "m2": ["A", "B"], "m3": ["B"], "m4": []}
    assert table.best_of("B") == ["m1", "m2", "m3"] and table.best_of("C") == []


def test_lower_is_better_picks_the_minimum():
    table = comparison_table(VALUES, lower_is_better={"m1", "m2"})
    assert table.best["m1"] == ["A"] and table.best["m2"] == ["C"] and table.best["m3"] == ["B"]
    assert "| method | m1 ↓ | m2 ↓ | m3 ↑ | m4 ↑ |" in table.to_markdown()


def test_all_paper_metrics_are_higher_is_better():
    from upfusion.metrics import METRICS

    assert not report.LOWER_IS_BETTER & set(METRICS)


def test_markdown_bolds_exactly_the_best_cells():
    lines = comparison_table(VALUES, title="toy").to_markdown().splitlines()
    assert lines[0].startswith("**toy**")
    assert "| method | m1 ↑ | m2 ↑ | m3 ↑ | m4 ↑ |" in lines
    assert "| A | 0.5000 | **0.2000** | nan | nan |" in lines
    assert "| B | **0.7000** | **0.2000** | **1.0000** | nan |" in lines
    assert "| C | 0.6000 | 0.1000 | nan | nan |" in lines


def test_csv_keeps_full_precision_and_names_the_best():
    values = {"x": {"q": 1 / 3, "r": 2.0}, "y": {"q": 0.3333333333, "r": 2.5}}
    rows = list(csv.reader(io.StringIO(comparison_table(values, images={"x": 7, "y": 7}).to_csv())))
    assert rows[0] == ["method", "images", "q", "r", "best"]
    assert rows[1][:2] == ["x", "7"] and float(rows[1][2]) == 1 / 3 and rows[1][4] == "q"
    assert rows[2][0] == "y" and float(rows[2][3]) == 2.5 and rows[2][4] == "r"


def test_missing_value_is_an_error():
    with pytest.raises(ValueError, match="'B' has no value for m2"):
        comparison_table({"A": {"m1": 1.0, "m2": 2.0}, "B": {"m1": 1.0}})


def eval_result(fused_dir: str, per_image: dict[str, dict[str, float]]) -> EvalResult:
    metrics = list(next(iter(per_image.values())))
    return EvalResult.from_values(metrics, per_image, fused_dir=fused_dir)


def test_table_from_results_means_counts_and_nan_note():
    results = {
        "avg": eval_result("runs/avg", {"s1": {"VIF": 0.2, "SCD": NAN}, "s2": {"VIF": 0.4, "SCD": 1.0}}),
        "gff": eval_result("runs/gff", {"s1": {"VIF": 0.5, "SCD": 1.5}, "s2": {"VIF": 0.3, "SCD": 0.5}}),
    }
    table = table_from_results(results)
    assert table.values["avg"]["VIF"] == pytest.approx(0.3) and table.values["avg"]["SCD"] == 1.0
    assert table.best == {"VIF": ["gff"], "SCD": ["avg", "gff"]}
    assert table.images == {"avg": 2, "gff": 2}
    text = table.to_markdown()
    assert "2 images" in text and "SCD of avg (1 of 2 images)" in text


def test_results_over_different_images_are_refused():
    results = {
        "avg": eval_result("runs/avg", {"s1": {"VIF": 0.2}, "s2": {"VIF": 0.4}}),
        "gff": eval_result("runs/gff", {"s1": {"VIF": 0.5}}),
    }
    with pytest.raises(UpfusionError, match=r"runs/gff: method gff lacks 1 image\(s\) \(s2\) that avg has"):
        table_from_results(results)


# ---------------------------------------------------------------------------- the picture grid


def save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def test_picture_grid_size_and_panel_placement(tmp_path):
    pytest.importorskip("matplotlib")
    red, blue = np.zeros((20, 40, 3)), np.zeros((40, 40, 3))
    red[..., 0] = 255
    blue[..., 2] = 255
    rows = [
        (
            "wide",
            [
                save(tmp_path / "w_a.png", np.full((20, 40), 255)),
                save(tmp_path / "w_b.png", np.zeros((20, 40))),
                save(tmp_path / "w_c.png", red),
            ],
        ),
        (
            "square",
            [
                save(tmp_path / "s_a.png", np.zeros((40, 40))),
                save(tmp_path / "s_b.png", np.full((40, 40), 255)),
                save(tmp_path / "s_c.png", blue),
            ],
        ),
    ]
    png = picture_grid(rows, ["A", "B", "method"], panel_width=50)
    grid = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    # label band 24 + 3 panels of 50 + 2 gaps of 4; header 28 + rows of 25 and 50 + 1 gap of 4
    assert grid.shape == (28 + 25 + 4 + 50, 24 + 3 * 50 + 2 * 4, 3)
    assert grid_size([(20, 40), (40, 40)], 3, 50) == (grid.shape[1], grid.shape[0])

    def at(row_centre, col):
        return grid[row_centre, 24 + col * 54 + 25]

    top, bottom = 28 + 12, 28 + 25 + 4 + 25
    expected = {
        (top, 0): (255, 255, 255),
        (top, 1): (0, 0, 0),
        (top, 2): (255, 0, 0),
        (bottom, 0): (0, 0, 0),
        (bottom, 1): (255, 255, 255),
        (bottom, 2): (0, 0, 255),
    }
    for (y, col), colour in expected.items():
        np.testing.assert_allclose(at(y, col), colour, atol=2)
    # The gap between the black and the red panel of the first row is white background.
    np.testing.assert_array_equal(grid[top, 24 + 2 * 50 + 4 + 1], (255, 255, 255))
    assert grid[top, 24 + 2 * 54 - 8].sum() < 10 and grid[top, 24 + 2 * 54 + 3][0] > 250


def test_picture_grid_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = save(tmp_path / "x.png", np.zeros((8, 8)))
    with pytest.raises(UpfusionError, match=r"upfusion\[report\]"):
        picture_grid([("x", [path])], ["A"])


def test_grid_shows_exif_rotated_images_upright(tmp_path):
    pixels = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 6 x 10, shown 10 x 6 (turned 90 degrees clockwise), as upfusion fuse reads it
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    assert np.array_equal(report.read_display(tmp_path / "turned.png"), np.rot90(pixels, k=-1))


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UpfusionError, match=r"bad\.png: not an image file \(unknown or unsupported format\)$"):
        report.read_display(bad)
    huge = png_claiming_size(tmp_path / "huge.png", 20000, 10000)
    with pytest.raises(
        UpfusionError, match=r"huge.png: too many pixels for Pillow to read \(Image size \(200000000 pixels\) exceeds"
    ):
        report.read_display(huge)


# ---------------------------------------------------------------------------- the command


STEMS = ["00004N", "01566D"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two 64x80 crops of MSRS pairs and the average and GFF fusions of them."""
    if not MSRS.is_dir():
        pytest.skip("shared MSRS test pairs not available")
    from upfusion.baselines import average, gff

    root = tmp_path_factory.mktemp("report_data")
    for name in ("vi", "ir", "average", "gff"):
        (root / name).mkdir()
    for stem in STEMS:
        a = read_gray(MSRS / "vi" / f"{stem}.png")[200:264, 300:380]
        b = read_gray(MSRS / "ir" / f"{stem}.png")[200:264, 300:380]
        save(root / "vi" / f"{stem}.png", a)
        save(root / "ir" / f"{stem}.png", b)
        for name, fuse in (("average", average), ("gff", gff)):
            fused = np.clip(np.rint(fuse(a / 255, b / 255) * 255), 0, 255)
            save(root / name / f"{stem}.png", fused)
    return root


def report_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "report", "--a", str(root / "vi"), "--b", str(root / "ir"),
        "--method", f"Average={root / 'average'}", "--method", f"GFF={root / 'gff'}",
        "--metrics", "SSIM,Qabf,EN", "--workers", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def test_report_command_end_to_end(dataset, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert main(report_args(dataset, out, "--grid-pairs", "2", "--panel-width", "40", "--title", "MSRS")) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "table.md").read_text()

    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert [r["method"] for r in rows] == ["Average", "GFF"]
    for row, folder in zip(rows, ("average", "gff"), strict=True):
        expected = evaluate_folders(dataset / "vi", dataset / "ir", dataset / folder, "SSIM,Qabf,EN", workers=1)
        assert row["images"] == "2"
        for metric in ("SSIM", "Qabf", "EN"):
            assert float(row[metric]) == expected.mean[metric]
    for metric in ("SSIM", "Qabf", "EN"):
        winner = max(rows, key=lambda r: float(r[metric]))
        assert metric in winner["best"].split(";")
        assert f"**{float(winner[metric]):.4f}**" in printed
    # GFF keeps the edges that averaging blurs.
    assert float(rows[1]["Qabf"]) > float(rows[0]["Qabf"])

    grid = Image.open(out / "grid.png")
    assert grid.size == grid_size([(64, 80)] * 2, 4, 40) == (24 + 4 * 40 + 3 * 4, 28 + 2 * 32 + 4)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_report_pairs_choose_the_grid_rows(dataset, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert main(report_args(dataset, out, "--pairs", "01566D", "--panel-width", "40")) == 0
    assert Image.open(out / "grid.png").size == grid_size([(64, 80)], 4, 40)


def test_no_grid_with_zero_grid_pairs(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(report_args(dataset, out, "--grid-pairs", "0")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.md"]
    assert "earlier report" not in capsys.readouterr().err


def test_zero_grid_pairs_keeps_an_earlier_grid_and_says_so(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.png").write_bytes(b"an earlier grid")
    assert main(report_args(dataset, out, "--grid-pairs", "0")) == 0
    assert (out / "grid.png").read_bytes() == b"an earlier grid"
    assert f"{out / 'grid.png'} is from an earlier report" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spec, message",
    [
        ("average", "--method 'average': expected NAME=DIR"),
        ("=x", "--method '=x': expected NAME=DIR"),
    ],
)
def test_bad_method_option(dataset, tmp_path, capsys, spec, message):
    args = ["report", "--a", str(dataset / "vi"), "--b", str(dataset / "ir"), "--method", spec,
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("upfusion report: error: " + message) and "\n" not in err


def test_repeated_method_name_and_missing_folder(dataset, tmp_path, capsys):
    args = report_args(dataset, tmp_path / "out") + ["--method", f"GFF={dataset / 'gff'}"]
    assert main(args) == 1
    assert "the name 'GFF' is used twice" in capsys.readouterr().err
    args = report_args(dataset, tmp_path / "out") + ["--method", f"X={tmp_path / 'nope'}"]
    assert main(args) == 1
    assert f"{tmp_path / 'nope'}: fused folder of method X is not a directory" in capsys.readouterr().err


def test_unknown_pair_names_the_folder(dataset, tmp_path, capsys):
    assert main(report_args(dataset, tmp_path / "out", "--pairs", "00004N,99999X")) == 1
    err = capsys.readouterr().err
    assert f"--pairs: {dataset / 'vi'} has no image with the stem '99999X'" in err
    assert not (tmp_path / "out").exists()


def test_method_with_fewer_images_fails_and_keeps_old_files(dataset, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "00004N.png").write_bytes((dataset / "gff" / "00004N.png").read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.md").write_text("previous report\n")
    args = report_args(dataset, out, "--grid-pairs", "0") + ["--method", f"Partial={partial}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "method Partial lacks 1 image(s) (01566D) that Average has" in err
    assert (out / "table.md").read_text() == "previous report\n"
    assert sorted(p.name for p in out.iterdir()) == ["table.md"]


def test_out_that_cannot_be_written_fails_before_scoring(dataset, tmp_path, capsys, monkeypatch):
    import upfusion.evaluate

    def never(*args, **kwargs):
        raise AssertionError("scored although the report cannot be written")

    monkeypatch.setattr(upfusion.evaluate, "evaluate_folders", never)
    (tmp_path / "file").write_text("x")
    assert main(report_args(dataset, tmp_path / "file" / "report", "--grid-pairs", "0")) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"upfusion report: error: --out {tmp_path / 'file' / 'report'}: {tmp_path / 'file'} is not a folder"
    out = tmp_path / "out"
    (out / "table.csv").mkdir(parents=True)
    (out / "table.md").write_text("previous report\n")
    assert main(report_args(dataset, out, "--grid-pairs", "0")) == 1
    assert f"--out {out / 'table.csv'}: is a folder, not a file" in capsys.readouterr().err
    assert (out / "table.md").read_text() == "previous report\n"  # no half-replaced report


def test_file_and_folder_names_that_are_not_utf8(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import os

    # Latin-1 bytes, held by Python as surrogates: a stem (shown in the grid) and folder A (in the table's note)
    stem, a_name = os.fsdecode(b"caf\xe9"), os.fsdecode(b"vis\xe9")
    rng = np.random.default_rng(6)
    for key in (a_name, "b", "m"):
        (tmp_path / key).mkdir()
        save(tmp_path / key / f"{stem}.png", rng.integers(0, 256, (8, 8)))
    out = tmp_path / "out"
    args = ["report", "--a", str(tmp_path / a_name), "--b", str(tmp_path / "b"), "--method", f"M={tmp_path / 'm'}",
            "--metrics", "EN", "--workers", "1", "--out", str(out)]  # fmt: skip
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as in a UTF-8 locale
    monkeypatch.setattr("sys.stdout", stdout)
    assert main(args) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "table.csv", "table.md"]
    note = b"A = " + os.fsencode(tmp_path / a_name)  # the folder name's own bytes
    stdout.flush()
    assert note in (out / "table.md").read_bytes() and note in stdout.buffer.getvalue()
