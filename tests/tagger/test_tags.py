"""Tag vocabulary, thresholds and the tag-string format (package data vs the official files)."""

from __future__ import annotations

import pytest
import torch

from seesr.tagger.tags import (
    NUM_CLASSES,
    Tag,
    TagResult,
    format_tags,
    load_class_thresholds,
    load_tag_list,
    tag_index,
)
from tests.conftest import REFERENCE


def test_tag_lists_match_the_official_files():
    for lang, name in (("en", "ram_tag_list.txt"), ("zh", "ram_tag_list_chinese.txt")):
        names = load_tag_list(lang)
        official = (REFERENCE / "ram_data" / name).read_text(encoding="utf-8").splitlines()
        assert len(names) == NUM_CLASSES == len(official)
        assert list(names) == official
    assert load_tag_list("en")[4] == "monastery"
    assert load_tag_list("zh")[0] == "三维CG渲染 "  # trailing space kept: the official strings contain it


def test_thresholds_equal_the_fixture_class_threshold(ram_io):
    thresholds = torch.tensor(load_class_thresholds(), dtype=torch.float32)
    assert thresholds.shape == (NUM_CLASSES,)
    assert torch.equal(thresholds, ram_io["class_threshold"])
    assert float(thresholds.min()) == pytest.approx(0.45) and float(thresholds.max()) == pytest.approx(1.0)


def test_unknown_language_is_an_error():
    with pytest.raises(ValueError, match="unknown tag language"):
        load_tag_list("fr")


def test_tag_index_and_format():
    assert tag_index("monastery") == 4
    assert tag_index("  monastery ") == 4
    with pytest.raises(KeyError):
        tag_index("not a tag at all")
    assert format_tags(["a", "b c"]) == "a, b c"
    assert format_tags([]) == ""
    result = TagResult(tags=[Tag("a", 0.9, 3)], prompt="a")
    assert result.names == ["a"]
    assert result.to_dict() == {"prompt": "a", "tags": [{"name": "a", "probability": 0.9, "index": 3}]}
