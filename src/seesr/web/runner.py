"""The adapter between the web UI and the SeeSR pipeline: the only web module that touches the pipeline API.

:class:`PipelineRunner` wraps a loaded :class:`~seesr.pipeline.pipeline_seesr.SeeSRPipeline` and offers the two
things the page needs, with a lock so that one job at a time uses the device even if Gradio's queue lets a
cancelled job's thread finish in the background:

* :meth:`PipelineRunner.detect_tags` -> DAPE's tags for an image;
* :meth:`PipelineRunner.upscale` -> the upscaled image, the prompt actually used and the settings actually used;
* :meth:`PipelineRunner.upscale_clip` -> a clip upscaled by :func:`seesr.pipeline.video.upscale_video` (the path of
  ``seesr upscale clip.mp4``: one seed for the clip, tags per shot, audio kept).

Anything with the same methods (see :class:`Runner`) can drive the app, which is how the unit tests run it
without a model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from seesr.web.settings import UserInputError, WebSettings

logger = logging.getLogger(__name__)

#: ``on_step(done, total)`` is called after every denoising step.
StepCallback = Callable[[int, int], None]
#: ``on_frame(done, total)`` is called after every finished frame of a clip.
FrameCallback = Callable[[int, int], None]
#: ``should_stop()`` is polled after every step; returning True stops the run with :class:`RunCancelled`.
StopCheck = Callable[[], bool]


class RunCancelled(Exception):
    """The user pressed Cancel; the run stopped after the current step."""


@dataclass
class UpscaleResult:
    """What one run produced.

    Attributes:
        image: the result, RGB, ``(W·scale, H·scale)`` for a ``(W, H)`` input.
        prompt: the positive prompt the text encoder saw.
        negative_prompt: the negative prompt used for classifier-free guidance.
        tags: the tags that went into the prompt (DAPE's or the user's).
        settings: the settings actually used (seed resolved).
        metadata: PNG text chunks describing the run (prompt, tags, settings).
        seconds: wall-clock time of the run.
    """

    image: Image.Image
    prompt: str
    negative_prompt: str
    tags: tuple[str, ...]
    settings: WebSettings
    metadata: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class Runner(Protocol):
    """What :func:`seesr.web.app.build_app` needs from a model."""

    description: str

    def detect_tags(self, image: Image.Image) -> list[str]:
        """DAPE tags of an RGB image, in tag-list order."""
        ...

    def upscale(
        self,
        image: Image.Image,
        settings: WebSettings,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> UpscaleResult:
        """Upscale an RGB ``(W, H)`` image to ``(W·scale, H·scale)``."""
        ...

    def upscale_clip(
        self,
        source: Any,
        outdir: Path,
        settings: WebSettings,
        *,
        max_output_pixels: int,
        on_frame: FrameCallback | None = None,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Any:
        """Upscale a :class:`seesr.pipeline.video.Source` into ``outdir``; returns its ``VideoResult``."""
        ...


class PipelineRunner:
    """Runs a SeeSR pipeline for the web UI, one job at a time.

    Args:
        pipeline: a loaded ``SeeSRPipeline`` (its ``tagger`` component provides the tags).
        lock: shared by every runner that uses the same device; a new one by default.
    """

    def __init__(self, pipeline: Any, lock: threading.Lock | None = None) -> None:
        self.pipeline = pipeline
        self.lock = lock or threading.Lock()
        device = getattr(pipeline, "device", "cpu")
        self.description = f"SeeSR on {device}"

    def detect_tags(self, image: Image.Image) -> list[str]:
        """DAPE's tags for the original LR ``image`` (RGB), in tag-list order."""
        tagger = getattr(self.pipeline, "tagger", None)
        if tagger is None:
            raise UserInputError("This model was loaded without its DAPE tagger; type the tags yourself.")
        with self.lock:
            results = tagger.tag([image.convert("RGB")])
        return list(results[0].names)

    def upscale(
        self,
        image: Image.Image,
        settings: WebSettings,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> UpscaleResult:
        """Run the pipeline on ``image`` with ``settings`` (seed resolved first, so it is always reported)."""
        settings = settings.resolved()
        started = time.perf_counter()
        reporter = _StepReporter(settings.steps, on_step, should_stop)
        with self.lock:
            output = self.pipeline(
                image.convert("RGB"),
                prompt=settings.prompt,
                added_prompt=settings.added_prompt,
                negative_prompt=settings.negative_prompt,
                tags=list(settings.tags) if settings.tags is not None else None,
                use_tags=settings.use_tags,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                upscale=settings.scale,
                process_size=settings.process_size,
                latent_tile_size=settings.latent_tile_size,
                color_fix=settings.color_fix,
                seed=settings.seed,
                **reporter.call_arguments(),
            )
        if reporter.cancelled:
            raise RunCancelled
        seconds = time.perf_counter() - started
        result = UpscaleResult(
            image=output.images[0],
            prompt=output.prompts[0],
            negative_prompt=output.negative_prompts[0],
            tags=tuple(output.tags[0]),
            settings=settings,
            seconds=seconds,
        )
        result.metadata = self.png_metadata(result)
        logger.info("upscaled %dx%d -> %dx%d in %.1f s", *image.size, *result.image.size, seconds)
        return result

    def upscale_clip(
        self,
        source: Any,
        outdir: Path,
        settings: WebSettings,
        *,
        max_output_pixels: int,
        on_frame: FrameCallback | None = None,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Any:
        """Upscale a clip (:class:`seesr.pipeline.video.Source`) into ``outdir`` with
        :func:`~seesr.pipeline.video.upscale_video`, holding the device lock for the whole clip.

        The tags come from DAPE per shot (``settings.tags`` is for photos and is not used); one seed for every frame
        (``settings`` resolved first). ``on_frame(done, total)`` runs after each frame; an exception it raises stops
        the clip there; ``on_step(done, total)`` after each denoising step of a frame. ``should_stop()`` is polled after every denoising step, as for photos: True stops the frame
        after that step and the clip with :class:`RunCancelled` (its working folder is left for the caller to remove).
        Returns the ``VideoResult``.
        """
        from seesr.pipeline.video import VideoSettings, upscale_video

        settings = settings.resolved()
        record = _upscale_settings(settings, max_output_pixels)
        extra = {"interface": "web", "model": self._model_description()}
        reporter = _StepReporter(settings.steps, on_step, should_stop)
        with self.lock:
            result = upscale_video(
                _WithStepCallback(self.pipeline, reporter),
                source,
                outdir,
                record,
                VideoSettings(),
                show_progress=False,
                metadata_extra=extra,
                on_progress=_stopping_after(reporter, on_frame),
            )
        if reporter.cancelled:  # the last frame was cut short: its clip is not a result
            raise RunCancelled
        logger.info("upscaled the clip %s (%d frames)", source.name, result.frames)
        return result

    def _model_description(self) -> str:
        location = getattr(self.pipeline, "model_location", None)
        return getattr(location, "description", None) or type(self.pipeline).__name__

    def png_metadata(self, result: UpscaleResult) -> dict[str, str]:
        """The PNG text chunks ``seesr upscale`` writes (same keys and JSON record), plus where the tags came from."""
        from seesr.pipeline.batch import png_metadata

        settings = result.settings
        record = _upscale_settings(settings)
        extra = {
            "interface": "web",
            "tags_source": settings.tags_source,
            "model": self._model_description(),
            "device": str(getattr(self.pipeline, "device", "")),
            "dtype": str(getattr(self.pipeline, "dtype", "")).replace("torch.", ""),
        }
        return png_metadata(record, result.prompt, list(result.tags), settings.seed, extra)


def _upscale_settings(settings: WebSettings, max_output_pixels: int | None = None) -> Any:
    """The :class:`seesr.pipeline.batch.UpscaleSettings` (``seesr upscale``'s record) of the page's settings."""
    from seesr.pipeline.batch import UpscaleSettings

    limit = {} if max_output_pixels is None else {"max_output_pixels": max_output_pixels}
    return UpscaleSettings(
        scale=settings.scale,
        steps=settings.steps,
        guidance=settings.guidance_scale,
        seed=settings.seed,
        prompt=settings.prompt,
        added_prompt=settings.added_prompt,
        negative_prompt=settings.negative_prompt,
        use_tags=settings.use_tags,
        color_fix=settings.color_fix,
        process_size=settings.process_size,
        latent_tile_size=settings.latent_tile_size,
        **limit,
    )


def _stopping_after(reporter: _StepReporter, on_frame: FrameCallback | None) -> FrameCallback:
    """``on_progress`` of a clip: a frame cut short by a cancel ends the clip (:class:`RunCancelled`) before it is
    kept; otherwise ``on_frame``."""

    def on_progress(done: int, total: int) -> None:
        if reporter.cancelled:
            raise RunCancelled
        if on_frame is not None:
            on_frame(done, total)

    return on_progress


class _WithStepCallback:
    """A pipeline seen through ``upscale_video``: every call gets ``reporter`` as its ``callback_on_step_end``
    (diffusers' convention); every other attribute, read or written, is the pipeline's own."""

    def __init__(self, pipeline: Any, reporter: _StepReporter) -> None:
        object.__setattr__(self, "_pipeline", pipeline)
        object.__setattr__(self, "_reporter", reporter)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._pipeline(*args, **kwargs, **self._reporter.call_arguments())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipeline, name, value)


class _StepReporter:
    """``callback_on_step_end`` for one call (diffusers' convention): reports each finished step to ``on_step`` and,
    when ``should_stop()`` says so, sets the pipeline's ``_interrupt`` so that it stops after that step.

    It asks for the latents and, on a GPU, waits for them, so that the page shows the steps the GPU has finished
    rather than the steps queued ahead of it, and a cancel takes effect at the next step (one sync per step, only
    here: the pipeline itself adds none)."""

    def __init__(self, total: int, on_step: StepCallback | None, should_stop: StopCheck | None) -> None:
        self.total, self.on_step, self.should_stop = total, on_step, should_stop
        self.cancelled = False

    def call_arguments(self) -> dict[str, Any]:
        """The pipeline arguments that install this reporter (none when there is nothing to report or stop)."""
        if self.on_step is None and self.should_stop is None:
            return {}
        return {"callback_on_step_end": self, "callback_on_step_end_tensor_inputs": ["latents"]}

    def __call__(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = callback_kwargs.get("latents")
        if latents is not None and latents.device.type == "cuda":
            import torch

            torch.cuda.current_stream(latents.device).synchronize()
        if self.on_step is not None:
            self.on_step(step + 1, self.total)
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            pipeline._interrupt = True
        return {}
