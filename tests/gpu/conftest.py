"""GPU tests: marked ``gpu`` and skipped (never passed) without CUDA. Run them with ``pytest -m gpu`` on a GPU
machine, or all at once with ``benchmarks/gpu_check.sh``.

They use the tiny reference bundle (tests/fixtures/reference/tiny), so they need no download and finish in
seconds each once CUDA is initialised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from seesr.cli.doctor import psnr  # noqa: F401 (re-exported for the GPU tests)
from tests.conftest import TINY

#: apply to every module of tests/gpu: ``pytestmark = GPU``
GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
    ),
]

#: fixture D case 2 (6 latent tiles of 12, CFG 5.5, 4 steps), as in tests/speed/test_fast_pipeline.py
CASE2 = {"prompt": "None", "num_inference_steps": 4, "process_size": 128, "latent_tile_size": 12, "seed": 123}


def case2_lr() -> Image.Image:
    return Image.open(TINY / "pipeline_case2_lr.png").convert("RGB")


def tiny_pipeline(device: str | torch.device = "cuda") -> Any:
    """The tiny bundle as a fresh pipeline (fp32) on ``device``; each test gets its own (the fast path casts)."""
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline

    pipe = SeeSRPipeline.from_pretrained(TINY, device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def upscale(pipe: Any, image: Image.Image | None = None, **overrides: Any) -> np.ndarray:
    """One call with the case-2 settings; the output as a uint8 array."""
    result = pipe(image if image is not None else case2_lr(), **{**CASE2, **overrides})
    torch.cuda.synchronize()
    return np.asarray(result.images[0])


@contextlib.contextmanager
def exact_fp32_flags() -> Iterator[None]:
    """TF32 off for matmuls and convolutions (the exact path's numerics); the previous switches come back after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class CallCounter:
    """Counts the calls of one method (the original still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str):
        self.count = 0
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


@pytest.fixture(autouse=True)
def _fresh_cuda_state():
    """Every GPU test starts with an empty cache and leaves the memory limit and backend switches as it found them."""
    if not torch.cuda.is_available():
        yield
        return
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.cuda.empty_cache()
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags
    torch.cuda.empty_cache()
