"""Upscale a list of files into a folder: the loop behind ``seesr upscale``.

:func:`upscale_files` is deliberately a plain function of ``(pipeline, files, outdir, settings)`` so that a later
multi-GPU runner can call it once per process on its shard of the files. It never raises for a bad input: every
file gets a :class:`FileResult` (``ok`` / ``skipped`` / ``failed`` with a one-line message) and the other files are
still written. Outputs are written atomically and never onto an input file.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from seesr import __version__
from seesr.pipeline.preprocess import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT, process_size_for
from seesr.utils.device import free_accelerator_memory as _free_accelerator_memory
from seesr.utils.device import is_accelerator_oom as _is_oom
from seesr.utils.images import DEFAULT_MAX_INPUT_PIXELS, ImageReadError, load_image, save_image_atomic

logger = logging.getLogger(__name__)

MIN_RETRY_TILE = 8


@dataclass
class UpscaleSettings:
    """Generation settings shared by every file of a run (CLI flag names in brackets)."""

    scale: int = 4  # --scale
    steps: int = 50  # --steps
    guidance: float = 5.5  # --guidance
    seed: int | None = None  # --seed (None: a random seed per image, recorded in the PNG)
    prompt: str = ""  # --prompt
    added_prompt: str = DEFAULT_ADDED_PROMPT  # --added-prompt
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # --negative-prompt
    use_tags: bool = True  # --no-tags
    color_fix: str = "adain"  # --color-fix
    process_size: int = 512  # --process-size
    latent_tile_size: int | str = 96  # --latent-tile-size
    latent_tile_overlap: int = 4  # --latent-tile-overlap
    conditioning_scale: float = 1.0  # --conditioning-scale
    start_point: str = "lr"  # --start-point
    max_input_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS  # --max-input-pixels


@dataclass
class FileResult:
    """Outcome for one input file."""

    source: Path
    output: Path | None
    status: str  # "ok", "skipped" or "failed"
    message: str = ""
    seed: int | None = None
    seconds: float = 0.0


@dataclass
class UpscaleReport:
    results: list[FileResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0


def plan_outputs(files: Sequence[Path], outdir: Path, scale: int) -> dict[Path, Path]:
    """``OUTDIR/<stem>.png`` per input, disambiguated when stems collide (``<stem>_<ext>.png``) and moved aside
    (``<name>_x<scale>.png``) when it would be an input file itself (OUTDIR = input folder)."""
    stems = Counter(file.stem for file in files)
    inputs = {file.resolve() for file in files}
    plan: dict[Path, Path] = {}
    used: set[Path] = set()
    for file in files:
        name = file.stem if stems[file.stem] == 1 else f"{file.stem}_{file.suffix.lstrip('.').lower() or 'noext'}"
        target = outdir / f"{name}.png"
        if target.resolve() in inputs or target.resolve() in used:
            target = outdir / f"{name}_x{scale}.png"
        counter = 2
        while target.resolve() in inputs or target.resolve() in used:
            target = outdir / f"{name}_x{scale}_{counter}.png"
            counter += 1
        used.add(target.resolve())
        plan[file] = target
    return plan


def png_metadata(
    settings: UpscaleSettings, prompt: str, tags: list[str], seed: int | None, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """PNG text chunks: the exact prompt, tags, seed, and every setting as JSON under ``seesr``."""
    record = asdict(settings)
    record.update(seed=seed, version=__version__, **(extra or {}))
    return {
        "prompt": prompt,
        "negative_prompt": settings.negative_prompt,
        "tags": ", ".join(tags),
        "seed": "" if seed is None else str(seed),
        "seesr": json.dumps(record, sort_keys=True, default=str),
        "Software": f"seesr {__version__}",
    }


def upscale_image(pipe: Any, image: Image.Image, settings: UpscaleSettings, seed: int, tile_size: int | str) -> Any:
    """One pipeline call with the run settings; returns the :class:`SeeSRPipelineOutput`."""
    return pipe(
        image,
        prompt=settings.prompt,
        added_prompt=settings.added_prompt,
        negative_prompt=settings.negative_prompt,
        use_tags=settings.use_tags,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        conditioning_scale=settings.conditioning_scale,
        upscale=settings.scale,
        process_size=settings.process_size,
        start_point=settings.start_point,
        latent_tile_size=tile_size,
        latent_tile_overlap=settings.latent_tile_overlap,
        color_fix=settings.color_fix,
        seed=seed,
    )


def _upscale_with_retries(pipe: Any, image: Image.Image, settings: UpscaleSettings, seed: int) -> Any:
    """Run the pipeline; on an accelerator out-of-memory error retry with halved latent (and VAE) tiles."""
    tile: int | str = settings.latent_tile_size
    saved_vae_tiling = getattr(pipe, "vae_tiling", None)
    try:
        while True:
            try:
                return upscale_image(pipe, image, settings, seed, tile)
            except Exception as error:
                if not _is_oom(error):
                    raise
                if getattr(pipe, "_fast_predictor", None) is not None:
                    pipe._fast_predictor = None  # release the fast path's CUDA graphs (their memory pools) too
                _free_accelerator_memory()
                current = tile if isinstance(tile, int) else _resolved_auto_tile(pipe)
                width, height = process_size_for(*image.size, settings.scale, settings.process_size)
                factor = getattr(pipe, "vae_scale_factor", 8)
                # a tile as large as the latent's short side means no real tiling: start halving from there
                current = min(current, height // factor, width // factor)
                if current // 2 < MIN_RETRY_TILE:
                    raise
                tile = current // 2
                if saved_vae_tiling is not None:
                    from dataclasses import replace

                    pipe.vae_tiling = replace(
                        pipe.vae_tiling,
                        encoder_tile_size=max(128, pipe.vae_tiling.encoder_tile_size // 2),
                        decoder_tile_size=max(16, pipe.vae_tiling.decoder_tile_size // 2),
                    )
                logger.warning("out of memory; retrying with latent tile size %d", tile)
    finally:
        if saved_vae_tiling is not None:
            pipe.vae_tiling = saved_vae_tiling


def _resolved_auto_tile(pipe: Any) -> int:
    from seesr.pipeline.pipeline_seesr import auto_latent_tile_size

    return auto_latent_tile_size(pipe.unet, pipe._execution_device, pipe.unet.dtype)


def upscale_files(
    pipe: Any,
    files: Sequence[str | Path],
    outdir: str | Path,
    settings: UpscaleSettings,
    *,
    skip_existing: bool = False,
    show_progress: bool = True,
    metadata_extra: dict[str, Any] | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    output_plan: Mapping[Path, Path] | None = None,
) -> UpscaleReport:
    """Upscale ``files`` into ``outdir`` (``<stem>.png``); one :class:`FileResult` per file, in order.

    Args:
        pipe: a loaded ``SeeSRPipeline``.
        files: input image paths (already expanded; see :func:`seesr.utils.images.iter_image_files`).
        outdir: output folder (created).
        settings: generation settings; ``settings.seed`` None draws a random seed per image.
        skip_existing: leave files whose output already exists untouched (status ``skipped``).
        show_progress: tqdm bar over images (the pipeline has its own bar over steps).
        metadata_extra: more fields for the PNG ``seesr`` metadata (e.g. model, device, dtype).
        on_result: called after each file (e.g. to print a line).
        output_plan: input -> output paths planned over *all* inputs of a run (:func:`plan_outputs`), for a process
            that handles only a shard of them (multi-GPU); its inputs are also protected from being overwritten.
    """
    from tqdm.auto import tqdm

    outdir = Path(outdir)
    paths = [Path(file) for file in files]
    plan = dict(output_plan) if output_plan is not None else plan_outputs(paths, outdir, settings.scale)
    protected = list(plan) if output_plan is not None else paths
    report = UpscaleReport()
    for source in tqdm(paths, desc="images", unit="image", disable=not show_progress):
        target = plan[source]
        started = time.perf_counter()
        if skip_existing and target.exists():
            result = FileResult(source, target, "skipped", "output exists")
        else:
            result = _process_one(pipe, source, target, settings, protected, metadata_extra)
        result.seconds = time.perf_counter() - started
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    return report


def _process_one(
    pipe: Any,
    source: Path,
    target: Path,
    settings: UpscaleSettings,
    inputs: Sequence[Path],
    metadata_extra: dict[str, Any] | None,
) -> FileResult:
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
    try:
        loaded = load_image(source, max_pixels=settings.max_input_pixels)
    except ImageReadError as error:
        return FileResult(source, None, "failed", str(error), seed)
    try:
        output = _upscale_with_retries(pipe, loaded.rgb, settings, seed)
    except (ValueError, RuntimeError) as error:
        if _is_oom(error):
            return FileResult(source, None, "failed", f"{source}: out of memory even with small tiles", seed)
        logger.debug("upscaling %s failed", source, exc_info=True)
        return FileResult(source, None, "failed", f"{source}: {error}", seed)
    image = output.images[0]
    if loaded.alpha is not None:  # alpha upscaled separately (bicubic) and kept
        image = image.convert("RGBA")
        image.putalpha(loaded.alpha.resize(image.size, Image.Resampling.BICUBIC))
    extra = {"input": source.name, "input_mode": loaded.source_mode, **(metadata_extra or {})}
    metadata = png_metadata(settings, output.prompts[0], output.tags[0], seed, extra)
    try:
        save_image_atomic(image, target, metadata=metadata, protected=inputs)
    except OSError as error:  # FileExistsError (would overwrite an input), permissions, full disk
        return FileResult(source, None, "failed", f"{target}: cannot write ({error})", seed)
    return FileResult(source, target, "ok", "", seed)
