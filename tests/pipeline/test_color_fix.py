"""Colour fixes against the official outputs (fixture E, blocks/colorfix.safetensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from seesr.pipeline.color_fix import (
    adain_color_fix,
    apply_color_fix,
    pil_to_tensor,
    tensor_to_pil_truncate,
    wavelet_color_fix,
    wavelet_decomposition,
)
from tests.conftest import BLOCKS


@pytest.fixture(scope="module")
def ref():
    return load_file(str(BLOCKS / "colorfix.safetensors"))


def test_inputs_are_to_tensor_of_the_pngs(ref):
    torch.testing.assert_close(
        pil_to_tensor(Image.open(BLOCKS / "colorfix_target.png")), ref["target"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        pil_to_tensor(Image.open(BLOCKS / "colorfix_source.png")), ref["source"], rtol=0, atol=0
    )


def test_adain_float(ref):
    torch.testing.assert_close(adain_color_fix(ref["target"], ref["source"]), ref["adain_float"], rtol=0, atol=1e-6)


def test_wavelet_float_and_decomposition(ref):
    high, low = wavelet_decomposition(ref["target"])
    torch.testing.assert_close(high, ref["wavelet_target_high"], rtol=0, atol=1e-6)
    torch.testing.assert_close(low, ref["wavelet_target_low"], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        wavelet_color_fix(ref["target"], ref["source"]), ref["wavelet_float"], rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("method", ["adain", "wavelet"])
def test_pil_level_matches_png(ref, method):
    target = Image.open(BLOCKS / "colorfix_target.png").convert("RGB")
    source = Image.open(BLOCKS / "colorfix_source.png").convert("RGB")
    out = np.asarray(apply_color_fix(target, source, method)).astype(int)
    expected = ref[f"{method}_uint8"].numpy().astype(int)
    assert np.abs(out - expected).max() <= 1
    assert np.array_equal(expected, np.asarray(Image.open(BLOCKS / f"colorfix_{method}.png").convert("RGB")))


def test_truncating_conversion():
    x = torch.tensor([0.0, 0.5, 0.999, 1.0]).reshape(1, 1, 1, 4).repeat(1, 3, 1, 1)
    out = np.asarray(tensor_to_pil_truncate(x))[0, :, 0]
    assert out.tolist() == [0, 127, 254, 255]  # 127.5 -> 127 and 254.7 -> 254: truncation, not rounding


def test_none_is_identity_and_unknown_rejected():
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    assert apply_color_fix(image, image, "none") is image
    with pytest.raises(ValueError, match="unknown colour fix"):
        apply_color_fix(image, image, "histogram")
