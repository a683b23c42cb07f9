"""Hostile weight files and configs (issue 13 items 6 and 7): refused by name in one line, before memory is spent.

Each case asserts: a one-line message naming the file (and the field or tensor), no traceback, no code run, and for
the config cases that no tensor was read before the refusal.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seesr.cli.main import main
from seesr.weights import reader
from seesr.weights.reader import WeightReadError
from seesr.weights.tagger import convert_ram_to_safetensors, load_pretrained_tagger, load_tagger
from seesr.weights.unet import load_seesr_unet
from tests.conftest import TINY

RAM = TINY / "ram"
IMAGE = TINY / "pipeline_case1_lr.png"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def converted_tagger(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tagger") / "tagger"
    return convert_ram_to_safetensors(RAM / "ram_swin_large_14m.pth", RAM / "DAPE.pth", folder, RAM / "configs")


def _copy(folder: Path, destination: Path) -> Path:
    shutil.copytree(folder, destination)
    return destination


def _edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "config.json"


def _tag_error(capsys, folder: Path) -> str:
    code = main(["tag", str(IMAGE), "--model", str(folder), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_tensor_read(monkeypatch):
    """Reading any tensor fails the test: the refusal must come before (headers and configs only)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read before the config/shape check")

    monkeypatch.setattr(reader, "read_state_dict", refuse)
    monkeypatch.setattr("seesr.weights.tagger.read_state_dict", refuse)
    monkeypatch.setattr("seesr.weights.unet.read_state_dict", refuse)


# ------------------------------------------------------------------------------------------------ item 6: configs
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"depths": [2, 2, 100_000, 2]}, "'depths' = 100000"),  # a million-module Swin
        ({"image_size": 1_000_000}, "'image_size' = 1000000"),  # terabytes of shift masks
        ({"image_size": 2048, "window_size": 64, "depths": [2, 2, 60, 2]}, "GiB of attention masks"),
        ({"num_classes": 10**9}, "'num_classes' = 1000000000"),
        ({"depths": list(range(40))}, "'depths' has 40 entries"),
    ],
)
def test_hostile_tagger_config_is_refused_by_seesr_tag(
    capsys, tmp_path, converted_tagger, changes, named, no_tensor_read
):
    folder = _copy(converted_tagger, tmp_path / "tagger")
    config = _edit_config(folder, **changes)
    message = _tag_error(capsys, folder)
    assert str(config) in message and named in message


def test_tagger_config_that_does_not_fit_the_checkpoint_allocates_nothing(
    capsys, tmp_path, converted_tagger, no_tensor_read
):
    """A sane-looking but larger config (Swin-L widths) is compared with the safetensors header first."""
    folder = _copy(converted_tagger, tmp_path / "tagger")
    _edit_config(folder, embed_dim=192, head_hidden_size=768)
    message = _tag_error(capsys, folder)
    assert str(folder / WEIGHTS) in message and "wrong shape" in message


def test_hostile_unet_config_is_refused(tmp_path, no_tensor_read):
    folder = _copy(TINY / "unet", tmp_path / "unet")
    config = _edit_config(folder, block_out_channels=[16, 16, 32, 10**9])
    with pytest.raises(WeightReadError) as error:
        load_seesr_unet(folder)
    assert str(config) in str(error.value) and "'block_out_channels' = 1000000000" in str(error.value)
    _edit_config(folder, block_out_channels=[32, 32, 64, 64])  # plausible, but not this checkpoint
    with pytest.raises(WeightReadError, match="wrong shape"):
        load_seesr_unet(folder)


# --------------------------------------------------------------------------------------- item 7: weight files
def test_int8_tensor_in_a_converted_tagger(capsys, tmp_path, converted_tagger):
    folder = _copy(converted_tagger, tmp_path / "tagger")
    state = load_file(folder / WEIGHTS)
    state["fc.weight"] = torch.zeros(state["fc.weight"].shape, dtype=torch.int8)
    save_file(state, folder / WEIGHTS)
    message = _tag_error(capsys, folder)
    assert str(folder / WEIGHTS) in message and "fc.weight (I8)" in message


def test_int8_tensor_in_a_unet(tmp_path):
    folder = _copy(TINY / "unet", tmp_path / "unet")
    state = load_file(folder / WEIGHTS)
    state["conv_in.weight"] = torch.zeros(state["conv_in.weight"].shape, dtype=torch.int8)
    save_file(state, folder / WEIGHTS)
    with pytest.raises(WeightReadError) as error:
        load_seesr_unet(folder)
    assert "\n" not in str(error.value)
    assert str(folder / WEIGHTS) in str(error.value) and "conv_in.weight (I8)" in str(error.value)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_payload_bin_in_a_bundles_tagger_folder(capsys, tmp_path, converted_tagger):
    bundle = tmp_path / "bundle"
    folder = _copy(converted_tagger, bundle / "tagger")
    marker = tmp_path / "payload-ran"
    torch.save({"fc.weight": _Payload(marker)}, folder / "diffusion_pytorch_model.bin")
    (folder / WEIGHTS).unlink()
    message = _tag_error(capsys, bundle)
    assert str(folder / "diffusion_pytorch_model.bin") in message and "refused" in message
    assert not marker.exists()


def test_truncated_tagger_weights_say_delete_and_download(tmp_path, converted_tagger):
    folder = _copy(converted_tagger, tmp_path / "tagger")
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightReadError) as error:
        load_pretrained_tagger(folder)
    assert str(folder / WEIGHTS) in str(error.value) and "delete it and download again" in str(error.value)


def test_the_converted_tagger_still_loads(converted_tagger):
    tagger = load_tagger(converted_tagger)
    assert not tagger.training and not any(t.is_meta for t in (*tagger.parameters(), *tagger.buffers()))


@pytest.mark.parametrize(
    ("component", "file", "changes", "named"),
    [
        ("VAE", "vae/config.json", {"block_out_channels": [16, 16, 32, 10**9]}, "'block_out_channels' = 1000000000"),
        ("text encoder", "text_encoder/config.json", {"num_hidden_layers": 10**6}, "'num_hidden_layers' = 1000000"),
        ("scheduler", "scheduler/scheduler_config.json", {"num_train_timesteps": 10**10}, "10000000000"),
    ],
)
def test_hostile_stock_component_config_is_refused(tmp_path, component, file, changes, named):
    from seesr.weights.loading import ModelLoadError, load_components

    root = tmp_path / "release"
    shutil.copytree(TINY, root, ignore=shutil.ignore_patterns("pipeline_case*", "*_io.*", "*.png"))
    config = root / file
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))
    with pytest.raises(ModelLoadError) as error:
        load_components(root, load_tagger=False)
    message = str(error.value)
    assert "\n" not in message and f"cannot load the {component}" in message
    assert str(config) in message and named in message


@pytest.mark.parametrize("file", ["vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"])
def test_truncated_stock_component_says_delete_and_download(tmp_path, file):
    from seesr.weights.loading import ModelLoadError, load_components

    root = tmp_path / "release"
    shutil.copytree(TINY, root, ignore=shutil.ignore_patterns("pipeline_case*", "*_io.*", "*.png"))
    data = (root / file).read_bytes()
    (root / file).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as error:
        load_components(root, load_tagger=False)
    message = str(error.value)
    assert "\n" not in message and str(root / file) in message and "delete it and download again" in message


def test_hostile_official_ram_config_is_refused(capsys, tmp_path, no_tensor_read):
    ram = _copy(RAM, tmp_path / "ram")
    q2l = ram / "configs" / "q2l_config.json"
    q2l.write_text(json.dumps({**json.loads(q2l.read_text()), "num_hidden_layers": 10**6}))
    message = _tag_error(capsys, tmp_path)
    assert str(ram / "configs") in message and "'head_num_layers' = 1000000" in message
