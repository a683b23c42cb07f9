"""A model-free stand-in for :class:`seesr.web.runner.PipelineRunner` used by the unit tests of the web UI."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image, ImageFilter

from seesr.web.runner import FrameCallback, PipelineRunner, RunCancelled, StepCallback, StopCheck, UpscaleResult
from seesr.web.settings import WebSettings


class FakeRunner:
    """Tags every image with ``TAGS``; "upscales" with bicubic + sharpen; records its calls.

    ``step_event``: when set, each step waits until the event is set (lets a test cancel mid-run).
    """

    TAGS = ["cat", "sofa", "window"]

    def __init__(self, steps_delay: float = 0.0) -> None:
        self.description = "fake runner"
        self.calls: list[tuple[str, tuple[int, int], WebSettings | None]] = []
        self.steps_delay = steps_delay
        self.started = threading.Event()

    def detect_tags(self, image: Image.Image) -> list[str]:
        self.calls.append(("detect", image.size, None))
        return list(self.TAGS)

    def upscale(
        self,
        image: Image.Image,
        settings: WebSettings,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> UpscaleResult:
        settings = settings.resolved()
        self.calls.append(("upscale", image.size, settings))
        self.started.set()
        for step in range(settings.steps):
            if self.steps_delay:
                threading.Event().wait(self.steps_delay)
            if on_step is not None:
                on_step(step + 1, settings.steps)
            if should_stop is not None and should_stop():
                raise RunCancelled
        tags = settings.tags if settings.tags is not None else (tuple(self.TAGS) if settings.use_tags else ())
        prompt = ", ".join([*tags, settings.prompt, settings.added_prompt])
        size = (image.size[0] * settings.scale, image.size[1] * settings.scale)
        result = image.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.SHARPEN)
        return UpscaleResult(
            image=result,
            prompt=prompt,
            negative_prompt=settings.negative_prompt,
            tags=tuple(tags),
            settings=settings,
            metadata={"prompt": prompt, "seed": str(settings.seed)},
        )

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
        """The real clip path (:func:`seesr.pipeline.video.upscale_video` through :class:`PipelineRunner`) on a
        :class:`FakeVideoPipeline`."""
        self.calls.append(("clip", (source.info.width, source.info.height), settings))
        self.started.set()
        runner = PipelineRunner(self.video_pipeline)
        return runner.upscale_clip(
            source,
            outdir,
            settings,
            max_output_pixels=max_output_pixels,
            on_frame=on_frame,
            on_step=on_step,
            should_stop=should_stop,
        )

    @property
    def video_pipeline(self) -> FakeVideoPipeline:
        if not hasattr(self, "_video_pipeline"):
            self._video_pipeline = FakeVideoPipeline(self.steps_delay)
        return self._video_pipeline


class FakeVideoPipeline:
    """What :func:`seesr.pipeline.video.upscale_video` calls on a pipeline (``run_tagger``, ``__call__``): tags
    ``["cat"]``; runs its steps (``delay`` seconds each) calling ``callback_on_step_end`` and stopping after a step
    that set ``_interrupt``, as a diffusers pipeline does; "upscales" with bicubic; records each call's keyword
    arguments (``steps_run``: the steps of each call)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.steps_run: list[int] = []
        self._interrupt = False

    def run_tagger(self, image: Image.Image) -> tuple[list[str], None]:
        return ["cat"], None

    def __call__(
        self, image: Image.Image, callback_on_step_end=None, callback_on_step_end_tensor_inputs=(), **kwargs: Any
    ) -> SimpleNamespace:
        self.calls.append(kwargs)
        self._interrupt, steps = False, 0
        for step in range(kwargs["num_inference_steps"]):
            if self.delay:
                threading.Event().wait(self.delay)
            steps += 1
            if callback_on_step_end is not None:
                callback_on_step_end(self, step, 999 - step, {})
            if self._interrupt:
                break
        self.steps_run.append(steps)
        scale = kwargs["upscale"]
        tags = list(kwargs["tags"] or []) if kwargs["use_tags"] else []
        return SimpleNamespace(
            images=[image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)],
            prompts=[", ".join([*tags, kwargs["added_prompt"]])],
            tags=[tags],
        )
