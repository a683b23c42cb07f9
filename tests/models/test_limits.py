"""Config size checks run before a model is built from a config file (issue 13 item 6)."""

from __future__ import annotations

import json
import math

import pytest
from diffusers import UNet2DConditionModel

from seesr.models.limits import UNET_CONFIG_LIMITS, check_unet_config, empty_seesr_model
from seesr.utils.limits import ConfigLimitError, check_config_limits
from tests.conftest import TINY


def test_limits_name_the_file_and_field():
    limits = {"width": 100, "depths": 8}
    check_config_limits({"width": 64, "depths": [2, 2, 6], "name": "x", "flag": True}, limits, source="c.json")
    for config, named in [
        ({"width": 101}, "'width' = 101"),
        ({"width": -1}, "'width' = -1"),
        ({"width": math.nan}, "'width' = nan"),
        ({"depths": [2, [3, 9]]}, "'depths' = 9"),  # nested lists (per-block settings) are searched too
        ({"other": list(range(17))}, "'other' has 17 entries"),
    ]:
        with pytest.raises(ConfigLimitError) as error:
            check_config_limits(config, limits, source="c.json")
        assert str(error.value).startswith("c.json: ") and named in str(error.value)


def test_the_official_and_tiny_unet_configs_pass_and_build_on_meta():
    config = json.loads((TINY / "unet" / "config.json").read_text())
    check_unet_config(config, 512, source="tiny")
    sd2 = {**config, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024}
    check_unet_config(sd2, 512, source="sd2")
    model = empty_seesr_model(UNet2DConditionModel, config, 512)
    assert all(tensor.is_meta for tensor in model.state_dict().values())
    with pytest.raises(ConfigLimitError, match="image_cross_attention_dim"):
        check_unet_config(config, 10**6, source="tiny")
    assert UNET_CONFIG_LIMITS["block_out_channels"] >= 1280


def test_the_official_tagger_config_passes():
    from seesr.tagger.dape import DAPETagger, check_tagger_config

    check_tagger_config(dict(DAPETagger.extract_init_dict({})[0]), source="official defaults")
    check_tagger_config({"image_size": 384, "window_size": 12, "depths": [2, 2, 18, 2]}, source="official")
