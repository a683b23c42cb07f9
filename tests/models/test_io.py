"""Loading official SeeSR folders (fixture B parity), saving in both layouts, and strict-load errors."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from seesr.models.convert import official_to_seesr_keys
from seesr.models.image_cross_attention import IMAGE_KEY, TextImageTransformer2D, get_image_cross_attention_dim
from seesr.weights.unet import (
    OFFICIAL_FLAG,
    SEESR_CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_seesr_controlnet,
    load_seesr_unet,
    load_stock_unet,
    save_seesr_model,
)
from tests.conftest import TINY
from tests.models._helpers import assert_matches_fixture_b, run_fixture_b, tiny_stock_unet

OFFICIAL_UNET = TINY / "unet"
OFFICIAL_CONTROLNET = TINY / "controlnet"


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype, key
        assert torch.equal(state_a[key], state_b[key]), key


def _copy_folder(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


# --- fixture B: official folders reproduce the official outputs ------------------------------------------------


def test_official_folders_reproduce_fixture_b(seesr_unet, seesr_controlnet, fixture_b_io):
    assert isinstance(seesr_unet, UNet2DConditionModel) and isinstance(seesr_controlnet, ControlNetModel)
    assert get_image_cross_attention_dim(seesr_unet) == 512
    assert get_image_cross_attention_dim(seesr_controlnet) == 512
    assert sum(1 for m in seesr_unet.modules() if isinstance(m, TextImageTransformer2D)) == 16
    assert sum(1 for m in seesr_controlnet.modules() if isinstance(m, TextImageTransformer2D)) == 7
    assert not seesr_unet.training and not seesr_controlnet.training
    assert_matches_fixture_b(seesr_unet, seesr_controlnet, fixture_b_io)


def test_fixture_b_fails_when_two_rca_layers_are_swapped(seesr_unet, seesr_controlnet, fixture_b_io):
    controlnet = copy.deepcopy(seesr_controlnet)
    block = controlnet.down_blocks[0]
    first, second = block.attentions[0], block.attentions[1]
    first.image_transformer, second.image_transformer = second.image_transformer, first.image_transformer
    with pytest.raises(AssertionError, match="controlnet_down"):
        assert_matches_fixture_b(seesr_unet, controlnet, fixture_b_io)


class _Skip(nn.Module):
    """Stands in for an RCA transformer and returns its input unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,)


def test_fixture_b_fails_when_one_rca_layer_is_skipped(seesr_unet, seesr_controlnet, fixture_b_io):
    unet = copy.deepcopy(seesr_unet)
    unet.up_blocks[3].attentions[2].image_transformer = _Skip()
    with pytest.raises(AssertionError, match="unet_out"):
        assert_matches_fixture_b(unet, seesr_controlnet, fixture_b_io)
    # Only the UNet changed: the ControlNet residuals still match, the UNet outputs do not.
    outputs = run_fixture_b(unet, seesr_controlnet, fixture_b_io)
    torch.testing.assert_close(outputs["t_scalar.controlnet_mid"], fixture_b_io["t_scalar.controlnet_mid"])
    assert (outputs["t_scalar.unet_out"] - fixture_b_io["t_scalar.unet_out"]).abs().max() > 1e-3


def test_missing_image_embeddings_is_a_clear_error(seesr_unet, fixture_b_io):
    with pytest.raises(ValueError, match=IMAGE_KEY):
        seesr_unet(fixture_b_io["sample"], 1, encoder_hidden_states=fixture_b_io["encoder_hidden_states"])


# --- round trips ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_seesr_layout_round_trip(seesr_unet, seesr_controlnet, tmp_path, safe_serialization):
    for model, loader in ((seesr_unet, load_seesr_unet), (seesr_controlnet, load_seesr_controlnet)):
        folder = save_seesr_model(model, tmp_path / type(model).__name__, safe_serialization=safe_serialization)
        assert json.loads((folder / SEESR_CONFIG_NAME).read_text()) == {"image_cross_attention_dim": 512}
        config = json.loads((folder / "config.json").read_text())
        assert OFFICIAL_FLAG not in config and config["_class_name"] == type(model).__name__
        weights = folder / (WEIGHTS_NAME if safe_serialization else "diffusion_pytorch_model.bin")
        assert weights.is_file()
        if safe_serialization:
            assert any(".image_transformer." in key for key in load_file(weights))
        reloaded = loader(folder)
        _assert_same_weights(model, reloaded)
        public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
        assert public(reloaded.config) == public(model.config)


def test_official_layout_round_trip_matches_official_files(seesr_unet, seesr_controlnet, tmp_path):
    for model, loader, official in (
        (seesr_unet, load_seesr_unet, OFFICIAL_UNET),
        (seesr_controlnet, load_seesr_controlnet, OFFICIAL_CONTROLNET),
    ):
        folder = save_seesr_model(model, tmp_path / official.name, layout="official")
        assert not (folder / SEESR_CONFIG_NAME).exists()
        # Same tensors under the same names as the official file, and the flag the official loader needs.
        ours, theirs = load_file(folder / WEIGHTS_NAME), load_file(official / WEIGHTS_NAME)
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
        config = json.loads((folder / "config.json").read_text())
        official_config = json.loads((official / "config.json").read_text())
        assert config[OFFICIAL_FLAG] is True
        for key, value in official_config.items():
            if not key.startswith("_"):
                assert config[key] == value, key
        _assert_same_weights(model, loader(folder))


def test_resaving_in_another_layout_leaves_no_stale_files(seesr_unet, tmp_path):
    folder = save_seesr_model(seesr_unet, tmp_path / "unet", safe_serialization=False)
    save_seesr_model(seesr_unet, folder, layout="official")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", WEIGHTS_NAME]
    _assert_same_weights(seesr_unet, load_seesr_unet(folder))


def test_load_dtype_and_bin_and_sharded_official_folders(seesr_unet, tmp_path):
    state_dict = load_file(OFFICIAL_UNET / WEIGHTS_NAME)
    # .bin read with weights_only=True
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    shutil.copy(OFFICIAL_UNET / "config.json", bin_folder)
    torch.save(state_dict, bin_folder / "diffusion_pytorch_model.bin")
    _assert_same_weights(seesr_unet, load_seesr_unet(bin_folder))
    # two shards + index json
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(OFFICIAL_UNET / "config.json", sharded)
    keys = list(state_dict)
    shards = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
        "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state_dict[k] for k in shard_keys}, sharded / name)
        weight_map.update(dict.fromkeys(shard_keys, name))
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _assert_same_weights(seesr_unet, load_seesr_unet(sharded))
    # dtype applies to every tensor
    half = load_seesr_unet(OFFICIAL_UNET, dtype=torch.float16)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert torch.equal(
        half.up_blocks[1].attentions[0].image_transformer.proj_out.weight,
        state_dict["up_blocks.1.image_attentions.0.proj_out.weight"].half(),
    )


# --- strict-load errors -----------------------------------------------------------------------------------------


def _official_copy_with(tmp_path: Path, edit) -> Path:
    folder = _copy_folder(OFFICIAL_UNET, tmp_path / "unet")
    state_dict = load_file(folder / WEIGHTS_NAME)
    edit(state_dict)
    save_file(state_dict, folder / WEIGHTS_NAME)
    return folder


def test_missing_rca_tensor_is_listed(tmp_path):
    key = "mid_block.image_attentions.0.transformer_blocks.0.attn2.to_k.weight"
    folder = _official_copy_with(tmp_path, lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): mid_block\.attentions\.0\.image_transformer\."):
        load_seesr_unet(folder)


def test_unexpected_and_misshaped_tensors_are_listed(tmp_path):
    def edit(sd):
        sd["down_blocks.0.image_attentions.2.proj_in.weight"] = torch.zeros(16, 16)
        sd["conv_out.bias"] = torch.zeros(5)

    folder = _official_copy_with(tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        load_seesr_unet(folder)
    message = str(info.value)
    assert "1 unexpected key(s): down_blocks.0.attentions.2.image_transformer.proj_in.weight" in message
    assert "conv_out.bias (5,) vs model (4,)" in message


def test_stock_folder_needs_allow_missing_rca(tmp_path):
    stock = tiny_stock_unet(seed=3)
    stock.save_pretrained(tmp_path / "stock")
    with pytest.raises(CheckpointError, match="allow_missing_rca"):
        load_seesr_unet(tmp_path / "stock")
    unet = load_seesr_unet(tmp_path / "stock", allow_missing_rca=True)
    assert get_image_cross_attention_dim(unet) == 512
    assert not any(p.is_meta for p in unet.parameters())
    stock_state = stock.state_dict()
    ours = unet.state_dict()
    for key, value in official_to_seesr_keys(stock_state).items():
        assert torch.equal(ours[key], value), key
    rca = {k: v for k, v in ours.items() if ".image_transformer." in k}
    assert rca and all(torch.isfinite(v).all() for v in rca.values())
    assert rca["down_blocks.0.attentions.0.image_transformer.transformer_blocks.0.attn2.to_k.weight"].shape == (8, 512)
    # An incomplete stock checkpoint still fails: only RCA keys may be missing.
    state_dict = load_file(tmp_path / "stock" / WEIGHTS_NAME)
    del state_dict["conv_in.weight"]
    save_file(state_dict, tmp_path / "stock" / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): conv_in.weight"):
        load_seesr_unet(tmp_path / "stock", allow_missing_rca=True)


def test_user_mistakes_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="load it with load_seesr_controlnet"):
        load_seesr_unet(OFFICIAL_CONTROLNET)
    with pytest.raises(CheckpointError, match="load it with load_seesr_unet"):
        load_seesr_controlnet(OFFICIAL_UNET)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_seesr_unet(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"did you mean .*unet"):
        load_seesr_unet(TINY)
    with pytest.raises(CheckpointError, match="is a file"):
        load_seesr_unet(OFFICIAL_UNET / WEIGHTS_NAME)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(OFFICIAL_UNET / "config.json", empty)
    with pytest.raises(CheckpointError, match="no weights"):
        load_seesr_unet(empty)
    (empty / WEIGHTS_NAME).write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated.*delete it and download again"):
        load_seesr_unet(empty)
    with pytest.raises(CheckpointError, match="width 512, not the requested 256"):
        load_seesr_unet(OFFICIAL_UNET, image_cross_attention_dim=256)


def test_save_refuses_models_without_rca(tmp_path):
    with pytest.raises(ValueError, match="no image cross-attention"):
        save_seesr_model(tiny_stock_unet(), tmp_path / "x")
    with pytest.raises(ValueError, match="layout"):
        save_seesr_model(tiny_stock_unet(), tmp_path / "x", layout="diffusers")  # type: ignore[arg-type]


def test_stock_unet_from_stock_official_and_seesr_folders(tmp_path, seesr_unet):
    """The stage-2 start: a stock UNet through the reader; a SeeSR folder (either layout) gives its SD-2 weights."""
    stock = tiny_stock_unet(seed=5)
    stock.save_pretrained(tmp_path / "stock")
    loaded = load_stock_unet(tmp_path / "stock")
    assert get_image_cross_attention_dim(loaded) is None and not loaded.training
    reference = stock.state_dict()
    assert loaded.state_dict().keys() == reference.keys()
    assert all(torch.equal(loaded.state_dict()[k], reference[k]) for k in reference)

    official = load_file(OFFICIAL_UNET / WEIGHTS_NAME)
    expected = {k: v for k, v in official.items() if ".image_attentions." not in k}
    for folder in (OFFICIAL_UNET, save_seesr_model(seesr_unet, tmp_path / "ours")):
        state = load_stock_unet(folder).state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected), folder
    state = dict(official)
    del state["conv_in.weight"]
    (tmp_path / "broken").mkdir()
    shutil.copy(OFFICIAL_UNET / "config.json", tmp_path / "broken")
    save_file(state, tmp_path / "broken" / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): conv_in.weight"):
        load_stock_unet(tmp_path / "broken")
