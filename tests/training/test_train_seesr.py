"""Stage 2 (``seesr train seesr``) end to end on the tiny models: learning, resume, frozen parts, exported folders.

One 30-step run (module fixture) is shared by the tests; the resume test adds a 3-step run.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from seesr.training.config import load_config
from tests.training.conftest import seesr_overrides

STEPS = 30
CHECKPOINT_AT = 27


def _lr_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (120, 40, 200)).save(path)
    return path


@pytest.fixture(scope="module")
def seesr_run(tmp_path_factory, base_model_dir, pairs_dir):
    from seesr.training.train_seesr import main

    output = tmp_path_factory.mktemp("stage2") / "run"
    validation_image = _lr_image(output.parent / "validation_lr.png")
    overrides = seesr_overrides(
        base_model_dir,
        pairs_dir,
        output,
        train__max_train_steps=STEPS,
        train__train_batch_size=4,
        train__checkpointing_steps=CHECKPOINT_AT,
        train__seed=8,
        optim__learning_rate=2e-3,
        validation__loss_steps=STEPS,
        validation__steps=STEPS,
        validation__images=f"[{validation_image}]",
        validation__num_inference_steps=2,
        validation__process_size=64,
        logging__report_to="tensorboard",
    )
    config = load_config("seesr", None, overrides)
    return config, overrides, main(config)


def test_stage2_overfits_a_handful_of_pairs(seesr_run):
    """Fixed-draw Eq. (2) loss on the training pairs after 30 steps is below half of its value before the first.

    The tiny frozen UNet was pre-trained as a denoiser (a stand-in for SD-2); the fresh RCA layers first disturb it
    and stage 2 must learn them (and the ControlNet) back. The per-step training loss swings with the random
    timesteps, so the comparison uses the validation loss (same images, timesteps and noise at both ends).
    """
    _, _, result = seesr_run
    assert result.global_step == STEPS and sorted(result.losses) == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    val = result.extra_losses["val_loss"]
    assert sorted(val) == [0, STEPS]
    assert val[STEPS] < 0.5 * val[0], val


def test_stage2_trains_only_controlnet_and_rca(seesr_run, base_model_dir):
    """The UNet's SD weights are bit-identical to the base model; its RCA layers and the ControlNet changed."""
    from seesr.models.image_cross_attention import TextImageTransformer2D

    _, _, result = seesr_run
    unet, controlnet = result.models["unet"], result.models["controlnet"]
    base = load_file(str(base_model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    trained = unet.state_dict()
    renamed = {
        key.replace(".text_transformer.", "."): value
        for key, value in trained.items()
        if ".image_transformer." not in key
    }
    assert renamed.keys() == base.keys()
    assert all(torch.equal(renamed[key], base[key]) for key in base)
    rca = [module for module in unet.modules() if isinstance(module, TextImageTransformer2D)]
    assert rca and all(p.requires_grad for m in rca for p in m.image_transformer.parameters())
    assert not any(p.requires_grad for m in rca for p in m.text_transformer.parameters())
    # the ControlNet's zero convolutions are no longer zero: the ControlNet learned
    assert controlnet.controlnet_mid_block.weight.abs().sum() > 0
    assert all(block.weight.abs().sum() > 0 for block in controlnet.controlnet_down_blocks)


def test_stage2_renders_validation_images(seesr_run):
    """validation.steps renders validation.images through SeeSRPipeline with the weights of that step."""
    _, _, result = seesr_run
    (image,) = (result.output_dir / "validation" / f"step-{STEPS:07d}").glob("*.png")
    assert image.name == "00_validation_lr.png" and Image.open(image).size == (64, 48)
    assert "prompt" in Image.open(image).info  # the prompt the pipeline built (DAPE tags + added prompt)


def test_stage2_writes_run_record_and_checkpoints(seesr_run):
    config, _, result = seesr_run
    out = result.output_dir
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_train_steps"] == STEPS
    versions = json.loads((out / "versions.json").read_text())
    assert versions["stage"] == "seesr" and versions["packages"]["diffusers"]
    checkpoint = out / f"checkpoint-{CHECKPOINT_AT}"
    # only the trainable tensors are checkpointed (not the frozen UNet)
    state = load_file(str(checkpoint / "trainable.safetensors"))
    trainable = sum(p.numel() for m in result.models.values() for p in m.parameters() if p.requires_grad)
    assert sum(v.numel() for v in state.values()) == trainable
    assert not any(
        name.startswith("model") and name.endswith(".safetensors") for name in map(str, checkpoint.iterdir())
    )
    assert config.logging.report_to == "tensorboard"
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # accelerate's TensorBoard tracker wrote scalars


def test_stage2_resume_reproduces_the_uninterrupted_run(seesr_run, tmp_path):
    """Resuming from checkpoint-27 gives the same losses for steps 28-30 as the run that never stopped."""
    from seesr.training.train_seesr import main

    _, overrides, full = seesr_run
    checkpoint = full.output_dir / f"checkpoint-{CHECKPOINT_AT}"
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed_dir / checkpoint.name)
    config = load_config(
        "seesr", None, [*overrides, f"train.output_dir={resumed_dir}", "train.resume_from_checkpoint=latest"]
    )
    resumed = main(config)
    assert sorted(resumed.losses) == [28, 29, 30]
    for step in (28, 29, 30):
        assert resumed.losses[step] == pytest.approx(full.losses[step], rel=1e-6, abs=1e-7)
    assert resumed.extra_losses["val_loss"][STEPS] == pytest.approx(full.extra_losses["val_loss"][STEPS], rel=1e-5)
    for name in ("unet", "controlnet"):
        for (key, a), b in zip(
            full.models[name].state_dict().items(), resumed.models[name].state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_stage2_outputs_load_into_the_pipeline_and_upscale(seesr_run, tmp_path):
    """Both exported folders (our bundle ``model/`` and the release layout ``official/``) are complete models."""
    from seesr.cli.main import main as cli
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline

    _, _, result = seesr_run
    bundle = result.final_model_dir
    official = result.output_dir / "official"
    assert bundle == result.output_dir / "model"
    # the official bug (ControlNet overwritten by the UNet in one folder) is fixed: two folders, two classes
    for folder in (official, bundle):
        assert json.loads((folder / "unet" / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"
        assert json.loads((folder / "controlnet" / "config.json").read_text())["_class_name"] == "ControlNetModel"
    official_keys = load_file(str(official / "unet" / "diffusion_pytorch_model.safetensors")).keys()
    assert any(".image_attentions." in key for key in official_keys)
    assert json.loads((official / "unet" / "config.json").read_text())["use_image_cross_attention"] is True

    # the trained weights are what the pipeline loads
    pipeline = SeeSRPipeline.from_pretrained(bundle)
    trained = result.models["controlnet"].state_dict()
    for key, value in pipeline.controlnet.state_dict().items():
        torch.testing.assert_close(value, trained[key].float(), msg=key)
    out = pipeline(Image.new("RGB", (16, 16), (30, 140, 60)), num_inference_steps=2, seed=0, process_size=64)
    assert out.images[0].size == (64, 64)

    lr = _lr_image(tmp_path / "lr.png")
    for folder in (bundle, official):
        outdir = tmp_path / f"sr_{folder.name}"
        code = cli(
            [
                "upscale",
                str(lr),
                "--model",
                str(folder),
                "-o",
                str(outdir),
                "--steps",
                "2",
                "--process-size",
                "64",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        assert code == 0
        (written,) = [p for p in outdir.rglob("*.png")]
        assert Image.open(written).size == (64, 48)


def test_stage2_on_the_fly_degradation(tmp_path, raw_base_model_dir, pairs_dir):
    """data.mode=online: HR crops degraded per batch (Real-ESRGAN), captions from the tagger on the GT."""
    from seesr.training.train_seesr import main

    overrides = seesr_overrides(
        raw_base_model_dir,
        pairs_dir / "gt",
        tmp_path / "online",
        data__mode="online",
        data__min_pixels=0,
        data__min_file_bytes=0,
        train__max_train_steps=2,
        validation__loss_steps=2,
        validation__loss_images=2,
    )
    result = main(load_config("seesr", None, overrides))
    assert sorted(result.losses) == [1, 2] and sorted(result.extra_losses["val_loss"]) == [0, 2]
    assert all(torch.isfinite(torch.tensor([*result.losses.values(), *result.extra_losses["val_loss"].values()])))
