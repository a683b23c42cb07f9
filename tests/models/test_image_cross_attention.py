"""The RCA wrapper on tiny stock models: structure, calling convention, processors, checkpointing, dtypes."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from seesr.models.image_cross_attention import (
    IMAGE_KEY,
    MissingImageEmbeddingsError,
    TextImageTransformer2D,
    add_image_cross_attention,
    freeze_all_but_image_cross_attention,
    get_image_cross_attention_dim,
    image_cross_attention_parameters,
)
from tests.models._helpers import tiny_stock_unet

IMAGE_DIM = 12


def _inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=generator),
        "text": torch.randn(batch, 5, 8, generator=generator),
        "image": torch.randn(batch, 7, IMAGE_DIM, generator=generator),
    }


def _call(unet, inputs, image=None, **kwargs):
    image = inputs["image"] if image is None else image
    return unet(
        inputs["sample"],
        10,
        encoder_hidden_states=inputs["text"],
        cross_attention_kwargs={IMAGE_KEY: image},
        return_dict=False,
        **kwargs,
    )[0]


@pytest.fixture
def unet():
    return add_image_cross_attention(tiny_stock_unet(), IMAGE_DIM)


def test_every_cross_attention_transformer_is_wrapped_with_a_twin(unet):
    wrappers = {name: m for name, m in unet.named_modules() if isinstance(m, TextImageTransformer2D)}
    # tiny topology: 1 down block x1 layer, mid block x1, 1 up block x2 layers
    assert sorted(wrappers) == [
        "down_blocks.0.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
    ]
    for wrapper in wrappers.values():
        text, image = wrapper.text_transformer.config, wrapper.image_transformer.config
        for field in (
            "num_attention_heads",
            "attention_head_dim",
            "in_channels",
            "num_layers",
            "norm_num_groups",
            "use_linear_projection",
            "upcast_attention",
            "only_cross_attention",
        ):
            assert image[field] == text[field], field
        assert image.cross_attention_dim == IMAGE_DIM and text.cross_attention_dim == 8
        attn2 = wrapper.image_transformer.transformer_blocks[0].attn2
        assert attn2.to_k.in_features == IMAGE_DIM
    assert get_image_cross_attention_dim(unet) == IMAGE_DIM
    with pytest.raises(ValueError, match="already has image cross-attention"):
        add_image_cross_attention(unet, IMAGE_DIM)


def test_hyper_parameters_follow_each_text_transformer():
    unet = add_image_cross_attention(
        tiny_stock_unet(upcast_attention=True, only_cross_attention=True, use_linear_projection=False), 16
    )
    wrapper = unet.down_blocks[0].attentions[0]
    assert wrapper.image_transformer.config.upcast_attention is True
    assert wrapper.image_transformer.config.only_cross_attention is True
    assert wrapper.image_transformer.config.use_linear_projection is False
    assert wrapper.image_transformer.transformer_blocks[0].attn1.upcast_attention is True
    # heads come from each block's text transformer (2 heads in block 0, 4 in block 1), not from the UNet config
    assert unet.down_blocks[0].attentions[0].image_transformer.config.num_attention_heads == 2
    assert unet.mid_block.attentions[0].image_transformer.config.num_attention_heads == 4


def test_image_embeddings_change_the_output_and_are_required(unet):
    inputs = _inputs()
    with torch.no_grad():
        out = _call(unet, inputs)
        assert out.shape == inputs["sample"].shape
        assert torch.equal(out, _call(unet, inputs))
        assert (out - _call(unet, inputs, image=inputs["image"] + 1)).abs().max() > 1e-4
        with pytest.raises(MissingImageEmbeddingsError, match=IMAGE_KEY):
            unet(inputs["sample"], 10, encoder_hidden_states=inputs["text"])
        with pytest.raises(MissingImageEmbeddingsError):
            unet(inputs["sample"], 10, encoder_hidden_states=inputs["text"], cross_attention_kwargs={"scale": 1.0})
        with pytest.raises(ValueError, match="batch size 1"):
            _call(unet, inputs, image=inputs["image"][:1])
        with pytest.raises(ValueError, match=rf"\(batch, tokens, {IMAGE_DIM}\)"):
            _call(unet, inputs, image=torch.zeros(2, 7, IMAGE_DIM + 1))


def test_wrapper_matches_text_then_image_transformer():
    unet = add_image_cross_attention(tiny_stock_unet(), IMAGE_DIM)
    wrapper = unet.mid_block.attentions[0]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 4, 4, generator=generator)
    text = torch.randn(2, 5, 8, generator=generator)
    image = torch.randn(2, 7, IMAGE_DIM, generator=generator)
    with torch.no_grad():
        expected = wrapper.image_transformer(wrapper.text_transformer(x, text).sample, image).sample
        actual = wrapper(x, text, cross_attention_kwargs={IMAGE_KEY: image}).sample
        swapped = wrapper.text_transformer(wrapper.image_transformer(x, image).sample, text).sample
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert (actual - swapped).abs().max() > 1e-4


def test_attention_processors_reach_the_rca_layers(unet):
    processors = unet.attn_processors
    image_keys = [k for k in processors if ".image_transformer." in k]
    text_keys = [k for k in processors if ".text_transformer." in k]
    assert "down_blocks.0.attentions.0.image_transformer.transformer_blocks.0.attn1.processor" in processors
    assert len(image_keys) == len(text_keys) == 8  # 4 wrappers x (attn1, attn2)
    assert all(isinstance(p, AttnProcessor2_0) for p in processors.values())
    inputs = _inputs()
    with torch.no_grad():
        sdpa = _call(unet, inputs)
        unet.set_attn_processor(AttnProcessor())
        assert all(isinstance(p, AttnProcessor) for p in unet.attn_processors.values())
        classic = _call(unet, inputs)
    torch.testing.assert_close(classic, sdpa, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_and_rca_only_training(unet):
    unet.train()
    unet.enable_gradient_checkpointing()
    assert all(
        m.image_transformer.gradient_checkpointing
        for _, m in unet.named_modules()
        if isinstance(m, TextImageTransformer2D)
    )
    trainable = freeze_all_but_image_cross_attention(unet)
    assert trainable == image_cross_attention_parameters(unet)
    assert {id(p) for p in unet.parameters() if p.requires_grad} == {id(p) for p in trainable}
    out = _call(unet, _inputs())
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in unet.parameters() if not p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_casting_reaches_the_rca_layers(unet, dtype):
    unet.to(dtype)
    assert {p.dtype for p in image_cross_attention_parameters(unet)} == {dtype}
    if dtype is torch.bfloat16:  # bf16 kernels exist on every CPU; fp16 conv may not
        inputs = {k: v.to(dtype) for k, v in _inputs().items()}
        with torch.no_grad():
            assert _call(unet, inputs).dtype == dtype


def test_controlnet_is_wrapped_too():
    controlnet = ControlNetModel.from_unet(tiny_stock_unet(), conditioning_embedding_out_channels=(4, 4, 8, 8))
    add_image_cross_attention(controlnet, IMAGE_DIM)
    assert get_image_cross_attention_dim(controlnet) == IMAGE_DIM
    inputs = _inputs()
    with torch.no_grad():
        down, mid = controlnet(
            inputs["sample"],
            10,
            encoder_hidden_states=inputs["text"],
            controlnet_cond=torch.rand(2, 3, 64, 64),
            conditioning_scale=1.0,
            cross_attention_kwargs={IMAGE_KEY: inputs["image"]},
            return_dict=False,
        )
    assert len(down) == 4 and mid.shape == (2, 16, 4, 4)
    with pytest.raises(MissingImageEmbeddingsError):
        controlnet(
            inputs["sample"], 10, encoder_hidden_states=inputs["text"], controlnet_cond=torch.rand(2, 3, 64, 64)
        )


def test_models_without_cross_attention_are_rejected():
    unet = tiny_stock_unet(
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type=None
    )
    with pytest.raises(ValueError, match="no cross-attention transformer"):
        add_image_cross_attention(unet, IMAGE_DIM)
    assert get_image_cross_attention_dim(unet) is None
    with pytest.raises(ValueError, match="no image cross-attention"):
        freeze_all_but_image_cross_attention(unet)
    with pytest.raises(TypeError, match="Transformer2DModel"):
        TextImageTransformer2D(torch.nn.Linear(2, 2), IMAGE_DIM)  # type: ignore[arg-type]
