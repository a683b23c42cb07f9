"""DAPETagger against the official implementation's outputs (fixture C: tiny RAM/DAPE; fixture D: pipeline input)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from seesr.tagger.convert import CheckpointError, convert_ram_state_dict
from seesr.tagger.dape import DAPETagger, decode_tags, preprocess_images
from seesr.tagger.tags import NUM_CLASSES, load_class_thresholds
from seesr.weights.reader import WeightReadError, read_state_dict
from seesr.weights.tagger import convert_ram_to_safetensors, load_pretrained_tagger, load_ram_tagger
from tests.conftest import TINY
from tests.tagger.conftest import CONFIGS, DAPE_PTH, RAM_DIR, RAM_PTH

SOURCE_PNG = RAM_DIR / "ram_input_source.png"


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    assert actual.shape == expected.shape
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"max abs diff {diff} > {atol}"


# ------------------------------------------------------------------------------------------------ preprocessing
def test_preprocess_pil_mode_reproduces_fixture_c_input(ram_io):
    pixels = preprocess_images(Image.open(SOURCE_PNG), mode="pil")
    _close(pixels, ram_io["ram_input"], 1e-5)


@pytest.mark.parametrize("case", ["pipeline_case1", "pipeline_case2"])
def test_preprocess_pipeline_mode_reproduces_fixture_d_input(case):
    tensors = load_file(TINY / f"{case}.safetensors")
    lr = tensors["lr_image_uint8"].numpy()  # (h, w, 3) uint8, the original LR
    expected = tensors["ram_input"]
    _close(preprocess_images(Image.fromarray(lr)), expected, 1e-5)
    _close(preprocess_images(lr), expected, 1e-5)
    as_float = torch.from_numpy(lr).permute(2, 0, 1).float()[None] / 255  # (1,3,h,w) in [0,1]
    _close(preprocess_images(as_float), expected, 1e-5)


def test_pipeline_mode_is_tensor_bilinear_without_antialias():
    image = Image.open(SOURCE_PNG)  # 512 -> 384 is a down-scale, where antialiasing would change the result
    raw = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float()[None] / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    no_aa = (F.interpolate(raw, size=(384, 384), mode="bilinear", align_corners=False, antialias=False) - mean) / std
    aa = (F.interpolate(raw, size=(384, 384), mode="bilinear", align_corners=False, antialias=True) - mean) / std
    ours = preprocess_images(image)
    assert torch.allclose(ours, no_aa, atol=1e-6)
    assert (ours - aa).abs().max() > 1e-2


def test_preprocess_rejects_bad_inputs():
    with pytest.raises(ValueError, match="pil"):
        preprocess_images(torch.rand(1, 3, 8, 8), mode="pil")
    with pytest.raises(ValueError, match="B, 3, H, W"):
        preprocess_images(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="mode"):
        preprocess_images(torch.rand(1, 3, 8, 8), mode="bicubic")
    with pytest.raises(ValueError, match="no images"):
        preprocess_images([])


# --------------------------------------------------------------------------------------------- fixture C
@pytest.mark.parametrize("variant", ["dape", "base_ram"])
def test_fixture_c_outputs_and_tags(variant, dape_tagger, base_tagger, ram_io, ram_io_json):
    tagger, prefix, key = (
        (dape_tagger, "", "dape") if variant == "dape" else (base_tagger, "base_ram.", "base_ram_without_lora")
    )
    with torch.no_grad():
        out = tagger(ram_io["ram_input"])
    _close(out.visual_features, ram_io[f"{prefix}visual_encoder_out"], 1e-5)
    _close(out.image_embeds, ram_io[f"{prefix}image_embeds"], 1e-5)
    _close(out.logits, ram_io[f"{prefix}logits"], 1e-4)
    _close(out.probs, ram_io[f"{prefix}probs"], 1e-4)
    targets = (out.probs > ram_io["class_threshold"]).float()
    assert torch.equal(targets, ram_io[f"{prefix}targets"])

    english = tagger.decode_tags(out.probs)[0]
    chinese = tagger.decode_tags(out.probs, lang="zh")[0]
    assert english.prompt == ram_io_json[key]["tags"]
    assert chinese.prompt == ram_io_json[key]["tags_chinese"]
    assert len(english.tags) == ram_io_json[key]["num_tags"]
    assert [t.index for t in english.tags] == torch.nonzero(ram_io[f"{prefix}targets"][0]).flatten().tolist()
    assert [t.index for t in english.tags] == [t.index for t in chinese.tags]


def test_lora_changes_the_model(dape_tagger, base_tagger):
    dape_qkv = dape_tagger.visual_encoder.layers[0].blocks[0].attn.qkv.weight
    base_qkv = base_tagger.visual_encoder.layers[0].blocks[0].attn.qkv.weight
    dim = dape_qkv.shape[1]
    assert not torch.equal(dape_qkv[:dim], base_qkv[:dim])  # q adapted
    assert torch.equal(dape_qkv[dim : 2 * dim], base_qkv[dim : 2 * dim])  # k untouched
    assert not torch.equal(dape_qkv[2 * dim :], base_qkv[2 * dim :])  # v adapted


# --------------------------------------------------------------------------------------------- fixture D
@pytest.mark.parametrize("case", ["pipeline_case1", "pipeline_case2"])
def test_fixture_d_tags_and_embeds_from_the_lr_image(case, dape_tagger):
    tensors = load_file(TINY / f"{case}.safetensors")
    info = json.loads((TINY / f"{case}.json").read_text(encoding="utf-8"))
    lr = Image.fromarray(tensors["lr_image_uint8"].numpy())
    results, embeds = dape_tagger.tag_and_embed(lr)
    _close(embeds, tensors["ram_image_embeds"], 1e-5)
    assert results[0].prompt == info["ram_tags"]
    with torch.no_grad():
        out = dape_tagger(tensors["ram_input"])
    _close(out.logits, tensors["ram_logits"], 1e-4)
    _close(out.probs, tensors["ram_probs"], 1e-4)


def test_swin_runs_once_per_call(dape_tagger):
    calls = []
    handle = dape_tagger.visual_encoder.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        results, embeds = dape_tagger.tag_and_embed(
            [Image.open(SOURCE_PNG), Image.open(TINY / "pipeline_case1_lr.png")]
        )
    finally:
        handle.remove()
    assert len(calls) == 1
    assert len(results) == 2 and embeds.shape == (2, 145, dape_tagger.config.image_embed_dim)


def test_batch_equals_single_images(dape_tagger):
    images = [Image.open(SOURCE_PNG), Image.open(TINY / "pipeline_case2_lr.png")]
    batch_results, batch_embeds = dape_tagger.tag_and_embed(images)
    for index, image in enumerate(images):
        results, embeds = dape_tagger.tag_and_embed(image)
        _close(batch_embeds[index : index + 1], embeds, 1e-5)
        assert batch_results[index].prompt == results[0].prompt


# ----------------------------------------------------------------------------------------------- decoding
def test_decode_tags_thresholds():
    probs = torch.zeros(2, NUM_CLASSES)
    thresholds = torch.tensor(load_class_thresholds())
    probs[0, [10, 3]] = thresholds[[10, 3]] + 0.01
    probs[0, 7] = thresholds[7]  # equal is not above: strict comparison
    results = decode_tags(probs)
    assert [t.index for t in results[0].tags] == [3, 10]  # ascending index order
    assert results[0].prompt == ", ".join(t.name for t in results[0].tags)
    assert results[1].tags == [] and results[1].prompt == ""
    everything = decode_tags(probs[0], threshold=0.0)[0]
    assert [t.index for t in everything.tags] == [3, 7, 10]
    assert decode_tags(probs, threshold=1.0)[0].tags == []
    with pytest.raises(ValueError):
        decode_tags(probs, threshold=1.5)
    with pytest.raises(ValueError, match="shape"):
        decode_tags(torch.zeros(1, 10))


def test_threshold_override_in_tag(dape_tagger):
    image = Image.open(SOURCE_PNG)
    default = dape_tagger.tag(image)[0]
    loose = dape_tagger.tag(image, threshold=0.05)[0]
    assert set(t.index for t in default.tags) < set(t.index for t in loose.tags)
    assert all(t.probability > 0.05 for t in loose.tags)


# ------------------------------------------------------------------------------------------ save / convert
def test_save_pretrained_roundtrip_and_convert(tmp_path, dape_tagger, ram_io):
    out_dir = convert_ram_to_safetensors(RAM_PTH, DAPE_PTH, tmp_path / "tagger", config_dir=CONFIGS)
    assert (out_dir / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out_dir.glob("*.bin")) and not list(out_dir.glob("*.pth"))
    config = json.loads((out_dir / "config.json").read_text())
    assert config["_class_name"] == "DAPETagger" and config["image_embed_dim"] == 512 and config["embed_dim"] == 16
    reference = dape_tagger.state_dict()
    for loaded in (DAPETagger.from_pretrained(out_dir), load_pretrained_tagger(out_dir)):
        assert not any(b.is_meta for b in loaded.buffers())
        assert not loaded.training
        # The conversion changes no weight (no merge or cast done differently): the state dicts are bit-identical.
        state = loaded.state_dict()
        assert state.keys() == reference.keys()
        assert all(state[k].dtype == reference[k].dtype and torch.equal(state[k], reference[k]) for k in reference)
        # The outputs may not be: the loaded tensors sit at 8-byte offsets of the safetensors buffer, the reference's
        # in fresh 64-byte aligned memory, and CPU kernels take another path for differently aligned memory (copied
        # into fresh memory, the outputs are identical). Measured (2-core x86): logits max 6.0e-8 in 0.02 % of the
        # values, image embeddings 0.
        with torch.no_grad():
            expected, actual = dape_tagger(ram_io["ram_input"]), loaded(ram_io["ram_input"])
        torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(actual.image_embeds, expected.image_embeds, rtol=0, atol=1e-5)


def test_dtype_argument():
    tagger = load_ram_tagger(RAM_PTH, DAPE_PTH, config_dir=CONFIGS, dtype=torch.bfloat16)
    assert {p.dtype for p in tagger.parameters()} == {torch.bfloat16}
    results, embeds = tagger.tag_and_embed(Image.open(SOURCE_PNG))
    assert embeds.dtype == torch.bfloat16 and isinstance(results[0].prompt, str)


# ------------------------------------------------------------------------------------------ strict loading
def test_missing_and_unexpected_keys_are_errors(tmp_path):
    state = read_state_dict(RAM_PTH, entry="model")
    broken = dict(state)
    del broken["fc.weight"]
    torch.save({"model": broken}, tmp_path / "missing.pth")
    with pytest.raises(WeightReadError, match=r"missing key\(s\): fc.weight"):
        load_ram_tagger(tmp_path / "missing.pth", config_dir=CONFIGS)
    extra = dict(state)
    extra["something_else.weight"] = torch.zeros(1)
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_ram_tagger(tmp_path / "extra.pth", config_dir=CONFIGS)


def test_wrong_configuration_is_a_clear_error():
    with pytest.raises(WeightReadError, match="wrong shape"):
        load_ram_tagger(RAM_PTH, DAPE_PTH)  # tiny weights, full-size default config


def test_unsafe_or_missing_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_ram_tagger(tmp_path / "nope.pth", config_dir=CONFIGS)

    torch.save({"model": {"x": argparse.Namespace(a=1)}}, tmp_path / "pickle.pth")  # refused by weights_only
    with pytest.raises(WeightReadError, match="refused: the file holds pickled Python objects"):
        load_ram_tagger(tmp_path / "pickle.pth", config_dir=CONFIGS)


def test_lora_rules_on_state_dicts():
    """Tied tag-encoder LoRA merges into the tagging head; text-decoder LoRA is ignored; unknown targets fail."""
    state = read_state_dict(RAM_PTH, entry="model")
    lora = read_state_dict(DAPE_PTH)
    base = convert_ram_state_dict(state, None).state_dict
    reference = convert_ram_state_dict(state, lora).state_dict

    generator = torch.Generator().manual_seed(0)
    changed = dict(lora)
    tied = "tag_encoder.encoder.layer.0.crossattention.self.query"
    changed[f"{tied}.lora_B"] = torch.randn(changed[f"{tied}.lora_B"].shape, generator=generator)
    changed["text_decoder.bert.encoder.layer.0.attention.self.query.lora_B"] = torch.ones(32, 8)
    changed["tag_encoder.encoder.layer.1.attention.self.key.lora_B"] = torch.ones(32, 8)
    result = convert_ram_state_dict(state, changed)
    key = "tagging_head.encoder.layer.0.crossattention.self.query.weight"
    tied_delta = changed[f"{tied}.lora_B"] @ changed[f"{tied}.lora_A"] / 8
    head = "tagging_head.encoder.layer.0.crossattention.self.query"
    head_delta = lora[f"{head}.lora_B"] @ lora[f"{head}.lora_A"] / 8
    assert torch.allclose(result.state_dict[key], base[key] + tied_delta + head_delta, atol=1e-5)
    for name, value in reference.items():
        if name != key:
            assert torch.equal(result.state_dict[name], value), name
    assert f"{tied}" in result.merged_lora
    assert "text_decoder.bert.encoder.layer.0.attention.self.query.lora_B" in result.ignored

    bad = dict(lora)
    bad["image_proj.lora_A"], bad["image_proj.lora_B"] = torch.zeros(8, 128), torch.zeros(512, 8)
    with pytest.raises(CheckpointError, match="unexpected LoRA target"):
        convert_ram_state_dict(state, bad)
    half = {k: v for k, v in lora.items() if not k.endswith("layer.0.crossattention.self.key.lora_B")}
    with pytest.raises(CheckpointError, match="only one of"):
        convert_ram_state_dict(state, half)
