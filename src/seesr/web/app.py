"""The Gradio page of ``seesr serve``: upload, see and edit DAPE's tags, upscale, compare, download; and a Video tab
that upscales a short clip through :func:`seesr.pipeline.video.upscale_video` (progress in frames with the time left,
the first frames shown early, cancel, the clip to download).

:func:`build_app` builds the :class:`gradio.Blocks` from an already loaded pipeline (nothing is loaded here, and
Gradio is imported only inside the functions, so importing this module is cheap and needs no ``web`` extra).
:func:`launch_app` starts it with the safe defaults: bound to 127.0.0.1, one job per device at a time, bounded queue
and upload size.

The page logic lives in :class:`WebController`, which knows nothing about Gradio, so it is unit-tested directly;
``build_app`` only lays out the components and wires their events to it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from seesr.utils.images import save_image_atomic
from seesr.web.inputs import InputClip, InputImage, InvalidUpload, read_clip_payload, read_payload
from seesr.web.runner import PipelineRunner, RunCancelled, Runner, UpscaleResult
from seesr.web.settings import (
    COLOR_FIXES,
    MAX_SEED,
    TAG_SOURCE_LABELS,
    UserInputError,
    WebLimits,
    WebSettings,
    check_output_size,
    defaults_markdown,
    format_bytes,
    format_tags,
    make_settings,
)

if TYPE_CHECKING:
    import gradio as gr

logger = logging.getLogger(__name__)

DEVICE_QUEUE = "seesr-device"  # concurrency id shared by every event that runs a model
RESULT_MAX_AGE_S = 2 * 3600  # results older than this are deleted when a new one is written
RESULT_MARKER = ".seesr-web-result"  # in every result folder the app makes: the only folders it deletes
OUT_OF_MEMORY_MESSAGE = (
    "The server ran out of memory for this image ({error}). Try a smaller scale or tile size, or a smaller image."
)
PREVIEW_FRAMES = 4  # the first upscaled frames of a clip shown while the rest are upscaled
T = TypeVar("T")


@contextlib.contextmanager
def private_server_folder(prefix: str = "seesr-serve-") -> Iterator[Path]:
    """A folder only this user can read (mode 0700, from :func:`tempfile.mkdtemp`) for one server's files.

    Inside it, ``results/`` takes the result PNGs and ``gradio/`` is Gradio's upload and cache folder
    (``GRADIO_TEMP_DIR`` points there while the block runs; Gradio's default, ``/tmp/gradio``, is shared and
    world-readable). It is made under ``GRADIO_TEMP_DIR`` when that is set, else in the system temp folder, and is
    removed, with everything in it, when the block exits; ``GRADIO_TEMP_DIR`` is then restored.
    """
    previous = os.environ.get("GRADIO_TEMP_DIR")
    parent = previous or None
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (folder / "results").mkdir(mode=0o700)
    (folder / "gradio").mkdir(mode=0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class RunOutput:
    """What the page shows after a run: file paths are inside the controller's output folder."""

    before_path: Path
    after_path: Path
    prompt: str
    summary_markdown: str
    seed: int
    result: UpscaleResult


@dataclass
class VideoProgress:
    """Where a clip stands: ``done`` of ``total`` frames, about ``seconds_left`` (None until two frames are done),
    the preview PNGs of its first frames so far, and ``step``: ``(step, steps)`` of the frame being upscaled, for a
    report between frames (None after a frame)."""

    done: int
    total: int
    seconds_left: float | None
    previews: list[Path]
    step: tuple[int, int] | None = None

    @property
    def fraction(self) -> float:
        """The share of the clip done, counting the steps of the frame in progress."""
        partial = self.step[0] / self.step[1] if self.step is not None and self.step[1] else 0.0
        return min(1.0, (self.done + partial) / self.total) if self.total else 0.0

    def describe(self) -> str:
        """``"Frame 3 of 12, about 1 min 5 s left"`` (after a frame), ``"Frame 4 of 12: step 20 of 50, …"``."""
        left = "" if self.seconds_left is None else f", about {format_duration(self.seconds_left)} left"
        if self.step is not None:
            return (
                f"Frame {min(self.done + 1, self.total)} of {self.total}: step {self.step[0]} of {self.step[1]}{left}"
            )
        return f"Frame {self.done} of {self.total}{left}"


@dataclass
class VideoRunOutput:
    """A finished clip: the video and its first frames (inside the controller's output folder), the run's report."""

    video_path: Path
    previews: list[Path]
    summary_markdown: str
    seed: int
    report: dict[str, Any]


def format_duration(seconds: float) -> str:
    """``65 -> "1 min 5 s"``, ``3700 -> "1 h 2 min"``, ``4.2 -> "4 s"``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class WebController:
    """Everything the page does, without Gradio: checks, calls to the runner, saving results, cancelling.

    Args:
        runner: the model adapter (:class:`~seesr.web.runner.PipelineRunner` or a test double).
        limits: size and range limits applied to everything the client sends.
        output_dir: where result PNGs are written (by default a fresh private temporary folder, mode 0700, removed
            when the process exits; ``seesr serve`` passes the ``results/`` of :func:`private_server_folder`).
        defaults: the page's initial values and the server-side ``process_size``.
    """

    def __init__(
        self,
        runner: Runner,
        limits: WebLimits | None = None,
        output_dir: str | Path | None = None,
        defaults: WebSettings | None = None,
    ):
        self.runner = runner
        self.limits = limits or WebLimits()
        self.defaults = defaults or WebSettings()
        if output_dir is None:  # our own private temporary folder (mkdtemp: mode 0700), removed at exit
            self.output_dir = Path(tempfile.mkdtemp(prefix="seesr-web-"))
            atexit.register(shutil.rmtree, self.output_dir, ignore_errors=True)
        else:
            self.output_dir = Path(output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self._stop_flags: dict[str, threading.Event] = {}
        self._flags_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------------- the page text
    def limits_markdown(self) -> str:
        """One line telling the user what the server accepts."""
        limits = self.limits
        return (
            f"Accepts PNG, JPEG, WebP, TIFF or BMP up to {format_bytes(limits.max_upload_bytes)} and "
            f"{limits.max_input_pixels / 1e6:.1f} MP; results up to {limits.max_output_pixels / 1e6:.1f} MP."
        )

    def describe_input(self, size: tuple[int, int] | None, scale: Any) -> str:
        """Markdown under the upload box: the input size and the size of the result at ``scale``."""
        if size is None:
            return self.limits_markdown()
        width, height = size
        try:
            factor = int(scale)
            out_w, out_h = check_output_size(width, height, factor, self.limits, self.defaults.process_size)
        except (TypeError, ValueError, UserInputError) as error:
            return f"Input **{width}×{height}** px. ⚠️ {error}"
        return f"Input **{width}×{height}** px → result **{out_w}×{out_h}** px at ×{factor}."

    # ------------------------------------------------------------------------------------------------- the events
    def inspect_upload(self, upload: InputImage | InvalidUpload | None, scale: Any) -> tuple[bool, str, Any]:
        """After an upload: ``(ok, markdown, size)``; a bad upload gives ``ok=False`` and the reason."""
        if upload is None:
            return True, self.limits_markdown(), None
        if isinstance(upload, InvalidUpload):
            return False, f"⚠️ **{upload.message}**", None
        return True, self.describe_input(upload.size, scale), upload.size

    def detect(self, upload: InputImage | InvalidUpload | None) -> tuple[str, str]:
        """Run DAPE on the input: ``(tags text for the editable box, status line)``."""
        image = self._require_image(upload)
        started = time.perf_counter()
        tags = self._returning_memory(lambda: self.runner.detect_tags(image.rgb))
        seconds = time.perf_counter() - started
        status = f"DAPE found {len(tags)} tag{'s' if len(tags) != 1 else ''} in {seconds:.1f} s. Edit them freely."
        if not tags:
            status = "DAPE found no tags; type your own or leave the box empty."
        return format_tags(tags), status

    def run(
        self,
        upload: InputImage | InvalidUpload | None,
        *,
        session: str,
        on_step: Callable[[int, int], None] | None = None,
        **controls: Any,
    ) -> RunOutput:
        """Validate ``controls`` (the raw values of the page's inputs), upscale, save the PNGs, describe the run.

        ``controls`` are the keyword arguments of :func:`seesr.web.settings.make_settings` except ``limits``. The
        size checks come before any work; running out of memory is a message, and the memory is returned after.
        """
        image = self._require_image(upload)
        settings = make_settings(limits=self.limits, process_size=self.defaults.process_size, **controls).resolved()
        check_output_size(*image.size, settings.scale, self.limits, settings.process_size)
        flag = self._stop_flag(session)
        flag.clear()
        try:
            result = self._returning_memory(
                lambda: self.runner.upscale(image.rgb, settings, on_step=on_step, should_stop=flag.is_set)
            )
        except RunCancelled:
            logger.info("run cancelled by the user")
            raise
        finally:
            with self._flags_lock:
                self._stop_flags.pop(session, None)
        expected = (image.size[0] * settings.scale, image.size[1] * settings.scale)
        if result.image.size != expected:
            logger.warning("result is %s, expected %s; resizing", result.image.size, expected)
            result.image = result.image.resize(expected, Image.Resampling.BICUBIC)
        before_path, after_path = self._save(image, result)
        return RunOutput(
            before_path=before_path,
            after_path=after_path,
            prompt=result.prompt,
            summary_markdown=summary_markdown(result, image.size),
            seed=int(result.settings.seed or 0),
            result=result,
        )

    def run_video(
        self,
        upload: InputClip | InvalidUpload | None,
        *,
        session: str,
        on_progress: Callable[[VideoProgress], None] | None = None,
        **controls: Any,
    ) -> VideoRunOutput:
        """Upscale a clip with :func:`seesr.pipeline.video.upscale_video` (through the runner): 1. check the clip
        and ``controls`` (size per clip, as for photos; its length was checked at upload); 2. upscale into a fresh
        job folder, reporting each frame (with the time left and the first frames) and stopping after the current
        denoising step on Cancel; 3. describe the result. A cancelled or failed clip leaves nothing behind."""
        clip = self._require_clip(upload)
        settings = make_settings(limits=self.limits, process_size=self.defaults.process_size, **controls).resolved()
        check_output_size(*clip.size, settings.scale, self.limits, settings.process_size)
        from seesr.pipeline.preprocess import ProcessingSizeError
        from seesr.pipeline.video import Source
        from seesr.utils.video_io import VideoError

        job = self._new_result_folder()
        flag = self._stop_flag(session)
        flag.clear()
        tracker = _FrameTracker(job, flag, on_progress, clip.frames)
        try:
            result = self._returning_memory(
                lambda: self.runner.upscale_clip(
                    Source(clip.path, clip.stem, clip.info),
                    job,
                    settings,
                    max_output_pixels=self.limits.max_output_pixels,
                    on_frame=tracker,
                    on_step=tracker.step,
                    should_stop=flag.is_set,
                )
            )
        except BaseException as error:
            shutil.rmtree(job, ignore_errors=True)
            if isinstance(error, RunCancelled):
                logger.info("clip cancelled by the user")
            if isinstance(error, (VideoError, ProcessingSizeError)):  # one line for the user, without server paths
                message = str(error).replace(str(clip.path), clip.stem)
                raise UserInputError(message if clip.stem in message else f"{clip.stem}: {message}") from None
            raise
        finally:
            with self._flags_lock:
                self._stop_flags.pop(session, None)
        return VideoRunOutput(
            video_path=Path(result.output),
            previews=tracker.previews,
            summary_markdown=video_summary_markdown(result.report, settings, clip.size),
            seed=int(result.report.get("seed", settings.seed or 0)),
            report=result.report,
        )

    def inspect_clip(self, upload: InputClip | InvalidUpload | None, scale: Any) -> tuple[bool, str]:
        """After a clip upload: ``(ok, markdown)``: its size, frames and result size, or why it is refused."""
        if upload is None:
            return True, self.video_limits_markdown()
        if isinstance(upload, InvalidUpload):
            return False, f"⚠️ **{upload.message}**"
        fps = f" at {float(upload.info.fps):g} fps" if upload.info.fps else ""
        return True, f"{upload.frames} frames{fps}. " + self.describe_input(upload.size, scale)

    def video_limits_markdown(self) -> str:
        """One line telling the user which clips the server accepts."""
        limits = self.limits
        return (
            f"Accepts clips (MP4, MOV, MKV, WebM, …) up to {format_bytes(limits.max_upload_bytes)}, "
            f"{limits.max_video_frames} frames and {limits.max_input_pixels / 1e6:.1f} MP per frame."
        )

    def cancel(self, session: str) -> str:
        """Ask this session's running job to stop after its current step."""
        self._stop_flag(session).set()
        return "Cancelling… the run stops after the current step."

    # ------------------------------------------------------------------------------------------------- internals
    def _returning_memory(self, call: Callable[[], T]) -> T:
        """``call()``; host or device out-of-memory becomes a :class:`UserInputError`, and the memory is returned
        afterwards in every case (garbage collection, the accelerator's cache, the C heap)."""
        from seesr.utils.device import is_out_of_memory, release_memory

        failure = ""
        try:
            return call()
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            failure = f"{type(error).__name__}: {error}".rstrip(": ")  # text only: the error's frames must go
            logger.warning("out of memory: %s", failure)
        finally:
            release_memory()  # on the out-of-memory path the exception, and the frames it held, are gone by now
        raise UserInputError(OUT_OF_MEMORY_MESSAGE.format(error=failure))

    def _require_image(self, upload: InputImage | InvalidUpload | None) -> InputImage:
        if upload is None:
            raise UserInputError("Upload a photo first.")
        if isinstance(upload, InvalidUpload):
            raise UserInputError(upload.message)
        return upload

    def _require_clip(self, upload: InputClip | InvalidUpload | None) -> InputClip:
        if upload is None:
            raise UserInputError("Upload a clip first.")
        if isinstance(upload, InvalidUpload):
            raise UserInputError(upload.message)
        return upload

    def _stop_flag(self, session: str) -> threading.Event:
        with self._flags_lock:
            return self._stop_flags.setdefault(session, threading.Event())

    def _save(self, image: InputImage, result: UpscaleResult) -> tuple[Path, Path]:
        folder = self._new_result_folder()
        scale = result.settings.scale
        output = result.image.convert("RGB")
        if image.alpha is not None:  # carry transparency over, upscaled like the pixels
            output = output.copy()
            output.putalpha(image.alpha.resize(output.size, Image.Resampling.BICUBIC))
        after_path = save_image_atomic(output, folder / f"{image.stem}_seesr_x{scale}.png", metadata=result.metadata)
        before = image.rgb.resize(result.image.size, Image.Resampling.BICUBIC)
        before_path = save_image_atomic(before, folder / f"{image.stem}_bicubic_x{scale}.png")
        return before_path, after_path

    def _new_result_folder(self) -> Path:
        """A fresh folder for one result, marked as the app's own; the app's results older than
        :data:`RESULT_MAX_AGE_S` are deleted first. Only marked folders are ever deleted: ``output_dir`` may be a
        folder of the user's, with their own subfolders in it."""
        cutoff = time.time() - RESULT_MAX_AGE_S
        for folder in self.output_dir.iterdir():
            with contextlib.suppress(OSError):
                if (folder / RESULT_MARKER).is_file() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
        folder = self.output_dir / uuid.uuid4().hex[:16]
        folder.mkdir(parents=True)
        (folder / RESULT_MARKER).write_text("a result of the seesr web UI, deleted after two hours\n")
        return folder


class _FrameTracker:
    """``on_frame(done, total)`` of a clip: stops it (:class:`RunCancelled`) once ``flag`` is set, copies its first
    :data:`PREVIEW_FRAMES` frames out of the working folder (removed at the end) and reports a
    :class:`VideoProgress` with the time left, estimated from the frames done since the first one. :meth:`step`
    reports the denoising steps of the frame in progress in between."""

    def __init__(
        self, job: Path, flag: threading.Event, report: Callable[[VideoProgress], None] | None, total: int
    ) -> None:
        self.job, self.flag, self.report = job, flag, report
        self.previews: list[Path] = []
        self.done, self.total, self.seconds_left = 0, total, None
        self._first: tuple[int, float] | None = None  # (frames done, time) at the first report

    def __call__(self, done: int, total: int) -> None:
        if self.flag.is_set():
            raise RunCancelled
        now = time.perf_counter()
        self._copy_previews(done)
        if self._first is None:
            self._first = (done, now)
        first_done, first_time = self._first
        self.done, self.total = done, total
        if done > first_done:
            self.seconds_left = (now - first_time) / (done - first_done) * (total - done)
        if self.report is not None:
            self.report(VideoProgress(done, total, self.seconds_left, list(self.previews)))

    def step(self, step: int, steps: int) -> None:
        """``on_step(done, total)`` of the frame in progress."""
        if self.report is not None:
            self.report(VideoProgress(self.done, self.total, self.seconds_left, list(self.previews), (step, steps)))

    def _copy_previews(self, done: int) -> None:
        from seesr.pipeline.video import FRAME_NAME

        for index in range(len(self.previews), min(done, PREVIEW_FRAMES)):
            frames = [path for path in self.job.glob("*.frames") if path.is_dir()]
            source = frames[0] / FRAME_NAME.format(index) if frames else None
            if source is None or not source.is_file():
                return
            target = self.job / f"preview_{index:02d}.png"
            shutil.copyfile(source, target)
            self.previews.append(target)


def video_summary_markdown(report: dict[str, Any], settings: WebSettings, input_size: tuple[int, int]) -> str:
    """The "used" panel under a clip: frames, shots, tags, seed, flicker and the settings, as Markdown."""
    flicker = report.get("flicker") or {}
    measured = (
        f"{flicker['output']:.2f} (bicubic {flicker['bicubic']:.2f}) levels between consecutive frames"
        if flicker.get("output") is not None
        else "*not measured (one frame per shot)*"
    )
    shot_tags = "; ".join(", ".join(f"`{tag}`" for tag in tags) or "*none*" for tags in report.get("tags", []))
    width, height = input_size
    corrupt = report.get("corrupt_frames") or []
    rows = [
        (
            "Frames",
            f"{report.get('frames')} at {report.get('fps')} fps"
            + (f", {len(corrupt)} undecodable (replaced)" if corrupt else ""),
        ),
        ("Shots", str(len(report.get("shots", [])))),
        ("Tags per shot", shot_tags if settings.use_tags else "*tags off*"),
        ("Seed (all frames)", str(report.get("seed"))),
        ("Steps", str(settings.steps)),
        ("Guidance", f"{settings.guidance_scale:g}"),
        ("Colour fix", settings.color_fix),
        ("Scale", f"×{settings.scale}: {width}×{height} → {width * settings.scale}×{height * settings.scale} px"),
        ("Flicker", measured),
        ("Audio and subtitles", ", ".join(report.get("copied_streams") or []) or "*none in the clip*"),
        ("Time", f"{report.get('seconds', 0):.1f} s"),
    ]
    lines = ["**Used for this clip**", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {_escape(value)} |" for name, value in rows]
    return "\n".join(lines)


def summary_markdown(result: UpscaleResult, input_size: tuple[int, int]) -> str:
    """The "used" panel under the result: tags, seed and every setting, as Markdown."""
    settings = result.settings
    tags = ", ".join(f"`{tag}`" for tag in result.tags) if result.tags else "*none*"
    source = TAG_SOURCE_LABELS[settings.tags_source]
    width, height = input_size
    rows = [
        ("Tags", f"{tags} ({source})"),
        ("Negative prompt", _escape(result.negative_prompt) or "*empty*"),
        ("Seed", str(settings.seed)),
        ("Steps", str(settings.steps)),
        ("Guidance", f"{settings.guidance_scale:g}"),
        ("Colour fix", settings.color_fix),
        ("Scale", f"×{settings.scale}: {width}×{height} → {result.image.size[0]}×{result.image.size[1]} px"),
        ("Latent tile size", f"{settings.latent_tile_size} ({settings.latent_tile_size * 8} px)"),
        ("Time", f"{result.seconds:.1f} s"),
    ]
    lines = [
        "**Used for this result**",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@contextlib.contextmanager
def _shown_in_page(action: str) -> Iterator[None]:
    """Turn expected failures into a Gradio error toast with a readable message; log unexpected ones."""
    import gradio as gr

    try:
        yield
    except UserInputError as error:
        raise gr.Error(str(error), title=f"Cannot {action}") from None
    except RunCancelled:
        raise gr.Error("The run was cancelled.", title="Cancelled") from None
    except Exception as error:
        logger.exception("failed to %s", action)
        raise gr.Error(
            f"Unexpected error ({type(error).__name__}); see the server log.", title=f"Cannot {action}"
        ) from None


def build_app(
    pipeline: Any,
    *,
    limits: WebLimits | None = None,
    defaults: WebSettings | None = None,
    output_dir: str | Path | None = None,
    title: str = "SeeSR",
) -> gr.Blocks:
    """Build the web UI around a loaded pipeline.

    Args:
        pipeline: a loaded ``SeeSRPipeline``, or any :class:`~seesr.web.runner.Runner` (used as is).
        limits: upload, pixel and range limits (the :class:`WebLimits` defaults otherwise).
        defaults: initial values of the controls and the server-side ``process_size`` (the official Gradio demo's
            defaults otherwise: :class:`WebSettings`).
        output_dir: folder for result PNGs (a fresh temporary folder by default).
        title: browser tab title.

    Returns:
        The :class:`gradio.Blocks`, with its queue configured; start it with :func:`launch_app`. The controller is
        available as ``app.seesr_controller``.
    """
    import gradio as gr

    runner: Runner = pipeline if _is_runner(pipeline) else PipelineRunner(pipeline)
    controller = WebController(runner, limits, output_dir, defaults)

    # 1. the layout: the Photo tab (input, tags, prompt and settings | the comparison), the Video tab
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown(
            f"## {title}: semantics-aware super-resolution\n"
            "Upload a low-resolution photo, check the tags DAPE sees in it (remove wrong ones, add missing ones), "
            "then run. The comparison shows the input enlarged with bicubic next to the SeeSR result."
        )
        with gr.Tabs():
            with gr.Tab("Photo", id="photo"), gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    photo = _photo_inputs(gr, controller)
                    photo.settings = _settings_controls(gr, controller.limits, controller.defaults)
                    with gr.Row():
                        photo.run_button = gr.Button("Run", variant="primary", elem_id="seesr-run")
                        photo.cancel_button = gr.Button("Cancel", variant="stop", elem_id="seesr-cancel")
                with gr.Column(scale=1):
                    _photo_results(gr, photo)
            with gr.Tab("Video", id="video", elem_id="seesr-video-tab"):
                video = _video_tab(gr, controller)
        # 2. the events
        on_cancel = _wire_photo_events(gr, controller, photo)
        _wire_video_events(gr, controller, photo, video, on_cancel)

    app.queue(default_concurrency_limit=1, max_size=controller.limits.max_queue)
    app.seesr_controller = controller  # type: ignore[attr-defined]
    return app


class _Components(SimpleNamespace):
    """The Gradio components of one tab, by name (what its events read and write)."""


def _photo_inputs(gr: Any, controller: WebController) -> _Components:
    """The photo, its tags (detected, editable) and the prompt boxes."""
    defaults = controller.defaults
    # Events that read this image skip Gradio's preprocessing (preprocess=False) and get the upload record instead:
    # seesr.web.inputs checks it (limits, upload folder, readable image) and turns problems into messages, where
    # stock preprocessing would hand any file to Pillow and say "Error".
    image_in = gr.Image(
        label="Low-resolution photo",
        sources=["upload", "clipboard"],
        type="filepath",
        height=320,
        elem_id="seesr-input",
    )
    return _Components(
        image_in=image_in,
        input_size=gr.State(None),
        input_info=gr.Markdown(controller.limits_markdown(), elem_id="seesr-input-info"),
        detect_button=gr.Button("Detect tags", elem_id="seesr-detect"),
        tags_box=gr.Textbox(
            label="Tags (comma-separated, editable)",
            placeholder="Press “Detect tags” to see DAPE's tags and edit them. "
            "Left empty, the tags are detected when you run.",
            lines=2,
            elem_id="seesr-tags",
        ),
        tags_info=gr.Markdown(elem_id="seesr-tags-info"),
        detected=gr.State(None),  # the tag box as "Detect tags" filled it: unedited tags are DAPE's
        use_tags=gr.Checkbox(defaults.use_tags, label="Put the tags in the prompt", elem_id="seesr-use-tags"),
        prompt=gr.Textbox(
            defaults.prompt,
            label="Your prompt",
            placeholder="optional, e.g. “a portrait photo”",
            elem_id="seesr-prompt",
        ),
        added_prompt=gr.Textbox(defaults.added_prompt, label="Added prompt", elem_id="seesr-added-prompt"),
        negative_prompt=gr.Textbox(
            defaults.negative_prompt, label="Negative prompt", lines=2, elem_id="seesr-negative-prompt"
        ),
    )


def _settings_controls(gr: Any, limits: WebLimits, defaults: WebSettings) -> _Components:
    """The Settings accordion: steps, guidance, seed, scale, tile size, colour fix."""
    with gr.Accordion("Settings", open=True):
        gr.Markdown(defaults_markdown(defaults), elem_id="seesr-defaults")
        with gr.Row():
            steps = gr.Slider(
                1, limits.max_steps, value=min(defaults.steps, limits.max_steps), step=1, label="Steps",
                elem_id="seesr-steps",
            )  # fmt: skip
            guidance = gr.Slider(
                0, 15, value=defaults.guidance_scale, step=0.5, label="Guidance (CFG)", elem_id="seesr-guidance"
            )
        with gr.Row():
            seed = gr.Number(
                defaults.seed if defaults.seed is not None else 231,
                precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seesr-seed",
            )  # fmt: skip
            random_seed = gr.Checkbox(
                defaults.seed is None, label="New random seed each run", elem_id="seesr-random-seed"
            )
        with gr.Row():
            scale = gr.Slider(
                1, limits.max_scale, value=min(defaults.scale, limits.max_scale), step=1, label="Scale",
                elem_id="seesr-scale",
            )  # fmt: skip
            tile = gr.Slider(
                16, 256, value=defaults.latent_tile_size, step=8, label="Latent tile size (×8 px)",
                elem_id="seesr-tile",
            )  # fmt: skip
        color_fix = gr.Radio(
            list(COLOR_FIXES), value=defaults.color_fix, label="Colour fix", elem_id="seesr-color-fix"
        )
    return _Components(
        steps=steps, guidance=guidance, seed=seed, random_seed=random_seed, scale=scale, tile=tile,
        color_fix=color_fix,
    )  # fmt: skip


def _photo_results(gr: Any, photo: _Components) -> None:
    """The comparison slider, the download button and what was used (added to ``photo``)."""
    photo.compare = gr.ImageSlider(
        label="Before (bicubic) · after (SeeSR), same scale",
        type="filepath",
        format="png",
        interactive=False,
        max_height=640,
        elem_id="seesr-compare",
    )
    photo.download = gr.DownloadButton("Download PNG (with settings)", visible=False, elem_id="seesr-download")
    photo.prompt_used = gr.Textbox(label="Prompt used", interactive=False, lines=2, elem_id="seesr-prompt-used")
    photo.summary = gr.Markdown(elem_id="seesr-settings-used")


def _video_tab(gr: Any, controller: WebController) -> _Components:
    gr.Markdown(
        "Upload a short clip: every frame is upscaled as by `seesr upscale clip.mp4` (one seed for the "
        "whole clip, DAPE's tags per shot, colour fix against each frame, sound kept), with the prompt "
        "and **Settings of the Photo tab**. The first frames appear while the rest are upscaled."
    )
    video = _Components()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            video.clip_in = gr.Video(label="Low-resolution clip", sources=["upload"], height=320, elem_id="seesr-clip")
            video.clip_info = gr.Markdown(controller.video_limits_markdown(), elem_id="seesr-clip-info")
            with gr.Row():
                video.run_button = gr.Button("Upscale clip", variant="primary", elem_id="seesr-video-run")
                video.cancel_button = gr.Button("Cancel", variant="stop", elem_id="seesr-video-cancel")
            video.status = gr.Markdown(elem_id="seesr-video-status")
        with gr.Column(scale=1):
            video.previews = gr.Gallery(
                label=f"First {PREVIEW_FRAMES} upscaled frames",
                columns=PREVIEW_FRAMES,
                format="png",
                interactive=False,
                elem_id="seesr-video-previews",
            )
            video.clip_out = gr.Video(label="Upscaled clip", interactive=False, elem_id="seesr-clip-out")
            video.download = gr.DownloadButton("Download clip", visible=False, elem_id="seesr-clip-download")
            video.summary = gr.Markdown(elem_id="seesr-video-used")
    return video


def _setting_inputs(photo: _Components) -> list[Any]:
    """The prompt and settings controls, in the order of ``on_run``'s and ``on_video``'s parameters after the
    tags (the Video tab uses the Photo tab's)."""
    s = photo.settings
    return [
        photo.use_tags, photo.prompt, photo.added_prompt, photo.negative_prompt, s.steps, s.guidance, s.seed,
        s.random_seed, s.scale, s.tile, s.color_fix,
    ]  # fmt: skip


def _wire_photo_events(gr: Any, controller: WebController, photo: _Components) -> Callable[[Any], str]:
    """Upload checks, Detect tags, Run (with step progress) and Cancel; returns the cancel handler."""
    from gradio.utils import get_upload_folder

    upload_dirs = [get_upload_folder(), photo.image_in.GRADIO_CACHE]
    scale = photo.settings.scale

    def checked(payload: Any) -> InputImage | InvalidUpload | None:
        return read_payload(payload, controller.limits, upload_dirs)

    def on_upload(payload: Any, scale_value: float) -> tuple[Any, ...]:
        ok, message, size = controller.inspect_upload(checked(payload), scale_value)
        if not ok:
            gr.Warning(message.strip("⚠️ *"))
            return None, message, None, "", None
        return gr.skip(), message, size, "", None  # a new photo: the previous photo's tags no longer apply

    state = [photo.input_info, photo.input_size, photo.tags_box, photo.detected]
    photo.image_in.upload(
        on_upload,
        [photo.image_in, scale],
        [photo.image_in, *state],
        preprocess=False,
        concurrency_limit=4,
        api_visibility="undocumented",
    )
    photo.image_in.clear(lambda: (controller.limits_markdown(), None, "", None), None, state)
    scale.change(controller.describe_input, [photo.input_size, scale], photo.input_info, queue=False)

    def on_detect(payload: Any) -> tuple[str, str, str]:
        with _shown_in_page("detect tags"):
            text, status = controller.detect(checked(payload))
        return text, status, text

    detect_event = photo.detect_button.click(
        on_detect,
        [photo.image_in],
        [photo.tags_box, photo.tags_info, photo.detected],
        api_name="detect_tags",
        preprocess=False,
        concurrency_id=DEVICE_QUEUE,
        concurrency_limit=1,
    )
    run_event = _wire_run(gr, controller, photo, checked)

    def on_cancel(request: Any) -> str:
        return controller.cancel(request.session_hash or "anonymous")

    _inject_request(on_cancel, gr)
    photo.cancel_button.click(on_cancel, None, photo.summary, cancels=[run_event, detect_event], queue=False)
    return on_cancel


def _wire_run(gr: Any, controller: WebController, photo: _Components, checked: Callable[[Any], Any]) -> Any:
    """The Run button: the photo through the controller, the denoising steps on the progress bar."""

    def on_run(
        payload: Any,
        tags_text: str,
        detected_text: str | None,
        use_tags_value: bool,
        prompt_value: str,
        added_value: str,
        negative_value: str,
        steps_value: float,
        guidance_value: float,
        seed_value: float | None,
        random_seed_value: bool,
        scale_value: float,
        tile_value: float,
        color_fix_value: str,
        request: Any,
        progress: Any = gr.Progress(),  # noqa: B008 (Gradio injects it: found by its default value)
    ) -> tuple[Any, ...]:
        def on_step(done: int, total: int) -> None:
            progress((done, total), desc="Denoising", unit="steps")

        progress(0.0, desc="Starting")
        with _shown_in_page("upscale"):
            output = controller.run(
                checked(payload),
                session=request.session_hash or "anonymous",
                on_step=on_step,
                tags_text=tags_text,
                detected_tags_text=detected_text,
                use_tags=use_tags_value,
                prompt=prompt_value,
                added_prompt=added_value,
                negative_prompt=negative_value,
                steps=steps_value,
                guidance_scale=guidance_value,
                seed=seed_value,
                random_seed=random_seed_value,
                color_fix=color_fix_value,
                scale=scale_value,
                latent_tile_size=tile_value,
            )
        return (
            (str(output.before_path), str(output.after_path)),
            gr.DownloadButton(value=str(output.after_path), visible=True),
            output.prompt,
            output.summary_markdown,
            output.seed,
        )

    _inject_request(on_run, gr)
    return photo.run_button.click(
        on_run,
        [photo.image_in, photo.tags_box, photo.detected, *_setting_inputs(photo)],
        [photo.compare, photo.download, photo.prompt_used, photo.summary, photo.settings.seed],
        api_name="upscale",
        preprocess=False,
        concurrency_id=DEVICE_QUEUE,
        concurrency_limit=1,
    )


def _wire_video_events(
    gr: Any, controller: WebController, photo: _Components, video: _Components, on_cancel: Callable[[Any], str]
) -> None:
    """Clip upload checks, Upscale clip (frames, previews and time left as they come) and Cancel."""
    from gradio.utils import get_upload_folder

    clip_dirs = [get_upload_folder(), video.clip_in.GRADIO_CACHE]

    def checked_clip(payload: Any) -> InputClip | InvalidUpload | None:
        return read_clip_payload(payload, controller.limits, clip_dirs)

    def on_clip_upload(payload: Any, scale_value: float) -> tuple[Any, str]:
        ok, message = controller.inspect_clip(checked_clip(payload), scale_value)
        if not ok:
            gr.Warning(message.strip("⚠️ *"))
            return None, message
        return gr.skip(), message

    video.clip_in.upload(
        on_clip_upload,
        [video.clip_in, photo.settings.scale],
        [video.clip_in, video.clip_info],
        preprocess=False,
        concurrency_limit=4,
        api_visibility="undocumented",
    )
    video.clip_in.clear(lambda: controller.video_limits_markdown(), None, video.clip_info)
    video_event = video.run_button.click(
        _video_handler(gr, controller, checked_clip),
        [video.clip_in, *_setting_inputs(photo)],  # the Photo tab's prompt and settings
        [video.clip_out, video.previews, video.download, video.status, video.summary, photo.settings.seed],
        api_name="upscale_video",
        preprocess=False,
        concurrency_id=DEVICE_QUEUE,
        concurrency_limit=1,
    )
    video.cancel_button.click(on_cancel, None, video.status, cancels=[video_event], queue=False)


def _video_handler(gr: Any, controller: WebController, checked_clip: Callable[[Any], Any]) -> Callable[..., Any]:
    """``on_video``: runs the clip in a worker thread and yields the page's updates as the frames come."""

    def on_video(
        payload: Any,
        use_tags_value: bool,
        prompt_value: str,
        added_value: str,
        negative_value: str,
        steps_value: float,
        guidance_value: float,
        seed_value: float | None,
        random_seed_value: bool,
        scale_value: float,
        tile_value: float,
        color_fix_value: str,
        request: Any,
        progress: Any = gr.Progress(),  # noqa: B008 (Gradio injects it: found by its default value)
    ) -> Iterator[tuple[Any, ...]]:
        session = request.session_hash or "anonymous"
        controls = dict(
            tags_text=None,
            use_tags=use_tags_value,
            prompt=prompt_value,
            added_prompt=added_value,
            negative_prompt=negative_value,
            steps=steps_value,
            guidance_scale=guidance_value,
            seed=seed_value,
            random_seed=random_seed_value,
            color_fix=color_fix_value,
            scale=scale_value,
            latent_tile_size=tile_value,
        )
        progress(0.0, desc="Reading the clip and tagging its shots")
        with _shown_in_page("upscale the clip"):
            for update in _run_in_thread(
                lambda report: controller.run_video(
                    checked_clip(payload), session=session, on_progress=report, **controls
                ),
                on_abandon=lambda: controller.cancel(session),
            ):
                if isinstance(update, VideoProgress):
                    progress(update.fraction, desc=update.describe())
                    if update.step is not None:
                        continue  # steps move the progress bar only
                    shown = [str(path) for path in update.previews]
                    yield gr.skip(), shown, gr.skip(), update.describe(), gr.skip(), gr.skip()
                    continue
                yield (
                    str(update.video_path),
                    [str(path) for path in update.previews],
                    gr.DownloadButton(value=str(update.video_path), visible=True),
                    f"Done: {update.report.get('frames')} frames in {update.report.get('seconds', 0):.1f} s.",
                    update.summary_markdown,
                    update.seed,
                )

    _inject_request(on_video, gr)
    return on_video


def launch_app(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Start the server with the safe defaults and return its local URL.

    Binds to ``host`` (127.0.0.1 unless told otherwise), enforces the upload byte limit of the app's
    :class:`WebLimits`, and only serves result files from the app's own output folder besides Gradio's cache.
    ``block=False`` returns at once (tests); ``app.close()`` stops it.
    """
    controller: WebController = app.seesr_controller  # type: ignore[attr-defined]
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        max_file_size=controller.limits.max_upload_bytes,
        allowed_paths=[str(controller.output_dir)],
        show_error=False,
        share=False,
        quiet=quiet,
        inbrowser=False,
    )
    if block:
        app.block_thread()
    return url


def _run_in_thread(work: Callable[[Callable[[Any], None]], T], on_abandon: Callable[[], Any]) -> Iterator[Any]:
    """Run ``work(report)`` in a worker thread and yield what it reports, then its result (its exception is raised
    here). A generator closed early (the page's Cancel, a closed tab) calls ``on_abandon()`` so that the worker stops
    at its next check; the worker still holds the device lock until then, so the next job waits for it."""
    updates: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def target() -> None:
        try:
            updates.put(("result", work(lambda item: updates.put(("update", item)))))
        except BaseException as error:  # noqa: BLE001 - handed to the generator, which raises it
            updates.put(("error", error))

    thread = threading.Thread(target=target, name="seesr-video", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            kind, item = updates.get()
            if kind == "update":
                yield item
                continue
            finished = True
            if kind == "error":
                raise item
            yield item
            return
    finally:
        if not finished:
            on_abandon()


def _inject_request(function: Callable[..., Any], gr: Any) -> None:
    """Annotate ``function``'s ``request`` parameter with ``gr.Request`` so that Gradio passes the request.

    Gradio recognises the parameter by its resolved type hint; with postponed annotations and Gradio imported
    lazily (inside :func:`build_app`) the hint could not be resolved from this module's globals.
    """
    function.__annotations__["request"] = gr.Request


def _is_runner(candidate: Any) -> bool:
    return callable(getattr(candidate, "detect_tags", None)) and callable(getattr(candidate, "upscale", None))
