"""Upscale a video or a frame sequence frame by frame, with less flicker by design, resumable.

A run has three passes over the source, none of which holds more than a couple of frames:

1. **analyse** (LR frames only): shot changes, the tags of a few frames per shot, timestamps, undecodable frames.
   Saved as ``state.json`` in the working folder ``OUTDIR/<stem>.frames/``.
2. **render**: every frame through :func:`seesr.pipeline.batch._upscale_with_retries` (the per-image path of
   ``seesr upscale``) with *one seed for all frames* and the tags of its shot; colour fix against the frame's own LR
   as for photos. Each result is ``OUTDIR/<stem>.frames/%06d.png``, written atomically; with ``skip_existing`` the
   frames already there are kept (an interrupted run continues from the last finished frame). A frame that cannot
   be decoded is reported and replaced by the previous good frame. The flicker meter runs here.
3. **assemble**: the PNG frames encoded (timestamps, frame rate, rotation kept; audio and subtitle streams copied)
   into a temporary file renamed into place.

Shot changes (``--video-tags shot``): each frame's RGB histogram (16 bins per channel, 48 values summing to 3) is
compared with the previous frame's; half the L1 distance divided by 3 is in [0, 1] (0 = same colours, 1 = no colour
in common). A cut is declared when it exceeds ``shot_threshold`` (default 0.4).

Flicker: the mean absolute difference between consecutive output frames of a shot (8-bit levels; pairs across a
detected cut are left out), reported beside the same measure of the bicubic upscale of the LR frames; ``ratio`` > 1 means the result flickers more than the bicubic one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seesr.pipeline.batch import UpscaleSettings, _check_size, _upscale_with_retries, png_metadata
from seesr.utils.files import write_text_atomic
from seesr.utils.images import LoadedImage, save_image_atomic
from seesr.utils.video_io import (
    EncodeOptions,
    FrameItem,
    VideoInfo,
    encode_video,
    iter_sequence_frames,
    iter_video_frames,
    probe,
    sequence_files,
)

logger = logging.getLogger(__name__)

VIDEO_TAG_MODES = ("clip", "shot", "frame")
NOISE_MODES = ("shared", "per-frame")
STATE_FILE = "state.json"
FRAME_NAME = "{:06d}.png"


@dataclass
class VideoSettings:
    """How a clip is handled (CLI flag names in brackets)."""

    video_tags: str = "shot"  # --video-tags clip|shot|frame
    shot_threshold: float = 0.4  # --shot-threshold
    tag_every: int = 12  # --tag-every: frames between tagged frames within a shot
    tag_samples: int = 3  # at most this many tagged frames per shot
    noise: str = "shared"  # --frame-noise shared|per-frame (per-frame: seed + frame number, for comparison)
    frames_only: bool = False  # --frames-only: keep the PNG frames, no video
    keep_frames: bool = False  # --keep-frames: keep the working folder after the video is written
    fps: Fraction | None = None  # --fps: frame rate of a frame sequence
    assemble: Path | None = None  # --assemble: the video file of a frame sequence
    encode: EncodeOptions = field(default_factory=EncodeOptions)


@dataclass
class VideoResult:
    source: Path
    output: Path | None
    status: str  # "ok", "skipped", "failed"
    message: str = ""
    frames: int = 0
    rendered: int = 0  # frames upscaled by this run (the others were resumed)
    corrupt: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


# --- shots and tags ------------------------------------------------------------------------------------------------


def colour_histogram(image: Image.Image) -> np.ndarray:
    """16-bin histogram per RGB channel, each channel normalised to sum 1 (48 values)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8).reshape(-1, 3)
    bins = [np.bincount(pixels[:, c] >> 4, minlength=16) / len(pixels) for c in range(3)]
    return np.concatenate(bins)


def shot_distance(previous: np.ndarray, current: np.ndarray) -> float:
    """Half the L1 distance of two :func:`colour_histogram` results, per channel averaged: 0 (same) .. 1."""
    return float(np.abs(previous - current).sum() / 6.0)


def combine_tags(samples: list[list[str]]) -> list[str]:
    """Tags found in at least half of the sampled frames, most frequent first (ties: first seen first)."""
    if not samples:
        return []
    counts = Counter(tag for tags in samples for tag in dict.fromkeys(tags))
    order = {tag: i for i, tag in enumerate(dict.fromkeys(t for tags in samples for t in tags))}
    needed = (len(samples) + 1) // 2
    kept = [tag for tag, count in counts.items() if count >= needed]
    return sorted(kept, key=lambda tag: (-counts[tag], order[tag]))


def _analyse(pipe: Any, frames: Iterator[FrameItem], settings: UpscaleSettings, video: VideoSettings) -> dict:
    """Pass 1: shots (frame ranges), tags per shot, timestamps and undecodable frames."""
    tagging = settings.use_tags and video.video_tags != "frame"
    shots: list[list[int]] = []
    samples: list[list[list[str]]] = []
    pts: list[int | None] = []
    corrupt: dict[str, str] = {}
    previous = None
    for item in frames:
        pts.append(item.pts)
        if item.image is None:
            corrupt[str(item.index)] = item.error
            continue
        if not shots:  # the first frame: the size and memory guard of photos, once for the clip
            _check_size(pipe, LoadedImage(None, item.image), settings)
        histogram = colour_histogram(item.image)
        if previous is None or (
            video.video_tags == "shot" and shot_distance(previous, histogram) > video.shot_threshold
        ):
            shots.append([item.index, item.index])
            samples.append([])
        previous = histogram
        offset = item.index - shots[-1][0]
        if tagging and offset % video.tag_every == 0 and len(samples[-1]) < video.tag_samples:
            samples[-1].append(pipe.run_tagger(item.image)[0])
    for index, shot in enumerate(shots):  # shot ends: the frame before the next shot starts
        shot[1] = shots[index + 1][0] if index + 1 < len(shots) else len(pts)
    if not shots:
        raise ValueError("no frame could be decoded")
    shots[0][0] = 0  # leading undecodable frames belong to the first shot
    if video.video_tags == "clip":
        tags = [combine_tags([s for shot in samples for s in shot])]
    else:
        tags = [combine_tags(shot) for shot in samples] if tagging else [[] for _ in shots]
    return {"frames": len(pts), "pts": pts, "shots": shots, "tags": tags, "corrupt": corrupt}


def _shot_tags(state: dict, index: int, video: VideoSettings, settings: UpscaleSettings) -> list[str] | None:
    """The fixed tags of frame ``index`` (None: the pipeline tags the frame itself)."""
    if video.video_tags == "frame" or not settings.use_tags:
        return None
    if video.video_tags == "clip":
        return list(state["tags"][0])
    for shot, tags in zip(state["shots"], state["tags"], strict=True):
        if shot[0] <= index < shot[1]:
            return list(tags)
    return list(state["tags"][-1])


# --- flicker -------------------------------------------------------------------------------------------------------


class FlickerMeter:
    """Mean absolute difference between consecutive frames (8-bit levels), for the result and its bicubic reference."""

    def __init__(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray] | None = None  # (result, bicubic) of the last frame
        self._sums = [0.0, 0.0]
        self._pairs = 0

    def add(self, output: Image.Image, lr: Image.Image, continuous: bool = True) -> None:
        """Add the next frame; ``continuous`` False (first frame of a shot) leaves the pair across the cut out."""
        result = np.asarray(output.convert("RGB"), dtype=np.uint8)  # uint8: two 4K frames kept, not four floats
        bicubic = np.asarray(lr.convert("RGB").resize(output.size, Image.Resampling.BICUBIC), dtype=np.uint8)
        if self._previous is not None and continuous:
            self._sums[0] += _mean_abs_difference(result, self._previous[0])
            self._sums[1] += _mean_abs_difference(bicubic, self._previous[1])
            self._pairs += 1
        self._previous = (result, bicubic)

    def result(self) -> dict[str, float | None]:
        if self._pairs == 0:
            return {"output": None, "bicubic": None, "ratio": None, "pairs": 0}
        output, bicubic = (total / self._pairs for total in self._sums)
        return {
            "output": output,
            "bicubic": bicubic,
            "ratio": output / bicubic if bicubic else None,
            "pairs": self._pairs,
        }


def _mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- sources and places --------------------------------------------------------------------------------------------


@dataclass
class Source:
    """A clip or a frame sequence, with where its results go."""

    path: Path  # the video file, the sequence folder or pattern
    name: str  # output stem
    info: VideoInfo | None  # None for a frame sequence
    files: list[Path] = field(default_factory=list)  # the frames of a sequence

    def frames(self, settings: UpscaleSettings) -> Iterator[FrameItem]:
        if self.info is not None:
            return iter_video_frames(self.path)
        return iter_sequence_frames(self.files, settings.max_input_pixels)


def open_source(text: str) -> Source:
    """A video file (probed) or a frame sequence (a ``%06d`` pattern, or a folder of images)."""
    path = Path(text)
    if path.is_file():
        return Source(path, path.stem, probe(path))
    files = sequence_files(text)
    if not files:
        raise ValueError(f"{text}: no frames found")
    folder = path if path.is_dir() else path.parent
    return Source(path, folder.resolve().name, None, files)


def video_output_path(source: Source, outdir: Path, scale: int) -> Path:
    """``OUTDIR/<stem><ext>`` (``<stem>_x<scale><ext>`` in the input's own folder); .mkv for other containers."""
    suffix = source.path.suffix.lower() if source.path.suffix.lower() in (".mp4", ".mov", ".mkv", ".m4v") else ".mkv"
    if source.info is not None and outdir.resolve() == source.path.parent.resolve():
        return outdir / f"{source.name}_x{scale}{suffix}"
    return outdir / f"{source.name}{suffix}"


def work_folder(source: Source, outdir: Path) -> Path:
    return outdir / f"{source.name}.frames"


def _state_key(source: Source, settings: UpscaleSettings, video: VideoSettings) -> str:
    """Identifies a source and the settings that shape its frames: a resumed run only keeps frames of the same key."""
    stat = source.path.stat() if source.path.exists() else None
    record = {
        "settings": {k: v for k, v in asdict(settings).items() if k != "seed"},
        "video": [video.video_tags, video.shot_threshold, video.tag_every, video.tag_samples, video.noise],
        "source": [str(source.path.resolve()), stat.st_size if stat else None, stat.st_mtime_ns if stat else None],
        "files": [f.name for f in source.files],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the run -------------------------------------------------------------------------------------------------------


def upscale_video(
    pipe: Any,
    source: Source,
    outdir: Path,
    settings: UpscaleSettings,
    video: VideoSettings,
    *,
    skip_existing: bool = False,
    show_progress: bool = True,
    metadata_extra: dict[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> VideoResult:
    """Upscale one clip or frame sequence: 1. reuse or make the working folder; 2. analyse (shots, tags);
    3. render the frames; 4. assemble the video; 5. write the report; 6. remove the working folder."""
    started = time.perf_counter()
    target = _final_target(source, outdir, settings, video)
    report_path = outdir / f"{source.name}.video.json"
    key = _state_key(source, settings, video)
    if skip_existing and already_upscaled(source, outdir, settings, video):
        return VideoResult(source.path, target, "skipped", "output exists")
    if target is not None and target.exists() and not _written_by_us(report_path, target):
        raise FileExistsError(
            f"{target}: exists and was not written by seesr upscale; refusing to replace it "
            "(move it away or choose another -o)"
        )
    work = work_folder(source, outdir)
    state = _load_or_analyse(pipe, source, work, key, settings, video, skip_existing, show_progress)
    seed = state["seed"]
    meter = FlickerMeter()
    rendered, corrupt = _render(
        pipe, source, work, state, settings, video, meter, skip_existing, show_progress, metadata_extra, on_progress
    )
    warnings = _assemble(source, work, state, target, video) if target is not None else []
    report = {
        "source": str(source.path),
        "output": str(target if target is not None else work),
        "frames": state["frames"],
        "rendered": rendered,
        "resumed": state["frames"] - rendered,
        "fps": str(source.info.fps if source.info is not None else video.fps),
        "duration": source.info.duration if source.info is not None else None,
        "rotation": source.info.rotation if source.info is not None else 0,
        "copied_streams": source.info.copied_streams if source.info is not None else [],
        "seed": seed,
        "noise": video.noise,
        "video_tags": video.video_tags,
        "shots": state["shots"],
        "tags": state["tags"],
        "corrupt_frames": corrupt,
        "flicker": meter.result(),
        "warnings": warnings,
        "seconds": round(time.perf_counter() - started, 2),
        "key": key,
        "status": "ok",
    }
    write_text_atomic(json.dumps(report, indent=2, default=str) + "\n", report_path)
    if target is not None and not video.keep_frames:
        shutil.rmtree(work, ignore_errors=True)
    return VideoResult(
        source.path, target or work, "ok", "; ".join(warnings), state["frames"], rendered, corrupt, report
    )


def already_upscaled(source: Source, outdir: Path, settings: UpscaleSettings, video: VideoSettings) -> bool:
    """``--skip-existing``: this clip's video (or frames) and report exist from a finished run with these settings."""
    target = _final_target(source, outdir, settings, video)
    report_path = outdir / f"{source.name}.video.json"
    return _finished_run(report_path, _state_key(source, settings, video), target)


def _final_target(source: Source, outdir: Path, settings: UpscaleSettings, video: VideoSettings) -> Path | None:
    """The video file written at the end (None: frames only)."""
    if video.frames_only:
        return None
    if source.info is None:
        return video.assemble
    return video_output_path(source, outdir, settings.scale)


def _written_by_us(report_path: Path, target: Path) -> bool:
    try:
        return Path(json.loads(report_path.read_text()).get("output", "")).resolve() == target.resolve()
    except (OSError, ValueError, AttributeError):
        return False


def _finished_run(report_path: Path, key: str, target: Path | None) -> bool:
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return False
    done = target is None or target.is_file()
    return report.get("key") == key and report.get("status") == "ok" and done


def _load_or_analyse(
    pipe: Any,
    source: Source,
    work: Path,
    key: str,
    settings: UpscaleSettings,
    video: VideoSettings,
    resume: bool,
    show_progress: bool = False,
) -> dict:
    """The saved analysis when resuming with the same key; otherwise a fresh working folder and analysis."""
    state_path = work / STATE_FILE
    if resume:
        try:
            state = json.loads(state_path.read_text())
            if state.get("key") == key and (settings.seed is None or state.get("seed") == settings.seed):
                return state
            logger.warning("%s: settings changed since the interrupted run; starting again", source.path)
        except (OSError, ValueError):
            pass
    if work.exists():
        if not state_path.exists() and any(work.iterdir()):
            raise FileExistsError(f"{work}: exists and was not made by seesr upscale; move it away")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        from tqdm.auto import tqdm

        frames = tqdm(source.frames(settings), desc=f"{source.name}: shots", unit="frame", disable=not show_progress)
        state = _analyse(pipe, frames, settings, video)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming yet
        raise
    state.update(key=key, seed=settings.seed if settings.seed is not None else secrets.randbelow(2**31))
    write_text_atomic(json.dumps(state), state_path)
    return state


def _finished_frame(path: Path) -> Image.Image | None:
    """A complete, readable frame PNG (a resumed run keeps it), else None."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError):
        return None


def _render(
    pipe: Any,
    source: Source,
    work: Path,
    state: dict,
    settings: UpscaleSettings,
    video: VideoSettings,
    meter: FlickerMeter,
    resume: bool,
    show_progress: bool,
    metadata_extra: dict[str, Any] | None,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[int, list[str]]:
    """Pass 2: every frame upscaled (or kept, when resuming) into ``work``; returns (frames rendered, corrupt)."""
    from tqdm.auto import tqdm

    total = state["frames"]
    rendered, corrupt, pending = 0, [], []
    previous: tuple[Image.Image, Image.Image] | None = None  # (output, LR) of the last good frame
    starts = {shot[0] for shot in state["shots"]}  # flicker is measured within shots, not across cuts
    with tqdm(total=total, desc=source.name, unit="frame", disable=not show_progress) as bar:
        for item in source.frames(settings):
            path = work / FRAME_NAME.format(item.index)
            if item.image is None:
                corrupt.append(f"{source.path}: {item.error}; the previous good frame is used in its place")
                logger.warning(corrupt[-1])
                if previous is None:
                    pending.append(item.index)  # before the first good frame: the next good frame fills in
                    continue
                output, lr = previous
                save_image_atomic(output, path)
            else:
                lr = item.image
                output = _finished_frame(path) if resume else None
                if output is None:
                    output = _upscale_frame(pipe, item, state, settings, video, metadata_extra)
                    save_image_atomic(output, path, metadata=output.info.get("seesr_metadata"))
                    rendered += 1
            for index in pending:
                save_image_atomic(output, work / FRAME_NAME.format(index))
                meter.add(output, lr, index not in starts)
            bar.update(1 + len(pending))
            pending.clear()
            meter.add(output, lr, item.index not in starts)
            previous = (output, lr)
            if on_progress is not None:
                on_progress(item.index + 1, total)
    return rendered, corrupt


def _upscale_frame(
    pipe: Any, item: FrameItem, state: dict, settings: UpscaleSettings, video: VideoSettings, extra: dict | None
) -> Image.Image:
    """One frame through the per-image path: the clip's seed (or seed + frame number) and its shot's tags."""
    seed = state["seed"] + (item.index if video.noise == "per-frame" else 0)
    tags = _shot_tags(state, item.index, video, settings)
    result = _upscale_with_retries(pipe, item.image, settings, seed, tags)
    image = result.images[0]
    record = {"frame": item.index, "video_key": state["key"], **(extra or {})}
    image.info["seesr_metadata"] = png_metadata(settings, result.prompts[0], result.tags[0], seed, record)
    return image


def _assemble(source: Source, work: Path, state: dict, target: Path, video: VideoSettings) -> list[str]:
    """Pass 3: the frame PNGs into ``target`` (atomically), audio and subtitles copied from a video source."""
    info = source.info
    fps = info.fps if info is not None and info.fps else (video.fps or Fraction(25))
    pts = _fill_timestamps(state["pts"], fps, info.time_base) if info is not None else [None] * state["frames"]

    def frames() -> Iterator[tuple[Image.Image, int | None]]:
        for index in range(state["frames"]):
            with Image.open(work / FRAME_NAME.format(index)) as image:
                yield image.convert("RGB"), pts[index]

    return encode_video(
        frames(),
        target,
        fps=fps,
        time_base=info.time_base if info is not None and pts[0] is not None else None,
        rotation=info.rotation if info is not None else 0.0,
        copy_from=source.path if info is not None else None,
        options=video.encode,
    )


def _fill_timestamps(pts: list[int | None], fps: Fraction, time_base: Fraction | None) -> list[int | None]:
    """Timestamps of undecodable frames: one frame after the previous one (all None without a time base)."""
    if time_base is None:
        return [None] * len(pts)
    step = max(1, round(1 / (fps * time_base)))
    filled: list[int | None] = []
    for value in pts:
        filled.append(value if value is not None else (filled[-1] + step if filled else 0))
    return filled
