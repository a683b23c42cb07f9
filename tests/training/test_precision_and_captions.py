"""Runs on a machine without a GPU (the shipped templates' mixed precision), the captions of on-the-fly data, and
quiet loading of the stage-2 base UNet."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from seesr.training.config import default_config_path, load_config
from tests.conftest import TINY
from tests.training.conftest import TINY_RAM, dape_overrides, seesr_overrides


@pytest.mark.parametrize(("stage", "precision"), [("seesr", None), ("dape", None), ("dape", "bf16")])
def test_template_precision_on_cpu_falls_back_to_fp32_with_one_warning(
    stage, precision, tmp_path, raw_base_model_dir, pairs_dir, caplog
):
    """The shipped templates (stage 2: fp16, stage 1: "no") and bf16 train on CPU: fp16/bf16 run in float32 with one
    warning naming the setting (stage 2 used to crash with "Input type (c10::Half) and bias type (float)")."""
    if torch.cuda.is_available():
        pytest.skip("the fallback is for machines without a GPU")
    output = tmp_path / "run"
    if stage == "seesr":
        from seesr.training.train_seesr import main

        overrides = seesr_overrides(raw_base_model_dir, pairs_dir, output, train__max_train_steps=1)
    else:
        from seesr.training.train_dape import main

        overrides = dape_overrides(pairs_dir, output, train__max_train_steps=1)
    overrides = [item for item in overrides if not item.startswith("train.mixed_precision=")]
    overrides += ["train.gradient_accumulation_steps=1"] + (
        [f"train.mixed_precision={precision}"] if precision else []
    )
    config = load_config(stage, default_config_path(stage), overrides)
    requested = config.train.mixed_precision
    assert requested == (precision or {"seesr": "fp16", "dape": "no"}[stage])
    with caplog.at_level(logging.WARNING):
        result = main(config)
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.losses[1]))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "mixed_precision" in r.getMessage()]
    assert len(warnings) == (0 if requested == "no" else 1), [r.getMessage() for r in warnings]
    if warnings:
        assert f"train.mixed_precision is {requested}" in warnings[0].getMessage()
    assert json.loads((output / "versions.json").read_text())["mixed_precision"] == "no"


def _plain_and_dape_taggers():
    from seesr.weights.tagger import load_ram_tagger

    plain = load_ram_tagger(TINY_RAM / "ram_swin_large_14m.pth", None, TINY_RAM / "configs")
    dape = load_ram_tagger(TINY_RAM / "ram_swin_large_14m.pth", TINY_RAM / "DAPE.pth", TINY_RAM / "configs")
    return plain.eval(), dape.eval()


def _same_weights(model, reference) -> bool:
    state, expected = model.state_dict(), reference.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k].float(), expected[k]) for k in expected)


def test_online_captions_come_from_plain_ram_in_fp32(tmp_path, raw_base_model_dir, pairs_dir, monkeypatch):
    """data.mode=online: the tagger that captions the HR images is plain RAM (no DAPE LoRA) in float32, as the
    official make_tags.py; model.caption_tagger=dape keeps the earlier behaviour (the run's DAPE tagger)."""
    from seesr.training import data as training_data
    from seesr.training.train_seesr import main

    seen = []
    original = training_data.fill_missing_tags

    def spy(tags, gt, tagger, threshold=None):
        seen.append(tagger)
        return original(tags, gt, tagger, threshold)

    monkeypatch.setattr(training_data, "fill_missing_tags", spy)
    plain, dape = _plain_and_dape_taggers()
    assert not _same_weights(dape, plain)  # the tiny DAPE.pth changes RAM: the check below can tell them apart
    for choice, expected in (("ram", plain), ("dape", dape)):
        seen.clear()
        overrides = seesr_overrides(
            raw_base_model_dir,
            pairs_dir / "gt",
            tmp_path / choice,
            data__mode="online",
            data__min_pixels=0,
            data__min_file_bytes=0,
            train__max_train_steps=1,
            model__caption_tagger=choice,
        )
        main(load_config("seesr", None, overrides))
        assert seen, "no caption was made"
        tagger = seen[0]
        assert all(p.dtype == torch.float32 for p in tagger.parameters())
        assert _same_weights(tagger, expected), choice


def test_caption_tagger_is_fp32_ram_under_mixed_precision():
    """Under fp16/bf16 the frozen DAPE tagger is stored in the AMP dtype; the captions still come from float32 RAM."""
    from seesr.training.train_seesr import _caption_tagger

    plain, dape = _plain_and_dape_taggers()
    config = load_config(
        "seesr",
        None,
        [
            "model.pretrained_model_name_or_path=sd2",
            f"model.ram_model_path={TINY_RAM / 'ram_swin_large_14m.pth'}",
            f"model.dape_model_path={TINY_RAM / 'DAPE.pth'}",
            f"model.ram_config_dir={TINY_RAM / 'configs'}",
            "data.root_folders=[d]",
            "data.mode=online",
        ],
    )
    amp_tagger = torch.nn.Module.to(dape, dtype=torch.float16)
    chosen = _caption_tagger(config, amp_tagger, torch.float16, torch.device("cpu"))
    assert chosen is not amp_tagger and all(p.dtype == torch.float32 for p in chosen.parameters())
    assert _same_weights(chosen, plain)
    config.model.caption_tagger = "dape"
    assert _caption_tagger(config, amp_tagger, torch.float16, torch.device("cpu")) is amp_tagger
    config.data.mode = "prepared"
    assert _caption_tagger(config, amp_tagger, torch.float16, torch.device("cpu")) is None


def test_a_seesr_unet_as_base_loads_with_one_line_not_a_list_of_unused_weights(caplog):
    """The tiny bundle's unet/ (SeeSR, with RCA) as the SD-2 base: diffusers' list of every unused tensor is not
    emitted (one info line instead); with debug logging (-v) seesr.weights lists the unused RCA tensors."""
    from seesr.training.train_seesr import _load_base_unet

    emitted: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: emitted.append(record.getMessage())
    library = logging.getLogger("diffusers")  # diffusers' own root logger (it does not propagate)
    library.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="seesr.training.train_seesr"):
            _load_base_unet(TINY / "unet")
        assert not any("were not used" in message for message in emitted), emitted
        assert "is a SeeSR UNet" in caplog.text
        with caplog.at_level(logging.DEBUG, logger="seesr.weights.unet"):
            _load_base_unet(TINY / "unet")
        assert "416 RCA tensors were not used" in caplog.text
    finally:
        library.removeHandler(handler)
