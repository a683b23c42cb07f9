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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from seesr import __version__
from seesr.pipeline.preprocess import (
    DEFAULT_ADDED_PROMPT,
    DEFAULT_MAX_OUTPUT_PIXELS,
    DEFAULT_NEGATIVE_PROMPT,
    ProcessingSizeError,
    check_processing_size,
    process_size_for,
)
from seesr.utils.device import available_memory, is_out_of_memory, release_memory
from seesr.utils.device import free_accelerator_memory as _free_accelerator_memory
from seesr.utils.device import is_accelerator_oom as _is_oom
from seesr.utils.files import file_sha256
from seesr.utils.images import (
    DEFAULT_MAX_INPUT_PIXELS,
    ImageReadError,
    LoadedImage,
    load_image,
    save_image_atomic,
)

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
    max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS  # --max-output-pixels (working and output size)
    check_memory: bool = True  # --no-memory-check turns the estimated-peak-memory refusal off
    extra_tags: tuple[str, ...] = ()  # --extra-tags
    remove_tags: tuple[str, ...] = ()  # --remove-tags


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


#: PNG text key holding the settings record; its presence marks a file that ``seesr upscale`` wrote
RECORD_KEY = "seesr"


def output_path(source: Path, outdir: Path, scale: int) -> Path:
    """Where the result for ``source`` goes; it depends on that input and OUTDIR only, never on the other inputs.

    ``OUTDIR/<stem>.png``; ``OUTDIR/<stem>_x<scale>.png`` when OUTDIR is the input's own folder (so that the result
    never replaces an input and a rerun finds it again).
    """
    if outdir.resolve() == source.parent.resolve():
        return outdir / f"{source.stem}_x{scale}.png"
    return outdir / f"{source.stem}.png"


def plan_outputs(files: Sequence[Path], outdir: Path, scale: int) -> dict[Path, Path]:
    """:func:`output_path` for every input (two inputs may share a target: see :func:`output_conflicts`)."""
    return {file: output_path(file, outdir, scale) for file in files}


def output_conflicts(plan: Mapping[Path, Path]) -> dict[Path, str]:
    """One-line refusals for inputs whose target an earlier input of the plan already claims, or which is an input.

    The plan covers every input of a run (also when each process takes a shard), so every process refuses the
    same inputs.
    """
    inputs = {file.resolve(): file for file in plan}
    claimed: dict[Path, Path] = {}
    conflicts: dict[Path, str] = {}
    for file, target in plan.items():
        key = target.resolve()
        if key in inputs:
            conflicts[file] = f"{file}: its output {target} would replace the input {inputs[key]}; rename one of them"
        elif key in claimed:
            conflicts[file] = (
                f"{file}: same output name as {claimed[key]} ({target}); rename one of them or upscale them into "
                "different -o folders"
            )
        else:
            claimed[key] = file
    return conflicts


def read_record(path: Path) -> dict[str, Any] | None:
    """The settings record of a PNG that ``seesr upscale`` wrote, or None (another file, or unreadable)."""
    try:
        with Image.open(path) as image:
            text = image.info.get(RECORD_KEY) if image.format == "PNG" else None
        record = json.loads(text) if isinstance(text, str) else None
    except (OSError, ValueError, SyntaxError):
        return None
    return record if isinstance(record, dict) else None


def split_seesr_outputs(files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``(inputs, earlier_outputs)``: PNGs carrying seesr's record were written by ``seesr upscale`` and are never
    taken as inputs (a rerun into the input folder must not upscale its own results)."""
    inputs: list[Path] = []
    outputs: list[Path] = []
    for file in files:
        is_output = file.suffix.lower() == ".png" and read_record(file) is not None
        (outputs if is_output else inputs).append(file)
    return inputs, outputs


def _complete_record(target: Path) -> dict[str, Any] | None:
    """The record of ``target`` if it is a complete, readable PNG that seesr wrote; else None."""
    try:
        if target.stat().st_size == 0:
            return None
        with Image.open(target) as image:
            image.verify()  # every chunk's CRC up to IEND: a truncated or damaged file fails here
    except (OSError, ValueError, SyntaxError):
        return None
    return read_record(target)


def already_done(source: Path, target: Path) -> bool:
    """``--skip-existing``: ``target`` is a complete, readable result that seesr made from this very input file
    (same sha256; results of older versions, without it: same file name). A 0-byte, truncated or unreadable file,
    or the result of another input, is redone."""
    record = _complete_record(target)
    if record is None:
        return False
    if "input_sha256" not in record:  # written before the sha256 was recorded: the input's file name decides
        return record.get("input") == source.name
    try:
        return record["input_sha256"] == file_sha256(source)
    except OSError:
        return False


def _foreign_file(target: Path) -> bool:
    """True when ``target`` is a readable image that seesr did not write (someone's picture: never replaced)."""
    if not target.exists() or target.is_dir():
        return target.is_dir()
    try:
        with Image.open(target) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError):
        return False  # empty or damaged: an interrupted copy, not a picture worth keeping
    return read_record(target) is None


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


def upscale_image(
    pipe: Any,
    image: Image.Image,
    settings: UpscaleSettings,
    seed: int,
    tile_size: int | str,
    tags: list[str] | None = None,
) -> Any:
    """One pipeline call with the run settings; returns the :class:`SeeSRPipelineOutput`.

    ``tags``: use these instead of DAPE's (video: the tags of the frame's shot); the tag edits still apply."""
    return pipe(
        image,
        tags=tags,
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
        extra_tags=list(settings.extra_tags),
        remove_tags=list(settings.remove_tags),
        seed=seed,
    )


def _upscale_with_retries(
    pipe: Any, image: Image.Image, settings: UpscaleSettings, seed: int, tags: list[str] | None = None
) -> Any:
    """Run the pipeline; on an accelerator out-of-memory error retry with halved latent (and VAE) tiles."""
    tile: int | str = settings.latent_tile_size
    saved_vae_tiling = getattr(pipe, "vae_tiling", None)
    try:
        while True:
            try:
                return upscale_image(pipe, image, settings, seed, tile, tags)
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
    """Upscale ``files`` into ``outdir`` (names: :func:`output_path`); one :class:`FileResult` per file, in order.

    Args:
        pipe: a loaded ``SeeSRPipeline``.
        files: input image paths (already expanded; see :func:`seesr.utils.images.iter_image_files`).
        outdir: output folder (created).
        settings: generation settings; ``settings.seed`` None draws a random seed per image.
        skip_existing: leave inputs whose complete result from a previous run exists (:func:`already_done`).
        show_progress: tqdm bar over images (the pipeline has its own bar over steps).
        metadata_extra: more fields for the PNG ``seesr`` metadata (e.g. model, device, dtype).
        on_result: called after each file (e.g. to print a line).
        output_plan: input -> output paths planned over *all* inputs of a run (:func:`plan_outputs`), for a process
            that handles only a shard of them (multi-GPU): every process then refuses the same name clashes, and
            the inputs of the whole run are protected from being overwritten.
    """
    from tqdm.auto import tqdm

    outdir = Path(outdir)
    paths = [Path(file) for file in files]
    plan = dict(output_plan) if output_plan is not None else plan_outputs(paths, outdir, settings.scale)
    conflicts = output_conflicts(plan)
    report = UpscaleReport()
    for source in tqdm(paths, desc="images", unit="image", disable=not show_progress):
        target = plan[source]
        started = time.perf_counter()
        if source in conflicts:
            result = FileResult(source, None, "failed", conflicts[source])
        elif skip_existing and already_done(source, target):
            result = FileResult(source, target, "skipped", "output exists")
        else:
            result = _process_one(pipe, source, target, settings, list(plan), metadata_extra)
        result.seconds = time.perf_counter() - started
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    return report


def _check_size(pipe: Any, loaded: LoadedImage, settings: UpscaleSettings) -> None:
    """:func:`check_processing_size` with this pipeline's VAE and the memory free right now."""
    vae = getattr(pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "block_out_channels", [128])[0]
    dtype = getattr(vae, "dtype", None)
    bytes_per_value = dtype.itemsize if dtype is not None and hasattr(dtype, "itemsize") else 4
    device = getattr(pipe, "_execution_device", None) if vae is not None else None
    check_processing_size(
        *loaded.size,
        scale=settings.scale,
        process_size=settings.process_size,
        max_output_pixels=settings.max_output_pixels,
        available_memory=available_memory(device) if settings.check_memory else None,
        vae_channels=channels,
        bytes_per_value=bytes_per_value,
    )


def _upscale_catching(pipe: Any, loaded: LoadedImage, settings: UpscaleSettings, seed: int) -> tuple[Any, str]:
    """``(output, "")``, or ``(None, reason)`` when the pipeline refused the image or memory ran out (host
    ``MemoryError``, the CPU allocator, or the accelerator even with the smallest tiles)."""
    out_of_memory = False
    try:
        return _upscale_with_retries(pipe, loaded.rgb, settings, seed), ""
    except (ValueError, RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            logger.debug("upscaling %s failed", loaded.path, exc_info=True)
            return None, str(error)
        out_of_memory = True
    finally:
        if out_of_memory:  # outside the except block: the error's frames (and their tensors) are gone now
            release_memory()
    return None, "out of memory (even with small tiles); lower --max-output-pixels, --scale or --process-size"


def _process_one(
    pipe: Any,
    source: Path,
    target: Path,
    settings: UpscaleSettings,
    inputs: Sequence[Path],
    metadata_extra: dict[str, Any] | None,
) -> FileResult:
    """1. refuse to replace someone's picture; 2. read and check sizes; 3. upscale (memory errors caught);
    4. write atomically with the record (settings, input name and sha256)."""
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
    if _foreign_file(target):
        return FileResult(
            source,
            None,
            "failed",
            f"{target}: exists and was not written by seesr upscale; refusing to replace it "
            "(move it away or choose another -o)",
            seed,
        )
    try:
        loaded = load_image(source, max_pixels=settings.max_input_pixels)
        fingerprint = file_sha256(source)
        _check_size(pipe, loaded, settings)
    except ImageReadError as error:
        return FileResult(source, None, "failed", str(error), seed)
    except (ProcessingSizeError, OSError) as error:
        return FileResult(source, None, "failed", f"{source}: {error}", seed)
    except MemoryError:  # decoding a huge file
        release_memory()
        return FileResult(source, None, "failed", f"{source}: out of memory while reading it", seed)
    output, problem = _upscale_catching(pipe, loaded, settings, seed)
    if output is None:
        return FileResult(source, None, "failed", f"{source}: {problem}", seed)
    image = output.images[0]
    if loaded.alpha is not None:  # alpha upscaled separately (bicubic) and kept
        image = image.convert("RGBA")
        image.putalpha(loaded.alpha.resize(image.size, Image.Resampling.BICUBIC))
    extra = {
        "input": source.name,
        "input_sha256": fingerprint,
        "input_mode": loaded.source_mode,
        "input_frames": loaded.frames,
        **(metadata_extra or {}),
    }
    metadata = png_metadata(settings, output.prompts[0], output.tags[0], seed, extra)
    try:
        save_image_atomic(image, target, metadata=metadata, protected=inputs)
    except OSError as error:  # FileExistsError (would overwrite an input), permissions, full disk
        return FileResult(source, None, "failed", f"{target}: cannot write ({error})", seed)
    return FileResult(source, target, "ok", loaded.note, seed)
