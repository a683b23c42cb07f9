"""seesr: SeeSR (CVPR 2024) semantics-aware real-world image super-resolution.

The public API is imported lazily so that ``import seesr`` stays cheap (the CLI and tests import
torch/diffusers only when a command needs them).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "SeeSRPipeline": "seesr.pipeline.pipeline_seesr",
    "SeeSRPipelineOutput": "seesr.pipeline.pipeline_seesr",
    "DAPETagger": "seesr.tagger.dape",
    "TextImageTransformer2D": "seesr.models.image_cross_attention",
    "add_image_cross_attention": "seesr.models.image_cross_attention",
    "load_seesr_unet": "seesr.weights.unet",
    "load_seesr_controlnet": "seesr.weights.unet",
    "save_seesr_model": "seesr.weights.unet",
    "build_seesr_unet_and_controlnet": "seesr.models.build",
    "load_tagger": "seesr.weights.tagger",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'seesr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
