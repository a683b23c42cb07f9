"""Fixture A: the full-size official key manifests map completely onto DAPETagger (built on the meta device)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from accelerate import init_empty_weights

from seesr.tagger.convert import convert_ram_state_dict
from seesr.tagger.dape import DAPETagger
from seesr.weights.reader import check_tensors
from tests.conftest import MANIFESTS

TIED_LORA = re.compile(r"tag_encoder\.encoder\.layer\.[01]\.crossattention\.self\.(query|key)\.lora_[AB]")


def _meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    shapes = json.loads((MANIFESTS / name).read_text())
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def _expected_ignored(keys) -> set[str]:
    """The documented ignore rule, written independently of the implementation."""
    return {
        key
        for key in keys
        if (key.startswith(("tag_encoder.", "text_decoder.")) and not TIED_LORA.fullmatch(key))
        or "relative_position_index" in key
        or "attn_mask" in key
    }


@pytest.fixture(scope="module")
def full_size_model() -> DAPETagger:
    with init_empty_weights():
        return DAPETagger()  # official full-size defaults: Swin-L @ 384, q2l head 768 x 2 layers


def test_full_size_config_matches_the_manifest(full_size_model):
    assert full_size_model.config.image_embed_dim == 512
    assert full_size_model.config.num_classes == 4585
    state = full_size_model.state_dict()
    assert tuple(state["label_embed"].shape) == (4585, 512)
    assert tuple(state["image_proj.weight"].shape) == (512, 1536)


@pytest.mark.parametrize(
    ("base", "lora"),
    [
        ("ram_swin_large_14m.json", "dape.json"),  # base checkpoint + DAPE.pth
        ("ram_lora_model_state_dict.json", None),  # a whole RAMLora state dict (base + LoRA in one)
    ],
)
def test_manifest_maps_completely(full_size_model, base, lora):
    ram = _meta_state_dict(base)
    dape = _meta_state_dict(lora) if lora else None
    converted = convert_ram_state_dict(ram, dape, visual_encoder=full_size_model.visual_encoder)
    check_tensors(
        converted.state_dict, full_size_model.state_dict(), source="manifest"
    )  # every model key found, right shape, nothing extra
    all_keys = list(ram) + list(dape or {})
    assert set(converted.ignored) == _expected_ignored(all_keys)
    # tag encoder 317 + text decoder 324 + derived buffers 35, plus the 248 - 2*32 LoRA tensors not merged
    assert len(converted.ignored) == 317 + 324 + 35 + (248 - 2 * 32)
    # 24 Swin qkv + 4 tagging-head q/k + 4 tied tag-encoder q/k LoRA modules merged
    assert len(converted.merged_lora) == 32
    assert sum(name.startswith("visual_encoder.") for name in converted.merged_lora) == 24


def test_derived_buffers_are_exactly_the_documented_ones():
    notes = json.loads((MANIFESTS / "ram_swin_large_14m.notes.json").read_text())
    documented = set(notes["buffers (derived, deleted by load_checkpoint_swinlarge)"])
    ram = json.loads((MANIFESTS / "ram_swin_large_14m.json").read_text())
    ignored_visual = {k for k in _expected_ignored(ram) if k.startswith("visual_encoder.")}
    assert ignored_visual == documented and len(documented) == 35


def test_legacy_vision_multi_name(full_size_model):
    ram = {
        key.replace("tagging_head.", "vision_multi.", 1): v
        for key, v in _meta_state_dict("ram_swin_large_14m.json").items()
    }
    converted = convert_ram_state_dict(ram, None, visual_encoder=full_size_model.visual_encoder)
    check_tensors(converted.state_dict, full_size_model.state_dict(), source="manifest")


def test_full_size_lora_export_has_the_official_dape_layout():
    from seesr.tagger.lora import apply_dape_lora, export_dape_state_dict

    with init_empty_weights():
        model = apply_dape_lora(DAPETagger())
    official = json.loads((MANIFESTS / "dape.json").read_text())
    exported = export_dape_state_dict(model, full_layout=True)
    assert list(exported) == list(official)  # same keys, same order
    assert {k: list(v.shape) for k, v in exported.items()} == official
    trained = export_dape_state_dict(model)
    assert len(trained) == 56 and set(trained) <= set(official)
