"""Video files through PyAV (FFmpeg): streamed decoding to PIL frames, streamed encoding with audio and subtitle
streams copied as they are, written atomically. Frame sequences (``frames/%06d.png``) as the same kind of source.

Nothing here holds more than a frame or two: memory does not grow with the clip's length. PyAV is the optional
``video`` extra (``pip install seesr[video]``); importing this module without it works, using it raises a clear
:class:`VideoError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seesr.utils.files import atomic_path
from seesr.utils.images import IMAGE_EXTENSIONS, ImageReadError, load_image

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")
#: encoders tried in order when no --codec is given (the first one this FFmpeg build has wins)
DEFAULT_CODECS = ("libx264", "libx265", "mpeg4")
DEFAULT_CRF = 18
X265_MIN_SIDE = 48
_PATTERN = re.compile(r"%0?(\d*)d")


class VideoError(RuntimeError):
    """A video cannot be read or written (one line naming the file)."""


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise VideoError("video needs PyAV: pip install 'seesr[video]'") from None
    return av


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS and Path(path).is_file()


def is_frame_pattern(text: str) -> bool:
    """``frames/%06d.png``-style inputs."""
    return _PATTERN.search(Path(text).name) is not None


@dataclass
class VideoInfo:
    """What the output keeps of a source (``fps`` None for a frame sequence without --fps)."""

    path: Path
    width: int
    height: int
    fps: Fraction | None
    time_base: Fraction | None
    rotation: float = 0.0
    duration: float | None = None  # seconds
    copied_streams: list[str] = field(default_factory=list)  # e.g. ["audio:aac", "subtitle:mov_text"]


@dataclass
class FrameItem:
    """One decoded frame: ``image`` None when it could not be decoded (``error`` says why)."""

    index: int
    image: Image.Image | None
    pts: int | None = None
    error: str = ""


def probe(path: Path) -> VideoInfo:
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            copied = [f"{s.type}:{s.codec_context.name}" for s in container.streams if s.type in ("audio", "subtitle")]
            duration = float(container.duration / 1_000_000) if container.duration else None
            rotation = 0.0
            for frame in container.decode(stream):  # rotation travels with the frames (display matrix)
                rotation = float(getattr(frame, "rotation", 0) or 0)
                break
            return VideoInfo(
                path,
                stream.codec_context.width,
                stream.codec_context.height,
                Fraction(rate) if rate else None,
                Fraction(stream.time_base) if stream.time_base else None,
                rotation,
                duration,
                copied,
            )
    except av.error.FFmpegError as error:
        raise VideoError(f"{path}: cannot read video ({error})") from None


def count_frames(path: Path) -> int:
    """Frames of the first video stream, from its packets (demuxed, not decoded: fast, and as exact as the container
    is: an undecodable frame is counted, as ``upscale_video`` counts it)."""
    av = _av()
    count = 0
    try:
        with av.open(str(path)) as container:
            for packet in container.demux(container.streams.video[0]):
                count += 1 if packet.size else 0
    except av.error.FFmpegError as error:
        raise VideoError(f"{path}: cannot read video ({error})") from None
    return count


def iter_video_frames(path: Path) -> Iterator[FrameItem]:
    """Decode the first video stream frame by frame (RGB, unrotated pixels: rotation stays metadata).

    A packet that fails to decode yields one item without image; decoding goes on with the next packet.
    """
    av = _av()
    index = 0
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as error:
        raise VideoError(f"{path}: cannot read video ({error})") from None
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as error:
                # no timestamp: with frame threading the error may surface at a later packet
                yield FrameItem(index, None, None, f"frame {index}: cannot decode ({error})")
                index += 1
                continue
            for frame in frames:
                yield FrameItem(index, frame.to_image(), frame.pts)
                index += 1


def sequence_files(source: str) -> list[Path]:
    """The frames of a sequence: a ``%06d`` pattern (numbered files, in number order) or a folder (sorted images)."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    match = _PATTERN.search(path.name)
    if match is None or not path.parent.is_dir():
        return []
    head, tail = path.name[: match.start()], path.name[match.end() :]
    numbered = []
    for entry in path.parent.iterdir():
        name = entry.name
        middle = name[len(head) : len(name) - len(tail)] if name.startswith(head) and name.endswith(tail) else ""
        if middle.isdigit():
            numbered.append((int(middle), entry))
    return [entry for _, entry in sorted(numbered)]


def iter_sequence_frames(files: Iterable[Path], max_pixels: int | None = None) -> Iterator[FrameItem]:
    """Read a frame sequence one image at a time; an unreadable image yields an item without image."""
    for index, file in enumerate(files):
        try:
            yield FrameItem(index, load_image(file, max_pixels=max_pixels).rgb)
        except ImageReadError as error:
            yield FrameItem(index, None, error=str(error))


def pick_codec(requested: str | None) -> str:
    """``requested`` if this FFmpeg build can encode it, else the first of :data:`DEFAULT_CODECS` it has."""
    av = _av()
    for name in [requested] if requested else DEFAULT_CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises several types for an unknown encoder
            continue
    raise VideoError(f"--codec {requested}: this FFmpeg build has no such encoder" if requested else "no encoder")


@dataclass
class EncodeOptions:
    codec: str | None = None  # None: pick_codec
    crf: int | None = None  # None: DEFAULT_CRF for x264/x265 unless a bitrate is given
    bitrate: str | None = None  # e.g. "8M"


def _bitrate(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    try:
        return int(float(text.rstrip("kmg")) * factor)
    except ValueError:
        raise VideoError(f"--bitrate {text!r}: expected a number like 8M or 2500k") from None


def _video_stream(container: Any, first: Image.Image, rate: Fraction, time_base: Fraction, options: EncodeOptions):
    codec = pick_codec(options.codec)
    even = first.width % 2 == 0 and first.height % 2 == 0
    if codec == "libx265" and (not even or min(first.size) < X265_MIN_SIDE):
        # this x265 build corrupts memory on such frames (46x34 and 45x33 crashed, 64x48 ran fine, in tests)
        if options.codec:
            raise VideoError(
                f"--codec libx265 needs even frame sizes of at least {X265_MIN_SIDE} pixels (got "
                f"{first.width}x{first.height}); use --codec libx264"
            )
        codec = pick_codec("mpeg4")
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = first.size
    stream.pix_fmt = "yuv420p" if even or codec == "mpeg4" else "yuv444p"
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    if options.bitrate:
        stream.bit_rate = _bitrate(options.bitrate)
    elif codec in ("libx264", "libx265"):
        stream.options = {"crf": str(options.crf if options.crf is not None else DEFAULT_CRF)}
    if codec == "libx265":
        stream.options = {**stream.options, "x265-params": "log-level=error"}  # x265 prints to stderr otherwise
    elif codec == "mpeg4":
        stream.options = {"qscale": "2"}
        stream.codec_context.qmax = 2  # near-lossless: the encoder without CRF
    return stream


class _Copier:
    """Copies the audio and subtitle packets of ``source`` into ``container``, interleaved by time."""

    def __init__(self, av: Any, source: Path | None, container: Any, warnings: list[str]):
        self.pairs: dict[int, Any] = {}
        self.packets: Iterator[Any] = iter(())
        self.pending: Any = None
        self.input = None
        if source is None or not source.is_file():
            return
        self.input = av.open(str(source))
        wanted = [s for s in self.input.streams if s.type in ("audio", "subtitle")]
        for stream in wanted:
            try:
                self.pairs[stream.index] = container.add_stream_from_template(stream)
            except Exception as error:  # noqa: BLE001 - a codec the output container cannot hold
                warnings.append(f"{source}: {stream.type} stream {stream.index} not copied ({error})")
        if self.pairs:
            self.packets = iter(self.input.demux([self.input.streams[i] for i in self.pairs]))

    def until(self, container: Any, seconds: float | None) -> None:
        """Mux the copied packets that start before ``seconds`` (None: all that are left)."""
        while True:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                return
            if packet.dts is None:  # demuxer's flush packet
                continue
            if seconds is not None and float(packet.dts * packet.time_base) > seconds:
                self.pending = packet
                return
            packet.stream = self.pairs[packet.stream.index]
            container.mux(packet)

    def close(self) -> None:
        if self.input is not None:
            self.input.close()


def encode_video(
    frames: Iterable[tuple[Image.Image, int | None]],
    destination: Path,
    *,
    fps: Fraction,
    time_base: Fraction | None = None,
    rotation: float = 0.0,
    copy_from: Path | None = None,
    options: EncodeOptions | None = None,
) -> list[str]:
    """Encode ``(image, pts)`` pairs into ``destination`` (atomically) and copy ``copy_from``'s audio/subtitles.

    ``pts`` is in ``time_base`` units (None: frame number / fps). Returns warnings (streams that could not be copied).
    """
    av = _av()
    options = options or EncodeOptions()
    time_base = time_base or Fraction(1, 1) / fps
    warnings: list[str] = []
    try:
        with atomic_path(destination, suffix=destination.suffix) as temporary:  # the suffix names the container
            _encode_into(av, temporary, frames, fps, time_base, rotation, copy_from, options, warnings)
    except av.error.FFmpegError as error:
        raise VideoError(f"{destination}: cannot write video ({error})") from None
    return warnings


def _encode_into(av, temporary, frames, fps, time_base, rotation, copy_from, options, warnings) -> None:
    with av.open(temporary, "w", format=None) as container:
        iterator = iter(frames)
        first = next(iterator, None)
        if first is None:
            raise VideoError(f"{temporary}: no frames to encode")
        stream = _video_stream(container, first[0], fps, time_base, options)
        if rotation:
            stream.set_display_rotation(rotation)
        copier = _Copier(av, copy_from, container, warnings)
        try:
            step = int(round(1 / (fps * time_base))) or 1
            pts_fallback = 0
            for image, pts in _chain(first, iterator):
                # from_ndarray copies row by row (from_image mishandles odd widths: heap corruption seen in tests)
                frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
                frame.pts = pts if pts is not None else pts_fallback
                frame.time_base = time_base
                pts_fallback = frame.pts + step
                copier.until(container, float(frame.pts * time_base))
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
            copier.until(container, None)
        finally:
            copier.close()


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
