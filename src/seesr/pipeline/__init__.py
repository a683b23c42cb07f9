"""Inference: :class:`~seesr.pipeline.pipeline_seesr.SeeSRPipeline` and its pure building blocks
(``tiling``, ``color_fix``, ``vae_tiling``, ``preprocess``) and the folder loop ``batch.upscale_files``.

Submodules are imported explicitly (``from seesr.pipeline.pipeline_seesr import SeeSRPipeline``); this package
imports nothing heavy by itself.
"""
