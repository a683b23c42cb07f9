"""Session fixtures for the model tests: the fixture-B folders loaded once and their io tensors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY


@pytest.fixture(scope="session")
def fixture_b_io() -> dict[str, torch.Tensor]:
    return load_file(TINY / "unet_controlnet_io.safetensors")


@pytest.fixture(scope="session")
def seesr_unet():
    """The official tiny SeeSR UNet folder loaded as a user would (shared: deep-copy before mutating)."""
    from seesr.weights.unet import load_seesr_unet

    return load_seesr_unet(TINY / "unet")


@pytest.fixture(scope="session")
def seesr_controlnet():
    """The official tiny SeeSR ControlNet folder loaded as a user would (shared: deep-copy before mutating)."""
    from seesr.weights.unet import load_seesr_controlnet

    return load_seesr_controlnet(TINY / "controlnet")
