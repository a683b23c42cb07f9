"""Shared helpers for the pipeline, weights and CLI tests (tiny reference bundle, fixture D cases)."""

from __future__ import annotations

import functools
import json

import numpy as np
from PIL import Image

from tests.conftest import TINY


@functools.cache
def tiny_pipeline():
    """The tiny release bundle loaded once per test session (CPU, fp32, with the DAPE tagger). Do not mutate."""
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline

    pipe = SeeSRPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def case_settings(case: int) -> dict:
    return json.loads((TINY / f"pipeline_case{case}.json").read_text())


def case_lr(case: int) -> Image.Image:
    return Image.open(TINY / f"pipeline_case{case}_lr.png").convert("RGB")


def assert_png_close(
    actual: np.ndarray | Image.Image,
    expected: np.ndarray | Image.Image,
    max_diff: int = 4,
    min_identical: float = 0.99,
) -> None:
    """The README criterion for uint8 images: max abs diff <= 4 and >= 99 % identical values."""
    a = np.asarray(actual).astype(np.int16)
    b = np.asarray(expected).astype(np.int16)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b)
    assert diff.max() <= max_diff, f"max abs diff {diff.max()}"
    assert (diff == 0).mean() >= min_identical, f"only {(diff == 0).mean():.4%} identical"


def small_lr(seed: int = 0, size: tuple[int, int] = (20, 16)) -> Image.Image:
    """A small smooth test image (W x H) so tiny-model runs take milliseconds."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size[1] // 4 + 1, size[0] // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.BICUBIC)
