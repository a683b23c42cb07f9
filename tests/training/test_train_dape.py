"""Stage 1 (``seesr train dape``) end to end on the tiny RAM: learning, resume, DAPE.pth layout, tagger loading."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from seesr.training.config import load_config
from tests.training.conftest import TINY_RAM, dape_overrides, make_pairs

STEPS = 30
CHECKPOINT_AT = 27


@pytest.fixture(scope="module")
def noisy_pairs_dir(tmp_path_factory):
    """Pairs whose LR images carry strong noise, so that the LR and HR tagger outputs differ."""
    return make_pairs(tmp_path_factory.mktemp("dape_pairs") / "data", count=2, lr_noise=0.15)


@pytest.fixture(scope="module")
def dape_run(tmp_path_factory, noisy_pairs_dir):
    from seesr.training.train_dape import main

    output = tmp_path_factory.mktemp("stage1") / "run"
    overrides = dape_overrides(
        noisy_pairs_dir,
        output,
        train__max_train_steps=STEPS,
        train__train_batch_size=2,
        train__checkpointing_steps=CHECKPOINT_AT,
        optim__learning_rate=1e-2,
        optim__lr_warmup_steps=0,
        model__student_dropout="false",
        validation__loss_steps=STEPS,
        validation__loss_images=2,
    )
    config = load_config("dape", None, overrides)
    return config, overrides, main(config)


def test_dape_overfits_a_handful_of_pairs(dape_run):
    """Eq. (1) above its constant floor (feature MSE + λ·KL; the BCE with soft targets cannot go below the
    teacher's entropy) falls below half of its starting value in 30 steps, measured per step and on the fixed set."""
    _, _, result = dape_run
    assert result.global_step == STEPS
    above_floor = result.extra_losses["loss_above_floor"]
    assert above_floor[STEPS] < 0.5 * above_floor[1], above_floor
    val = result.extra_losses["val_loss"]
    assert val[STEPS] < 0.5 * val[0], val
    # the reported loss is the full Eq. (1), floor included, and finite
    assert all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    assert result.losses[STEPS] < result.losses[1]


def test_dape_trains_only_lora(dape_run):
    _, _, result = dape_run
    student = result.models["student"]
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert any(name.startswith("visual_encoder.") for name in trainable)
    assert any(name.startswith("tagging_head.") for name in trainable)


def test_dape_resume_reproduces_the_uninterrupted_run(dape_run, tmp_path):
    from seesr.training.train_dape import main

    _, overrides, full = dape_run
    checkpoint = full.output_dir / f"checkpoint-{CHECKPOINT_AT}"
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed_dir / checkpoint.name)
    config = load_config(
        "dape", None, [*overrides, f"train.output_dir={resumed_dir}", "train.resume_from_checkpoint=latest"]
    )
    resumed = main(config)
    assert sorted(resumed.losses) == [28, 29, 30]
    for step in (28, 29, 30):
        assert resumed.losses[step] == pytest.approx(full.losses[step], rel=1e-6, abs=1e-8)
    assert (resumed_dir / "DAPE.pth").is_file()


def test_dape_outputs_load_as_taggers(dape_run, tmp_path):
    """DAPE.pth has the official layout and, loaded onto RAM, equals the merged tagger/ folder; `seesr tag` runs."""
    from seesr.cli.main import main as cli
    from seesr.weights.tagger import load_ram_tagger, load_tagger

    _, _, result = dape_run
    out = result.final_model_dir
    state = torch.load(out / "DAPE.pth", map_location="cpu", weights_only=True)
    assert all(".lora_A" in key or ".lora_B" in key for key in state)
    qkv_a = state["visual_encoder.layers.0.blocks.0.attn.qkv.lora_A"]
    qkv_b = state["visual_encoder.layers.0.blocks.0.attn.qkv.lora_B"]
    assert qkv_a.shape == (16, 16) and qkv_b.shape == (32, 8)  # (2r, C) / (2C, r), tiny Swin C = 16
    assert torch.count_nonzero(qkv_b) > 0  # trained (B starts at zero)
    assert "tagging_head.encoder.layer.0.crossattention.self.query.lora_B" in state

    from_official = load_ram_tagger(TINY_RAM / "ram_swin_large_14m.pth", out / "DAPE.pth", TINY_RAM / "configs")
    merged = load_tagger(out)  # finds tagger/ (the merged safetensors folder)
    plain = load_ram_tagger(TINY_RAM / "ram_swin_large_14m.pth", None, TINY_RAM / "configs")
    pixels = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = from_official(pixels), merged(pixels), plain(pixels)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.image_embeds, b.image_embeds, rtol=1e-4, atol=1e-5)
    assert (a.image_embeds - c.image_embeds).abs().max() > 1e-4  # the LoRA changed the tagger

    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 32), (200, 180, 20)).save(image)
    assert cli(["tag", str(image), "--model", str(out), "--device", "cpu", "--json"]) == 0


def test_dape_continues_from_an_official_dape_file(dape_run):
    """model.dape_model_path loads a DAPE.pth into the peft LoRA; exporting it again gives the same tensors."""
    from seesr.tagger.lora import export_dape_state_dict
    from seesr.training.config import DAPEModelConfig
    from seesr.training.export import load_dape_student

    _, _, result = dape_run
    path = result.final_model_dir / "DAPE.pth"
    student = load_dape_student(
        DAPEModelConfig(
            ram_model_path=str(TINY_RAM / "ram_swin_large_14m.pth"),
            ram_config_dir=str(TINY_RAM / "configs"),
            dape_model_path=str(path),
        )
    )
    original = torch.load(path, map_location="cpu", weights_only=True)
    again = export_dape_state_dict(student)
    assert again.keys() == original.keys()
    for key in original:
        torch.testing.assert_close(again[key], original[key], rtol=0, atol=0, msg=key)
    # the released file's layout (tag encoder / text decoder zeros) is accepted as well
    tiny_release = torch.load(TINY_RAM / "DAPE.pth", map_location="cpu", weights_only=True)
    load_dape_student(
        DAPEModelConfig(
            ram_model_path=str(TINY_RAM / "ram_swin_large_14m.pth"),
            ram_config_dir=str(TINY_RAM / "configs"),
            dape_model_path=str(TINY_RAM / "DAPE.pth"),
        )
    )
    assert any(key.startswith("tag_encoder.") for key in tiny_release)


def test_dape_on_the_fly_degradation(tmp_path, noisy_pairs_dir):
    """data.mode=online: whole HR images resized and degraded per batch, as the official DAPE data."""
    from seesr.training.train_dape import main

    overrides = dape_overrides(
        noisy_pairs_dir / "gt",
        tmp_path / "online",
        data__mode="online",
        train__max_train_steps=1,
    )
    result = main(load_config("dape", None, overrides))
    assert sorted(result.losses) == [1] and torch.isfinite(torch.tensor(result.losses[1]))
    assert (tmp_path / "online" / "DAPE.pth").is_file()


def test_resume_mid_epoch_with_accumulation_and_dropout(tmp_path, pairs_dir):
    """Checkpoint in the middle of an epoch (2 steps/epoch, 2 micro-batches/step) with the official train-mode
    student (drop-path/dropout drawn from the global RNG, restored by accelerate): the resumed steps match."""
    from seesr.training.train_dape import main

    def run(output, steps, *extra):
        overrides = dape_overrides(
            pairs_dir,
            output,
            train__max_train_steps=steps,
            train__train_batch_size=1,
            train__gradient_accumulation_steps=2,
            train__checkpointing_steps=3,
            optim__lr_warmup_steps=2,
        )
        return main(load_config("dape", None, [*overrides, *extra]))

    full = run(tmp_path / "full", 4)
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = run(tmp_path / "resumed", 4, "train.resume_from_checkpoint=latest")
    assert sorted(full.losses) == [1, 2, 3, 4] and sorted(resumed.losses) == [4]
    assert resumed.losses[4] == pytest.approx(full.losses[4], rel=1e-6, abs=1e-8)
    for name, value in full.models["student"].named_parameters():
        if value.requires_grad:
            other = dict(resumed.models["student"].named_parameters())[name]
            torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-7, msg=name)
