"""The reference implementation's own output, reproduced: convert its checkpoint, load, run.

`../shared/reference/parity/` holds a reduced configuration in the reference's format and the
reference network's output on given inputs (see its README).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared_path
from upfusion.pretrained.checkpoint import load_network
from upfusion.pretrained.convert import convert_official


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    io = np.load(shared_path("reference", "parity", "tiny_seed0_io.npz"))
    np.save(folder / "text.npy", io["text"])
    record = convert_official(
        shared_path("reference", "parity", "tiny_seed0.pth"), folder, text_embedding=folder / "text.npy"
    )
    # the parity file leaves the ConvNeXt weights out; its convnext_fc is zero, so any backbone gives w_s = bias
    model, text = load_network(record, backbone_weights="random")
    return model, text


@pytest.mark.parametrize("vector", ["tiny_seed0_io.npz", "tiny_seed0_batch2_io.npz"])
def test_reproduces_reference_output(converted, vector):
    model, stored_text = converted
    io = np.load(shared_path("reference", "parity", vector))
    assert torch.equal(stored_text, torch.from_numpy(io["text"]).reshape(1, -1))
    with torch.no_grad():
        out = model(torch.from_numpy(io["a"]), torch.from_numpy(io["b"]), stored_text)
    assert out.shape == io["out"].shape
    assert np.abs(out.numpy() - io["out"]).max() < 1e-4


def test_converted_config_is_the_reduced_one(converted):
    config = converted[0].config
    assert (config.dim, config.num_blocks, config.heads, config.num_refinement_blocks) == (
        16,
        (1, 1, 1, 2),
        (1, 2, 4, 8),
        1,
    )
    assert config.semantic_backbone == "convnext_base" and config.text_dim == 512
