"""Stage-1 LoRA (peft): official targets, merge == LoRA forward, export round-trips through the official loader."""

from __future__ import annotations

import copy

import pytest
import torch

from seesr.tagger.dape import DAPETagger
from seesr.tagger.lora import SplitQKV, apply_dape_lora, export_dape_state_dict, merge_dape_lora
from seesr.weights.tagger import load_ram_tagger
from tests.tagger.conftest import CONFIGS, DAPE_PTH, RAM_PTH


def _randomise_lora(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))


@pytest.fixture()
def lora_model(base_tagger) -> DAPETagger:
    return apply_dape_lora(copy.deepcopy(base_tagger))


def test_targets_and_trainable_parameters(lora_model, base_tagger, pixels):
    attn = lora_model.visual_encoder.layers[0].blocks[0].attn
    assert isinstance(attn.qkv, SplitQKV)
    trainable = {name for name, p in lora_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    targets = {name.split(".lora_")[0] for name in trainable}
    swin = {t for t in targets if t.startswith("visual_encoder.")}
    head = targets - swin
    assert all(t.endswith(("qkv.q", "qkv.v")) for t in swin) and len(swin) == 2 * 8  # 8 tiny blocks, q and v
    assert head == {
        f"tagging_head.encoder.layer.{i}.crossattention.self.{p}" for i in range(2) for p in ("query", "key")
    }
    lora_a = attn.qkv.q.lora_A["default"].weight
    assert lora_a.shape == (8, attn.qkv.in_features) and attn.qkv.q.scaling["default"] == pytest.approx(1 / 8)
    # fresh LoRA (B = 0) leaves the model unchanged
    lora_model.eval()
    with torch.no_grad():
        assert torch.allclose(lora_model(pixels).logits, base_tagger(pixels).logits, atol=1e-5)


def test_gradients_reach_only_lora(lora_model):
    lora_model.train()
    out = lora_model(torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(2)))
    (out.image_embeds.square().mean() + out.logits.mean()).backward()
    with_grad = {name for name, p in lora_model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in name for name in with_grad)
    assert any("lora_A" in name and "qkv.v" in name for name in with_grad)


def test_merge_export_and_reload_agree(lora_model, base_tagger, pixels, tmp_path):
    _randomise_lora(lora_model)
    lora_model.eval()
    with torch.no_grad():
        with_lora = lora_model(pixels)
        assert (with_lora.logits - base_tagger(pixels).logits).abs().max() > 1e-3  # the LoRA does something

    exported = export_dape_state_dict(lora_model)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in exported.values())
    torch.save(exported, tmp_path / "DAPE.pth")
    reloaded = load_ram_tagger(RAM_PTH, tmp_path / "DAPE.pth", config_dir=CONFIGS)

    merged = merge_dape_lora(lora_model)
    assert isinstance(merged.visual_encoder.layers[0].blocks[0].attn.qkv, torch.nn.Linear)
    assert set(merged.state_dict()) == set(base_tagger.state_dict())
    assert not any("lora" in name for name, _ in merged.named_modules())
    with torch.no_grad():
        merged_out, reloaded_out = merged(pixels), reloaded(pixels)
    for out in (merged_out, reloaded_out):
        assert torch.allclose(out.image_embeds, with_lora.image_embeds, atol=1e-5)
        assert torch.allclose(out.logits, with_lora.logits, atol=1e-4)


def test_alpha_other_than_official_is_rescaled_on_export(base_tagger, pixels, tmp_path):
    model = apply_dape_lora(copy.deepcopy(base_tagger), alpha=4.0)
    _randomise_lora(model, seed=3)
    model.eval()
    torch.save(export_dape_state_dict(model), tmp_path / "DAPE.pth")
    reloaded = load_ram_tagger(RAM_PTH, tmp_path / "DAPE.pth", config_dir=CONFIGS)
    with torch.no_grad():
        assert torch.allclose(reloaded(pixels).logits, model(pixels).logits, atol=1e-4)


def test_full_layout_matches_the_tiny_official_file(lora_model):
    official = torch.load(DAPE_PTH, weights_only=True)
    exported = export_dape_state_dict(lora_model, full_layout=True, text_num_layers=2)
    assert list(exported) == list(official)
    assert all(exported[k].shape == official[k].shape for k in official)


def test_export_without_lora_is_an_error(base_tagger):
    with pytest.raises(ValueError, match="apply_dape_lora"):
        export_dape_state_dict(base_tagger)
