"""The old home of the fast path, kept so that ``from seesr.pipeline.fast import ...`` goes on working.

There is one denoising loop (:mod:`seesr.pipeline.denoise`); "fast" is a preset of its execution config
(:mod:`seesr.pipeline.execution`). Import from those modules in new code.
"""

from __future__ import annotations

from seesr.pipeline.execution import (
    FastPathConfig,
    choose_tile_batch_size,
    enable_fast_path,
    enable_offload,
    fast_path_config_for,
    max_tile_batch_for_memory,
    resolve_tile_batch_size,
)

__all__ = [
    "FastPathConfig",
    "choose_tile_batch_size",
    "enable_fast_path",
    "enable_offload",
    "fast_path_config_for",
    "max_tile_batch_for_memory",
    "resolve_tile_batch_size",
]
