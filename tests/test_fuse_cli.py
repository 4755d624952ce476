"""``upfusion fuse`` end to end: real pairs of every kind, bad input, resuming."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import upfusion
from conftest import shared_path
from upfusion.cli import main
from upfusion.model import ModelConfig
from upfusion.presets import build_model
from upfusion.pretrained.checkpoint import save_checkpoint

SMALL = ModelConfig(
    dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 4), num_refinement_blocks=1, semantic_backbone=None, text_dim=16
)
RNG = np.random.default_rng(11)

# (A folder, B folder, whether the result has colour) under shared/data
COLLECTIONS = {
    "msrs": ("msrs/test/vi", "msrs/test/ir", True),
    "llvip": ("llvip/test/vi", "llvip/test/ir", True),
    "roadscene": ("roadscene/train/vi", "roadscene/train/ir", True),
    "ct-mri": ("harvard/ct-mri/mri", "harvard/ct-mri/ct", False),
    "pet-mri": ("harvard/pet-mri/mri", "harvard/pet-mri/pet", True),
    "spect-mri": ("harvard/spect-mri/mri", "harvard/spect-mri/spect", True),
    "gfp-pc": ("gfp-pc/pc", "gfp-pc/gfp", True),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(
        build_model(SMALL),
        tmp_path_factory.mktemp("weights") / "tiny",
        text_embedding=torch.randn(16),
        text_encoder="test",
        prompt="test",
    )


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's two cores are shared
    yield
    torch.set_num_threads(threads)


def fuse(*args: str | Path) -> int:
    return main(["fuse", "--quiet", *map(str, args)])


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def link_pairs(tmp_path: Path, a_dir: Path, b_dir: Path, count: int) -> tuple[Path, Path, list[str]]:
    """Symbolic links to the first ``count`` pairs of two real folders (plus one A file without a partner)."""
    a_files = sorted(a_dir.iterdir())
    stems = [p.stem for p in a_files[:count]]
    for side, folder in (("a", a_dir), ("b", b_dir)):
        (tmp_path / side).mkdir()
        for path in sorted(folder.iterdir()):
            if path.stem in stems:
                (tmp_path / side / path.name).symlink_to(path)
    lonely = a_files[count]
    (tmp_path / "a" / lonely.name).symlink_to(lonely)
    return tmp_path / "a", tmp_path / "b", stems


def check_outputs(out: Path, a_dir: Path, b_dir: Path, stems: list[str], colour: bool) -> None:
    assert sorted(p.stem for p in out.iterdir()) == sorted(stems)  # nothing else, no temporary files
    for stem in stems:
        (a_file,) = a_dir.glob(stem + ".*")
        (result,) = out.glob(stem + ".*")
        assert result.suffix == a_file.suffix
        with Image.open(result) as im, Image.open(a_file) as src:
            assert im.size == src.size
            assert im.mode == ("RGB" if colour else "L")


@pytest.mark.parametrize("name", sorted(COLLECTIONS))
def test_real_pairs_of_every_kind(tmp_path, capsys, name):
    a_rel, b_rel, colour = COLLECTIONS[name]
    a_dir, b_dir, stems = link_pairs(
        tmp_path, shared_path("data", *a_rel.split("/")), shared_path("data", *b_rel.split("/")), 2
    )
    assert fuse("--a", a_dir, "--b", b_dir, "--out", tmp_path / "out", "--method", "average") == 0
    check_outputs(tmp_path / "out", a_dir, b_dir, stems, colour)
    captured = capsys.readouterr()
    assert "1 file(s) without a partner of the same stem" in captured.err
    assert "fused 2 pair(s)" in captured.out


@pytest.mark.parametrize("name", ["roadscene", "spect-mri", "gfp-pc", "ct-mri"])
def test_network_on_real_pairs(tmp_path, weights, name):
    a_rel, b_rel, colour = COLLECTIONS[name]
    a_dir, b_dir, stems = link_pairs(
        tmp_path, shared_path("data", *a_rel.split("/")), shared_path("data", *b_rel.split("/")), 1
    )
    assert fuse("--a", a_dir, "--b", b_dir, "--out", tmp_path / "out", "--weights", weights) == 0
    check_outputs(tmp_path / "out", a_dir, b_dir, stems, colour)


def test_help_names_the_aliases_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fuse", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--vis", "--ir", "--mri", "--ct", "--pet", "--spect", "--color-from", "--keep-going", "torchrun"):
        assert word in text


# ---------------------------------------------------------------------------------------------
# bad input


def make_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three good pairs and four bad ones (corrupt, empty, not an image, sizes that differ)."""
    a, b = tmp_path / "vis", tmp_path / "ir"
    for stem in ("good1", "good2", "good3"):
        save(a / f"{stem}.png", RNG.integers(0, 256, (20, 28, 3), dtype=np.uint8))
        save(b / f"{stem}.png", RNG.integers(0, 256, (20, 28), dtype=np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
    (a / "corrupt.png").write_bytes(buffer.getvalue()[:300])
    save(b / "corrupt.png", RNG.integers(0, 256, (40, 40), dtype=np.uint8))
    (a / "empty.png").write_bytes(b"")
    save(b / "empty.png", RNG.integers(0, 256, (8, 8), dtype=np.uint8))
    save(a / "text.png", np.zeros((8, 8), np.uint8))
    (b / "text.png").write_text("not an image\n")
    save(a / "size.png", np.zeros((16, 16), np.uint8))
    save(b / "size.png", np.zeros((16, 24), np.uint8))
    return a, b


def assert_only_complete_images(out: Path) -> list[str]:
    names = sorted(p.name for p in out.iterdir())
    for name in names:
        assert not name.startswith("."), f"temporary file left: {name}"
        with Image.open(out / name) as im:
            im.load()
    return names


def test_bad_pairs_stop_the_run_with_one_line_and_no_partial_file(tmp_path, capsys):
    a, b = make_folders(tmp_path)
    out = tmp_path / "out"
    assert fuse("--a", a, "--b", b, "--out", out, "--method", "average") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("upfusion fuse: error: ")
    assert "corrupt.png: corrupt or truncated image" in err[0]  # the first pair by stem
    assert set(assert_only_complete_images(out)) <= {"good1.png", "good2.png", "good3.png"}


def test_keep_going_fuses_every_good_pair_and_lists_every_failure(tmp_path, capsys):
    a, b = make_folders(tmp_path)
    out = tmp_path / "out"
    assert fuse("--a", a, "--b", b, "--out", out, "--method", "average", "--keep-going") == 1
    assert assert_only_complete_images(out) == ["good1.png", "good2.png", "good3.png"]
    captured = capsys.readouterr()
    assert "fused 3 pair(s)" in captured.out and "4 failed" in captured.out
    assert "4 of 7 pair(s) failed" in captured.err
    for expected in (
        f"{a / 'corrupt.png'}: corrupt or truncated image",
        f"{a / 'empty.png'}: empty file (0 bytes)",
        f"{b / 'text.png'}: not an image file",
        f"{b / 'size.png'}: size 24x16 differs from {a / 'size.png'} (16x16)",
    ):
        assert expected in captured.err


def test_keep_going_lists_a_pair_whose_output_cannot_be_encoded(tmp_path, capsys):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for stem, width in (("a1", 16), ("b2", 16400), ("c3", 16)):  # WebP holds at most 16383 pixels a side
        save(a / f"{stem}.png", np.full((8, width, 3), 90, dtype=np.uint8))
        save(b / f"{stem}.png", np.full((8, width), 30, dtype=np.uint8))
    args = ("--a", a, "--b", b, "--out", out, "--method", "average", "--format", "webp")
    assert fuse(*args, "--keep-going") == 1
    assert assert_only_complete_images(out) == ["a1.webp", "c3.webp"]
    captured = capsys.readouterr()
    assert "fused 2 pair(s)" in captured.out and "1 failed" in captured.out
    assert f"{out / 'b2.webp'}: cannot encode (ValueError: encoding error 5: Image size exceeds WebP" in captured.err
    assert fuse(*args) == 1  # without --keep-going: one line naming the file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"upfusion fuse: error: {out / 'b2.webp'}: cannot encode")


def test_size_mismatch_can_be_resized(tmp_path):
    a = save(tmp_path / "a" / "x.png", RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    b = save(tmp_path / "b" / "x.png", RNG.integers(0, 256, (12, 20), dtype=np.uint8))
    assert fuse("--a", a, "--b", b, "--out", tmp_path / "out", "--method", "average") == 1
    assert not (tmp_path / "out" / "x.png").exists()
    assert fuse("--a", a, "--b", b, "--out", tmp_path / "out", "--method", "average", "--resize-b-to-a") == 0
    assert Image.open(tmp_path / "out" / "x.png").size == (16, 16)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "no pairs",
        "file and folder",
        "out is a file",
        "out is an input",
        "out replaces a source",
        "unknown method",
        "bad format",
        "weights with a baseline",
        "bad upscale",
        "bad threads",
    ],
)
def test_usage_errors(tmp_path, capsys, case):
    a, b = tmp_path / "a", tmp_path / "b"
    save(a / "1.png", np.zeros((8, 8), np.uint8))
    save(b / "1.png", np.zeros((8, 8), np.uint8))
    save(b / "2.png", np.zeros((8, 8), np.uint8))
    save(a / "odd.gif", np.zeros((8, 8), np.uint8))  # an extension the writer does not know
    save(b / "odd.png", np.zeros((8, 8), np.uint8))
    out = tmp_path / "out"
    args, message = {
        "missing": (["--a", tmp_path / "nope", "--b", b], f"{tmp_path / 'nope'}: no such file or directory"),
        "no pairs": (["--a", a, "--b", tmp_path / "empty"], "no pairs"),
        "file and folder": (["--a", a / "1.png", "--b", b], "give two files or two folders"),
        "out is a file": (["--a", a, "--b", b, "--out", b / "2.png"], "2.png: exists and is not a folder"),
        "out is an input": (["--a", a, "--b", b, "--out", a], "output folder is an input folder"),
        "out replaces a source": (["--a", a / "1.png", "--b", b / "1.png", "--out", a], "would replace its own source"),
        "unknown method": (["--a", a, "--b", b, "--method", "nope"], "unknown method 'nope'"),
        "bad format": (
            ["--a", a / "odd.gif", "--b", b / "odd.png"],
            f"{out / 'odd.gif'}: cannot write '.gif' files; formats: png, tif, tiff, jpg, jpeg, bmp, webp, pgm, ppm; "
            "choose one with --format",
        ),
        "weights with a baseline": (
            ["--a", a, "--b", b, "--method", "average", "--weights", "x.json"],
            "method 'average' takes no weights",
        ),
        "bad upscale": (
            ["--a", a, "--b", b, "--upscale", "0"],
            "upscale must be 'auto' or a whole number >= 1, not '0'",
        ),
        "bad threads": (["--a", a, "--b", b, "--threads", "0"], "--threads must be at least 1"),
    }[case]
    (tmp_path / "empty").mkdir()
    if "--out" not in args:
        args += ["--out", out]
    assert fuse(*args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("upfusion fuse: error: ") and message in err[-1], err
    if out.exists():
        assert list(out.iterdir()) == []


def test_file_names_that_are_not_utf8(tmp_path):
    # a Latin-1 name from an old archive: Python holds the byte 0xe9 as a surrogate
    name = os.fsdecode(b"caf\xe9.png")
    save(tmp_path / "a" / name, RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    save(tmp_path / "b" / name, RNG.integers(0, 256, (8, 8), dtype=np.uint8))
    assert fuse("--a", tmp_path / "a", "--b", tmp_path / "b", "--out", tmp_path / "out", "--method", "average") == 0
    assert os.listdir(os.fsencode(tmp_path / "out")) == [b"caf\xe9.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, capsys):
    a = save(tmp_path / "a" / "x.png", np.zeros((8, 8), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert fuse("--a", a, "--b", a, "--out", out, "--method", "average") == 1
    finally:
        out.chmod(0o755)
    assert "output folder not writable" in capsys.readouterr().err


def test_corrupt_and_wrong_architecture_weights(tmp_path, capsys, weights):
    a = save(tmp_path / "a" / "x.png", np.zeros((8, 8), np.uint8))
    broken = tmp_path / "w"
    broken.mkdir()
    for suffix in (".json", ".safetensors"):
        (broken / f"tiny{suffix}").write_bytes(weights.with_suffix(suffix).read_bytes())
    data = bytearray((broken / "tiny.safetensors").read_bytes())
    data[len(data) // 2] ^= 1
    (broken / "tiny.safetensors").write_bytes(bytes(data))
    assert fuse("--a", a, "--b", a, "--out", tmp_path / "out", "--weights", broken / "tiny.json") == 1
    assert "tiny.safetensors: sha256 does not match" in capsys.readouterr().err

    record = json.loads(weights.read_text())
    record["model_config"]["num_blocks"] = [2, 1, 1, 1]
    (broken / "tiny.safetensors").write_bytes(weights.with_suffix(".safetensors").read_bytes())
    (broken / "tiny.json").write_text(json.dumps(record))
    assert fuse("--a", a, "--b", a, "--out", tmp_path / "out", "--weights", broken) == 1
    err = capsys.readouterr().err.strip()
    assert "weights do not fit the network (missing" in err and len(err.splitlines()) == 1
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# resuming, formats, colour options


def test_rerun_skips_complete_outputs_and_redoes_the_rest(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(4):
        save(a / f"{i}.png", RNG.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        save(b / f"{i}.png", RNG.integers(0, 256, (12, 12), dtype=np.uint8))
    out = tmp_path / "out"
    assert fuse("--a", a, "--b", b, "--out", out, "--method", "average") == 0
    first = {p.name: p.stat().st_ino for p in out.iterdir()}
    (out / "1.png").unlink()  # never written
    (out / "2.png").write_bytes(b"")  # not a complete image (written by something else)
    (out / "0.png").write_bytes((out / "0.png").read_bytes()[:60])  # a valid header, the pixels cut short
    (out / ".3.png.x1y2.tmp").write_bytes(b"half")  # left by a killed run
    capsys.readouterr()
    assert fuse("--a", a, "--b", b, "--out", out, "--method", "average") == 0
    assert "fused 3 pair(s)" in capsys.readouterr().out
    again = {p.name: p.stat().st_ino for p in out.iterdir() if not p.name.startswith(".")}
    assert sorted(again) == ["0.png", "1.png", "2.png", "3.png"]
    assert again["0.png"] != first["0.png"] and again["3.png"] == first["3.png"]  # redone, untouched
    with Image.open(out / "0.png") as im:
        im.load()
    assert fuse("--a", a, "--b", b, "--out", out, "--method", "average", "--overwrite") == 0
    assert all(p.stat().st_ino != again[p.name] for p in out.iterdir() if not p.name.startswith("."))


def test_single_files_aliases_format_and_colour_options(tmp_path):
    mri = save(tmp_path / "mri.png", RNG.integers(0, 256, (21, 19), dtype=np.uint8))
    pet = save(tmp_path / "pet.bmp", RNG.integers(0, 256, (21, 19, 3), dtype=np.uint8))
    assert fuse("--mri", mri, "--pet", pet, "--out", tmp_path / "o1", "--method", "average") == 0
    assert Image.open(tmp_path / "o1" / "mri.png").mode == "RGB"
    assert fuse("--mri", mri, "--pet", pet, "--out", tmp_path / "o2", "--method", "average", "--format", "jpg") == 0
    assert Image.open(tmp_path / "o2" / "mri.jpg").format == "JPEG"
    assert fuse("--a", mri, "--b", pet, "--out", tmp_path / "o3", "--method", "average", "--color-from", "none") == 0
    assert Image.open(tmp_path / "o3" / "mri.png").mode == "L"


def test_threads_sets_the_cpu_threads(tmp_path, weights):
    mri = save(tmp_path / "mri.png", RNG.integers(0, 256, (16, 24), dtype=np.uint8))
    assert torch.get_num_threads() == 1  # (this file's fixture)
    assert fuse("--a", mri, "--b", mri, "--out", tmp_path / "f.png", "--weights", weights, "--threads", "2") == 0
    assert torch.get_num_threads() == 2 and (tmp_path / "f.png").is_file()


def test_two_files_can_be_fused_into_a_named_file(tmp_path, capsys):
    mri = save(tmp_path / "mri.png", RNG.integers(0, 256, (21, 19), dtype=np.uint8))
    pet = save(tmp_path / "pet.bmp", RNG.integers(0, 256, (21, 19, 3), dtype=np.uint8))
    expected = np.asarray(upfusion.load(method="average").fuse(mri, pet))
    out = tmp_path / "new" / "brain_fused.png"
    assert fuse("--mri", mri, "--pet", pet, "--out", out, "--method", "average") == 0
    assert "into " + str(out) in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["brain_fused.png"]  # a file, no folder of that name
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    jpeg = tmp_path / "brain.jpeg"
    assert fuse("--mri", mri, "--pet", pet, "--out", jpeg, "--method", "average", "--format", "jpg") == 0
    assert Image.open(jpeg).format == "JPEG"
    # a trailing slash, or a folder already there, keeps --out a folder
    assert fuse("--mri", mri, "--pet", pet, "--out", f"{tmp_path / 'f.png'}/", "--method", "average") == 0
    assert (tmp_path / "f.png" / "mri.png").is_file()
    assert fuse("--mri", mri, "--pet", pet, "--out", tmp_path / "f.png", "--method", "average", "--overwrite") == 0
    assert sorted(p.name for p in (tmp_path / "f.png").iterdir()) == ["mri.png"]
    # folders of sources always write into a folder, even one named like a file
    a, b = tmp_path / "a", tmp_path / "b"
    save(a / "1.png", np.zeros((8, 8), np.uint8))
    save(b / "1.png", np.zeros((8, 8), np.uint8))
    assert fuse("--a", a, "--b", b, "--out", tmp_path / "g.png", "--method", "average") == 0
    assert (tmp_path / "g.png" / "1.png").is_file()
    capsys.readouterr()
    assert fuse("--mri", mri, "--pet", pet, "--out", tmp_path / "h.png", "--method", "average", "--format", "jpg") == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"upfusion fuse: error: {tmp_path / 'h.png'}: the file's extension and --format jpg disagree; give one of them"
    )
    assert not (tmp_path / "h.png").exists()


def test_16bit_pairs_give_16bit_files(tmp_path):
    a = save(tmp_path / "a" / "cell.tif", RNG.integers(0, 65536, (15, 17), dtype=np.uint16))
    b = save(tmp_path / "b" / "cell.png", RNG.integers(0, 65536, (15, 17), dtype=np.uint16))
    assert fuse("--a", a.parent, "--b", b.parent, "--out", tmp_path / "out", "--method", "average") == 0
    result = np.asarray(Image.open(tmp_path / "out" / "cell.tif"))
    expected = (np.asarray(Image.open(a)).astype(np.float64) + np.asarray(Image.open(b))) / 2
    assert result.dtype == np.uint16 and np.abs(result - expected).max() <= 1


def test_batches_give_the_same_files_as_single_pairs(tmp_path, weights):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(3):
        save(a / f"{i}.png", RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8))
        save(b / f"{i}.png", RNG.integers(0, 256, (16, 24), dtype=np.uint8))
    assert fuse("--a", a, "--b", b, "--out", tmp_path / "one", "--weights", weights) == 0
    assert fuse("--a", a, "--b", b, "--out", tmp_path / "three", "--weights", weights, "--batch-size", "3") == 0
    for i in range(3):
        one = np.asarray(Image.open(tmp_path / "one" / f"{i}.png")).astype(int)
        three = np.asarray(Image.open(tmp_path / "three" / f"{i}.png")).astype(int)
        assert np.abs(one - three).max() <= 1
