"""Key renaming official <-> seesr, and fixture A: the full-size official key sets map one-to-one onto ours."""

from __future__ import annotations

import json

import pytest
from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel

from seesr.models.convert import official_to_seesr_keys, seesr_to_official_keys
from seesr.models.image_cross_attention import DEFAULT_IMAGE_CROSS_ATTENTION_DIM, add_image_cross_attention
from seesr.weights.unet import OFFICIAL_FLAG
from tests.conftest import MANIFESTS

PAIRS = {
    "down_blocks.0.attentions.1.proj_in.weight": "down_blocks.0.attentions.1.text_transformer.proj_in.weight",
    "down_blocks.0.image_attentions.1.proj_in.weight": "down_blocks.0.attentions.1.image_transformer.proj_in.weight",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight": "mid_block.attentions.0.text_transformer.transformer_blocks.0.attn2.to_k.weight",
    "mid_block.image_attentions.0.transformer_blocks.0.attn2.to_k.weight": "mid_block.attentions.0.image_transformer.transformer_blocks.0.attn2.to_k.weight",
    "up_blocks.3.image_attentions.2.norm.weight": "up_blocks.3.attentions.2.image_transformer.norm.weight",
    "up_blocks.1.attentions.12.norm.bias": "up_blocks.1.attentions.12.text_transformer.norm.bias",
    # untouched keys
    "conv_in.weight": "conv_in.weight",
    "down_blocks.0.resnets.1.conv1.weight": "down_blocks.0.resnets.1.conv1.weight",
    "controlnet_down_blocks.3.weight": "controlnet_down_blocks.3.weight",
    "controlnet_cond_embedding.blocks.0.weight": "controlnet_cond_embedding.blocks.0.weight",
}


def test_rename_both_directions_and_idempotent():
    official = {key: index for index, key in enumerate(PAIRS)}
    ours = official_to_seesr_keys(official)
    assert ours == {PAIRS[key]: index for key, index in official.items()}
    assert list(ours.values()) == list(official.values())  # order and values kept
    assert seesr_to_official_keys(ours) == official
    assert official_to_seesr_keys(ours) == ours
    assert seesr_to_official_keys(official) == official


def test_rename_rejects_collisions():
    with pytest.raises(ValueError, match="both map to"):
        official_to_seesr_keys(
            {"mid_block.attentions.0.norm.weight": 1, "mid_block.attentions.0.text_transformer.norm.weight": 2}
        )


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    return {key: tuple(shape) for key, shape in json.loads((MANIFESTS / f"{name}.json").read_text()).items()}


@pytest.mark.parametrize(
    ("model_class", "name", "rca_keys"),
    [(UNet2DConditionModel, "seesr_unet", 416), (ControlNetModel, "seesr_controlnet", 182)],
)
def test_fixture_a_full_size_key_sets_map_one_to_one(model_class, name, rca_keys):
    config = json.loads((MANIFESTS / f"{name}_config.json").read_text())
    assert config.pop(OFFICIAL_FLAG) is True
    with init_empty_weights():
        model = add_image_cross_attention(model_class.from_config(config), DEFAULT_IMAGE_CROSS_ATTENTION_DIM)
    ours = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    official = _manifest(name)

    converted = official_to_seesr_keys(official)
    assert len(converted) == len(official) == len(ours)
    assert converted == ours  # same keys, identical shapes
    assert seesr_to_official_keys(ours) == official
    assert sum(".image_transformer." in key for key in ours) == rca_keys
    if model_class is UNet2DConditionModel:
        assert sum(map(_numel, ours.values())) == 1_126_760_324
        assert ours["up_blocks.2.attentions.0.image_transformer.transformer_blocks.0.ff.net.2.weight"] == (640, 2560)
    else:
        assert sum(map(_numel, ours.values())) == 489_031_440
        assert ours["controlnet_cond_embedding.blocks.5.weight"] == (256, 96, 3, 3)


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total
