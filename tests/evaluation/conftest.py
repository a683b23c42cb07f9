"""Fixtures for the evaluation tests: real photos from scikit-image and random metric weights in a temporary
TORCH_HOME, placed where torchvision, pyiqa and CLIP look for them (ECOSYSTEM.md's offline trick).

The random backbones keep the real architectures and key names. Tensors whose values no metric reads (the
classifier heads of AlexNet/VGG16) are stored as stride-0 views of a single number, which torch.save writes as one
element, so the fake files stay small.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def _random_like(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    if len(shape) <= 1:
        return torch.zeros(shape) if len(shape) == 1 else torch.zeros(())
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)


def _constant(shape: torch.Size, value: float = 0.0) -> torch.Tensor:
    return torch.full((1,) * max(len(shape), 1), value).expand(shape) if len(shape) else torch.tensor(value)


def _fake_state_dict(model_factory, random_prefixes: tuple[str, ...], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = model_factory()
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(random_prefixes):
            state[key] = _random_like(tensor.shape, generator).half()  # half the file size; loaders cast to fp32
        else:
            state[key] = _constant(tensor.shape)
    return state


@pytest.fixture(scope="session")
def fake_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding random AlexNet/VGG16 backbones and random LPIPS/DISTS heads (pyiqa file names)."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    pyiqa_dir = home / "hub" / "pyiqa"
    checkpoints.mkdir(parents=True)
    pyiqa_dir.mkdir(parents=True)
    torch.save(
        _fake_state_dict(torchvision.models.alexnet, ("features.",), seed=1), checkpoints / "alexnet-owt-7be5be79.pth"
    )
    torch.save(_fake_state_dict(torchvision.models.vgg16, ("features.",), seed=2), checkpoints / "vgg16-397923af.pth")
    generator = torch.Generator().manual_seed(3)
    lpips_head = {
        f"lin{i}.model.1.weight": torch.rand((1, channels, 1, 1), generator=generator)
        for i, channels in enumerate((64, 192, 384, 256, 256))
    }
    torch.save(lpips_head, pyiqa_dir / "LPIPS_v0.1_alex-df73285e.pth")
    channels = 3 + 64 + 128 + 256 + 512 + 512
    dists = {
        "alpha": 0.1 + 0.01 * torch.randn((1, channels, 1, 1), generator=generator),
        "beta": 0.1 + 0.01 * torch.randn((1, channels, 1, 1), generator=generator),
    }
    torch.save(dists, pyiqa_dir / "DISTS_weights-f5e65c96.pth")
    return home


@pytest.fixture
def torch_home(fake_torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(fake_torch_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return fake_torch_home


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "empty_torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _noisy(image: np.ndarray, seed: int, amplitude: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image.astype(np.int16) + rng.integers(-amplitude, amplitude + 1, image.shape), 0, 255).astype(
        np.uint8
    )


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-image (uint8, HWC)."""
    from skimage import data

    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}


@pytest.fixture
def small_pair_dirs(tmp_path: Path, photos) -> tuple[Path, Path]:
    """pred/ and gt/ folders with three 96x96 crops of real photos (RealSR-style names), predictions noisy."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for index, (name, image) in enumerate(photos.items()):
        crop = np.ascontiguousarray(image[100:196, 100:196])
        Image.fromarray(crop).save(gt / f"{name}_HR.png")
        Image.fromarray(_noisy(crop, index)).save(pred / f"{name}_LR4.png")
    return pred, gt


@pytest.fixture(scope="session")
def noisy():
    return _noisy
