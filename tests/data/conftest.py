"""Small real photos (scikit-image's bundled samples) for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


@pytest.fixture(scope="session")
def hr_folder(tmp_path_factory) -> Path:
    """Three RGB photo crops of different sizes (one smaller than the 64 px GT size, to exercise the padding)."""
    folder = tmp_path_factory.mktemp("hr")
    photos = _photos()
    crops = {
        "astronaut": photos["astronaut"][100:196, 150:270],  # 96x120
        "coffee": photos["coffee"][120:200, 250:340],  # 80x90
        "chelsea": photos["chelsea"][60:116, 150:226],  # 56x76 (< 64 high: reflect-padded)
    }
    for name, array in crops.items():
        Image.fromarray(np.ascontiguousarray(array)).save(folder / f"{name}.png")
    return folder
