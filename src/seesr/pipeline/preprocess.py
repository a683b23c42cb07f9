"""Prompt assembly and geometric preprocessing exactly as the official ``test_seesr.py`` (REFERENCE §1.4.1).

All resizes are PIL bicubic (Pillow's default filter for RGB images); resizing to the identical size returns a copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from PIL import Image

DEFAULT_ADDED_PROMPT = "clean, high-resolution, 8k"
#: default ``--max-output-pixels``: the larger of the working and the output image, 8000 x 8000 (a 4x upscale of a
#: 2000 x 2000 photo)
DEFAULT_MAX_OUTPUT_PIXELS = 64_000_000
#: longest/shortest side beyond which an input is refused: the short side is enlarged to ``process_size // scale``
#: first, so a 3 x 100000 strip would become a 512 x 17,066,664 working image
MAX_ASPECT_RATIO = 64
#: bytes per working pixel of the pipeline besides the VAE activations (control image, decoded image, colour fix)
PEAK_BYTES_PER_PIXEL_BESIDES_VAE = 250
DEFAULT_NEGATIVE_PROMPT = "dotted, noise, blur, lowres, smooth"


def build_prompt(tags: Sequence[str] | str, prompt: str = "", added_prompt: str = DEFAULT_ADDED_PROMPT) -> str:
    """``f"{tags}, {prompt},{added_prompt}"`` byte for byte, ``tags`` joined with ``", "``.

    With the defaults and tags ``["a", "b"]`` this is ``"a, b, ,clean, high-resolution, 8k"`` (the official quirk
    ``", ,"`` is kept because the model was run with it); with no tags ``", ,clean, high-resolution, 8k"``.
    """
    tag_text = tags if isinstance(tags, str) else ", ".join(tags)
    return f"{tag_text}, {prompt}," + added_prompt


def edit_tags(tags: Sequence[str], extra_tags: Iterable[str] = (), remove_tags: Iterable[str] = ()) -> list[str]:
    """Drop ``remove_tags`` (case-insensitive, surrounding spaces ignored) then append ``extra_tags`` not present yet.

    The tagger's order (tag-list index order) is kept for the remaining tags; extra tags follow in the given order.
    """
    removed = {tag.strip().lower() for tag in remove_tags if tag.strip()}
    kept = [tag for tag in tags if tag.strip().lower() not in removed]
    present = {tag.strip().lower() for tag in kept}
    for tag in extra_tags:
        tag = tag.strip()
        if tag and tag.lower() not in present:
            kept.append(tag)
            present.add(tag.lower())
    return kept


def split_tags(text: str | Sequence[str] | None) -> list[str]:
    """Accept ``"a, b"`` or ``["a", "b"]``; return the stripped, non-empty tags."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    return [part.strip() for part in parts if part.strip()]


def _enlarged_size(width: int, height: int, upscale: int, process_size: int) -> tuple[int, int]:
    """An LR side under ``process_size // upscale``: the size at which the shorter side reaches it (truncated)."""
    minimum = process_size // upscale
    if width < minimum or height < minimum:
        scale = minimum / min(width, height)
        return int(scale * width), int(scale * height)
    return width, height


def process_size_for(width: int, height: int, upscale: int, process_size: int) -> tuple[int, int]:
    """The ``(W, H)`` the diffusion runs at for an LR image of ``(width, height)`` (multiples of 8): the steps of
    :func:`prepare_control_image`, on sizes."""
    width, height = _enlarged_size(width, height, upscale, process_size)
    return width * upscale // 8 * 8, height * upscale // 8 * 8


class ProcessingSizeError(ValueError):
    """An input whose working or output size is over a limit; the message is meant for the user (one line)."""


def peak_memory_estimate(
    width: int, height: int, *, scale: int, process_size: int, vae_channels: int = 128, bytes_per_value: int = 4
) -> int:
    """Estimated peak bytes (host, plus accelerator when the VAE keeps its activations there) to upscale an LR
    image of ``(width, height)``, beyond the loaded models.

    It grows with the working size (:func:`process_size_for`): the banded VAE keeps full-resolution activations of
    ``vae_channels`` (``block_out_channels[0]``: 128 for SD 2's VAE) in ``bytes_per_value`` (4 for fp32), and the
    control image, decoded image and colour fix add a few float copies. Measured on CPU (fp32, AdaIN, 1 step, banded
    VAE at a 2048 x 2048 working size, peak RSS growth): 581 bytes per working pixel with the tiny test VAE (16
    channels; formula 634) and 987 with a 32-channel VAE (formula 1018): the estimate errs high by under 10 %.
    For SD 2's VAE in fp32 it gives 3.3 kB per working pixel (13.9 GB for a 2048 x 2048 result), half in bf16/fp16.
    """
    work_width, work_height = process_size_for(width, height, scale, process_size)
    return work_width * work_height * (6 * vae_channels * bytes_per_value + PEAK_BYTES_PER_PIXEL_BESIDES_VAE)


def check_processing_size(
    width: int,
    height: int,
    *,
    scale: int,
    process_size: int,
    max_output_pixels: int | None,
    available_memory: int | None = None,
    vae_channels: int = 128,
    bytes_per_value: int = 4,
) -> tuple[int, int]:
    """Check, before any work, that an LR image of ``(width, height)`` can be upscaled; return the output size.

    The model works at :func:`process_size_for` (the short side enlarged to ``process_size // scale`` first, then
    ``x scale``); the result is ``(width * scale, height * scale)``. Refused with :class:`ProcessingSizeError`:
    a side of zero, an aspect ratio over :data:`MAX_ASPECT_RATIO`, a working size under 8 pixels, and a working or
    output image of more than ``max_output_pixels`` (None: no limit). The message names the limit and the flag
    (``--max-output-pixels``, ``--process-size``, ``--scale``) that changes it. With ``available_memory`` (bytes,
    e.g. :func:`seesr.utils.device.available_memory`), an image whose :func:`peak_memory_estimate` exceeds it is
    refused too.
    """
    if scale < 1 or process_size < 1:
        raise ProcessingSizeError(f"scale and process size must be >= 1 (got {scale} and {process_size})")
    if width < 1 or height < 1:
        raise ProcessingSizeError(f"image has zero size ({width}x{height})")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ProcessingSizeError(
            f"{width}x{height} has an aspect ratio over {MAX_ASPECT_RATIO}:1, which cannot be processed "
            "(crop it into pieces first)"
        )
    work_width, work_height = process_size_for(width, height, scale, process_size)
    if work_width < 8 or work_height < 8:
        raise ProcessingSizeError(
            f"{width}x{height} is too small to process at --scale {scale} (the working size {work_width}x"
            f"{work_height} is under 8 pixels; raise --process-size)"
        )
    output = (width * scale, height * scale)
    if max_output_pixels is not None:
        pixels = max(work_width * work_height, output[0] * output[1])
        if pixels > max_output_pixels:
            enlarged = work_width * work_height > output[0] * output[1]
            what = (
                f"is processed at {work_width}x{work_height} (its short side is enlarged to --process-size "
                f"{process_size} first)"
                if enlarged
                else f"gives a {output[0]}x{output[1]} output at --scale {scale}"
            )
            raise ProcessingSizeError(
                f"{width}x{height} {what}: {pixels} pixels exceeds the limit of {max_output_pixels} "
                "(raise it with --max-output-pixels, or use a smaller --scale"
                + (" or --process-size)" if enlarged else ")")
            )
    if available_memory is not None:
        needed = peak_memory_estimate(
            width,
            height,
            scale=scale,
            process_size=process_size,
            vae_channels=vae_channels,
            bytes_per_value=bytes_per_value,
        )
        if needed > available_memory:
            raise ProcessingSizeError(
                f"{width}x{height} needs about {needed / 1e9:.1f} GB of memory at its working size {work_width}x"
                f"{work_height}, more than the {available_memory / 1e9:.1f} GB available (free memory, or use a "
                "smaller --scale or a GPU; --no-memory-check tries anyway)"
            )
    return output


def prepare_control_image(image: Image.Image, upscale: int = 4, process_size: int = 512) -> Image.Image:
    """The ControlNet condition / LRE input / colour-fix reference ``I_lr↑`` for an LR ``image`` (RGB).

    1. if either side is below ``process_size // upscale``, scale so the shorter side reaches it (truncating);
    2. resize by ``upscale``;
    3. floor both sides to multiples of 8.
    """
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    enlarged = _enlarged_size(*image.size, upscale, process_size)
    if enlarged != image.size:
        image = image.resize(enlarged, Image.Resampling.BICUBIC)
    width, height = image.size
    image = image.resize((width * upscale, height * upscale), Image.Resampling.BICUBIC)
    width, height = image.size
    return image.resize((width // 8 * 8, height // 8 * 8), Image.Resampling.BICUBIC)
