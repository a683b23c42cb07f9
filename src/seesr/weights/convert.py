"""Turn a release-layout folder (or the default download location) into a converted bundle.

The bundle is a diffusers-style folder that :meth:`SeeSRPipeline.from_pretrained` loads without unpickling anything::

    OUT/model_index.json          {"_class_name": "SeeSRPipeline", ...}
    OUT/scheduler/                DDPMScheduler config (the class SeeSR really uses)
    OUT/text_encoder/ tokenizer/ vae/       stock transformers / diffusers folders, safetensors
    OUT/unet/ controlnet/         our layout (seesr.weights.unet.save_seesr_model): config.json + seesr_config.json +
                                  diffusion_pytorch_model.safetensors
    OUT/tagger/                   DAPETagger.save_pretrained (RAM Swin-L + tagging head, DAPE LoRA merged)
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
from seesr.weights.resolve import BUNDLE_CLASS_NAME, ModelLocation, resolve_model

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
    return out


def convert_model(
    source: str | os.PathLike | ModelLocation | None,
    out: str | os.PathLike,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Load ``source`` (release folder, bundle, or None = default location) and write a bundle to ``out``.

    The bundle is written to a temporary sibling folder and renamed into place, so an interrupted conversion never
    leaves a half-written bundle. ``out`` must not exist (or be empty) unless ``overwrite``.
    """
    from seesr.weights.loading import load_components

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty")
    location = source if isinstance(source, ModelLocation) else resolve_model(source)
    components = load_components(location, device="cpu", dtype=dtype or torch.float32, load_tagger=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_bundle(components, staging, source=location.description)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
