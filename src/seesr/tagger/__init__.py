"""DAPE tagger: RAM Swin-L + tagging head with the DAPE LoRA merged (hard and soft prompts for SeeSR).

Architecture and pure conversion only (no file is read here); :mod:`seesr.weights.tagger` finds and loads the
weights. Names are imported lazily so that ``import seesr.tagger.tags`` (used by the CLI) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DAPETagger": "seesr.tagger.dape",
    "DAPEOutput": "seesr.tagger.dape",
    "decode_tags": "seesr.tagger.dape",
    "preprocess_images": "seesr.tagger.dape",
    "apply_dape_lora": "seesr.tagger.lora",
    "export_dape_state_dict": "seesr.tagger.lora",
    "merge_dape_lora": "seesr.tagger.lora",
    "Tag": "seesr.tagger.tags",
    "TagResult": "seesr.tagger.tags",
    "load_tag_list": "seesr.tagger.tags",
    "load_class_thresholds": "seesr.tagger.tags",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'seesr.tagger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
