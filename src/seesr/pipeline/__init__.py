"""Inference: :class:`~seesr.pipeline.pipeline_seesr.SeeSRPipeline` and its building blocks: the one denoising loop
(``denoise``), its execution presets ``exact`` and ``fast`` (``execution``), the samplers (``schedulers``), and the
pure parts (``tiling``, ``color_fix``, ``vae_tiling``, ``preprocess``), plus the folder loop ``batch.upscale_files``.

Submodules are imported explicitly (``from seesr.pipeline.pipeline_seesr import SeeSRPipeline``); this package
imports nothing heavy by itself. ``ExecutionConfig`` (old name ``FastPathConfig``), ``EXACT`` and ``FAST`` are
available here lazily.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"ExecutionConfig", "FastPathConfig", "EXACT", "FAST", "PRESETS"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from seesr.pipeline import execution

        return getattr(execution, name)
    raise AttributeError(f"module 'seesr.pipeline' has no attribute {name!r}")
