"""The SD-turbo files for turbo mode: where they are, and the turbo UNet and scheduler read from them.

* :func:`find_turbo_folder` - the SD-turbo folder (explicit folder, ``MODEL/turbo``, Hugging Face cache);
* :func:`graft_rca` - the turbo UNet: SD-turbo's UNet (folder or model) with the SeeSR UNet's RCA layers
  (:func:`seesr.models.turbo.graft_rca`);
* :func:`turbo_scheduler` - the DDPM scheduler with trailing spacing from SD-turbo's scheduler config;
* :data:`TURBO_CATALOG` - the optional ``stabilityai/sd-turbo`` files (same layout as SD-2-base).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from seesr.models import turbo as turbo_models
from seesr.models.image_cross_attention import DEFAULT_IMAGE_CROSS_ATTENTION_DIM, get_image_cross_attention_dim
from seesr.weights.catalog import LICENSES, TURBO_CATALOG, TURBO_REPO
from seesr.weights.reader import read_json_config
from seesr.weights.resolve import MissingWeightsError, cached_file
from seesr.weights.unet import CheckpointError, load_seesr_unet

__all__ = ["TURBO_CATALOG", "TURBO_LICENSE", "TURBO_REPO", "find_turbo_folder", "graft_rca", "turbo_scheduler"]

TURBO_LICENSE = LICENSES[TURBO_REPO]


def _unet_folder(path: str | os.PathLike) -> Path:
    folder = Path(path).expanduser()
    if (folder / "unet" / "config.json").is_file():
        return folder / "unet"
    if (folder / "config.json").is_file():
        return folder
    raise CheckpointError(
        f"{folder} is neither an SD-turbo folder (with unet/config.json) nor a UNet folder (with config.json); "
        "download it with `seesr download --turbo`"
    )


def find_turbo_folder(turbo_model: str | os.PathLike | None = None, model: str | os.PathLike | None = None) -> Path:
    """The SD-turbo folder: ``turbo_model`` if given, else ``MODEL/turbo`` of a model folder, else the
    ``stabilityai/sd-turbo`` snapshot in the Hugging Face cache (never downloads).

    Raises:
        MissingWeightsError: nothing found; the message names the repository, the missing files, and where to put
            them.
    """
    if turbo_model is not None:
        folder = Path(turbo_model).expanduser()
        if not folder.is_dir():
            raise MissingWeightsError(f"SD-turbo folder {folder} does not exist")
        return folder
    if model is not None and (Path(model).expanduser() / "turbo" / "unet" / "config.json").is_file():
        return Path(model).expanduser() / "turbo"
    found = {entry.filename: cached_file(entry) for entry in TURBO_CATALOG}
    if all(path is not None for path in found.values()):
        return found["unet/config.json"].parents[1]  # the snapshot folder
    missing = [name for name, path in found.items() if path is None]
    raise MissingWeightsError(
        f"turbo mode needs the SD-turbo weights ({TURBO_REPO}, {TURBO_LICENSE}); missing: {', '.join(missing)}. "
        "Get them with `seesr download --turbo`, or put them in MODEL/turbo/ (e.g. MODEL/turbo/unet/) or pass "
        "--turbo-model FOLDER"
    )


def graft_rca(
    turbo_unet: str | os.PathLike | UNet2DConditionModel,
    seesr_unet: UNet2DConditionModel,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> UNet2DConditionModel:
    """SD-turbo's UNet with SeeSR's RCA layers copied in (see :func:`seesr.models.turbo.graft_rca`).

    ``turbo_unet`` is the SD-turbo folder (or its ``unet/`` folder: a stock diffusers UNet, loaded strictly apart
    from the RCA layers it lacks) or a model (modified in place). For a folder, ``dtype`` / ``device`` default to
    those of ``seesr_unet``. Raises ValueError (no RCA in ``seesr_unet``, different layouts) or
    :class:`~seesr.weights.unet.CheckpointError` (unusable folder).
    """
    if not isinstance(turbo_unet, UNet2DConditionModel):
        image_dim = get_image_cross_attention_dim(seesr_unet)
        if image_dim is None:
            raise ValueError("seesr_unet has no image cross-attention (RCA) layers to graft; pass the SeeSR UNet")
        reference = next(seesr_unet.parameters())
        turbo_unet = load_seesr_unet(
            _unet_folder(turbo_unet),
            dtype=dtype or reference.dtype,
            device=device or reference.device,
            allow_missing_rca=True,
            image_cross_attention_dim=image_dim or DEFAULT_IMAGE_CROSS_ATTENTION_DIM,
        )
    return turbo_models.graft_rca(turbo_unet, seesr_unet)


def turbo_scheduler(path: str | os.PathLike | None = None, **overrides: Any) -> DDPMScheduler:
    """DDPM with trailing spacing from ``path`` (an SD-turbo folder, a scheduler folder or config file; None: SD-2's
    schedule); see :func:`seesr.models.turbo.turbo_scheduler_from_config`."""
    stored = None
    if path is not None:
        location = Path(path).expanduser()
        candidates = [location, location / "scheduler_config.json", location / "scheduler" / "scheduler_config.json"]
        file = next((candidate for candidate in candidates if candidate.is_file()), None)
        if file is None:
            raise CheckpointError(f"no scheduler_config.json at {location}")
        stored = read_json_config(file)
    return turbo_models.turbo_scheduler_from_config(stored, **overrides)
