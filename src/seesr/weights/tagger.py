"""Find and load the DAPE tagger (shared by ``seesr tag``, ``seesr prepare``, training and the pipeline).

Accepted locations (first match wins):

1. a folder written by ``DAPETagger.save_pretrained`` (``config.json`` naming ``DAPETagger`` + safetensors);
2. a bundle folder with such a folder under ``tagger/``;
3. a release-layout folder with ``ram/ram_swin_large_14m.pth`` (+ ``ram/DAPE.pth``, + ``ram/configs/`` for
   non-standard sizes, as the tiny test bundle has); ``DAPE.pth`` next to ``ram/`` is accepted too;
4. a folder holding ``ram_swin_large_14m.pth`` itself (the official ``preset/models`` layout, or the ``ram/``
   folder), with ``DAPE.pth`` and ``configs/`` beside it when present.

Without a path, :func:`default_tagger_source` looks in the default locations (a converted bundle in
``$SEESR_HOME/bundle``, then the catalogue's files in the local Hugging Face cache; no network access); if the files
are not there, :class:`TaggerNotFoundError` names them and says that ``seesr download`` fetches them.

Every load goes the same way: the config's sizes are checked, the model is built on the meta device, the
checkpoint (read by :mod:`seesr.weights.reader`, converted by :mod:`seesr.tagger.convert`) is compared with it key
by key, shape by shape, and only then assigned.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seesr.tagger.convert import (
    DAPE_CHECKPOINT_NAME,
    OFFICIAL_CONFIG_FILES,
    RAM_CHECKPOINT_NAME,
    CheckpointError,
    convert_ram_state_dict,
    official_config,
)
from seesr.tagger.dape import DAPETagger, check_tagger_config
from seesr.utils.limits import ConfigLimitError
from seesr.weights.reader import (
    WeightReadError,
    check_tensors,
    read_json_config,
    read_state_dict,
    read_tensor_specs,
)

logger = logging.getLogger(__name__)

TAGGER_SUBFOLDER = "tagger"
TAGGER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

__all__ = [
    "TaggerNotFoundError",
    "TaggerSource",
    "convert_ram_to_safetensors",
    "default_tagger_source",
    "load_pretrained_tagger",
    "load_ram_tagger",
    "load_tagger",
    "load_tagger_source",
    "read_official_config",
    "resolve_tagger_source",
]


class TaggerNotFoundError(FileNotFoundError):
    """No tagger weights at the given (or default) location; the message lists what is missing."""


@dataclass(frozen=True)
class TaggerSource:
    """A resolved tagger location: either a ``save_pretrained`` folder or the official checkpoint files."""

    pretrained_dir: Path | None = None
    ram_path: Path | None = None
    dape_path: Path | None = None
    config_dir: Path | None = None

    def describe(self) -> str:
        if self.pretrained_dir is not None:
            return str(self.pretrained_dir)
        return f"{self.ram_path}" + (f" + {self.dape_path}" if self.dape_path else " (no DAPE LoRA)")


# ---------------------------------------------------------------------------------------------------------------
# finding the files


def _is_pretrained_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "DAPETagger"
    except (OSError, ValueError, AttributeError):
        return False


def _official_source(ram_dir: Path, extra_dape_dirs: tuple[Path, ...] = ()) -> TaggerSource:
    dape = next(
        (d / DAPE_CHECKPOINT_NAME for d in (ram_dir, *extra_dape_dirs) if (d / DAPE_CHECKPOINT_NAME).is_file()), None
    )
    configs = ram_dir / "configs"
    return TaggerSource(
        ram_path=ram_dir / RAM_CHECKPOINT_NAME, dape_path=dape, config_dir=configs if configs.is_dir() else None
    )


def _official_files_hint() -> str:
    """``ram_swin_large_14m.pth (xinyu1205/recognize_anything_model) and DAPE.pth (CSWRY/SeeSR)``, from the catalogue."""
    from seesr.weights.catalog import files_for

    entries = sorted(files_for("ram"), key=lambda entry: Path(entry.target).name != RAM_CHECKPOINT_NAME)
    return " and ".join(f"{Path(e.target).name} ({e.repo_id}: {e.filename})" for e in entries)


def resolve_tagger_source(path: str | os.PathLike) -> TaggerSource:
    """Resolve a user-given folder to a :class:`TaggerSource` (see the module docstring for the layouts)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise TaggerNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        raise TaggerNotFoundError(
            f"{root}: expected a folder (a converted tagger folder, a bundle, or a folder with ram/{RAM_CHECKPOINT_NAME})"
        )
    if _is_pretrained_dir(root):
        return TaggerSource(pretrained_dir=root)
    if _is_pretrained_dir(root / TAGGER_SUBFOLDER):
        from seesr.weights.manifest import verify_manifest
        from seesr.weights.resolve import MissingWeightsError, is_bundle

        if is_bundle(root):  # a converted bundle: its tagger files are checked against the bundle's manifest
            try:
                verify_manifest(root, only=TAGGER_SUBFOLDER)
            except MissingWeightsError as error:
                raise TaggerNotFoundError(str(error)) from None
        return TaggerSource(pretrained_dir=root / TAGGER_SUBFOLDER)
    if (root / "ram" / RAM_CHECKPOINT_NAME).is_file():
        return _official_source(root / "ram", extra_dape_dirs=(root,))
    if (root / RAM_CHECKPOINT_NAME).is_file():
        return _official_source(root)
    raise TaggerNotFoundError(
        f"{root}: no tagger found; expected one of {TAGGER_SUBFOLDER}/config.json (converted bundle), "
        f"config.json of a DAPETagger, ram/{RAM_CHECKPOINT_NAME} (+ ram/{DAPE_CHECKPOINT_NAME}) or {RAM_CHECKPOINT_NAME}. "
        f"Put {_official_files_hint()} in {root / 'ram'}, or get them with `seesr download`"
    )


def default_tagger_source() -> TaggerSource:
    """The default tagger, never downloading anything.

    A converted bundle's ``tagger/`` in ``$SEESR_HOME/bundle``, else the catalogue's RAM and DAPE files in the local
    Hugging Face cache (pinned or locked revisions, checked against the weights lock). Raises
    :class:`TaggerNotFoundError` naming the missing files (repository, file, and where to put them) when the RAM
    checkpoint is not there.
    """
    from seesr.weights import catalog, resolve

    bundle_tagger = resolve.default_bundle_dir() / TAGGER_SUBFOLDER
    if _is_pretrained_dir(bundle_tagger):
        return TaggerSource(pretrained_dir=bundle_tagger)
    cache_dir = resolve.hf_cache_dir()
    try:  # the weights lock's checks apply (seesr.weights.lock)
        cached, missing = resolve.find_cached(catalog.files_for("ram"), cache_dir=cache_dir)
    except resolve.MissingWeightsError as error:
        raise TaggerNotFoundError(str(error)) from None
    found = {Path(entry.target).name: path for entry, path in cached.items()}
    if RAM_CHECKPOINT_NAME not in found:
        raise TaggerNotFoundError(resolve.missing_files_message(missing, cache_dir))
    return TaggerSource(ram_path=found[RAM_CHECKPOINT_NAME], dape_path=found.get(DAPE_CHECKPOINT_NAME))


# ---------------------------------------------------------------------------------------------------------------
# loading


def read_official_config(config_dir: str | os.PathLike) -> dict[str, Any]:
    """DAPETagger config values from RAM's config folder (``q2l_config.json``, ``swin/config_swinL_384.json``)."""
    config_dir = Path(config_dir)
    missing = [name for name in OFFICIAL_CONFIG_FILES if not (config_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{config_dir}: missing official RAM config files {', '.join(missing)}")
    q2l, swin = (read_json_config(config_dir / name) for name in OFFICIAL_CONFIG_FILES)
    return official_config(q2l, swin, source=config_dir)


def _empty_tagger(config: Mapping[str, Any], source: str | os.PathLike) -> DAPETagger:
    """Sizes checked, then the tagger built on the meta device (nothing allocated, derived buffers included)."""
    try:
        check_tagger_config(config, source=source)
        with torch.device("meta"):
            return DAPETagger.from_config(dict(config))
    except ConfigLimitError as error:
        raise CheckpointError(str(error)) from None
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{source}: not a valid DAPETagger config ({error})") from None


def _assign(model: DAPETagger, state_dict: Mapping[str, torch.Tensor], device: str | torch.device) -> DAPETagger:
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    model.init_derived_buffers()  # the Swin masks and indices, on the device of the weights
    torch.nn.Module.to(model, device=device)
    return model.eval()


def load_ram_tagger(
    ram_path: str | os.PathLike,
    dape_path: str | os.PathLike | None = None,
    config_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DAPETagger:
    """The tagger from the official files, with the DAPE LoRA merged in float32 (inference needs no LoRA code).

    Args:
        ram_path: ``ram_swin_large_14m.pth`` (``{"model": state_dict}``), read with ``weights_only=True``.
        dape_path: ``DAPE.pth`` (flat LoRA dict) or None for plain RAM (the tagger of the training data).
        config_dir: folder with RAM's config files (``q2l_config.json``, ``swin/config_swinL_384.json``) for
            non-standard sizes; None = the official full-size model (Swin-L @ 384).
        dtype: dtype of the returned model (the merge itself is always float32).
        device: where the weights are placed.

    Loading is strict apart from the documented ignored keys (tag encoder, text decoder, derived Swin buffers;
    see :mod:`seesr.tagger.convert`). Raises FileNotFoundError or :class:`CheckpointError` (a
    :class:`~seesr.weights.reader.WeightReadError` for unreadable files).
    """
    config = read_official_config(config_dir) if config_dir is not None else {}
    model = _empty_tagger(config, config_dir or "the default DAPETagger config")
    ram_state = read_state_dict(ram_path, entry="model")
    dape_state = read_state_dict(dape_path) if dape_path is not None else None
    converted = convert_ram_state_dict(ram_state, dape_state, visual_encoder=model.visual_encoder)
    logger.debug(
        "RAM conversion: %d keys used, %d ignored, %d LoRA modules merged",
        len(converted.state_dict),
        len(converted.ignored),
        len(converted.merged_lora),
    )
    check_tensors(
        converted.state_dict, model.state_dict(), source=f"{ram_path} (DAPETagger of {config_dir or 'default config'})"
    )
    # Cast after the float32 merge; copy so nothing stays memory-mapped to the .pth file.
    state_dict = {key: value.to(dtype, copy=True) for key, value in converted.state_dict.items()}
    del ram_state, dape_state, converted
    return _assign(model, state_dict, device)


def _pretrained_weights(folder: Path) -> Path:
    for name in TAGGER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    pieces = sorted(folder.glob("*.safetensors"))
    if len(pieces) == 1:
        return pieces[0]
    raise CheckpointError(f"{folder}: no tagger weights ({TAGGER_WEIGHTS[0]}); re-create it with `seesr convert`")


def load_pretrained_tagger(
    folder: str | os.PathLike, dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu"
) -> DAPETagger:
    """A converted tagger folder (``DAPETagger.save_pretrained``: ``config.json`` + safetensors), strictly.

    The config's sizes are checked and the checkpoint's shapes and dtypes (its safetensors header) compared with the
    meta-device model before any tensor is read.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    model = _empty_tagger(read_json_config(config_path), config_path)
    weights = _pretrained_weights(folder)
    expected = model.state_dict()
    specs = read_tensor_specs(weights) if weights.suffix == ".safetensors" else read_state_dict(weights)
    check_tensors(specs, expected, source=f"{weights} (DAPETagger of {config_path})")
    state_dict = read_state_dict(weights, dtype=dtype)
    return _assign(model, state_dict, device)


def load_tagger_source(
    source: TaggerSource,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    require_dape: bool = False,
    plain_ram: bool = False,
) -> DAPETagger:
    """The tagger of a resolved :class:`TaggerSource`, in eval mode (``dtype`` None = float32).

    Without a DAPE checkpoint in ``source`` the tagger is plain RAM: an error with ``require_dape``, a warning
    unless ``plain_ram`` says that is what the caller wants (the official tags of ``seesr prepare``)."""
    dtype = dtype or torch.float32
    device = device or "cpu"
    if source.pretrained_dir is not None:
        tagger = load_pretrained_tagger(source.pretrained_dir, dtype=dtype, device=device)
    else:
        if source.dape_path is None:
            if require_dape:
                raise TaggerNotFoundError(
                    f"{DAPE_CHECKPOINT_NAME} not found next to {source.ram_path}: put {_official_files_hint()} in "
                    f"{source.ram_path.parent}, or get them with `seesr download`"
                )
            if not plain_ram:
                logger.warning(
                    "%s not found next to %s: using plain RAM without the DAPE LoRA",
                    DAPE_CHECKPOINT_NAME,
                    source.ram_path,
                )
        tagger = load_ram_tagger(source.ram_path, source.dape_path, source.config_dir, dtype=dtype, device=device)
    logger.debug("tagger loaded from %s", source.describe())
    return tagger


def load_tagger(
    path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    require_dape: bool = False,
) -> DAPETagger:
    """Load a :class:`~seesr.tagger.dape.DAPETagger` from ``path`` (or the default location), in eval mode.

    ``device`` None = CPU; ``dtype`` None = float32 (the official test script's tagger precision; the LoRA merge is
    float32 regardless). Without ``DAPE.pth`` the plain RAM tagger is returned with a warning, or
    :class:`TaggerNotFoundError` when ``require_dape`` is set.
    """
    source = resolve_tagger_source(path) if path is not None else default_tagger_source()
    return load_tagger_source(source, dtype=dtype, device=device, require_dape=require_dape)


def convert_ram_to_safetensors(
    ram_path: str | os.PathLike,
    dape_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    config_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Official ``ram_swin_large_14m.pth`` (+ ``DAPE.pth``) -> a ``save_pretrained`` folder (config + safetensors).

    The folder loads with :func:`load_pretrained_tagger` (no pickle, LoRA already merged). Returns ``out_dir``.
    """
    tagger = load_ram_tagger(ram_path, dape_path, config_dir=config_dir, dtype=dtype)
    out_dir = Path(out_dir)
    tagger.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


#: Errors a caller shows as one line (unreadable or mismatched tagger files).
TAGGER_LOAD_ERRORS = (TaggerNotFoundError, CheckpointError, WeightReadError)
