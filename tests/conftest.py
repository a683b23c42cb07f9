"""Shared fixtures. Every test runs offline, on CPU, with the tiny reference bundle shipped in tests/fixtures/."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"
TINY = REFERENCE / "tiny"
BLOCKS = REFERENCE / "blocks"
MANIFESTS = REFERENCE / "manifests"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    """The tiny release-layout bundle (SD2-base parts + unet/ + controlnet/ + ram/), random weights."""
    return TINY


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Point every model cache at an empty folder so no test can read or write the user's caches."""
    cache = tmp_path_factory.getbasetemp() / "caches"
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SEESR_HOME", str(cache / "seesr"))
    if "TORCH_HOME" not in os.environ:
        monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))


@pytest.fixture(autouse=True, scope="session")
def _threads():
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
