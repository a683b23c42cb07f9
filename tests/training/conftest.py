"""Tiny training set-ups: a SD-2-base-like folder with a *stock* UNet, generated image pairs, config builders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY

TINY_RAM = TINY / "ram"
PAIR_SIZE = 64  # GT side; LR is PAIR_SIZE // 4


def make_base_model(
    folder: Path,
    pretrain_on: Path | None = None,
    pretrain_steps: int = 250,
    pretrain_repeats: int = 1,
    pretrain_lr: float = 3e-3,
) -> Path:
    """SD-2-base layout from the tiny bundle: vae/, text_encoder/, tokenizer/, scheduler/ + a *stock* unet/.

    The stock UNet has the tiny SeeSR UNet's config without ``use_image_cross_attention``. SeeSR's stage 2 starts
    from a *pretrained* denoiser (SD-2-base); random weights would leave the frozen UNet unable to predict noise
    at all. So, with ``pretrain_on`` (a pairs folder), the stock UNet is first trained for ``pretrain_steps`` steps
    (all weights, AdamW ``pretrain_lr``, batch = every GT ``pretrain_repeats`` times with different noise) to predict the noise
    of those GT latents: a small stand-in for SD-2.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder.mkdir(parents=True, exist_ok=True)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        shutil.copytree(TINY / part, folder / part)
    shutil.copy(TINY / "model_index.json", folder / "model_index.json")
    config = json.loads((TINY / "unet" / "config.json").read_text())
    config.pop("use_image_cross_attention")
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(config)
    if pretrain_on is not None:
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        images = (
            torch.stack(
                [
                    torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                    for p in sorted((pretrain_on / "gt").iterdir())
                ]
            ).float()
            / 255
        )
        with torch.no_grad():
            latents = vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        latents = latents.repeat(pretrain_repeats, 1, 1, 1)
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        captions = [p.read_text(encoding="utf-8") for p in sorted((pretrain_on / "tag").iterdir())]
        ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():  # the captioned prompts, as the base model saw text during its pre-training
            text = CLIPTextModel.from_pretrained(folder / "text_encoder")(ids)[0].repeat(pretrain_repeats, 1, 1)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=pretrain_lr)
        for _ in range(pretrain_steps):
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
            prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, text).sample
            torch.nn.functional.mse_loss(prediction, noise).backward()
            optimizer.step()
            optimizer.zero_grad()
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return folder


def _pattern(index: int, size: int) -> np.ndarray:
    """A smooth, distinct colour pattern per index (gradients + a disc), uint8 (size, size, 3)."""
    rng = np.random.default_rng(1000 + index)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    colour = rng.uniform(0.15, 0.85, size=(3, 3))
    image = np.stack([colour[c, 0] + colour[c, 1] * x - colour[c, 2] * y * 0.5 for c in range(3)], axis=-1)
    cy, cx, radius = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    disc = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
    image[disc] = rng.uniform(0, 1, size=3)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


TAGS = ["red, circle,", "blue, sky,", "green, field,", "cat, sofa,", "car, road,", "tree,"]


def make_pairs(
    folder: Path, count: int = 4, size: int = PAIR_SIZE, small_lr: bool = True, lr_noise: float = 0.0
) -> Path:
    """A ``seesr prepare``-style folder: gt/ (size²), lr/ (size/4, PIL bicubic) or sr_bicubic/, tag/ by stem.

    ``lr_noise`` adds Gaussian noise of that standard deviation (in [0, 1] units) to the LR images.
    """
    for sub in ("gt", "lr" if small_lr else "sr_bicubic", "tag"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        stem = f"{index:07d}"
        gt = Image.fromarray(_pattern(index, size))
        gt.save(folder / "gt" / f"{stem}.png")
        lr = gt.resize((size // 4, size // 4), Image.BICUBIC)
        if lr_noise:
            noisy = np.asarray(lr) / 255 + np.random.default_rng(index).normal(0, lr_noise, (size // 4, size // 4, 3))
            lr = Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8))
        if small_lr:
            lr.save(folder / "lr" / f"{stem}.png")
        else:
            lr.resize((size, size), Image.BICUBIC).save(folder / "sr_bicubic" / f"{stem}.png")
        (folder / "tag" / f"{stem}.txt").write_text(TAGS[index % len(TAGS)], encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs") / "data")


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory, pairs_dir) -> Path:
    """SD-2-base stand-in whose UNet was pre-trained as a denoiser on ``pairs_dir`` (for the learning tests)."""
    return make_base_model(tmp_path_factory.mktemp("sd2base") / "sd2", pretrain_on=pairs_dir)


@pytest.fixture(scope="session")
def raw_base_model_dir(tmp_path_factory) -> Path:
    """SD-2-base stand-in with a random stock UNet (for tests that do not measure learning)."""
    return make_base_model(tmp_path_factory.mktemp("sd2raw") / "sd2")


def seesr_overrides(base: Path, data: Path, output: Path, **extra: object) -> list[str]:
    """``--set`` strings for a fast tiny stage-2 run (fp32 CPU, no tracker, no progress bar)."""
    values = {
        "model.pretrained_model_name_or_path": str(base),
        "model.ram_model_path": str(TINY_RAM / "ram_swin_large_14m.pth"),
        "model.dape_model_path": str(TINY_RAM / "DAPE.pth"),
        "model.ram_config_dir": str(TINY_RAM / "configs"),
        "data.root_folders": f"[{data}]",
        "data.resolution": PAIR_SIZE,
        "train.output_dir": str(output),
        "train.mixed_precision": "no",
        "train.train_batch_size": 2,
        "train.gradient_accumulation_steps": 1,
        "train.seed": 7,
        "logging.report_to": "none",
        "logging.progress_bar": "false",
    }
    values.update({key.replace("__", "."): value for key, value in extra.items()})
    return [f"{key}={value}" for key, value in values.items()]


def dape_overrides(data: Path, output: Path, **extra: object) -> list[str]:
    values = {
        "model.ram_model_path": str(TINY_RAM / "ram_swin_large_14m.pth"),
        "model.ram_config_dir": str(TINY_RAM / "configs"),
        "data.root_folders": f"[{data}]",
        "data.resolution": PAIR_SIZE,
        "train.output_dir": str(output),
        "train.train_batch_size": 2,
        "train.seed": 5,
        "logging.report_to": "none",
        "logging.progress_bar": "false",
    }
    values.update({key.replace("__", "."): value for key, value in extra.items()})
    return [f"{key}={value}" for key, value in values.items()]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    return env
