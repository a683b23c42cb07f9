"""Turn a release-layout folder (or the default download location) into a converted bundle.

The bundle is a diffusers-style folder that :meth:`SeeSRPipeline.from_pretrained` loads without unpickling anything::

    OUT/model_index.json          {"_class_name": "SeeSRPipeline", ...}
    OUT/scheduler/                DDPMScheduler config (the class SeeSR really uses)
    OUT/text_encoder/ tokenizer/ vae/       stock transformers / diffusers folders, safetensors
    OUT/unet/ controlnet/         our layout (seesr.weights.unet.save_seesr_model): config.json + seesr_config.json +
                                  diffusion_pytorch_model.safetensors
    OUT/tagger/                   DAPETagger.save_pretrained (RAM Swin-L + tagging head, DAPE LoRA merged)
    OUT/manifest.json             every file's sha256 and size (seesr.weights.manifest), checked on load
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from seesr import __version__
from seesr.weights.manifest import write_manifest
from seesr.weights.resolve import (
    BUNDLE_CLASS_NAME,
    ModelLocation,
    default_bundle_dir,
    hf_cache_dir,
    is_bundle,
    resolve_model,
)

COMPONENT_CLASSES = {
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "vae": ["diffusers", "AutoencoderKL"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "controlnet": ["diffusers", "ControlNetModel"],
    "tagger": ["seesr", "DAPETagger"],
}


def write_bundle(pipe: Any, out: str | os.PathLike, source: str = "") -> Path:
    """Save the components of a loaded ``SeeSRPipeline`` (or :class:`~seesr.weights.loading.SeeSRComponents`) as a
    converted bundle in ``out`` (created)."""
    from diffusers import __version__ as diffusers_version

    from seesr.weights.unet import save_seesr_model

    if pipe.tagger is None:
        raise ValueError("a bundle needs the DAPE tagger; load the pipeline with load_tagger=True")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe.scheduler.save_pretrained(out / "scheduler")
    pipe.text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    pipe.tokenizer.save_pretrained(out / "tokenizer")
    pipe.vae.save_pretrained(out / "vae", safe_serialization=True)
    save_seesr_model(pipe.unet, out / "unet")
    save_seesr_model(pipe.controlnet, out / "controlnet")
    pipe.tagger.save_pretrained(out / "tagger", safe_serialization=True)
    index = {
        "_class_name": BUNDLE_CLASS_NAME,
        "_diffusers_version": diffusers_version,
        "_seesr_version": __version__,
        "_note": "load with seesr.SeeSRPipeline.from_pretrained(folder); unet/controlnet use seesr's RCA layout",
        **({"_source": source} if source else {}),
        **COMPONENT_CLASSES,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    write_manifest(out)  # last: every file's sha256, checked when the bundle loads
    return out


class ConvertError(ValueError):
    """``seesr convert`` refuses its paths (the message names them); nothing was written or deleted."""


def _source_roots(source: str | os.PathLike | ModelLocation | None, location: ModelLocation) -> list[Path]:
    """Folders the conversion reads: the source folder, or the default locations, and every component folder."""
    if isinstance(source, (str, os.PathLike)):
        roots = [Path(source)]
    else:  # the default location: the bundle in $SEESR_HOME if that is what was read, else the Hugging Face cache
        roots = [default_bundle_dir() if location.kind == "bundle" else hf_cache_dir()]
    parts = (location.scheduler, location.text_encoder, location.tokenizer, location.vae, location.unet)
    parts += (location.controlnet, location.tagger, location.ram_checkpoint, location.dape_checkpoint)
    return roots + [Path(part) for part in parts if part is not None]


def check_output(out: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse an ``out`` that overlaps a source, is a regular file, or holds anything but a bundle/nothing."""
    target = out.resolve()
    for source in sources:
        source = source.resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            relation = "is" if target == source else "contains" if source.is_relative_to(target) else "is inside"
            raise ConvertError(f"OUT {out} {relation} the source {source}; choose an output folder outside it")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConvertError(f"OUT {out} is a file or a link, not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} already exists and is not empty")
        if not is_bundle(out):
            raise ConvertError(
                f"OUT {out} is not a converted SeeSR bundle; --overwrite only replaces a bundle, delete it yourself"
            )


def _publish(staging: Path, out: Path) -> None:
    """Give ``staging`` the user's normal permissions and rename it to ``out`` (an old bundle is removed after)."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp made it 0700
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_model(
    source: str | os.PathLike | ModelLocation | None,
    out: str | os.PathLike,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Load ``source`` (release folder, bundle, or None = default location) and write a bundle to ``out``.

    ``out`` may not be, contain or lie inside the source, nor be a file; it must not exist (or be empty) unless
    ``overwrite``, which replaces only an existing bundle. The bundle is written to a temporary sibling folder,
    given a manifest, and renamed into place at the end, so an interrupted conversion never leaves a half-written
    bundle and never touches the old one. Raises :class:`ConvertError` or ``FileExistsError`` before any work.
    """
    from seesr.weights.loading import load_components

    out = Path(out)
    location = source if isinstance(source, ModelLocation) else resolve_model(source)
    check_output(out, _source_roots(source, location), overwrite)
    components = load_components(location, device="cpu", dtype=dtype or torch.float32, load_tagger=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_bundle(components, staging, source=location.description)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
