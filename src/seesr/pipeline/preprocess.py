"""Prompt assembly and geometric preprocessing exactly as the official ``test_seesr.py`` (REFERENCE §1.4.1).

All resizes are PIL bicubic (Pillow's default filter for RGB images); resizing to the identical size returns a copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from PIL import Image

DEFAULT_ADDED_PROMPT = "clean, high-resolution, 8k"
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


def process_size_for(width: int, height: int, upscale: int, process_size: int) -> tuple[int, int]:
    """The ``(W, H)`` the diffusion runs at for an LR image of ``(width, height)`` (multiples of 8)."""
    minimum = process_size // upscale
    if width < minimum or height < minimum:
        scale = minimum / min(width, height)
        width, height = int(scale * width), int(scale * height)
    width, height = width * upscale, height * upscale
    return width // 8 * 8, height // 8 * 8


def prepare_control_image(image: Image.Image, upscale: int = 4, process_size: int = 512) -> Image.Image:
    """The ControlNet condition / LRE input / colour-fix reference ``I_lr↑`` for an LR ``image`` (RGB).

    1. if either side is below ``process_size // upscale``, scale so the shorter side reaches it (truncating);
    2. resize by ``upscale``;
    3. floor both sides to multiples of 8.
    """
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    width, height = image.size
    minimum = process_size // upscale
    if width < minimum or height < minimum:
        scale = minimum / min(width, height)
        image = image.resize((int(scale * width), int(scale * height)), Image.Resampling.BICUBIC)
    width, height = image.size
    image = image.resize((width * upscale, height * upscale), Image.Resampling.BICUBIC)
    width, height = image.size
    return image.resize((width // 8 * 8, height // 8 * 8), Image.Resampling.BICUBIC)
