"""Find and load a DAPE tagger from the folder layouts users have (shared by ``seesr tag`` and the pipeline).

Accepted locations (first match wins):

1. a folder written by ``DAPETagger.save_pretrained`` (``config.json`` naming ``DAPETagger`` + safetensors);
2. a bundle folder with such a folder under ``tagger/``;
3. a release-layout folder with ``ram/ram_swin_large_14m.pth`` (+ ``ram/DAPE.pth``, + ``ram/configs/`` for
   non-standard sizes, as the tiny test bundle has); ``DAPE.pth`` next to ``ram/`` is accepted too;
4. a folder holding ``ram_swin_large_14m.pth`` itself (the official ``preset/models`` layout, or the ``ram/``
   folder), with ``DAPE.pth`` and ``configs/`` beside it when present.

Without a path, :func:`default_tagger_source` looks in the default locations of :mod:`seesr.weights` (a converted
bundle in ``$SEESR_HOME/bundle``, then the official files in the local Hugging Face cache; no network access); if the
files are not there, :class:`TaggerNotFoundError` names them and says that ``seesr download`` fetches them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from seesr.tagger.convert import DAPE_CHECKPOINT_NAME, RAM_CHECKPOINT_NAME

logger = logging.getLogger(__name__)

#: Where the official weights live on the Hugging Face Hub (README "Weights").
RAM_REPO = ("xinyu1205/recognize_anything_model", RAM_CHECKPOINT_NAME)
DAPE_REPO = ("CSWRY/SeeSR", DAPE_CHECKPOINT_NAME)
TAGGER_SUBFOLDER = "tagger"


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


def _is_pretrained_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "DAPETagger"
    except (OSError, ValueError):
        return False


def _official_source(ram_dir: Path, extra_dape_dirs: tuple[Path, ...] = ()) -> TaggerSource:
    dape = next(
        (d / DAPE_CHECKPOINT_NAME for d in (ram_dir, *extra_dape_dirs) if (d / DAPE_CHECKPOINT_NAME).is_file()), None
    )
    configs = ram_dir / "configs"
    return TaggerSource(
        ram_path=ram_dir / RAM_CHECKPOINT_NAME, dape_path=dape, config_dir=configs if configs.is_dir() else None
    )


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
        return TaggerSource(pretrained_dir=root / TAGGER_SUBFOLDER)
    if (root / "ram" / RAM_CHECKPOINT_NAME).is_file():
        return _official_source(root / "ram", extra_dape_dirs=(root,))
    if (root / RAM_CHECKPOINT_NAME).is_file():
        return _official_source(root)
    raise TaggerNotFoundError(
        f"{root}: no tagger found; expected one of {TAGGER_SUBFOLDER}/config.json (converted bundle), "
        f"config.json of a DAPETagger, ram/{RAM_CHECKPOINT_NAME} (+ ram/{DAPE_CHECKPOINT_NAME}) or {RAM_CHECKPOINT_NAME}"
    )


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (``HF_HUB_CACHE`` or ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = (
        os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _cached(repo_id: str, filename: str, cache_dir: Path, revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir), revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def default_tagger_source() -> TaggerSource:
    """The default tagger, never downloading anything.

    With :mod:`seesr.weights` (the weights catalogue): a converted bundle's ``tagger/`` in ``$SEESR_HOME/bundle``,
    else the catalogue's RAM and DAPE files in the local Hugging Face cache (pinned revisions honoured). Without it,
    the same two files are looked up in the cache at their default revision. Raises :class:`TaggerNotFoundError`
    naming the missing files when the RAM checkpoint is not there.
    """
    try:
        from seesr.weights import catalog, resolve
    except ImportError:  # weights catalogue not available: plain cache lookup of the two official files
        cache_dir = _hf_cache_dir()
        ram, dape = _cached(*RAM_REPO, cache_dir), _cached(*DAPE_REPO, cache_dir)
        if ram is None:
            missing = [f"{r}/{f}" for (r, f), p in ((RAM_REPO, ram), (DAPE_REPO, dape)) if p is None]
            raise TaggerNotFoundError(
                f"tagger weights not found in the Hugging Face cache {cache_dir} (missing: {', '.join(missing)}); "
                "run `seesr download` to fetch them, or pass --model FOLDER"
            ) from None
        return TaggerSource(ram_path=ram, dape_path=dape)

    bundle_tagger = resolve.default_bundle_dir() / TAGGER_SUBFOLDER
    if _is_pretrained_dir(bundle_tagger):
        return TaggerSource(pretrained_dir=bundle_tagger)
    cache_dir = resolve.hf_cache_dir()
    pins = catalog.pinned_revisions()
    found: dict[str, Path] = {}
    missing = []
    for entry in catalog.files_for("ram"):
        path = resolve.cached_file(entry, pins.get(entry.repo_id), cache_dir)
        if path is None:
            missing.append(entry)
        else:
            found[Path(entry.target).name] = path
    if RAM_CHECKPOINT_NAME not in found:
        raise TaggerNotFoundError(resolve.missing_files_message(missing, cache_dir))
    return TaggerSource(ram_path=found[RAM_CHECKPOINT_NAME], dape_path=found.get(DAPE_CHECKPOINT_NAME))


def load_tagger(
    path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    require_dape: bool = False,
):
    """Load a :class:`~seesr.tagger.dape.DAPETagger` from ``path`` (or the default location), in eval mode.

    ``device`` None = CPU; ``dtype`` None = float32 (the official test script's tagger precision; the LoRA merge is
    float32 regardless). Without ``DAPE.pth`` the plain RAM tagger is returned with a warning, or
    :class:`TaggerNotFoundError` when ``require_dape`` is set.
    """
    from seesr.tagger.dape import DAPETagger

    source = resolve_tagger_source(path) if path is not None else default_tagger_source()
    dtype = dtype or torch.float32
    if source.pretrained_dir is not None:
        tagger = DAPETagger.from_pretrained(source.pretrained_dir, torch_dtype=dtype)
    else:
        if source.dape_path is None:
            if require_dape:
                raise TaggerNotFoundError(f"{DAPE_CHECKPOINT_NAME} not found next to {source.ram_path}")
            logger.warning(
                "%s not found next to %s: using plain RAM without the DAPE LoRA", DAPE_CHECKPOINT_NAME, source.ram_path
            )
        tagger = DAPETagger.from_ram_checkpoints(source.ram_path, source.dape_path, source.config_dir, dtype=dtype)
    logger.debug("tagger loaded from %s", source.describe())
    return tagger.to(device or "cpu").eval()
