"""Building SeeSR's UNet + ControlNet from a stock UNet (training start)."""

from __future__ import annotations

import pytest
import torch

from seesr.models.build import build_seesr_unet_and_controlnet
from seesr.models.image_cross_attention import (
    IMAGE_KEY,
    get_image_cross_attention_dim,
    image_cross_attention_parameters,
)
from seesr.weights.unet import load_seesr_controlnet, load_seesr_unet, save_seesr_model
from tests.models._helpers import tiny_stock_unet

IMAGE_DIM = 12


def _build(**kwargs):
    base = tiny_stock_unet(seed=5)
    stock_state = {k: v.clone() for k, v in base.state_dict().items()}
    unet, controlnet = build_seesr_unet_and_controlnet(
        base, IMAGE_DIM, conditioning_embedding_out_channels=(4, 4, 8, 8), **kwargs
    )
    return stock_state, base, unet, controlnet


def test_controlnet_encoder_including_rca_is_a_clone_of_the_unet():
    stock_state, base, unet, controlnet = _build()
    assert unet is base  # converted in place
    assert get_image_cross_attention_dim(unet) == get_image_cross_attention_dim(controlnet) == IMAGE_DIM
    for part in ("down_blocks", "mid_block"):
        unet_state = getattr(unet, part).state_dict()
        controlnet_state = getattr(controlnet, part).state_dict()
        assert list(unet_state) == list(controlnet_state)
        assert any(".image_transformer." in key for key in unet_state)
        for key, value in unet_state.items():
            assert torch.equal(controlnet_state[key], value), key
    for part in ("conv_in", "time_embedding"):
        for key, value in getattr(unet, part).state_dict().items():
            assert torch.equal(getattr(controlnet, part).state_dict()[key], value)
    # The stock weights are kept, only renamed under text_transformer.
    ours = unet.state_dict()
    assert torch.equal(
        ours["down_blocks.0.attentions.0.text_transformer.proj_in.weight"],
        stock_state["down_blocks.0.attentions.0.proj_in.weight"],
    )
    assert len(ours) > len(stock_state)
    # Fresh RCA: default (non-zero) init, different per layer; ControlNet heads zero-initialised.
    first = unet.down_blocks[0].attentions[0].image_transformer.proj_in.weight
    other = unet.up_blocks[1].attentions[0].image_transformer.proj_in.weight
    assert first.abs().sum() > 0 and not torch.equal(first, other[: first.shape[0], : first.shape[1]])
    assert controlnet.controlnet_cond_embedding.conv_out.weight.abs().sum() == 0
    assert all(block.weight.abs().sum() == 0 for block in controlnet.controlnet_down_blocks)
    assert list(controlnet.config.conditioning_embedding_out_channels) == [4, 4, 8, 8]


def test_built_models_run_together_and_round_trip_in_the_official_layout(tmp_path):
    _, _, unet, controlnet = _build()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    kwargs = {
        "encoder_hidden_states": torch.randn(2, 5, 8, generator=generator),
        "cross_attention_kwargs": {IMAGE_KEY: torch.randn(2, 7, IMAGE_DIM, generator=generator)},
    }
    with torch.no_grad():
        down, mid = controlnet(
            sample,
            3,
            controlnet_cond=torch.rand(2, 3, 64, 64, generator=generator),
            conditioning_scale=1.0,
            return_dict=False,
            **kwargs,
        )
        out = unet(
            sample,
            3,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
            **kwargs,
        )[0]
    assert out.shape == sample.shape and all(torch.count_nonzero(r) == 0 for r in down)  # zero convs at start
    unet_again = load_seesr_unet(save_seesr_model(unet, tmp_path / "unet", layout="official"))
    controlnet_again = load_seesr_controlnet(save_seesr_model(controlnet, tmp_path / "controlnet", layout="official"))
    for before, after in ((unet, unet_again), (controlnet, controlnet_again)):
        assert get_image_cross_attention_dim(after) == IMAGE_DIM
        for key, value in before.state_dict().items():
            assert torch.equal(after.state_dict()[key], value), key


def test_only_rca_trainable_when_asked():
    _, _, unet, controlnet = _build(unet_trainable="rca")
    rca = {id(p) for p in image_cross_attention_parameters(unet)}
    trainable = {id(p) for p in unet.parameters() if p.requires_grad}
    assert trainable == rca and rca
    names = [name for name, p in unet.named_parameters() if p.requires_grad]
    assert all(".image_transformer." in name for name in names)
    assert all(p.requires_grad for p in controlnet.parameters())

    _, _, unet, _ = _build()
    assert all(p.requires_grad for p in unet.parameters())
    _, _, unet, controlnet = _build(unet_trainable="none")
    assert not any(p.requires_grad for p in unet.parameters())
    assert all(p.requires_grad for p in controlnet.parameters())


def test_builder_rejects_wrong_inputs():
    _, _, unet, _ = _build()
    with pytest.raises(ValueError, match="already has image cross-attention"):
        build_seesr_unet_and_controlnet(unet)
    with pytest.raises(ValueError, match="unet_trainable"):
        build_seesr_unet_and_controlnet(tiny_stock_unet(), unet_trainable="some")
