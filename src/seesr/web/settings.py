"""What the web UI lets a user choose, and the limits that keep a shared server safe.

Everything here is plain Python (no Gradio, no torch) so that it can be unit-tested on its own and reused by the
app, the adapter (:mod:`seesr.web.runner`) and the ``seesr serve`` command.

Defaults follow the official Gradio demo (``gradio_seesr.py``, spec §1.1): added prompt
``"clean, high-resolution, 8k, best quality, masterpiece"``, the long negative prompt, CFG 5.5, 50 steps, seed 231,
scale ×4 and the wavelet colour fix. Unlike the official demo, the seed really seeds the sampler and the tile size
control is honoured.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

#: Added ("positive") prompt of the official Gradio demo.
DEFAULT_ADDED_PROMPT = "clean, high-resolution, 8k, best quality, masterpiece"
#: Negative prompt of the official Gradio demo.
DEFAULT_NEGATIVE_PROMPT = (
    "dotted, noise, blur, lowres, oversmooth, longbody, bad anatomy, bad hands, missing fingers, "
    "extra digit, fewer digits, cropped, worst quality, low quality"
)
COLOR_FIXES: tuple[str, ...] = ("wavelet", "adain", "none")
MAX_SEED = 2**32 - 1


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
    """

    max_upload_bytes: int = 25 * 1024 * 1024
    max_input_pixels: int = 2048 * 2048
    max_output_pixels: int = 4096 * 4096
    max_steps: int = 200
    max_scale: int = 8
    max_queue: int = 16

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
    server setting, not a control of the page.
    """

    prompt: str = ""
    added_prompt: str = DEFAULT_ADDED_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    tags: tuple[str, ...] | None = None
    use_tags: bool = True
    steps: int = 50
    guidance_scale: float = 5.5
    seed: int | None = 231
    color_fix: str = "wavelet"
    scale: int = 4
    latent_tile_size: int = 96
    process_size: int = 512

    def resolved(self) -> WebSettings:
        """Return a copy whose seed is a concrete number (a fresh random one when ``seed`` is ``None``)."""
        if self.seed is not None:
            return self
        return replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (tags as a list)."""
        data = asdict(self)
        data["tags"] = list(self.tags) if self.tags is not None else None
        return data


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
) -> WebSettings:
    """Validate the raw values of the page's controls (which a client can forge) and build :class:`WebSettings`.

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
    )


def check_input_size(width: int, height: int, limits: WebLimits) -> None:
    """Raise :class:`UserInputError` if a ``width`` x ``height`` input exceeds ``limits.max_input_pixels``."""
    if width * height > limits.max_input_pixels:
        raise UserInputError(
            f"The image is {width}×{height} ({_megapixels(width * height)}); this server accepts images up to "
            f"{_megapixels(limits.max_input_pixels)}. Downscale or crop it first, or restart `seesr serve` with a "
            "larger --max-input-pixels."
        )


def check_output_size(width: int, height: int, scale: int, limits: WebLimits) -> tuple[int, int]:
    """Return the output size for ``scale`` or raise :class:`UserInputError` if it exceeds the output limit."""
    out_w, out_h = width * scale, height * scale
    if out_w * out_h > limits.max_output_pixels:
        raise UserInputError(
            f"At ×{scale} the result would be {out_w}×{out_h} ({_megapixels(out_w * out_h)}), above this "
            f"server's limit of {_megapixels(limits.max_output_pixels)}. Choose a smaller scale or a smaller "
            "image, or restart `seesr serve` with a larger --max-output-pixels."
        )
    return out_w, out_h


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
