"""Shared helpers for the model tests: the fixture-B comparison and tiny stock models built in code."""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from seesr.models.image_cross_attention import IMAGE_KEY

# README "Suggested tolerances", fixture B.
ATOL = 1e-5
RTOL = 1e-5

#: (prefix in the io file, timestep key, conditioning scale) - README §B.
FIXTURE_B_CASES = (("t_scalar", "timestep_scalar", 1.0), ("t_batch_scale075", "timestep_batch", 0.75))


@torch.no_grad()
def run_fixture_b(
    unet: UNet2DConditionModel, controlnet: ControlNetModel, io: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Every output of fixture B, computed with the pipeline's calling convention, keyed like the io file."""
    outputs: dict[str, torch.Tensor] = {}
    text = io["encoder_hidden_states"]
    attention_kwargs = {IMAGE_KEY: io["image_encoder_hidden_states"]}
    for prefix, timestep_key, scale in FIXTURE_B_CASES:
        down, mid = controlnet(
            io["sample"],
            io[timestep_key],
            encoder_hidden_states=text,
            controlnet_cond=io["controlnet_cond"],
            conditioning_scale=scale,
            cross_attention_kwargs=attention_kwargs,
            return_dict=False,
        )
        for index, residual in enumerate(down):
            outputs[f"{prefix}.controlnet_down_{index:02d}"] = residual
        outputs[f"{prefix}.controlnet_mid"] = mid
        outputs[f"{prefix}.unet_out"] = unet(
            io["sample"],
            io[timestep_key],
            encoder_hidden_states=text,
            cross_attention_kwargs=attention_kwargs,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
    outputs["t_scalar.unet_out_no_control"] = unet(
        io["sample"],
        io["timestep_scalar"],
        encoder_hidden_states=text,
        cross_attention_kwargs=attention_kwargs,
        return_dict=False,
    )[0]
    return outputs


def assert_matches_fixture_b(
    unet: UNet2DConditionModel, controlnet: ControlNetModel, io: dict[str, torch.Tensor]
) -> None:
    """Raise AssertionError unless every reference tensor of fixture B is reproduced within atol/rtol 1e-5."""
    outputs = run_fixture_b(unet, controlnet, io)
    expected_keys = {key for key in io if key.startswith(("t_scalar.", "t_batch_scale075."))}
    assert set(outputs) == expected_keys
    for key in sorted(expected_keys):
        torch.testing.assert_close(outputs[key], io[key], atol=ATOL, rtol=RTOL, msg=lambda m, key=key: f"{key}: {m}")


def tiny_stock_unet(seed: int = 0, **overrides: object) -> UNet2DConditionModel:
    """A ~100K-parameter stock SD-2-style UNet (linear projection, list head counts), random weights."""
    config: dict[str, object] = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "attention_head_dim": (2, 4),
        "cross_attention_dim": 8,
        "norm_num_groups": 4,
        "use_linear_projection": True,
    }
    config.update(overrides)
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()
