"""Turbo mode: RCA grafting, trailing DDPM timesteps, no CFG batch (tiny UNet as both turbo base and RCA source)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from seesr.models.image_cross_attention import iter_image_cross_attention
from seesr.models.turbo import TURBO_DEFAULTS
from seesr.pipeline.turbo import load_turbo_pipeline
from seesr.weights.turbo import TURBO_CATALOG, graft_rca, turbo_scheduler
from seesr.weights.unet import CheckpointError
from tests.conftest import TINY


def _perturbed(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A copy of ``unet`` with every weight shifted, so grafted tensors can be traced to their source."""
    other = copy.deepcopy(unet)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.25)
    return other


def _split(unet: UNet2DConditionModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = unet.state_dict()
    rca = {key: value for key, value in state.items() if ".image_transformer." in key}
    rest = {key: value for key, value in state.items() if ".image_transformer." not in key}
    return rca, rest


def _assert_same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_graft_from_folder_takes_turbo_weights_and_seesr_rca(tiny_models: dict[str, Any]) -> None:
    base = tiny_models["unet"]
    seesr = _perturbed(base)
    grafted = graft_rca(TINY, seesr)  # TINY has unet/: the "SD-turbo" folder
    assert grafted is not seesr and not grafted.training
    grafted_rca, grafted_rest = _split(grafted)
    seesr_rca, _ = _split(seesr)
    _, base_rest = _split(base)
    assert len(list(iter_image_cross_attention(base))) == 16
    assert len(grafted_rca) == 16 * 26  # 416 RCA tensors, as in the official UNet
    _assert_same(grafted_rca, seesr_rca)
    _assert_same(grafted_rest, base_rest)
    # the unet/ folder itself works too
    _assert_same(_split(graft_rca(TINY / "unet", seesr))[0], seesr_rca)


def test_graft_into_a_stock_model(tiny_models: dict[str, Any]) -> None:
    config = json.loads((TINY / "unet" / "config.json").read_text())
    config.pop("use_image_cross_attention")
    torch.manual_seed(0)
    stock = UNet2DConditionModel.from_config(config)
    stock_state = {key: value.clone() for key, value in stock.state_dict().items()}
    seesr = _perturbed(tiny_models["unet"])
    grafted = graft_rca(stock, seesr)
    rca, rest = _split(grafted)
    _assert_same(rca, _split(seesr)[0])
    from seesr.models.convert import official_to_seesr_keys

    _assert_same(rest, official_to_seesr_keys(stock_state))


def test_graft_errors(tiny_models: dict[str, Any], tmp_path: Path) -> None:
    config = json.loads((TINY / "unet" / "config.json").read_text())
    config.pop("use_image_cross_attention")
    stock = UNet2DConditionModel.from_config(config)
    with pytest.raises(ValueError, match="no image cross-attention"):
        graft_rca(TINY, stock)
    config["layers_per_block"] = 1
    other = UNet2DConditionModel.from_config(config)
    with pytest.raises(ValueError, match="different cross-attention layouts"):
        graft_rca(other, tiny_models["unet"])
    with pytest.raises(CheckpointError, match="SD-turbo"):
        graft_rca(tmp_path, tiny_models["unet"])


def test_turbo_scheduler_uses_trailing_timesteps(tmp_path: Path) -> None:
    scheduler = turbo_scheduler(TINY)  # SD-2's leading config file: spacing is forced to trailing
    scheduler.set_timesteps(2)
    assert scheduler.timesteps.tolist() == [999, 499]
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]
    assert turbo_scheduler().config.beta_schedule == "scaled_linear"
    with pytest.raises(CheckpointError):
        turbo_scheduler(tmp_path)


def test_catalog_and_defaults() -> None:
    assert TURBO_DEFAULTS == {"num_inference_steps": 2, "guidance_scale": 1.0, "latent_tile_overlap": 32}
    targets = {entry.target for entry in TURBO_CATALOG}
    assert "turbo/unet/diffusion_pytorch_model.safetensors" in targets
    assert all(entry.repo_id == "stabilityai/sd-turbo" for entry in TURBO_CATALOG)


def test_turbo_pipeline_runs_two_steps_without_cfg(tiny_pipeline_parts: dict[str, Any]) -> None:
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline

    base = SeeSRPipeline(**tiny_pipeline_parts)
    base.set_progress_bar_config(disable=True)
    turbo = load_turbo_pipeline(TINY, base)
    assert turbo.controlnet is base.controlnet and turbo.tagger is base.tagger
    assert turbo.unet is not base.unet
    turbo.set_progress_bar_config(disable=True)
    calls: list[tuple[int, int]] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((int(args[0].shape[0]), int(args[1])))

    handle = turbo.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        image = Image.fromarray(np.asarray(Image.open(TINY / "pipeline_case1_lr.png").convert("RGB"))[:16, :16])
        output = turbo(image, process_size=64, seed=3, **TURBO_DEFAULTS)
    finally:
        handle.remove()
    assert calls == [(1, 999), (1, 499)]  # batch 1: no CFG pair; trailing 2-step timesteps
    assert output.images[0].size == (64, 64)


def test_graft_from_a_stock_diffusers_folder(tiny_models: dict[str, Any], tmp_path: Path) -> None:
    """The real SD-turbo ``unet/`` has no RCA tensors: every other tensor is loaded strictly, RCA comes from SeeSR."""
    config = json.loads((TINY / "unet" / "config.json").read_text())
    config.pop("use_image_cross_attention")
    torch.manual_seed(1)
    stock = UNet2DConditionModel.from_config(config)
    stock.save_pretrained(tmp_path / "sd-turbo" / "unet")
    seesr = _perturbed(tiny_models["unet"])
    grafted = graft_rca(tmp_path / "sd-turbo", seesr, dtype=torch.float32, device="cpu")
    rca, rest = _split(grafted)
    _assert_same(rca, _split(seesr)[0])
    from seesr.models.convert import official_to_seesr_keys

    _assert_same(rest, official_to_seesr_keys(stock.state_dict()))
