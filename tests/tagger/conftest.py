"""Tiny DAPE/RAM taggers loaded once from fixture C (official-format files, random weights)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY

RAM_DIR = TINY / "ram"
RAM_PTH = RAM_DIR / "ram_swin_large_14m.pth"
DAPE_PTH = RAM_DIR / "DAPE.pth"
CONFIGS = RAM_DIR / "configs"


@pytest.fixture(scope="session")
def ram_io() -> dict[str, torch.Tensor]:
    return load_file(TINY / "ram_io.safetensors")


@pytest.fixture(scope="session")
def ram_io_json() -> dict:
    return json.loads((TINY / "ram_io.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def dape_tagger():
    from seesr.weights.tagger import load_ram_tagger

    return load_ram_tagger(RAM_PTH, DAPE_PTH, config_dir=CONFIGS)


@pytest.fixture(scope="session")
def base_tagger():
    from seesr.weights.tagger import load_ram_tagger

    return load_ram_tagger(RAM_PTH, None, config_dir=CONFIGS)
