"""Reading and writing SeeSR UNet / ControlNet folders: the one place that touches their files.

Two folder layouts are understood, both diffusers-style (``config.json`` + ``diffusion_pytorch_model.*``):

* **official** (``seesr/unet``, ``seesr/controlnet`` of the released SeeSR weights): ``config.json`` carries
  ``"use_image_cross_attention": true`` and the RCA tensors are named ``X.image_attentions.j.*``
  (REFERENCE.md §8.2-8.3). Weights may be one ``.safetensors``, a ``.bin`` (read with ``weights_only=True``), or
  shards with an index json.
* **seesr** (written by :func:`save_seesr_model`): diffusers' stock ``config.json``, a ``seesr_config.json``
  (``{"image_cross_attention_dim": 512}``) and the state dict with our key names
  (``X.attentions.j.{text,image}_transformer.*``).

Loading never calls stock ``from_pretrained`` (on SeeSR folders it silently drops every RCA tensor). Instead:
config sizes checked -> stock ``from_config`` on the meta device + RCA (:func:`seesr.models.limits.empty_seesr_model`)
-> the checkpoint's keys, shapes and dtypes (safetensors headers; nothing loaded yet) checked against it -> tensors
read by :mod:`seesr.weights.reader` -> ``load_state_dict(strict=True, assign=True)``, so the weights are held in
memory once and a file that does not fit allocates nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file

from seesr.models.convert import official_to_seesr_keys, seesr_to_official_keys
from seesr.models.image_cross_attention import DEFAULT_IMAGE_CROSS_ATTENTION_DIM, get_image_cross_attention_dim
from seesr.models.limits import check_unet_config, empty_seesr_model
from seesr.utils.files import atomic_path
from seesr.utils.limits import ConfigLimitError
from seesr.weights.reader import (
    WeightReadError,
    check_tensors,
    read_json_config,
    read_state_dict,
    read_tensor_specs,
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
    "load_stock_unet",
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


#: A UNet/ControlNet folder that cannot be loaded as asked (the reader's error; the message is meant for the user).
CheckpointError = WeightReadError


# ---------------------------------------------------------------------------------------------------------------
# reading


def _merge(target: dict[str, Any], part: Mapping[str, Any], source: Path) -> None:
    duplicates = target.keys() & part.keys()
    if duplicates:
        raise CheckpointError(f"{source} repeats tensors already read from another shard: {sorted(duplicates)[:5]}")
    target.update(part)


def _weight_files(folder: Path) -> tuple[list[Path], str]:
    """The weight files of ``folder`` (one file or the shards of an index) and a description of where they are."""
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single], single.name
    for index_name in (SAFETENSORS_INDEX_NAME, BIN_INDEX_NAME):
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = read_json_config(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path} has no 'weight_map'")
            shards = [folder / name for name in sorted(set(map(str, weight_map.values())))]
            for shard in shards:
                if shard.parent != folder or not shard.is_file():
                    raise CheckpointError(f"shard {shard.name} listed in {index_name} is missing from {folder}")
            return shards, index_name
    if (folder / WEIGHTS_NAME_BIN).is_file():
        return [folder / WEIGHTS_NAME_BIN], WEIGHTS_NAME_BIN
    # Odd names seen in the wild (e.g. "diffusion_pytorch_model-001.safetensors" from re-zipped downloads).
    pieces = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    if pieces:
        return pieces, ", ".join(piece.name for piece in pieces)
    raise CheckpointError(
        f"no weights in {folder}: expected {WEIGHTS_NAME} (or {WEIGHTS_NAME_BIN}, or shards with an index json); "
        f"found {sorted(p.name for p in folder.iterdir())[:_MAX_LISTED]}"
    )


def _read_specs(files: list[Path]) -> dict[str, Any]:
    """Shapes and dtypes of every tensor: safetensors headers only; PyTorch files memory-mapped."""
    specs: dict[str, Any] = {}
    for file in files:
        part = read_tensor_specs(file) if file.suffix == ".safetensors" else read_state_dict(file, mmap=True)
        _merge(specs, part, file)
    return specs


def _read_weights(files: list[Path], device: str) -> dict[str, torch.Tensor]:
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        _merge(state_dict, read_state_dict(file, device=device), file)
    return state_dict


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


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value[0])


def _infer_image_dim(state_dict: Mapping[str, Any]) -> int | None:
    for key, value in state_dict.items():
        if _RCA_MARKER in key and key.endswith(".attn2.to_k.weight"):
            return int(_shape(value)[1])
    return None


def _read_config(folder: Path, model_class: type) -> tuple[dict[str, Any], bool, int | None]:
    """``config.json`` (class checked), the official RCA flag and the width stored in ``seesr_config.json``."""
    config = read_json_config(folder / CONFIG_NAME)
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
        seesr_config = read_json_config(folder / SEESR_CONFIG_NAME)
        try:
            stored_dim = int(seesr_config["image_cross_attention_dim"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{folder / SEESR_CONFIG_NAME} has no valid 'image_cross_attention_dim'") from error
    return config, official_flag, stored_dim


def _rca_width(
    folder: Path,
    specs: Mapping[str, Any],
    official_flag: bool,
    stored_dim: int | None,
    requested: int | None,
    allow_missing_rca: bool,
    model_class: type,
) -> tuple[int, bool]:
    """The RCA width and whether the RCA layers are fresh (a stock checkpoint started with ``allow_missing_rca``)."""
    if any(_RCA_MARKER in key for key in specs):
        dim = stored_dim or _infer_image_dim(specs) or DEFAULT_IMAGE_CROSS_ATTENTION_DIM
        if requested is not None and requested != dim:
            raise CheckpointError(f"{folder} has image cross-attention of width {dim}, not the requested {requested}")
        return dim, False
    if official_flag or stored_dim is not None:
        return stored_dim or requested or DEFAULT_IMAGE_CROSS_ATTENTION_DIM, False
    if allow_missing_rca:
        dim = requested or DEFAULT_IMAGE_CROSS_ATTENTION_DIM
        logger.info("%s has no image cross-attention weights; initialising them freshly (width %d)", folder, dim)
        return dim, True
    kind = "unet" if model_class is UNet2DConditionModel else "controlnet"
    raise CheckpointError(
        f"{folder} holds a stock diffusers {model_class.__name__} without SeeSR's image cross-attention (RCA) "
        f"layers (no '{OFFICIAL_FLAG}' in {CONFIG_NAME}, no image_attentions tensors); pass the SeeSR "
        f"'{kind}' folder, or use allow_missing_rca=True to start training from stock weights"
    )


def _renamed(state_dict: Mapping[str, Any], source: Path) -> dict[str, Any]:
    try:
        return official_to_seesr_keys(state_dict)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error


def _empty_model(
    folder: Path, model_class: type[ModelT], config: dict[str, Any], dim: int | None, fresh: bool = False
) -> ModelT:
    try:
        check_unet_config(config, dim, source=folder / CONFIG_NAME)
        return empty_seesr_model(model_class, config, dim, fresh_rca=fresh)
    except ConfigLimitError as error:
        raise CheckpointError(str(error)) from None
    except Exception as error:  # diffusers raises ValueError/TypeError/KeyError on broken configs
        raise CheckpointError(
            f"{folder / CONFIG_NAME} is not a valid {model_class.__name__} config: {error}"
        ) from None


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
        CheckpointError: unreadable folder or file, a config with insane sizes, wrong model class, stock weights
            without ``allow_missing_rca``, or any missing / unexpected / mis-shaped / non-float tensor (listed).
    """
    kind = "unet" if model_class is UNet2DConditionModel else "controlnet"
    folder = _resolve_folder(path, kind)
    device = torch.device(device) if device is not None else torch.device("cpu")

    # 1. Config, and the checkpoint's shapes and dtypes (headers only), renamed to our layout.
    config, official_flag, stored_dim = _read_config(folder, model_class)
    files, source = _weight_files(folder)
    specs = _renamed(_read_specs(files), folder / source)
    dim, fresh_rca = _rca_width(
        folder, specs, official_flag, stored_dim, image_cross_attention_dim, allow_missing_rca, model_class
    )

    # 2. Sizes checked, architecture on the meta device, every key/shape/dtype compared: nothing allocated yet.
    model = _empty_model(folder, model_class, config, dim, fresh_rca)
    expected = {key: value for key, value in model.state_dict().items() if not (fresh_rca and _RCA_MARKER in key)}
    check_tensors(
        specs, expected, source=f"{folder / source} ({model_class.__name__} of {CONFIG_NAME}; keys in seesr layout)"
    )

    # 3. Read, cast tensor by tensor (peak memory ~ one model), then assign instead of copying.
    state_dict = _renamed(_read_weights(files, "cpu" if device.type == "meta" else str(device)), folder / source)
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
    return model.eval()


_OFFICIAL_RCA = re.compile(r"(^|\.)image_attentions\.\d+\.")


def _stock_keys(state_dict: Mapping[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """A UNet state dict in either layout -> the stock diffusers keys, RCA tensors left out (listed at DEBUG level
    when ``folder`` is given)."""
    official = seesr_to_official_keys(state_dict)
    unused = [key for key in official if _OFFICIAL_RCA.search(key)]
    if unused and folder is not None:
        logger.debug("%s: %d RCA tensors were not used: %s", folder, len(unused), _listing(unused))
    return {key: value for key, value in official.items() if not _OFFICIAL_RCA.search(key)}


def load_stock_unet(
    path: str | os.PathLike, dtype: torch.dtype | None = torch.float32, device: str | torch.device | None = None
) -> UNet2DConditionModel:
    """A stock diffusers UNet (the SD-2-base start of stage 2) from a UNet folder, strictly and through the reader.

    A SeeSR UNet folder (official or our layout) is accepted too: its SD-2 weights are used, its RCA tensors left
    out. Config sizes, keys, shapes and dtypes are checked before any tensor is read, as in :func:`load_seesr_model`.
    """
    folder = _resolve_folder(path, "unet")
    device = torch.device(device) if device is not None else torch.device("cpu")
    config, _, _ = _read_config(folder, UNet2DConditionModel)
    files, source = _weight_files(folder)
    model = _empty_model(folder, UNet2DConditionModel, config, None)
    check_tensors(
        _stock_keys(_read_specs(files), folder), model.state_dict(), source=f"{folder / source} (UNet2DConditionModel)"
    )
    state_dict = _stock_keys(_read_weights(files, str(device)))
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    torch.nn.Module.to(model, device=device)
    return model.eval()


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
    with atomic_path(destination) as temporary:
        write(temporary)


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
