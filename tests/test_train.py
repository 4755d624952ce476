"""``upfusion train``: the loss goes down, resume is exact, DDP (gloo) runs, options and errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from upfusion import losses
from upfusion.cli import main
from upfusion.commands.train import HELP, build_config, register
from upfusion.errors import UpfusionError
from upfusion.pretrained.checkpoint import load_network
from upfusion.train import TrainConfig, cosine_lr_factor, load_config_file, model_config, train

SMALL_MODEL = {
    "dim": 8,
    "num_blocks": [1, 1, 1, 1],
    "heads": [1, 1, 2, 4],
    "num_refinement_blocks": 1,
    "semantic_backbone": None,
    "text_dim": 16,
}
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Six 48x48 pairs: smooth random scenes, B a blurred, shifted-intensity view of A."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for i in range(6):
        a = ndimage.gaussian_filter(rng.random((48, 48)), 2) * 255
        b = 255 - ndimage.gaussian_filter(a, 3)
        for name, img in (("vi", a), ("ir", b)):
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i:02d}.png")
    np.save(root / "text.npy", rng.standard_normal(16).astype(np.float32))
    return root


def _config(folders: Path, out: Path, **changes) -> TrainConfig:
    values = dict(
        data=[[str(folders / "vi"), str(folders / "ir")]],
        out=str(out),
        model=dict(SMALL_MODEL),
        backbone_weights=None,
        text_embedding=str(folders / "text.npy"),
        crop=32,
        batch_size=2,
        steps=6,
        lr=1e-3,
        lr_min=1e-4,
        checkpoint_every=3,
        log_every=1,
        threads=1,
        seed=0,
    )
    values.update(changes)
    return TrainConfig(**values)


def _log(out: Path) -> list[dict]:
    with open(out / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _whole_loss(model, folders: Path, text: torch.Tensor) -> float:
    from upfusion.data import FusionPairs

    ds = FusionPairs([(folders / "vi", folders / "ir")], crop=None)
    a = torch.stack([ds[i][0] for i in range(len(ds))])
    b = torch.stack([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        return losses.reference_loss(a, b, model(a, b, text))[0].item()


def test_a_few_steps_reduce_the_loss(folders, tmp_path):
    from upfusion.presets import build_model

    pair = [str(folders / "vi"), str(folders / "ir")]
    config = _config(
        folders, tmp_path / "run", steps=12, checkpoint_every=100, val_data=[pair], val_every=12, val_max_pairs=1
    )
    final = train(config, progress=False)
    torch.manual_seed(0)
    initial = build_model(model_config(config.model))  # what train() starts from (seed 0)
    trained, text = load_network(final)
    before, after = _whole_loss(initial, folders, text), _whole_loss(trained, folders, text)
    assert after < 0.8 * before, (before, after)
    rows = _log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[-1]["lr"]) < 2e-4  # cosine decay
    with open(tmp_path / "run" / "val.csv", newline="") as fh:
        val = list(csv.DictReader(fh))
    assert [r["step"] for r in val] == ["12"] and set(val[0]) == {"step", "Q_NCIE", "Q_P", "VIF", "SSIM", "Qabf"}
    # the validation values are the metrics of the final weights' fusion of the first pair
    from upfusion.metrics import compute

    a, b = (np.asarray(Image.open(folders / name / "00.png")) for name in ("vi", "ir"))
    with torch.no_grad():
        f = trained(
            torch.from_numpy(a / 255.0).float()[None, None], torch.from_numpy(b / 255.0).float()[None, None], text
        )
    f = torch.round(255 * f[0, 0].clamp(0, 1)).to(torch.uint8).numpy()
    expected = compute(a, b, f, "paper")
    assert {k: float(v) for k, v in val[0].items() if k != "step"} == pytest.approx(expected, abs=2e-6)


def test_a_second_ctrl_c_while_the_state_is_saved_does_not_stop_the_save(folders, tmp_path, monkeypatch):
    import upfusion.train as train_module

    calls = {"n": 0}
    real_loss, real_save = losses.LOSSES["reference"], train_module._atomic_torch_save

    def stop_at_third_step(a, b, f):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_loss(a, b, f)

    def impatient_save(obj, path):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again while the first one's state is written
        real_save(obj, path)

    monkeypatch.setitem(losses.LOSSES, "reference", stop_at_third_step)
    monkeypatch.setattr(train_module, "_atomic_torch_save", impatient_save)
    with pytest.raises(KeyboardInterrupt):
        train(_config(folders, tmp_path / "run"), progress=False)
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=False)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(folders, tmp_path, monkeypatch):
    straight = load_network(train(_config(folders, tmp_path / "straight"), progress=False))[0]

    calls = {"n": 0}
    real = losses.LOSSES["reference"]

    def stop_at_fifth_step(a, b, f):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as Ctrl-C: the state of step 4 is saved
        return real(a, b, f)

    monkeypatch.setitem(losses.LOSSES, "reference", stop_at_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        train(_config(folders, tmp_path / "resumed"), progress=False)
    monkeypatch.setitem(losses.LOSSES, "reference", real)
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=False)["step"] == 4
    resumed = load_network(train(_config(folders, tmp_path / "resumed"), resume=tmp_path / "resumed", progress=False))[
        0
    ]

    for (name, x), (_, y) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(x, y), name  # bit-exact on CPU
    assert [int(r["step"]) for r in _log(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in _log(tmp_path / "resumed")] == [r["loss"] for r in _log(tmp_path / "straight")]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "step_0000003.json",
        "step_0000003.safetensors",
        "step_0000004.json",
        "step_0000004.safetensors",
    ]


def test_resume_goes_on_in_the_resumed_folder_from_another_directory(folders, tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    train(_config(folders, Path("run"), steps=2), progress=False)  # a relative --out
    monkeypatch.chdir(tmp_path / "b")
    assert main(["train", "--resume", str(tmp_path / "a" / "run"), "--steps", "4", "--no-progress"]) == 0
    assert [int(r["step"]) for r in _log(tmp_path / "a" / "run")] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "a" / "run" / "state.pt", weights_only=False)["step"] == 4
    assert not list((tmp_path / "b").iterdir())  # not a second run folder under the current directory


def test_resume_from_a_broken_state_is_one_line_error(folders, tmp_path, capsys):
    out = tmp_path / "run"
    train(_config(folders, out, steps=2), progress=False)
    capsys.readouterr()
    good = out / "state.pt"
    state = torch.load(good, weights_only=False)
    del state["optimizer"]
    torch.save(state, tmp_path / "lacking.pt")
    torch.save({"config": state["config"]}, tmp_path / "other.pt")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:5000])
    for name, message in (
        ("lacking.pt", "training state lacks optimizer"),
        ("other.pt", "not an upfusion training state"),
        ("truncated.pt", "not a readable training state"),
    ):
        assert main(["train", "--resume", str(tmp_path / name), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"upfusion train: error: {tmp_path / name}: {message}") and err.count("\n") == 1


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_to_the_process_group_saves_the_state_with_loader_workers(folders, tmp_path):
    """As `timeout` or Ctrl-C stop a run: the signal reaches the data-loader workers too."""
    import time

    import yaml

    options = _config(folders, tmp_path / "run", steps=100_000, workers=2, threads=1, log_every=1).to_dict()
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(options))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "upfusion", "train", "--config", str(tmp_path / "run.yaml"), "--no-progress"]
    run = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        log, deadline = tmp_path / "run" / "log.csv", time.monotonic() + 120
        while not (log.is_file() and len(log.read_text().splitlines()) > 3):
            assert run.poll() is None and time.monotonic() < deadline, "the run stopped or logged nothing"
            time.sleep(0.2)
        os.killpg(run.pid, signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:  # nothing left running if the run hangs
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode != 0
    assert "state saved" in err and "killed by signal" not in err, err
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=False)["step"] >= 3


def test_two_process_ddp_on_cpu(folders, tmp_path):
    config = tmp_path / "ddp.yaml"
    import yaml

    options = dict(
        data=[[str(folders / "vi"), str(folders / "ir")]],
        model=SMALL_MODEL,
        text_embedding=str(folders / "text.npy"),
        backbone_weights=None,
        crop=32,
        batch_size=1,
        steps=3,
        checkpoint_every=100,
        threads=1,
        log_every=1,
    )
    config.write_text(yaml.safe_dump(options))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "upfusion",
            "train",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "ddp"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stderr
    assert [int(r["step"]) for r in _log(tmp_path / "ddp")] == [1, 2, 3]
    model, _ = load_network(tmp_path / "ddp" / "final.json")
    assert model.config.dim == 8


def test_black_margin_is_trained_and_logged(folders, tmp_path):
    # every crop black outside an ellipse: the margin term is active from the first step
    train(_config(folders, tmp_path / "run", steps=3, blackout=1.0, black_margin=0.01), progress=False)
    rows = _log(tmp_path / "run")
    assert list(rows[0]) == ["step", "epoch", "lr", "loss", "intensity", "grad", "ssim", "black", "seconds"]
    assert all(float(r["black"]) > 0 for r in rows)  # a fresh network is not below -0.01 in the black
    train(_config(folders, tmp_path / "plain", steps=1), progress=False)  # off by default: no column
    assert "black" not in _log(tmp_path / "plain")[0] and "edge" not in _log(tmp_path / "plain")[0]
    train(_config(folders, tmp_path / "edge", steps=1, loss_weights={"edge": 10}), progress=False)
    assert float(_log(tmp_path / "edge")[0]["edge"]) > 0  # the optional term is logged once weighted


def test_init_weights_starts_a_new_run_from_a_checkpoint(folders, tmp_path):
    first = train(_config(folders, tmp_path / "first"), progress=False)
    start, start_text = load_network(first)
    # a near-zero learning rate: the fine-tuned weights must be the starting ones, and the
    # prompt embedding the checkpoint's (no --text-embedding given)
    tuned = train(
        _config(folders, tmp_path / "tuned", init_weights=str(first), text_embedding=None, steps=1, lr=1e-12, lr_min=0),
        progress=False,
    )
    model, text = load_network(tuned)
    assert torch.equal(text, start_text)
    for (name, x), (_, y) in zip(start.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-9), name
    assert [int(r["step"]) for r in _log(tmp_path / "tuned")] == [1]  # a new run: step 1, not 7
    # from random weights the same single step leaves them far from the checkpoint's
    scratch = load_network(train(_config(folders, tmp_path / "scratch", steps=1, lr=1e-12, lr_min=0), progress=False))[
        0
    ]
    assert not all(
        torch.allclose(x, y, atol=1e-6)
        for x, y in zip(start.state_dict().values(), scratch.state_dict().values(), strict=True)
    )
    with pytest.raises(UpfusionError, match=r"first/final.json: its network differs from the run's model in dim"):
        train(
            _config(folders, tmp_path / "x", init_weights=str(first), model={**SMALL_MODEL, "dim": 16}), progress=False
        )


def test_init_weights_brings_the_checkpoints_backbone(folders, tmp_path):
    with_backbone = {**SMALL_MODEL, "semantic_backbone": "efficientnet_lite0", "backbone_dim": 1280}
    first = train(_config(folders, tmp_path / "first", model=with_backbone, steps=1), progress=False)
    assert json.loads(first.read_text())["semantic_backbone"]["weights"] == "final.backbone.safetensors"  # random
    tuned = train(
        _config(
            folders, tmp_path / "tuned", model=with_backbone, init_weights=str(first), backbone_weights="pretrained"
        ),
        progress=False,
    )
    started, ended = (load_network(p)[0].channel_select.backbone.state_dict() for p in (first, tuned))
    assert all(torch.equal(started[k], ended[k]) for k in started)  # not ImageNet's: the checkpoint's
    # a backbone file that is not the one the record names is refused, as load_network refuses it
    backbone_file = tmp_path / "first" / "final.backbone.safetensors"
    backbone_file.write_bytes(backbone_file.read_bytes()[:-1] + b" ")
    with pytest.raises(UpfusionError, match=r"final.backbone.safetensors: sha256 does not match"):
        train(_config(folders, tmp_path / "again", model=with_backbone, init_weights=str(first)), progress=False)


def test_config_file_then_command_line(folders, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = [["{folders / "vi"}", "{folders / "ir"}"]]\ncrop = 64\nsteps = 5\nloss = "paper"\n')
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["train", "--config", str(toml), "--crop", "40", "--no-flips", "--grad-clip", "0.5", "--loss-weights", "grad=3"]
    )
    config = build_config(args)
    assert (config.crop, config.steps, config.loss, config.flips, config.grad_clip) == (40, 5, "paper", False, 0.5)
    config.validate()
    assert config.loss_weights == {"grad": 3.0}
    assert config.lr == 1e-4 and config.model == "default"  # defaults: the paper's lr, the shipped preset


def test_every_option_has_a_command_line_flag():
    assert list(HELP) == [f.name for f in dataclasses.fields(TrainConfig)]


def test_shipped_recipes_parse():
    root = Path(__file__).resolve().parents[1] / "configs"
    phases = (
        "default.yaml",
        "default_finetune_gpu.yaml",
        "default_finetune_cpu.yaml",
        "default_finetune_cpu2.yaml",
        "default_finetune_gpu2.yaml",
        "default_finetune_cpu3.yaml",
        "default_finetune_cpu4.yaml",
        "default_finetune_cpu5.yaml",
    )
    assert {p.name for p in root.glob("*.yaml")} == {"paper.yaml", *phases}
    for name in ("paper.yaml", *phases):
        config = TrainConfig.from_dict(load_config_file(root / name), source=name)
        config.validate()
    previous_out = None
    for name in phases:  # the shipped weights' phases: no LLVIP, each starting from the one before
        shipped = TrainConfig.from_dict(load_config_file(root / name))
        assert shipped.model == "default" and not any("llvip" in a or "llvip" in b for a, b in shipped.data)
        assert shipped.init_weights == (previous_out and f"{previous_out}/final.json"), name
        previous_out = shipped.out
    record = json.loads((root.parent / "src/upfusion/weights/default.json").read_text())
    assert record["training"]["recipe"] == ", then ".join(f"configs/{name}" for name in phases)


def test_toml_config_on_python_310_uses_tomli_or_names_the_extra(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: a TOML config reads through tomli, or stops naming the extra."""
    import tomllib

    import upfusion.train as train_module

    config = tmp_path / "run.toml"
    config.write_text('steps = 7\nloss = "paper"\n')
    monkeypatch.setattr(train_module.sys, "version_info", (3, 10, 13))
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli is tomllib's backport, same API
    assert load_config_file(config) == {"steps": 7, "loss": "paper"}
    monkeypatch.setitem(sys.modules, "tomli", None)  # not installed
    with pytest.raises(UpfusionError, match=r"TOML config files.*pip install 'upfusion\[train\]'"):
        load_config_file(config)


def test_cosine_schedule():
    assert cosine_lr_factor(0, 100, 1e-4, 1e-5, 0) == pytest.approx(1.0)
    assert cosine_lr_factor(50, 100, 1e-4, 1e-5, 0) == pytest.approx(0.55)
    assert cosine_lr_factor(100, 100, 1e-4, 1e-5, 0) == pytest.approx(0.1)
    assert cosine_lr_factor(4, 100, 1e-4, 1e-5, 10) == pytest.approx(0.5)  # warm-up


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: [1\n", "not valid YAML"),
        ("stepz: 3\n", "unknown option(s) stepz"),
        ("- 1\n", "must be a mapping"),
        ("steps: four\n", "steps must be a whole number, not 'four'"),
        ("lr: fast\n", "lr must be a number, not 'fast'"),
        ("flips: maybe\n", "flips must be true or false, not 'maybe'"),
        ("data: some/folder\n", "data must be a list of [folder_a, folder_b] pairs, not 'some/folder'"),
        ("model: 5\n", "model must be a preset name or a mapping"),
    ],
)
def test_bad_config_file_is_one_line_error(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"upfusion train: error: {path}") and message in err and err.count("\n") == 1


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nlr_min: 2E-5\n")  # YAML 1.1 reads these as strings
    config = TrainConfig.from_dict(load_config_file(path), source=str(path))
    assert (config.lr, config.lr_min) == (1e-3, 2e-5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps must be at least 1, not 0"),
        ({"steps": None, "epochs": 0}, "epochs must be at least 1, not 0"),
        ({"workers": -1}, "workers must be at least 0, not -1"),
        ({"val_holdout": -2}, "val_holdout must be at least 0, not -2"),
        ({"grad_clip": -1.0}, "grad_clip must be above 0"),
        ({"small": "crop"}, "small must be pad or skip, not 'crop'"),
        ({"device": "gpu"}, "device 'gpu' is unknown"),
        ({"val_every": 2, "val_holdout": 2, "val_metrics": "nope"}, "val_metrics: unknown metric 'nope'"),
    ],
)
def test_out_of_range_options_stop_before_training(folders, tmp_path, changes, message):
    with pytest.raises(UpfusionError, match=re.escape(message)):
        train(_config(folders, tmp_path / "x", **changes), progress=False)
    assert not (tmp_path / "x" / "final.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_a_gpu_is_one_line_error(folders, tmp_path):
    with pytest.raises(UpfusionError, match="device 'cuda': no CUDA device is available"):
        train(_config(folders, tmp_path / "x", device="cuda"), progress=False)


def test_a_new_run_does_not_overwrite_an_earlier_one(folders, tmp_path):
    out = tmp_path / "run"
    train(_config(folders, out, steps=2), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(
        UpfusionError, match=f"{re.escape(str(out))}: holds an earlier training run; continue it with --resume"
    ):
        train(_config(folders, out, steps=4), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # log.csv, state.pt, final.*


def test_output_folder_problems_are_one_line_errors(folders, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UpfusionError, match="file: is a file, not an output folder"):
        train(_config(folders, tmp_path / "file"), progress=False)
    with pytest.raises(UpfusionError, match="cannot create the output folder"):
        train(_config(folders, tmp_path / "file" / "run"), progress=False)
    with pytest.raises(UpfusionError, match="no such file or directory"):
        train(
            _config(folders, tmp_path / "run", data=[[str(tmp_path / "no_a"), str(tmp_path / "no_b")]]), progress=False
        )
    assert not (tmp_path / "run").exists()  # nothing created for a run that never started


def test_unwritable_out_fails_before_training_starts(folders, tmp_path, capsys, monkeypatch):
    """upfusion train --out that is a file or lies under one: one line naming the path, before the
    pairs are read and the model built (it failed at the first write, after them)."""
    import upfusion.train

    def never(*args, **kwargs):
        raise AssertionError("training started although --out cannot be a folder")

    monkeypatch.setattr(upfusion.train, "train", never)
    (tmp_path / "file").write_text("x")
    data = ["--data", str(folders / "vi"), str(folders / "ir"), "--steps", "1", "--no-progress"]
    for out, message in (
        (tmp_path / "file", "is a file, not a folder"),
        (tmp_path / "file" / "run", f"{tmp_path / 'file'} is not a folder"),
    ):
        assert main(["train", *data, "--out", str(out)]) == 1
        assert capsys.readouterr().err == f"upfusion train: error: --out {out}: {message}\n"
    assert (tmp_path / "file").read_text() == "x"


def test_training_folders_are_listed_once(folders, tmp_path, monkeypatch):
    """The held-out draw, the training set and the held-out validation set share one listing of
    each training folder (each was listed and paired three times)."""
    import upfusion.pairing

    listed: list[Path] = []
    real = upfusion.pairing.list_images

    def counting(folder):
        listed.append(Path(folder))
        return real(folder)

    monkeypatch.setattr(upfusion.pairing, "list_images", counting)
    train(_config(folders, tmp_path / "run", steps=1, val_holdout=2, val_every=1, val_max_pairs=1), progress=False)
    assert sorted(listed) == [folders / "ir", folders / "vi"]


@pytest.mark.parametrize(("seed", "holdout", "held_out"), [(0, 2, ["03", "04"]), (7, 3, ["03", "04", "05"])])
def test_held_out_pairs_are_those_of_earlier_versions(folders, tmp_path, monkeypatch, seed, holdout, held_out):
    """The seeded --val-holdout draw picks the pairs it picked before the folders were indexed
    once (recorded then), and the training set is the rest."""
    import upfusion.data

    made: list[list[str]] = []

    class Recorded(upfusion.data.FusionPairs):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(list(self.stems))

    monkeypatch.setattr(upfusion.data, "FusionPairs", Recorded)
    config = _config(folders, tmp_path / "run", seed=seed, steps=1, batch_size=1, val_holdout=holdout, val_every=1)
    train(config, progress=False)
    training = [s for s in ["00", "01", "02", "03", "04", "05"] if s not in held_out]
    assert made == [training, held_out]


def test_errors_before_training(folders, tmp_path):
    with pytest.raises(UpfusionError, match="give steps or epochs, not both"):
        train(_config(folders, tmp_path / "x", epochs=1), progress=False)
    with pytest.raises(UpfusionError, match="no training state to resume from"):
        train(_config(folders, tmp_path / "x"), resume=tmp_path / "nothing", progress=False)
    with pytest.raises(UpfusionError, match="fewer than one step's batch"):
        train(_config(folders, tmp_path / "x", batch_size=7), progress=False)
    for holdout in (6, 9):  # of 6 pairs: was cut to 5 without a word, leaving one to train on
        with pytest.raises(
            UpfusionError, match=f"^val_holdout {holdout}: the training data has 6 pairs; hold out fewer"
        ):
            train(_config(folders, tmp_path / "x", val_holdout=holdout, val_every=1, batch_size=1), progress=False)
    with pytest.raises(UpfusionError, match="black_margin is a level in"):
        train(_config(folders, tmp_path / "x", black_margin=-0.1), progress=False)
    with pytest.raises(UpfusionError, match="self_pairs is a probability in"):
        train(_config(folders, tmp_path / "x", self_pairs=1.5), progress=False)
    with pytest.raises(UpfusionError, match="contrast is a probability in"):
        train(_config(folders, tmp_path / "x", contrast=-1.0), progress=False)
    with pytest.raises(UpfusionError, match="loss 'reference' has no term l1_a; its terms: intensity, grad, ssim"):
        train(_config(folders, tmp_path / "x", loss_weights={"l1_a": 1.0}), progress=False)
    with pytest.raises(
        UpfusionError, match=f"^{folders / 'text.npy'}: text embedding has 16 values; the model takes 384"
    ):
        train(_config(folders, tmp_path / "x", model={**SMALL_MODEL, "text_dim": 384}), progress=False)


def test_training_curve_png(tmp_path):
    from upfusion.train import plot_training_curve

    rows = "".join(f"{s},0,{1e-4 * (1 - s / 40):.6g},{5 / s:.5f},0.1,0.1,0.1,{s}\n" for s in range(1, 40))
    (tmp_path / "log.csv").write_text("step,epoch,lr,loss,intensity,grad,ssim,seconds\n" + rows)
    png = plot_training_curve(tmp_path, tmp_path / "docs" / "curve.png")
    image = Image.open(png)
    assert image.format == "PNG" and image.width > 300
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.csv").write_text("step,epoch,lr,loss\n")
    with pytest.raises(UpfusionError, match="has no rows yet"):
        plot_training_curve(tmp_path / "empty", tmp_path / "x.png")
