"""Prompt assembly and the official PIL resize chain (REFERENCE §1.4.1, fixture D)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from seesr.pipeline.preprocess import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    ProcessingSizeError,
    build_prompt,
    check_processing_size,
    edit_tags,
    peak_memory_estimate,
    prepare_control_image,
    process_size_for,
    split_tags,
)
from tests.conftest import TINY
from tests.pipeline.helpers import case_lr, case_settings


def test_prompt_is_byte_for_byte_official():
    assert build_prompt(["a", "b"]) == "a, b, ,clean, high-resolution, 8k"
    assert build_prompt([]) == ", ,clean, high-resolution, 8k"
    assert build_prompt(["cat"], "None", "x") == "cat, None,x"
    for case in (1, 2):
        settings = case_settings(case)
        tags = settings["ram_tags"].split(", ") if "ram_tags" in settings else None
        if tags is None:
            continue
        prompt = build_prompt(tags, settings["settings"]["prompt"], settings["settings"]["added_prompt"])
        assert prompt == settings["prompt"]


def test_edit_tags_keeps_order_and_is_case_insensitive():
    tags = ["app icon", "car logo", "gargoyle"]
    assert edit_tags(tags, extra_tags=["Sky", "gargoyle"], remove_tags=[" CAR LOGO "]) == [
        "app icon",
        "gargoyle",
        "Sky",
    ]
    assert split_tags("a, b ,, c") == ["a", "b", "c"]
    assert split_tags(["a", " "]) == ["a"]


@pytest.mark.parametrize("case", [1, 2])
def test_control_image_matches_fixture(case):
    settings = case_settings(case)["settings"]
    control = prepare_control_image(case_lr(case), settings["upscale"], settings["process_size"])
    expected = load_file(str(TINY / f"pipeline_case{case}.safetensors"))["control_image_uint8"].numpy()
    assert np.array_equal(np.asarray(control), expected)
    assert process_size_for(*case_lr(case).size, settings["upscale"], settings["process_size"]) == control.size


def test_size_rules():
    # small input: short side brought to process_size // upscale (truncating), then x4, floor to /8
    assert process_size_for(48, 40, 4, 256) == (304, 256)
    # large input: never reduced
    assert process_size_for(300, 200, 4, 512) == (1200, 800)
    assert process_size_for(33, 130, 4, 128) == (128, 520)
    with pytest.raises(ValueError):
        prepare_control_image(case_lr(1), 0, 512)


def test_processing_size_guard_returns_the_output_size():
    assert check_processing_size(300, 200, scale=4, process_size=512, max_output_pixels=None) == (1200, 800)
    # the default limit: 8000 x 8000 output pixels (a 4x upscale of a 2000 x 2000 photo)
    assert check_processing_size(2000, 2000, scale=4, process_size=512, max_output_pixels=DEFAULT_MAX_OUTPUT_PIXELS)
    with pytest.raises(ProcessingSizeError, match="--max-output-pixels"):
        check_processing_size(2001, 2000, scale=4, process_size=512, max_output_pixels=DEFAULT_MAX_OUTPUT_PIXELS)


def test_processing_size_guard_sees_the_enlargement():
    # issue 13 item 2: a 0.3 Mpx strip would be enlarged to a 512 x 17,066,664 working image
    assert process_size_for(3, 100000, 4, 512) == (512, 17066664)
    with pytest.raises(ProcessingSizeError, match=r"aspect ratio over 64:1"):
        check_processing_size(3, 100000, scale=4, process_size=512, max_output_pixels=None)
    # within the aspect limit but enlarged past the pixel limit: the message names the working size and both flags
    with pytest.raises(ProcessingSizeError, match=r"processed at 512x32000.*--max-output-pixels.*--process-size"):
        check_processing_size(8, 500, scale=4, process_size=512, max_output_pixels=10_000_000)
    # a 7900 x 7900 input passes the 64 Mpx input limit but would give a 31600 x 31600 output
    with pytest.raises(ProcessingSizeError, match=r"31600x31600 output.*exceeds the limit of 64000000"):
        check_processing_size(7900, 7900, scale=4, process_size=512, max_output_pixels=DEFAULT_MAX_OUTPUT_PIXELS)
    assert issubclass(ProcessingSizeError, ValueError)


def test_processing_size_guard_refuses_more_than_the_memory_available():
    # 512 x 512 working pixels x (6 x 128 channels x 4 bytes + 250) = 0.87 GB with SD 2's VAE in fp32
    needed = peak_memory_estimate(128, 128, scale=4, process_size=512)
    assert needed == 512 * 512 * (6 * 128 * 4 + 250)
    assert peak_memory_estimate(128, 128, scale=4, process_size=512, bytes_per_value=2) < needed
    kwargs = {"scale": 4, "process_size": 512, "max_output_pixels": None}
    assert check_processing_size(128, 128, available_memory=needed, **kwargs) == (512, 512)
    with pytest.raises(ProcessingSizeError, match=r"needs about 0\.9 GB of memory .* 0\.5 GB available"):
        check_processing_size(128, 128, available_memory=500_000_000, **kwargs)
