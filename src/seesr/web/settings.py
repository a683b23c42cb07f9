"""What the web UI lets a user choose, and the limits that keep a shared server safe.

Everything here is plain Python (no Gradio, no torch) so that it can be unit-tested on its own and reused by the
app, the adapter (:mod:`seesr.web.runner`) and the ``seesr serve`` command.

Defaults are those of ``seesr upscale`` (the prompts come from :mod:`seesr.pipeline.preprocess`, where the CLI
takes them): added prompt ``"clean, high-resolution, 8k"``, negative prompt ``"dotted, noise, blur, lowres,
smooth"``, CFG 5.5, 50 steps, scale ×4, the AdaIN colour fix and a new random seed per run (shown with the result).
:meth:`WebSettings.official_demo` gives the official Gradio demo's instead (``seesr serve --demo-defaults``; spec
§1.1): its longer added and negative prompts, the wavelet colour fix and seed 231. Unlike the official demo, the seed
really seeds the sampler and the tile size control is honoured.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

from seesr.pipeline.preprocess import (
    DEFAULT_ADDED_PROMPT,
    DEFAULT_NEGATIVE_PROMPT,
    ProcessingSizeError,
    check_processing_size,
)

#: Added ("positive") prompt of the official Gradio demo (``seesr serve --demo-defaults``).
DEMO_ADDED_PROMPT = "clean, high-resolution, 8k, best quality, masterpiece"
#: Negative prompt of the official Gradio demo (``seesr serve --demo-defaults``).
DEMO_NEGATIVE_PROMPT = (
    "dotted, noise, blur, lowres, oversmooth, longbody, bad anatomy, bad hands, missing fingers, "
    "extra digit, fewer digits, cropped, worst quality, low quality"
)
COLOR_FIXES: tuple[str, ...] = ("adain", "wavelet", "none")
MAX_SEED = 2**32 - 1
#: Where the tags of a run came from (``WebSettings.tags_source``), as the page words it.
TAG_SOURCE_LABELS = {"dape": "DAPE", "user": "yours", "none": "tags off"}


class UserInputError(ValueError):
    """A problem with what the user sent (image, settings); the message is shown in the page as is."""


@dataclass(frozen=True)
class WebLimits:
    """Server-side limits. Everything a client sends is checked against these before any model runs.

    Attributes:
        max_upload_bytes: largest accepted upload (enforced by Gradio before the file reaches Python).
        max_input_pixels: largest input image, width x height.
        max_output_pixels: largest result, (width x scale) x (height x scale).
        max_steps: most denoising steps one request may ask for.
        max_scale: largest upscaling factor.
        max_queue: most requests waiting in the queue; more are refused with "queue is full".
        max_video_frames: most frames in an uploaded clip (a longer clip is refused before any work).
    """

    max_upload_bytes: int = 25 * 1024 * 1024
    max_input_pixels: int = 2048 * 2048
    max_output_pixels: int = 4096 * 4096
    max_steps: int = 200
    max_scale: int = 8
    max_queue: int = 16
    max_video_frames: int = 300

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WebLimits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class WebSettings:
    """One upscaling request as the user set it in the page.

    ``tags`` is ``None`` to let DAPE tag the image at run time, or the user's (possibly edited) tag list, which is
    used verbatim; ``use_tags=False`` runs without any tags. ``seed=None`` means "draw a random seed"
    (:meth:`resolved` fixes it so that the settings shown under the result can reproduce it).
    ``latent_tile_size`` is in latent pixels (1 latent pixel = 8 image pixels). ``process_size`` (the official
    minimum processing size: inputs whose short side is below ``process_size // scale`` are enlarged first) is a
    server setting, not a control of the page. ``dape_tags`` are the tags DAPE showed in the page for this image
    ("Detect tags"), so that unedited tags are reported as DAPE's, not the user's.
    """

    prompt: str = ""
    added_prompt: str = DEFAULT_ADDED_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    tags: tuple[str, ...] | None = None
    use_tags: bool = True
    steps: int = 50
    guidance_scale: float = 5.5
    seed: int | None = None
    color_fix: str = "adain"
    scale: int = 4
    latent_tile_size: int = 96
    process_size: int = 512
    dape_tags: tuple[str, ...] | None = None

    @classmethod
    def official_demo(cls, **changes: Any) -> WebSettings:
        """The official Gradio demo's defaults (``seesr serve --demo-defaults``), with ``changes`` applied."""
        demo = dict(
            added_prompt=DEMO_ADDED_PROMPT, negative_prompt=DEMO_NEGATIVE_PROMPT, color_fix="wavelet", seed=231
        )
        return cls(**{**demo, **changes})

    @property
    def tags_source(self) -> str:
        """``"dape"`` (detected, at run time or in the page, and not edited), ``"user"`` or ``"none"`` (tags off)."""
        if not self.use_tags:
            return "none"
        if self.tags is None or self.tags == self.dape_tags:
            return "dape"
        return "user"

    def resolved(self) -> WebSettings:
        """Return a copy whose seed is a concrete number (a fresh random one when ``seed`` is ``None``)."""
        if self.seed is not None:
            return self
        return replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (tags as a list)."""
        data = asdict(self)
        data["tags"] = list(self.tags) if self.tags is not None else None
        data["dape_tags"] = list(self.dape_tags) if self.dape_tags is not None else None
        return data


def defaults_markdown(defaults: WebSettings) -> str:
    """One line for the page saying where its initial values come from and what they are."""
    if replace(defaults, process_size=512) == WebSettings():
        origin = "the defaults of `seesr upscale`"
    elif replace(defaults, process_size=512) == WebSettings.official_demo():
        origin = "the official SeeSR demo's defaults (`seesr serve --demo-defaults`)"
    else:
        origin = "this server's defaults"
    seed = "a new random seed each run" if defaults.seed is None else f"seed {defaults.seed}"
    return (
        f"Starts from {origin}: colour fix {defaults.color_fix}, {seed}, {defaults.steps} steps, guidance "
        f"{defaults.guidance_scale:g}, ×{defaults.scale}, added prompt “{defaults.added_prompt}”."
    )


def parse_tags(text: str | None) -> tuple[str, ...] | None:
    """Turn the tag box into a tag tuple: comma- or newline-separated, trimmed, empty entries and repeats dropped.

    An empty box returns ``None`` ("detect when running"), so a user who never pressed "Detect tags" still gets
    DAPE's tags, as in the official demo.
    """
    if text is None:
        return None
    tags: list[str] = []
    for part in re.split(r"[,\n]", text):
        tag = " ".join(part.split())
        if tag and tag not in tags:
            tags.append(tag)
    return tuple(tags) or None


def format_tags(tags: list[str] | tuple[str, ...] | None) -> str:
    """Inverse of :func:`parse_tags` for display: ``"a, b, c"``."""
    return ", ".join(tags or ())


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UserInputError(f"{name} must be a finite number, got {value!r}")
    return number


def _integer(value: Any, name: str, low: int, high: int) -> int:
    number = _number(value, name)
    if number != int(number):
        raise UserInputError(f"{name} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise UserInputError(f"{name} must be between {low} and {high}, got {int(number)}")
    return int(number)


def make_settings(
    *,
    tags_text: str | None,
    use_tags: bool,
    prompt: str | None,
    added_prompt: str | None,
    negative_prompt: str | None,
    steps: Any,
    guidance_scale: Any,
    seed: Any,
    random_seed: bool,
    color_fix: str,
    scale: Any,
    latent_tile_size: Any,
    limits: WebLimits,
    process_size: int = 512,
    detected_tags_text: str | None = None,
) -> WebSettings:
    """Validate the raw values of the page's controls (which a client can forge) and build :class:`WebSettings`.

    ``detected_tags_text`` is what "Detect tags" put in the tag box for this image (None if it was not pressed).

    Raises:
        UserInputError: with a message naming the control and the accepted range.
    """
    if color_fix not in COLOR_FIXES:
        raise UserInputError(f"colour fix must be one of {', '.join(COLOR_FIXES)}, got {color_fix!r}")
    guidance = _number(guidance_scale, "guidance")
    if not 0.0 <= guidance <= 30.0:
        raise UserInputError(f"guidance must be between 0 and 30, got {guidance:g}")
    resolved_seed = None if random_seed else _integer(seed if seed is not None else 0, "seed", 0, MAX_SEED)
    for name, text in (("prompt", prompt), ("added prompt", added_prompt), ("negative prompt", negative_prompt)):
        if text is not None and len(text) > 2000:
            raise UserInputError(f"{name} is too long ({len(text)} characters, at most 2000)")
    return WebSettings(
        prompt=(prompt or "").strip(),
        added_prompt=(added_prompt or "").strip(),
        negative_prompt=(negative_prompt or "").strip(),
        tags=parse_tags(tags_text) if use_tags else None,
        use_tags=bool(use_tags),
        steps=_integer(steps, "steps", 1, limits.max_steps),
        guidance_scale=guidance,
        seed=resolved_seed,
        color_fix=color_fix,
        scale=_integer(scale, "scale", 1, limits.max_scale),
        latent_tile_size=_integer(latent_tile_size, "tile size", 16, 1024),
        process_size=process_size,
        dape_tags=parse_tags(detected_tags_text),
    )


def check_input_size(width: int, height: int, limits: WebLimits, what: str = "image") -> None:
    """Raise :class:`UserInputError` if a ``width`` x ``height`` input (an ``what``: image, or a clip's frame)
    exceeds ``limits.max_input_pixels``."""
    if width * height > limits.max_input_pixels:
        subject = "The image is" if what == "image" else f"Its {what}s are"
        raise UserInputError(
            f"{subject} {width}×{height} ({_megapixels(width * height)}); this server accepts {what}s up to "
            f"{_megapixels(limits.max_input_pixels)}. Downscale or crop it first, or restart `seesr serve` with a "
            "larger --max-input-pixels."
        )


def check_video_length(frames: int, fps: float | None, limits: WebLimits) -> None:
    """Raise :class:`UserInputError` if a clip of ``frames`` frames is longer than ``limits.max_video_frames``."""
    if frames > limits.max_video_frames:
        seconds = f" ({frames / fps:.1f} s at {fps:g} fps)" if fps else ""
        raise UserInputError(
            f"The clip has {frames} frames{seconds}; this server upscales clips of up to {limits.max_video_frames} "
            "frames. Cut it shorter first, use `seesr upscale clip.mp4` on the command line, or restart "
            "`seesr serve` with a larger --max-video-frames."
        )


def check_output_size(width: int, height: int, scale: int, limits: WebLimits, process_size: int) -> tuple[int, int]:
    """Return the output size at ``scale``, or raise :class:`UserInputError` if the image cannot be processed.

    The check is :func:`seesr.pipeline.preprocess.check_processing_size`, the one ``seesr upscale`` makes: the
    output *and the working size* (small or odd-shaped inputs are enlarged to ``process_size`` first, so a 3×100000
    strip would be worked on at 512×17,066,664) must stay within ``limits.max_output_pixels``.
    """
    try:
        return check_processing_size(
            width, height, scale=scale, process_size=process_size, max_output_pixels=limits.max_output_pixels
        )
    except ProcessingSizeError as error:
        message = f"This image cannot be upscaled on this server: {error}."
        if "--max-output-pixels" in message or "--process-size" in message:
            message += " (--max-output-pixels and --process-size are options of `seesr serve`; Scale is in the page.)"
        raise UserInputError(message) from None


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 else f"{pixels} pixels"


def format_bytes(size: int) -> str:
    """``26214400 -> "25 MB"`` (binary megabytes, the unit Gradio uses in its own message)."""
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):g} MB"
    if size >= 1024:
        return f"{size / 1024:g} KB"
    return f"{size} bytes"


def safe_stem(name: str | None, fallback: str = "image") -> str:
    """A file-name stem derived from a client-supplied name that can be used in a download name and nowhere else.

    Only the last path component's stem is kept, restricted to ``[A-Za-z0-9._-]`` and 64 characters.
    """
    if not name:
        return fallback
    base = re.split(r"[\\/]", str(name))[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:64]
    return stem or fallback
