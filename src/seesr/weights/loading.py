"""Load every component of a SeeSR model from a :class:`~seesr.weights.resolve.ModelLocation`.

:func:`load_components` returns them as :class:`SeeSRComponents`; this package never imports ``seesr.pipeline``
(``SeeSRPipeline.from_pretrained`` assembles the pipeline).

Guards against the silent traps found during the parity check (PARITY-NOTES §2-§3):

* the scheduler is always built as ``DDPMScheduler`` (the SD-2 file declares ``PNDMScheduler``);
* a tokenizer folder without its vocabulary loads "successfully" as a 2-token tokenizer, and one without its
  special-token files pads with ``<|endoftext|>``: the tokenizer size must equal the text encoder's vocabulary and
  the pad token must be SD-2's ``"!"`` (id 0);
* transformers 5 keeps checkpoint dtypes by default, so ``CLIPTextModel`` gets an explicit dtype;
* UNet/ControlNet go through :mod:`seesr.weights.unet` (strict, RCA-aware), never stock ``from_pretrained``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seesr.weights.resolve import ModelLocation, resolve_model

logger = logging.getLogger(__name__)

SD2_PAD_TOKEN_ID = 0


class ModelLoadError(RuntimeError):
    """A component exists but cannot be loaded; the message names it and is meant for the user."""


def _wrap(component: str, path: Path, error: Exception) -> ModelLoadError:
    return ModelLoadError(f"cannot load the {component} from {path}: {error}")


def _check_config(component: str, path: Path, limits: dict[str, int]) -> None:
    """Refuse a component config with insane sizes (a hostile ``config.json``) before the library builds from it."""
    from seesr.utils.limits import ConfigLimitError, check_config_limits
    from seesr.weights.reader import WeightReadError, read_json_config

    try:
        check_config_limits(read_json_config(path), limits, source=path)
    except (ConfigLimitError, WeightReadError) as error:
        raise ModelLoadError(f"cannot load the {component}: {error}") from None


def _check_weight_files(component: str, folder: Path) -> None:
    """Read the safetensors headers of a stock component (cheap): a truncated or corrupt file is named with the fix
    ("delete it and download again") instead of the library's traceback."""
    from seesr.weights.reader import WeightReadError, read_tensor_specs

    for file in sorted(folder.glob("*.safetensors")):
        try:
            read_tensor_specs(file)
        except WeightReadError as error:
            raise ModelLoadError(f"cannot load the {component}: {error}") from None


def load_scheduler(folder: Path) -> Any:
    """``DDPMScheduler`` from a scheduler folder, whatever class its config names."""
    from diffusers import DDPMScheduler

    from seesr.models.limits import SCHEDULER_CONFIG_LIMITS

    if (folder / "scheduler_config.json").is_file():
        _check_config("scheduler", folder / "scheduler_config.json", SCHEDULER_CONFIG_LIMITS)
    try:
        config = DDPMScheduler.load_config(str(folder))
        return DDPMScheduler.from_config(config)
    except Exception as error:  # diffusers raises EnvironmentError/ValueError on unreadable configs
        raise _wrap("scheduler", folder, error) from error


def load_text_encoder(folder: Path, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import CLIPTextModel

    from seesr.models.limits import TEXT_ENCODER_CONFIG_LIMITS

    _check_config("text encoder", folder / "config.json", TEXT_ENCODER_CONFIG_LIMITS)
    _check_weight_files("text encoder", folder)
    try:
        model = CLIPTextModel.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    except Exception as error:
        raise _wrap("text encoder", folder, error) from error
    return model.to(device).eval()


def load_tokenizer(folder: Path, vocab_size: int) -> Any:
    """CLIP tokenizer, checked against the text encoder's vocabulary size and SD-2's pad token."""
    from transformers import CLIPTokenizer

    from seesr.weights.resolve import tokenizer_files_missing

    missing = tokenizer_files_missing(folder)
    if missing:
        raise ModelLoadError(f"tokenizer folder {folder} has no {' or '.join(missing)}")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:
        raise _wrap("tokenizer", folder, error) from error
    if len(tokenizer) != vocab_size:
        raise ModelLoadError(
            f"tokenizer in {folder} has {len(tokenizer)} tokens but the text encoder expects {vocab_size}; "
            "vocab.json/merges.txt are missing or belong to another model"
        )
    if tokenizer.pad_token_id != SD2_PAD_TOKEN_ID:
        raise ModelLoadError(
            f"tokenizer in {folder} pads with {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}), not SD-2's '!' "
            "(id 0); tokenizer_config.json / special_tokens_map.json are missing or from another model"
        )
    return tokenizer


def load_vae(folder: Path, dtype: torch.dtype, device: torch.device) -> Any:
    from diffusers import AutoencoderKL

    from seesr.models.limits import VAE_CONFIG_LIMITS

    _check_config("VAE", folder / "config.json", VAE_CONFIG_LIMITS)
    _check_weight_files("VAE", folder)
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    except Exception as error:
        raise _wrap("VAE", folder, error) from error
    return vae.to(device).eval()


def load_unet_and_controlnet(location: ModelLocation, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    from seesr.weights.unet import CheckpointError, load_seesr_controlnet, load_seesr_unet

    try:
        unet = load_seesr_unet(location.unet, dtype=dtype, device=device)
    except CheckpointError as error:
        raise _wrap("UNet", location.unet, error) from error
    try:
        controlnet = load_seesr_controlnet(location.controlnet, dtype=dtype, device=device)
    except CheckpointError as error:
        raise _wrap("ControlNet", location.controlnet, error) from error
    return unet, controlnet


def load_dape_tagger(location: ModelLocation, device: torch.device, dtype: torch.dtype = torch.float32) -> Any:
    """DAPE tagger: the converted ``tagger/`` folder (safetensors) or the official RAM + DAPE ``.pth`` files."""
    from seesr.weights.tagger import load_pretrained_tagger, load_ram_tagger

    if location.tagger is not None:
        try:
            return load_pretrained_tagger(location.tagger, dtype=dtype, device=device)
        except (OSError, ValueError) as error:
            raise _wrap("DAPE tagger", location.tagger, error) from error
    if location.ram_checkpoint is None:
        raise ModelLoadError(f"{location.description} has no DAPE tagger files")
    try:
        return load_ram_tagger(
            location.ram_checkpoint, location.dape_checkpoint, location.ram_config_dir, dtype=dtype, device=device
        )
    except (OSError, ValueError) as error:
        raise _wrap("DAPE tagger (RAM + DAPE.pth)", location.ram_checkpoint, error) from error


@dataclass
class SeeSRComponents:
    """The loaded parts of a SeeSR model; :meth:`SeeSRPipeline.from_pretrained
    <seesr.pipeline.pipeline_seesr.SeeSRPipeline.from_pretrained>` puts them together.

    ``modules()`` is the keyword dict a ``SeeSRPipeline`` (a diffusers ``DiffusionPipeline``) is built from;
    ``location`` says where the files came from.
    """

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    controlnet: Any
    scheduler: Any
    tagger: Any
    location: ModelLocation

    def modules(self) -> dict[str, Any]:
        return {
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "unet": self.unet,
            "controlnet": self.controlnet,
            "scheduler": self.scheduler,
            "tagger": self.tagger,
        }


def load_components(
    model: str | os.PathLike | ModelLocation | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    load_tagger: bool = True,
) -> SeeSRComponents:
    """Resolve ``model`` (folder, bundle or None = default location) and load every component.

    The VAE, text encoder, UNet and ControlNet use ``dtype`` (default float32); the tagger stays float32 as in the
    official ``test_seesr.py``. Raises :class:`~seesr.weights.resolve.MissingWeightsError` or
    :class:`ModelLoadError` with user-facing messages.
    """
    location = model if isinstance(model, ModelLocation) else resolve_model(model)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or torch.float32
    logger.info("loading SeeSR from %s", location.description)
    scheduler = load_scheduler(location.scheduler)
    text_encoder = load_text_encoder(location.text_encoder, dtype, device)
    tokenizer = load_tokenizer(location.tokenizer, int(text_encoder.config.vocab_size))
    vae = load_vae(location.vae, dtype, device)
    unet, controlnet = load_unet_and_controlnet(location, dtype, device)
    tagger = load_dape_tagger(location, device) if load_tagger else None
    return SeeSRComponents(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        tagger=tagger,
        location=location,
    )
