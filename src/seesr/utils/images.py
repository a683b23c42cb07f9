"""Robust image reading and atomic writing shared by every command.

Reading normalises what users actually have on disk (EXIF rotation, 16-bit PNG/TIFF, CMYK JPEG, palette,
grayscale, alpha) into an 8-bit RGB :class:`PIL.Image.Image` plus an optional 8-bit alpha plane, and turns
every failure into an :class:`ImageReadError` with a one-line message naming the file.
Writing goes to a temporary file in the destination folder and is renamed into place, so an interrupted run
never leaves a partial image behind, and it refuses to overwrite the input it was computed from.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from seesr.utils.files import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_MAX_INPUT_PIXELS = 64_000_000  # 8000 x 8000


class ImageReadError(ValueError):
    """An input file that cannot be used as an image; the message is meant for the user."""


@dataclass
class LoadedImage:
    """An input image normalised to 8-bit RGB; ``alpha`` is an 8-bit "L" image or None."""

    path: Path | None
    rgb: Image.Image
    alpha: Image.Image | None = None
    source_mode: str = "RGB"
    frames: int = 1  # > 1: an animated GIF/PNG/WebP or a multi-page TIFF, of which only frame 1 is used
    note: str = ""  # a line for the user when something was left out (the other frames)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def _to_8bit(image: Image.Image) -> Image.Image:
    """Convert 16/32-bit integer or float single-channel images to 8-bit "L" by scaling, not clipping."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    if np.issubdtype(array.dtype, np.floating):
        finite = array[np.isfinite(array)]
        high = float(finite.max()) if finite.size else 1.0
        scale = 255.0 if high <= 1.0 else 255.0 / max(high, 1e-12)
        return Image.fromarray(np.clip(np.nan_to_num(array) * scale + 0.5, 0, 255).astype(np.uint8))
    high = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
    return Image.fromarray(np.clip(array.astype(np.float64) * 255.0 / high + 0.5, 0, 255).astype(np.uint8))


def _read_16bit_png_rgb(path: Path) -> Image.Image | None:
    """Pillow opens 16-bit RGB(A) PNGs as 8-bit by dropping low bits on some versions; OpenCV reads them exactly.

    ``IMREAD_UNCHANGED`` does not apply the EXIF orientation: :func:`load_image` applies it once, to colour and
    alpha together, whichever reader produced them.
    """
    try:
        import cv2  # optional dependency (train extra)
    except ImportError:
        return None
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3:
        return None
    data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGB if data.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return Image.fromarray((data.astype(np.float64) / 257.0 + 0.5).astype(np.uint8))


#: EXIF orientation (tag 0x0112) -> the transposition that shows the image upright (as ``ImageOps.exif_transpose``)
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image`` (1 = upright, also when there is no or an unreadable EXIF block)."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not make the image unreadable
        return 1
    return value if isinstance(value, int) and value in _ORIENTATIONS else 1


def apply_orientation(image: Image.Image | None, orientation: int) -> Image.Image | None:
    """``image`` turned upright for an EXIF ``orientation`` (None stays None)."""
    if image is None or orientation not in _ORIENTATIONS:
        return image
    return image.transpose(_ORIENTATIONS[orientation])


def _open_checked(source: str | os.PathLike | Image.Image, label: str, max_pixels: int | None) -> Image.Image:
    """Open and decode (frame 1 of) ``source``; every failure becomes an :class:`ImageReadError`."""
    image = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = source if isinstance(source, Image.Image) else Image.open(source)
            width, height = image.size
            if width == 0 or height == 0:
                raise ImageReadError(f"{label}: image has zero size ({width}x{height})")
            if max_pixels is not None and width * height > max_pixels:
                raise ImageReadError(
                    f"{label}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                    "(raise it with --max-input-pixels)"
                )
            image.load()  # decode now so truncated/corrupt data fails here, not later
    except BaseException as error:
        if image is not None and image is not source:
            image.close()
        if isinstance(error, ImageReadError):
            raise
        if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ImageReadError(f"{label}: image too large to open safely ({error})") from None
        if isinstance(error, Image.UnidentifiedImageError):
            raise ImageReadError(f"{label}: not an image file (or a format Pillow cannot read)") from None
        if isinstance(error, (OSError, SyntaxError, ValueError)):
            raise ImageReadError(f"{label}: cannot read image ({error})") from None
        raise
    return image


def _split_colour_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """8-bit RGB and 8-bit alpha (None when there is none or it is fully opaque), as stored (not rotated)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_8bit(image).convert("RGB"), None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        return rgba.convert("RGB"), None if alpha.getextrema() == (255, 255) else alpha
    return image.convert("RGB"), None  # RGB, L, P, CMYK (Pillow's CMYK -> RGB), YCbCr, ...


def load_image(
    source: str | os.PathLike | Image.Image, max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS
) -> LoadedImage:
    """Open ``source`` and return it as 8-bit RGB (+ alpha); raise :class:`ImageReadError` with a clear message.

    1. check the file (exists, not a folder, not empty) and the pixel limit, decode frame 1;
    2. split it into 8-bit colour and alpha (16-bit RGB(A) PNG colour re-read exactly by OpenCV);
    3. apply the EXIF orientation once, to colour and alpha together, whichever reader was used;
    4. note an animated or multi-page file (only its first frame is used) in ``LoadedImage.note``.
    """
    path = None if isinstance(source, Image.Image) else Path(source)
    label = str(path) if path is not None else "<image>"
    if path is not None:
        if not path.exists():
            raise ImageReadError(f"{label}: no such file")
        if path.is_dir():
            raise ImageReadError(f"{label}: is a folder, not an image")
        if path.stat().st_size == 0:
            raise ImageReadError(f"{label}: empty file (0 bytes)")
    image = _open_checked(path if path is not None else source, label, max_pixels)
    try:
        source_mode = image.mode
        rgb, alpha = _split_colour_alpha(image)
        orientation = exif_orientation(image)
        frames = int(getattr(image, "n_frames", 1) or 1)
    finally:
        if path is not None:
            image.close()  # animated and multi-page files keep their file open otherwise
    if path is not None and path.suffix.lower() == ".png" and source_mode in ("RGB", "RGBA"):
        exact = _read_16bit_png_rgb(path)
        if exact is not None and exact.size == rgb.size:
            rgb = exact
    rgb, alpha = apply_orientation(rgb, orientation), apply_orientation(alpha, orientation)
    note = f"{label}: {frames} frames; only the first is used" if frames > 1 else ""
    return LoadedImage(path=path, rgb=rgb, alpha=alpha, source_mode=source_mode, frames=frames, note=note)


def _unresolvable_link(path: Path) -> str | None:
    """Why ``path`` (a symbolic link) leads nowhere: "symlink loop" or "broken symlink"; None when it resolves."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "symlink loop"
    except OSError as error:
        return "symlink loop" if error.errno == errno.ELOOP else "broken symlink (its target does not exist)"
    return None


def _folder_images(folder: Path, problems: list[str]) -> list[Path]:
    """The images of ``folder`` (by extension, sorted, not recursive); links that lead nowhere are reported."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            reason = _unresolvable_link(entry)
            if reason is not None:
                problems.append(f"{entry}: {reason}")
                continue
        if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(entry)
    return found


def iter_image_files(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (non-recursive, sorted) and glob patterns; return (files, problems).

    A symbolic link that loops or leads nowhere is a problem (one line naming it), never skipped silently.
    """
    import glob

    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            found = _folder_images(path, problems)
            if not found:
                problems.append(f"{item}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif path.is_symlink():
            problems.append(f"{item}: {_unresolvable_link(path) or 'cannot be read'}")
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not matches:
                problems.append(f"{item}: pattern matched no files")
            files.extend(matches)
        else:
            problems.append(f"{item}: no such file or folder")
    unique: list[Path] = []
    seen: set[Path] = set()
    for file in files:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(file)
    return unique, problems


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def save_image_atomic(
    image: Image.Image,
    destination: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    protected: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write ``image`` to ``destination`` through a temporary file + rename.

    ``metadata`` becomes PNG text chunks. ``protected`` lists input paths that must never be overwritten:
    writing onto one of them raises ``FileExistsError``.
    """
    destination = Path(destination)
    for path in protected:
        if _same_file(Path(path), destination) or Path(path).resolve() == destination.resolve():
            raise FileExistsError(f"{destination}: refusing to overwrite the input image")
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = destination.suffix.lower() or ".png"
    file_format = {
        ".png": "PNG",
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".webp": "WEBP",
        ".tif": "TIFF",
        ".tiff": "TIFF",
    }.get(suffix, "PNG")
    save_kwargs: dict = {}
    if file_format == "PNG" and metadata:
        info = PngImagePlugin.PngInfo()
        for key, value in metadata.items():
            info.add_itxt(str(key), str(value))
        save_kwargs["pnginfo"] = info
    if file_format == "JPEG":
        save_kwargs["quality"] = 95
        if image.mode == "RGBA":
            image = image.convert("RGB")
    with atomic_path(destination) as temporary, open(temporary, "wb") as stream:
        image.save(stream, format=file_format, **save_kwargs)
        stream.flush()
        os.fsync(stream.fileno())
    return destination
