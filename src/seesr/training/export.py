"""Loading the frozen/trainable taggers for training, and writing the trained models.

Stage 2 writes two complete, loadable model folders (REFERENCE.md §7 #23: the official script saved the ControlNet
and then the UNet into the *same* folder, so the UNet overwrote the ControlNet):

* ``<output_dir>/official/``: the release layout of the official weights: ``unet/`` and ``controlnet/`` with the
  official key names and ``use_image_cross_attention`` in ``config.json``, next to the frozen SD-2 parts
  (``vae/ text_encoder/ tokenizer/ scheduler/``, ``feature_extractor/`` when present, ``model_index.json``) and
  ``ram/`` (``ram_swin_large_14m.pth``, ``DAPE.pth``); loadable by the official code and by ``seesr upscale``;
* ``<output_dir>/model/``: our converted bundle (safetensors only), written by ``SeeSRPipeline.save_pretrained``.

Stage 1 writes ``DAPE.pth`` (the official flat LoRA dict) and ``tagger/`` (the LoRA merged into RAM, safetensors).
The frozen parts are copied, or hard-linked when the file system allows it, so no file is written twice.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from seesr.training.common import TrainingError
from seesr.training.config import DAPEModelConfig, SeeSRModelConfig

__all__ = [
    "export_dape",
    "export_seesr_model",
    "load_dape_student",
    "load_frozen_tagger",
    "load_official_lora",
]

logger = logging.getLogger(__name__)

SD_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor")


def load_frozen_tagger(ram_path: str, dape_path: str | None, config_dir: str | None) -> Any:
    """The DAPE tagger (LoRA merged) in eval mode, float32.

    Args:
        ram_path: ``ram_swin_large_14m.pth``, or (with ``dape_path`` None) any folder
            :func:`seesr.weights.tagger.load_tagger` accepts: a converted ``tagger/`` folder, a bundle, a release
            folder with ``ram/``, or ``seesr train dape`` output.
        dape_path: ``DAPE.pth`` or None (plain RAM when ``ram_path`` is a file).
        config_dir: RAM config folder for non-standard sizes (official files only).
    """
    from seesr.weights.tagger import TaggerNotFoundError, load_ram_tagger, load_tagger

    path = Path(ram_path)
    if not path.exists():
        raise TrainingError(f"RAM checkpoint {path} does not exist")
    if dape_path is not None and not Path(dape_path).is_file():
        raise TrainingError(f"DAPE checkpoint {dape_path} does not exist")
    try:
        if path.is_dir():
            if dape_path is not None:
                raise TrainingError(
                    f"give model.dape_model_path only with a RAM .pth file, not with the folder {path}"
                )
            return load_tagger(path, dtype=torch.float32).eval()
        return load_ram_tagger(path, dape_path, config_dir=config_dir).eval()
    except (OSError, ValueError, KeyError, RuntimeError, TaggerNotFoundError) as error:
        raise TrainingError(f"cannot load the tagger from {path}: {error}") from error


def load_dape_student(model: DAPEModelConfig) -> Any:
    """RAM with DAPE LoRA layers (peft, rank 8, the official targets); only the LoRA tensors require grad.

    The LoRA starts fresh (A Kaiming-uniform, B zero, so the student starts equal to the teacher) or, with
    ``model.dape_model_path``, from that ``DAPE.pth``.
    """
    from seesr.tagger.lora import apply_dape_lora
    from seesr.weights.reader import read_state_dict

    if Path(model.ram_model_path).is_dir():
        raise TrainingError(
            f"model.ram_model_path must be the RAM .pth file for DAPE training, got {model.ram_model_path}"
        )
    student = apply_dape_lora(load_frozen_tagger(model.ram_model_path, None, model.ram_config_dir))
    if model.dape_model_path is not None:
        path = Path(model.dape_model_path)
        if not path.is_file():
            raise TrainingError(f"DAPE checkpoint {path} does not exist")
        load_official_lora(student, read_state_dict(path), str(path))
    return student


def load_official_lora(student: Any, state: dict[str, torch.Tensor], source: str = "DAPE.pth") -> None:
    """Copy an official ``DAPE.pth`` into the peft LoRA of :func:`seesr.tagger.lora.apply_dape_lora` (the inverse of
    :func:`seesr.tagger.lora.export_dape_state_dict`).

    Swin ``qkv``: ``lora_A`` (2r, C) = [A_q; A_v] and ``lora_B`` (2C, r) = [B_q; B_v] go to the split ``q``/``v``
    Linears; tagging-head ``query``/``key`` map one to one. The untrained tag-encoder / text-decoder entries of the
    released file must be zero (they would act on the tied tagging-head weights) and are skipped.
    """
    from seesr.tagger.lora import ADAPTER_NAME

    modules = dict(student.named_modules())
    used: set[str] = set()

    def copy(module_name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        module = modules.get(module_name)
        if module is None or not hasattr(module, "lora_A"):
            raise TrainingError(f"{source}: no LoRA layer {module_name} in this model (different RAM size?)")
        target_a, target_b = module.lora_A[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight
        if target_a.shape != a.shape or target_b.shape != b.shape:
            raise TrainingError(
                f"{source}: {module_name} LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not match "
                f"{tuple(target_a.shape)}/{tuple(target_b.shape)}"
            )
        with torch.no_grad():
            target_a.copy_(a)
            target_b.copy_(b)

    for key in state:
        if not key.endswith(".lora_A"):
            continue
        name = key[: -len(".lora_A")]
        a, b = state[key].float(), state[f"{name}.lora_B"].float()
        used.update({key, f"{name}.lora_B"})
        if name.startswith("visual_encoder."):
            rank, dim = a.shape[0] // 2, b.shape[0] // 2
            copy(f"{name}.q", a[:rank], b[:dim])
            copy(f"{name}.v", a[rank:], b[dim:])
        elif name.startswith("tagging_head."):
            copy(name, a, b)
        elif torch.count_nonzero(b):
            raise TrainingError(f"{source}: {name} has a non-zero LoRA, which the DAPE tagger cannot represent")
    unused = sorted(set(state) - used)
    if unused:
        raise TrainingError(f"{source}: unexpected entries {unused[:5]}")


def export_dape(student: Any, model: DAPEModelConfig, output_dir: Path) -> Path:
    """Write ``DAPE.pth`` (official layout) and ``tagger/`` (LoRA merged, safetensors) into ``output_dir``.

    ``tagger/`` is built the way every released DAPE is used: the RAM checkpoint with the new ``DAPE.pth`` merged
    in float32 (:func:`seesr.weights.tagger.load_ram_tagger`), so the training model itself is left untouched.
    Returns ``output_dir``.
    """
    from seesr.tagger.lora import export_dape_state_dict
    from seesr.weights.tagger import load_ram_tagger

    output_dir.mkdir(parents=True, exist_ok=True)
    torch.save(export_dape_state_dict(student), output_dir / "DAPE.pth")
    merged = load_ram_tagger(model.ram_model_path, output_dir / "DAPE.pth", model.ram_config_dir)
    merged.save_pretrained(output_dir / "tagger", safe_serialization=True)
    logger.info("wrote %s and %s", output_dir / "DAPE.pth", output_dir / "tagger")
    return output_dir


def _link_or_copy(source: Path, destination: Path) -> None:
    """Hard-link ``source`` (file or folder tree) to ``destination``, copying where linking is not possible."""
    if source.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        for child in source.iterdir():
            _link_or_copy(child, destination / child.name)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        destination.unlink()
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _write_release_folder(unet: Any, controlnet: Any, model: SeeSRModelConfig, folder: Path) -> None:
    """``folder`` in the official release layout (see the module docstring)."""
    from seesr.weights.unet import save_seesr_model

    base = Path(model.pretrained_model_name_or_path)
    for part in SD_PARTS:
        if (base / part).is_dir():
            _link_or_copy(base / part, folder / part)
    if (base / "model_index.json").is_file():
        _link_or_copy(base / "model_index.json", folder / "model_index.json")
    save_seesr_model(unet, folder / "unet", layout="official")
    save_seesr_model(controlnet, folder / "controlnet", layout="official")
    ram = Path(model.ram_model_path)
    if ram.is_file():
        _link_or_copy(ram, folder / "ram" / "ram_swin_large_14m.pth")
        if model.dape_model_path:
            _link_or_copy(Path(model.dape_model_path), folder / "ram" / "DAPE.pth")
        if model.ram_config_dir:
            _link_or_copy(Path(model.ram_config_dir), folder / "ram" / "configs")


def export_seesr_model(
    unet: Any, controlnet: Any, model: SeeSRModelConfig, bundle_dir: Path, official_dir: Path, parts: dict[str, Any]
) -> Path:
    """Write the trained UNet/ControlNet as a release-layout folder and as our bundle; returns ``bundle_dir``.

    Args:
        unet, controlnet: the trained models (unwrapped).
        model: the model section of the config (paths of the frozen parts).
        bundle_dir: destination of the converted bundle.
        official_dir: destination of the release-layout folder.
        parts: the frozen components (``vae``, ``text_encoder``, ``tokenizer``, ``noise_scheduler``, ``tagger``).
    """
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline

    _write_release_folder(unet, controlnet, model, official_dir)
    pipeline = SeeSRPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=unet,
        controlnet=controlnet,
        scheduler=parts["noise_scheduler"],
        tagger=parts["tagger"],
    )
    pipeline.save_pretrained(bundle_dir)
    logger.info("wrote %s (bundle) and %s (official layout)", bundle_dir, official_dir)
    return bundle_dir
