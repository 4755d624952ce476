"""``upfusion bench``: a table and JSON of real measurements, one fresh process per configuration."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from upfusion.benchmark import BenchCase, BenchResult, markdown_table, parse_size
from upfusion.cli import main
from upfusion.model import ModelConfig, UPFusion
from upfusion.pretrained.checkpoint import save_checkpoint

SMALL = ModelConfig(
    dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 4), num_refinement_blocks=1, semantic_backbone=None, text_dim=16
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    text = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    folder = tmp_path_factory.mktemp("bench")
    return save_checkpoint(UPFusion(SMALL), folder / "small", text_embedding=text, text_encoder="test", prompt="p")


def test_bench_measures_each_configuration(checkpoint, tmp_path, capsys):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = [
        "bench",
        "--weights",
        str(checkpoint),
        "--size",
        "64x48",
        "32x32",
        "--arithmetic",
        "fast",
        "plain",
        "--device",
        "cpu",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "small" in line]
    assert len(rows) == 4  # 2 sizes x 2 arithmetic
    data = json.loads(out_json.read_text())
    assert data["machine"]["cpu_cores"] >= 1 and data["machine"]["torch"] == torch.__version__
    results = data["results"]
    assert {(r["case"]["width"], r["case"]["height"], r["case"]["arithmetic"]) for r in results} == {
        (64, 48, "fast"),
        (64, 48, "plain"),
        (32, 32, "fast"),
        (32, 32, "plain"),
    }
    for r in results:
        assert r["error"] is None and len(r["latencies_s"]) == 2
        assert r["latency_s"] == pytest.approx(float(np.median(r["latencies_s"])))
        assert r["pairs_per_s"] == pytest.approx(1 / r["latency_s"])
        assert r["peak_memory_bytes"] >= r["model_memory_bytes"] > 0
    assert out_md.read_text().count("| small") == 4 and "Measured on" in out_md.read_text()
    assert all(r["huge_pages"] is sys.platform.startswith("linux") for r in results)  # as `upfusion fuse` runs


def test_bench_tiled_batched_configuration(checkpoint, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    argv = [
        "bench",
        "--weights",
        str(checkpoint),
        "--size",
        "96x64",
        "--batch",
        "2",
        "--tile",
        "48",
        "--overlap",
        "16",
        "--device",
        "cpu",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--no-huge-pages",
        "--json",
        str(out_json),
    ]
    assert main(argv) == 0
    (result,) = json.loads(out_json.read_text())["results"]
    assert result["case"]["tile"] == 48 and result["case"]["batch"] == 2
    assert result["huge_pages"] is False and "(4 KiB pages)" in capsys.readouterr().out
    assert result["pairs_per_s"] == pytest.approx(2 / result["latency_s"])

    # without --overlap, fuse's default: 64, or half a smaller tile
    at = argv.index("--overlap")
    assert main(argv[:at] + argv[at + 2 :]) == 0
    (result,) = json.loads(out_json.read_text())["results"]
    assert result["error"] is None and result["case"]["overlap"] == 24


def test_bench_takes_bundled_weights_by_name(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    argv = ["bench", "--weights", "default", "--size", "32x32", "--device", "cpu", "--runs", "1", "--warmup", "0"]
    assert main([*argv, "--no-huge-pages", "--json", str(out_json)]) == 0
    (result,) = json.loads(out_json.read_text())["results"]
    assert result["error"] is None and result["case"]["weights"].endswith("default.json")
    assert "| default | 32x32 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--size", "640by480"], "WIDTHxHEIGHT"),
        (["--size", "100x100"], "multiples of 8"),
        (["--device", "cpu", "--precision", "fp16"], "fp16 runs on CUDA"),
        (["--weights", "/nonexistent/ckpt.json"], "/nonexistent/ckpt.json"),
        (["--compile-mode", "reduce-overhead"], "--compile-mode needs --compile"),
    ],
)
def test_bad_options_give_one_line_errors(args, message, capsys):
    assert main(["bench", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("upfusion bench: error:") and message in err[0]


def test_output_paths_are_checked_before_measuring(tmp_path, capsys):
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "file").write_text("x")
    for option, path, message in (
        ("--json", tmp_path / "folder.json", "is a folder, not a file"),
        ("--markdown", tmp_path / "file" / "r.md", f"{tmp_path / 'file'} is not a folder"),
    ):
        assert main(["bench", "--size", "16x16", "--runs", "1", "--warmup", "0", option, str(path)]) == 1
        captured = capsys.readouterr()
        assert captured.err == f"upfusion bench: error: {option} {path}: {message}\n"  # no case was run
        assert captured.out == ""


def test_a_malformed_record_stops_before_measuring(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["bench", "--weights", str(tmp_path / "broken.json"), "--size", "16x16", "--runs", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"upfusion bench: error: {tmp_path / 'broken.json'}: not a readable checkpoint")
    assert captured.err.count("\n") == 1 and captured.out == ""  # no table: nothing was measured


def test_json_into_a_missing_folder_creates_it(checkpoint, tmp_path, capsys):
    out_json = tmp_path / "new" / "sub" / "r.json"
    argv = ["bench", "--weights", str(checkpoint), "--size", "16x16", "--device", "cpu", "--runs", "1"]
    assert main([*argv, "--warmup", "0", "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["results"][0]["error"] is None


def test_a_failing_configuration_is_reported_not_fatal():
    table = markdown_table(
        [
            BenchResult(
                BenchCase(preset="x"),
                latency_s=2.0,
                latencies_s=[2.0],
                pairs_per_s=0.5,
                peak_memory_bytes=3 * 2**20,
                model_memory_bytes=2**20,
                threads=2,
            ),
            BenchResult(BenchCase(preset="y"), error="killed by signal 9 (out of memory?)"),
        ]
    )
    lines = table.splitlines()
    assert lines[2].startswith("| x | 640x480 | 1 | cpu | fp32 | fast | - | 2.000 | 0.500 | 3 | 1 | 2 |")
    assert "error: killed by signal 9" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_fused_arithmetic_is_refused_in_fp32_on_a_gpu():
    """In fp32 the fused kernels would not run (``fused_kernels.applies``): timing "fused" there
    would time the inference kernels under the wrong name."""
    from upfusion.benchmark import run_case

    with pytest.raises(ValueError, match="'fused' runs in bf16 or fp16 on a GPU"):
        run_case(BenchCase(device="cuda", precision="fp32", arithmetic="fused", height=16, width=16))


def test_parse_size_is_width_by_height():
    assert parse_size("640x480") == (480, 640)
    with pytest.raises(ValueError):
        parse_size("640")


def test_compile_option_names_its_scope():
    import argparse

    from upfusion.commands.bench import register
    from upfusion.inference import COMPILE_SCOPES

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["bench"]).compile is None
    assert parser.parse_args(["bench", "--compile"]).compile == "blocks"
    assert [parser.parse_args(["bench", "--compile", s]).compile for s in COMPILE_SCOPES] == list(COMPILE_SCOPES)
    case = BenchCase(arithmetic="plain", compile="blocks")
    assert "| plain +compile (blocks) |" in markdown_table([BenchResult(case, latency_s=0.5, pairs_per_s=2.0)])
    args = parser.parse_args(["bench", "--compile", "--compile-mode", "reduce-overhead"])
    assert (args.compile, args.compile_mode) == ("blocks", "reduce-overhead")
    case = BenchCase(compile="blocks", compile_mode="reduce-overhead")
    table = markdown_table([BenchResult(case, latency_s=0.5, pairs_per_s=2.0)])
    assert "| fast +compile (blocks, reduce-overhead) |" in table
