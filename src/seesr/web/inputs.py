"""Turning an uploaded file into a checked input image (no Gradio here; :mod:`seesr.web.app` calls it).

The browser only ever sends file *contents*; Gradio stores them in its own upload folder and passes the app a small
record (``{"path": ..., "orig_name": ..., "url": ...}``). :func:`read_payload` accepts a path only inside the upload
folders it is given (Gradio checks this too), :func:`read_upload` enforces the byte and pixel limits before
decoding, and every problem becomes a one-line message for the page instead of an exception, so that the page can
show it next to the upload box while the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from seesr.utils.images import ImageReadError, load_image
from seesr.web.settings import UserInputError, WebLimits, check_input_size, format_bytes, safe_stem


@dataclass(frozen=True)
class InputImage:
    """A validated upload: 8-bit RGB pixels, an optional 8-bit alpha plane and a display-safe name stem."""

    rgb: Image.Image
    alpha: Image.Image | None
    stem: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.rgb.size


@dataclass(frozen=True)
class InvalidUpload:
    """An upload that cannot be used; ``message`` says why, in words meant for the user."""

    message: str


def _probe_size(source: str | os.PathLike | io.BytesIO, label: str) -> tuple[int, int]:
    """Read only the header to get ``(width, height)``, so that huge images are refused before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as probe:
                return probe.size
    except Image.DecompressionBombError:
        raise UserInputError(f"{label}: the image is far too large to open safely") from None
    except Image.UnidentifiedImageError:
        raise UserInputError(f"{label}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UserInputError(f"{label}: cannot read image ({error})") from None


def read_upload(
    path: str | os.PathLike | None, original_name: str | None, limits: WebLimits, data_url: str | None = None
) -> InputImage | InvalidUpload:
    """Open an uploaded file (or a ``data:`` URL) as an :class:`InputImage`, or explain why not.

    Args:
        path: the server-side file Gradio wrote the upload to (already confined to its upload folder).
        original_name: the client's file name; used only for messages and the download name, never as a path.
        limits: the size limits to enforce.
        data_url: a base64 ``data:image/...`` URL, used when ``path`` is ``None``.
    """
    label = Path(str(original_name)).name if original_name else "the uploaded file"
    try:
        if path is not None:
            size = os.path.getsize(path)
            if size == 0:
                raise UserInputError(f"{label}: the file is empty")
            if size > limits.max_upload_bytes:
                raise UserInputError(
                    f"{label}: {format_bytes(size)} is larger than this server's upload limit of "
                    f"{format_bytes(limits.max_upload_bytes)}"
                )
            source: str | os.PathLike | io.BytesIO = path
        elif data_url is not None:
            source = io.BytesIO(_decode_data_url(data_url, label, limits))
        else:
            raise UserInputError("no image was uploaded")
        width, height = _probe_size(source, label)
        check_input_size(width, height, limits)
        if isinstance(source, io.BytesIO):
            source.seek(0)
            with Image.open(source) as opened:
                loaded = load_image(opened, max_pixels=limits.max_input_pixels)
        else:
            loaded = load_image(source, max_pixels=limits.max_input_pixels)
    except UserInputError as error:
        return InvalidUpload(str(error))
    except ImageReadError as error:
        message = str(error)
        if path is not None:  # never echo the server-side path back to the client
            message = message.replace(str(path), label)
        return InvalidUpload(message.replace("<image>", label))
    return InputImage(rgb=loaded.rgb, alpha=loaded.alpha, stem=safe_stem(original_name))


def _decode_data_url(url: str, label: str, limits: WebLimits) -> bytes:
    header, _, payload = url.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise UserInputError(f"{label}: unsupported image data")
    if len(payload) * 3 // 4 > limits.max_upload_bytes:
        raise UserInputError(
            f"{label}: larger than this server's upload limit of {format_bytes(limits.max_upload_bytes)}"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UserInputError(f"{label}: the image data is corrupt") from None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (OSError, ValueError):
        return False
    return True


def read_payload(
    payload: Mapping[str, Any] | None, limits: WebLimits, upload_dirs: Sequence[str | os.PathLike]
) -> InputImage | InvalidUpload | None:
    """Check and open the image record a client sent (Gradio's ``FileData`` as a dict), or explain why not.

    Args:
        payload: ``None`` (nothing uploaded) or a mapping with ``path`` (a server file written by the upload),
            ``orig_name`` (the client's file name, display only) and/or ``url`` (only ``data:`` URLs are accepted).
        limits: the size limits to enforce.
        upload_dirs: the only folders a ``path`` may point into.
    """
    if payload is None:
        return None
    if not isinstance(payload, Mapping):
        return InvalidUpload("the image must be uploaded as a file")
    name = payload.get("orig_name")
    name = str(name) if name else None
    path, url = payload.get("path"), payload.get("url")
    if path:
        if not any(_inside(Path(str(path)), Path(folder)) for folder in upload_dirs):
            return InvalidUpload("the image must be uploaded, not referenced by a path")
        return read_upload(str(path), name, limits)
    if isinstance(url, str) and url.startswith("data:"):
        return read_upload(None, name, limits, data_url=url)
    return InvalidUpload("the image must be uploaded, not referenced by a URL")
