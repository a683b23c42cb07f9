"""Tiny models shared by the speed tests (loaded once per session from the tiny reference bundle)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import TINY


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Any]:
    """fp32 tiny UNet + ControlNet (fixture B) and the DDPM scheduler of the tiny bundle."""
    from diffusers import DDPMScheduler

    from seesr.weights.unet import load_seesr_controlnet, load_seesr_unet

    return {
        "unet": load_seesr_unet(TINY / "unet"),
        "controlnet": load_seesr_controlnet(TINY / "controlnet"),
        "scheduler": DDPMScheduler.from_pretrained(TINY / "scheduler"),
    }


@pytest.fixture(scope="session")
def tiny_pipeline_parts(tiny_models: dict[str, Any]) -> dict[str, Any]:
    """Every component of a tiny :class:`SeeSRPipeline` (fp32, CPU), built from the tiny bundle."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from seesr.weights.tagger import load_ram_tagger

    return {
        "vae": AutoencoderKL.from_pretrained(TINY / "vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(TINY / "text_encoder", dtype=torch.float32).eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(TINY / "tokenizer"),
        "unet": tiny_models["unet"],
        "controlnet": tiny_models["controlnet"],
        "scheduler": tiny_models["scheduler"],
        "tagger": load_ram_tagger(
            TINY / "ram" / "ram_swin_large_14m.pth", TINY / "ram" / "DAPE.pth", config_dir=TINY / "ram" / "configs"
        ),
    }
