"""Prompt assembly and the official PIL resize chain (REFERENCE §1.4.1, fixture D)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from seesr.pipeline.preprocess import build_prompt, edit_tags, prepare_control_image, process_size_for, split_tags
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
