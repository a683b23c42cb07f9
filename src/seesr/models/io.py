"""Reading and writing SeeSR UNet / ControlNet weights: the one place that touches their files.

Two folder layouts are understood, both diffusers-style (``config.json`` + ``diffusion_pytorch_model.*``):

* **official** (``seesr/unet``, ``seesr/controlnet`` of the released SeeSR weights): ``config.json`` carries
  ``"use_image_cross_attention": true`` and the RCA tensors are named ``X.image_attentions.j.*``
  (REFERENCE.md §8.2-8.3). Weights may be one ``.safetensors``, a ``.bin`` (read with ``weights_only=True``), or
  shards with an index json.
* **seesr** (written by :func:`save_seesr_model`): diffusers' stock ``config.json``, a ``seesr_config.json``
  (``{"image_cross_attention_dim": 512}``) and the state dict with our key names
  (``X.attentions.j.{text,image}_transformer.*``).

Loading never calls stock ``from_pretrained`` (on SeeSR folders it silently drops every RCA tensor). Instead:
stock ``from_config`` on the meta device -> :func:`~seesr.models.image_cross_attention.add_image_cross_attention`
-> key rename -> every key and shape checked -> ``load_state_dict(strict=True, assign=True)``, so the weights are
held in memory once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seesr.models.convert import official_to_seesr_keys, seesr_to_official_keys
from seesr.models.image_cross_attention import (
    DEFAULT_IMAGE_CROSS_ATTENTION_DIM,
    add_image_cross_attention,
    get_image_cross_attention_dim,
)

__all__ = [
    "CONFIG_NAME",
    "OFFICIAL_FLAG",
    "SEESR_CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "load_seesr_controlnet",
    "load_seesr_model",
    "load_seesr_unet",
    "save_seesr_model",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SEESR_CONFIG_NAME = "seesr_config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_NAME_BIN = "diffusion_pytorch_model.bin"
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
BIN_INDEX_NAME = "diffusion_pytorch_model.bin.index.json"
#: Boolean the official config.json uses to switch the RCA layers on.
OFFICIAL_FLAG = "use_image_cross_attention"

_WEIGHT_FILE = re.compile(r"^diffusion_pytorch_model.*\.(safetensors|bin)(\.index\.json)?$")
_RCA_MARKER = ".image_transformer."
_MAX_LISTED = 12

ModelT = TypeVar("ModelT", UNet2DConditionModel, ControlNetModel)
Layout = Literal["seesr", "official"]


class CheckpointError(ValueError):
    """A UNet/ControlNet folder that cannot be loaded as asked; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------------------------
# reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def _load_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"cannot read {path} (incomplete download or not a safetensors file?): {error}"
        ) from error


def _load_bin(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # pickle/zip/unsafe-global errors all mean "not a usable weights file"
        raise CheckpointError(
            f"cannot read {path} as a plain PyTorch state dict (weights_only=True): {error}"
        ) from error
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a flat {{name: tensor}} state dict")
    return dict(data)


def _merge(target: dict[str, torch.Tensor], part: Mapping[str, torch.Tensor], source: Path) -> None:
    duplicates = target.keys() & part.keys()
    if duplicates:
        raise CheckpointError(f"{source} repeats tensors already read from another shard: {sorted(duplicates)[:5]}")
    target.update(part)


def _load_sharded(index_path: Path, device: str) -> dict[str, torch.Tensor]:
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no 'weight_map'")
    state_dict: dict[str, torch.Tensor] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = index_path.parent / shard_name
        if not shard.is_file():
            raise CheckpointError(
                f"shard {shard_name} listed in {index_path.name} is missing from {index_path.parent}"
            )
        part = _load_safetensors(shard, device) if shard.suffix == ".safetensors" else _load_bin(shard, device)
        _merge(state_dict, part, shard)
    return state_dict


def _read_weights(folder: Path, device: str) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of ``folder`` and a description of where they came from."""
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return _load_safetensors(single, device), single.name
    for index_name in (SAFETENSORS_INDEX_NAME, BIN_INDEX_NAME):
        if (folder / index_name).is_file():
            return _load_sharded(folder / index_name, device), index_name
    if (folder / WEIGHTS_NAME_BIN).is_file():
        return _load_bin(folder / WEIGHTS_NAME_BIN, device), WEIGHTS_NAME_BIN
    # Odd names seen in the wild (e.g. "diffusion_pytorch_model-001.safetensors" from re-zipped downloads).
    pieces = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    if pieces:
        state_dict: dict[str, torch.Tensor] = {}
        for piece in pieces:
            _merge(state_dict, _load_safetensors(piece, device), piece)
        return state_dict, ", ".join(piece.name for piece in pieces)
    raise CheckpointError(
        f"no weights in {folder}: expected {WEIGHTS_NAME} (or {WEIGHTS_NAME_BIN}, or shards with an index json); "
        f"found {sorted(p.name for p in folder.iterdir())[:_MAX_LISTED]}"
    )


def _resolve_folder(path: str | os.PathLike, kind: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(f"{kind} folder {folder} does not exist")
    if folder.is_file():
        raise CheckpointError(f"{folder} is a file; pass the {kind} folder that holds {CONFIG_NAME} and the weights")
    if not (folder / CONFIG_NAME).is_file():
        hint = ""
        if (folder / kind / CONFIG_NAME).is_file():
            hint = f" (did you mean {folder / kind}?)"
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}; it is not a diffusers {kind} folder{hint}")
    return folder


def _listing(keys: set[str] | list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def _infer_image_dim(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    for key, value in state_dict.items():
        if _RCA_MARKER in key and key.endswith(".attn2.to_k.weight"):
            return int(value.shape[1])
    return None


def load_seesr_model(
    path: str | os.PathLike,
    model_class: type[ModelT],
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device | None = None,
    *,
    allow_missing_rca: bool = False,
    image_cross_attention_dim: int | None = None,
) -> ModelT:
    """Load a SeeSR UNet or ControlNet folder (official or seesr layout) strictly.

    Args:
        path: the ``unet/`` or ``controlnet/`` folder (``config.json`` + weights).
        model_class: ``UNet2DConditionModel`` or ``ControlNetModel``.
        dtype: dtype of every floating-point tensor (None keeps the stored dtypes).
        device: where the weights are placed (None: CPU).
        allow_missing_rca: accept a stock diffusers folder without RCA tensors; the RCA layers are then freshly
            initialised (the SeeSR training start). Every other tensor must still be present.
        image_cross_attention_dim: RCA width for such a stock folder (default 512); for SeeSR folders it is read
            from the checkpoint and, if given, must agree.

    Returns:
        The model with RCA layers, in eval mode.

    Raises:
        CheckpointError: unreadable folder, wrong model class, stock weights without ``allow_missing_rca``, or any
            missing / unexpected / mis-shaped tensor (all listed in the message).
    """
    kind = "unet" if model_class is UNet2DConditionModel else "controlnet"
    folder = _resolve_folder(path, kind)
    device = torch.device(device) if device is not None else torch.device("cpu")

    # 1. Config: stock diffusers fields + SeeSR's flag (official) or seesr_config.json (ours).
    config = _read_json(folder / CONFIG_NAME)
    class_name = config.get("_class_name")
    if class_name is not None and class_name != model_class.__name__:
        other = "load_seesr_controlnet" if class_name == "ControlNetModel" else "load_seesr_unet"
        raise CheckpointError(
            f"{folder} holds a {class_name}, not a {model_class.__name__}"
            + (f"; load it with {other}" if class_name in ("ControlNetModel", "UNet2DConditionModel") else "")
        )
    official_flag = bool(config.pop(OFFICIAL_FLAG, False))
    stored_dim: int | None = None
    if (folder / SEESR_CONFIG_NAME).is_file():
        seesr_config = _read_json(folder / SEESR_CONFIG_NAME)
        try:
            stored_dim = int(seesr_config["image_cross_attention_dim"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{folder / SEESR_CONFIG_NAME} has no valid 'image_cross_attention_dim'") from error

    # 2. Weights, renamed to our layout (idempotent for folders we wrote).
    raw_state_dict, source = _read_weights(folder, "cpu" if device.type == "meta" else str(device))
    try:
        state_dict = official_to_seesr_keys(raw_state_dict)
    except ValueError as error:
        raise CheckpointError(f"{folder / source}: {error}") from error
    del raw_state_dict
    has_rca = any(_RCA_MARKER in key for key in state_dict)
    if has_rca:
        dim = stored_dim or _infer_image_dim(state_dict) or DEFAULT_IMAGE_CROSS_ATTENTION_DIM
        if image_cross_attention_dim is not None and image_cross_attention_dim != dim:
            raise CheckpointError(
                f"{folder} has image cross-attention of width {dim}, not the requested {image_cross_attention_dim}"
            )
    elif official_flag or stored_dim is not None:
        dim = stored_dim or image_cross_attention_dim or DEFAULT_IMAGE_CROSS_ATTENTION_DIM
    elif allow_missing_rca:
        dim = image_cross_attention_dim or DEFAULT_IMAGE_CROSS_ATTENTION_DIM
        logger.info("%s has no image cross-attention weights; initialising them freshly (width %d)", folder, dim)
    else:
        raise CheckpointError(
            f"{folder} holds a stock diffusers {model_class.__name__} without SeeSR's image cross-attention (RCA) "
            f"layers (no '{OFFICIAL_FLAG}' in {CONFIG_NAME}, no image_attentions tensors); pass the SeeSR "
            f"'{kind}' folder, or use allow_missing_rca=True to start training from stock weights"
        )
    fresh_rca = not has_rca and allow_missing_rca and not (official_flag or stored_dim is not None)

    # 3. Architecture on the meta device; fresh RCA layers (stock checkpoint) get real CPU tensors.
    with init_empty_weights():
        try:
            model = model_class.from_config(config)
        except Exception as error:  # diffusers raises ValueError/TypeError/KeyError on broken configs
            raise CheckpointError(
                f"{folder / CONFIG_NAME} is not a valid {model_class.__name__} config: {error}"
            ) from error
        if not fresh_rca:
            add_image_cross_attention(model, dim)
    if fresh_rca:
        add_image_cross_attention(model, dim)

    # 4. Every key and shape checked before anything is assigned.
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = expected.keys() - state_dict.keys()
    if fresh_rca:
        missing = {key for key in missing if _RCA_MARKER not in key}
    unexpected = state_dict.keys() - expected.keys()
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {shape}"
        for key, shape in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} with wrong shape: {_listing(mismatched)}")
        raise CheckpointError(
            f"{folder / source} does not match the {model_class.__name__} described by {CONFIG_NAME} "
            f"(keys shown in seesr layout): " + "; ".join(problems)
        )

    # 5. Cast tensor by tensor (peak memory ~ one model), then assign instead of copying.
    if dtype is not None:
        for key, value in state_dict.items():
            if value.is_floating_point() and value.dtype != dtype:
                state_dict[key] = value.to(dtype)
    model.load_state_dict(state_dict, strict=not fresh_rca, assign=True)
    del state_dict
    # nn.Module.to: ModelMixin.to logs a spurious fp32-modules warning whenever a dtype is passed (diffusers 0.42).
    if dtype is not None:
        torch.nn.Module.to(model, device=device, dtype=dtype)
    else:
        torch.nn.Module.to(model, device=device)
    if device.type != "meta":
        leftover = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
        if leftover:  # pragma: no cover - guards against a diffusers change creating unsaved parameters
            raise CheckpointError(f"tensors not initialised by {folder}: {_listing(leftover)}")
    model.eval()
    return model


def load_seesr_unet(
    path: str | os.PathLike,
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device | None = None,
    *,
    allow_missing_rca: bool = False,
    image_cross_attention_dim: int | None = None,
) -> UNet2DConditionModel:
    """Load a SeeSR UNet folder (official ``seesr/unet`` or saved by :func:`save_seesr_model`) strictly.

    The result is a stock ``UNet2DConditionModel`` whose cross-attention transformers are wrapped with RCA; call it
    with ``cross_attention_kwargs={IMAGE_KEY: dape_embeds}`` (dape_embeds (B, 145, 512)). See
    :func:`load_seesr_model` for the arguments and errors.
    """
    return load_seesr_model(
        path,
        UNet2DConditionModel,
        dtype,
        device,
        allow_missing_rca=allow_missing_rca,
        image_cross_attention_dim=image_cross_attention_dim,
    )


def load_seesr_controlnet(
    path: str | os.PathLike,
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device | None = None,
    *,
    allow_missing_rca: bool = False,
    image_cross_attention_dim: int | None = None,
) -> ControlNetModel:
    """Load a SeeSR ControlNet folder (official ``seesr/controlnet`` or saved by us) strictly.

    Call the result with ``controlnet_cond`` = LR image (B, 3, H, W) in [0, 1] and
    ``cross_attention_kwargs={IMAGE_KEY: dape_embeds}``. See :func:`load_seesr_model` for the arguments and errors.
    """
    return load_seesr_model(
        path,
        ControlNetModel,
        dtype,
        device,
        allow_missing_rca=allow_missing_rca,
        image_cross_attention_dim=image_cross_attention_dim,
    )


# ---------------------------------------------------------------------------------------------------------------
# writing


def _atomic_write(destination: Path, write: Any) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_seesr_model(
    model: UNet2DConditionModel | ControlNetModel,
    folder: str | os.PathLike,
    layout: Layout = "seesr",
    safe_serialization: bool = True,
) -> Path:
    """Write a UNet/ControlNet with RCA so that :func:`load_seesr_unet` / :func:`load_seesr_controlnet` restore it.

    Args:
        model: a model with image cross-attention (from a loader or the builder).
        folder: destination folder (created; weight files and ``seesr_config.json`` of an earlier save are
            replaced, other files are left alone).
        layout: ``"seesr"``: stock ``config.json`` + ``seesr_config.json`` + our key names.
            ``"official"``: ``config.json`` with ``"use_image_cross_attention": true`` and the official key names,
            loadable by the official SeeSR code.
        safe_serialization: ``diffusion_pytorch_model.safetensors`` if True, else ``diffusion_pytorch_model.bin``.

    Returns:
        The folder.
    """
    if layout not in ("seesr", "official"):
        raise ValueError(f"layout must be 'seesr' or 'official', got {layout!r}")
    dim = get_image_cross_attention_dim(model)
    if dim is None:
        raise ValueError(
            f"this {type(model).__name__} has no image cross-attention layers; save a stock model with save_pretrained"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    config = json.loads(model.to_json_string())
    config.pop("_use_default_values", None)
    config.pop("_name_or_path", None)
    state_dict = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    if any(value.is_meta for value in state_dict.values()):
        raise ValueError("cannot save a model whose weights are still on the meta device")
    if layout == "official":
        config[OFFICIAL_FLAG] = True
        state_dict = seesr_to_official_keys(state_dict)

    # Remove what an earlier save (other layout or format) left, so the folder is unambiguous.
    for stale in folder.iterdir():
        if stale.is_file() and (_WEIGHT_FILE.match(stale.name) or stale.name == SEESR_CONFIG_NAME):
            stale.unlink()

    if safe_serialization:
        _atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state_dict, tmp, metadata={"format": "pt"}))
    else:
        _atomic_write(folder / WEIGHTS_NAME_BIN, lambda tmp: torch.save(state_dict, tmp))
    if layout == "seesr":
        _atomic_write(
            folder / SEESR_CONFIG_NAME,
            lambda tmp: Path(tmp).write_text(json.dumps({"image_cross_attention_dim": dim}, indent=2) + "\n"),
        )
    _atomic_write(
        folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    )
    return folder
