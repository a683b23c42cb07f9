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
from typing import TYPE_CHECKING, Any

from PIL import Image

from seesr.utils.images import ImageReadError, load_image
from seesr.web.settings import (
    UserInputError,
    WebLimits,
    check_input_size,
    check_video_length,
    format_bytes,
    safe_stem,
)

if TYPE_CHECKING:
    from seesr.utils.video_io import VideoInfo


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
class InputClip:
    """A validated video upload: its server-side file (inside the upload folder), what PyAV probed, its frame count
    and a display-safe name stem."""

    path: Path
    info: VideoInfo
    frames: int
    stem: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames in pixels."""
        return self.info.width, self.info.height


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


def _upload_path(
    payload: Mapping[str, Any] | None, upload_dirs: Sequence[str | os.PathLike], what: str
) -> tuple[str | None, str | None, InvalidUpload | None]:
    """``(path, client name, problem)`` of a Gradio ``FileData`` record: a path only inside ``upload_dirs``."""
    if not isinstance(payload, Mapping):
        return None, None, InvalidUpload(f"the {what} must be uploaded as a file")
    name = payload.get("orig_name")
    path = payload.get("path")
    if path and not any(_inside(Path(str(path)), Path(folder)) for folder in upload_dirs):
        return None, None, InvalidUpload(f"the {what} must be uploaded, not referenced by a path")
    return (str(path) if path else None), (str(name) if name else None), None


def read_clip_payload(
    payload: Mapping[str, Any] | None, limits: WebLimits, upload_dirs: Sequence[str | os.PathLike]
) -> InputClip | InvalidUpload | None:
    """Check a video upload (Gradio's ``FileData`` as a dict) before any work: inside the upload folders, within the
    byte limit, readable by PyAV, frames within the pixel limit and the clip within ``limits.max_video_frames``."""
    if payload is None:
        return None
    path, name, problem = _upload_path(payload, upload_dirs, "clip")
    if problem is not None:
        return problem
    if path is None:
        return InvalidUpload("the clip must be uploaded, not referenced by a URL")
    label = Path(name).name if name else "the uploaded clip"
    from seesr.utils.video_io import VideoError, count_frames, probe

    try:
        size = os.path.getsize(path)
        if size > limits.max_upload_bytes:
            raise UserInputError(
                f"{label}: {format_bytes(size)} is larger than this server's upload limit of "
                f"{format_bytes(limits.max_upload_bytes)}"
            )
        info = probe(Path(path))
        check_input_size(info.width, info.height, limits, what="frame")
        frames = count_frames(Path(path))
        check_video_length(frames, float(info.fps) if info.fps else None, limits)
    except UserInputError as error:
        return InvalidUpload(f"{label}: {error}" if not str(error).startswith(label) else str(error))
    except (VideoError, OSError) as error:
        return InvalidUpload(f"{label}: not a video this server can read ({str(error).replace(path, label)})")
    if frames == 0:
        return InvalidUpload(f"{label}: the clip has no video frames")
    return InputClip(Path(path), info, frames, safe_stem(name, fallback="clip"))


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
    path, name, problem = _upload_path(payload, upload_dirs, "image")
    if problem is not None:
        return problem
    if path:
        return read_upload(path, name, limits)
    url = payload.get("url")
    if isinstance(url, str) and url.startswith("data:"):
        return read_upload(None, name, limits, data_url=url)
    return InvalidUpload("the image must be uploaded, not referenced by a URL")
