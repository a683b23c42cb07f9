"""The pipeline adapter of the web UI against a diffusers pipeline double: argument mapping, steps, cancel, metadata."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from seesr.pipeline.batch import UpscaleSettings
from seesr.web.runner import PipelineRunner, RunCancelled
from seesr.web.settings import UserInputError, WebSettings


class RecordingPipeline(DiffusionPipeline):
    """Loops over its steps calling ``callback_on_step_end`` and honouring ``_interrupt`` like a diffusers pipeline,
    and records its other arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.register_to_config()  # a config, as every real pipeline has (attribute assignment reads it)
        self.calls: list[dict] = []
        self.tagger = SimpleNamespace(tag=lambda images: [SimpleNamespace(names=["dog", "grass"])])
        self.model_location = SimpleNamespace(description="release folder /models/seesr")

    @torch.no_grad()
    def __call__(self, image: Image.Image, callback_on_step_end=None, callback_on_step_end_tensor_inputs=(), **kwargs):
        self.calls.append({"image_size": image.size, **kwargs})
        self.steps_run, self._interrupt = 0, False
        for step in range(kwargs["num_inference_steps"]):
            self.steps_run += 1
            if callback_on_step_end is not None:
                callback_on_step_end(self, step, 999 - step, {})
            if self._interrupt:
                break
        tags = kwargs["tags"] if kwargs["tags"] is not None else ["dog", "grass"]
        tags = tags if kwargs["use_tags"] else []
        scale = kwargs["upscale"]
        return SimpleNamespace(
            images=[image.resize((image.width * scale, image.height * scale))],
            prompts=[f"{', '.join(tags)}, {kwargs['prompt']}," + kwargs["added_prompt"]],
            negative_prompts=[kwargs["negative_prompt"]],
            tags=[list(tags)],
        )


@pytest.fixture
def pipeline() -> RecordingPipeline:
    return RecordingPipeline()


def test_settings_reach_the_pipeline_under_their_names(pipeline):
    runner = PipelineRunner(pipeline)
    settings = WebSettings(
        prompt="a dog",
        tags=("dog", "frisbee"),
        steps=3,
        guidance_scale=7.0,
        seed=5,
        color_fix="adain",
        scale=2,
        latent_tile_size=64,
        process_size=128,
    )
    result = runner.upscale(Image.new("RGB", (10, 8)), settings)
    call = pipeline.calls[-1]
    assert call == {
        "image_size": (10, 8),
        "prompt": "a dog",
        "added_prompt": settings.added_prompt,
        "negative_prompt": settings.negative_prompt,
        "tags": ["dog", "frisbee"],
        "use_tags": True,
        "num_inference_steps": 3,
        "guidance_scale": 7.0,
        "upscale": 2,
        "process_size": 128,
        "latent_tile_size": 64,
        "color_fix": "adain",
        "seed": 5,
    }
    assert result.image.size == (20, 16) and result.tags == ("dog", "frisbee")
    assert result.prompt == "dog, frisbee, a dog," + settings.added_prompt


def test_steps_are_reported_and_the_pipeline_is_left_untouched(pipeline):
    seen: list[tuple[int, int]] = []
    PipelineRunner(pipeline).upscale(Image.new("RGB", (8, 8)), WebSettings(steps=4), on_step=lambda *s: seen.append(s))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert "progress_bar" not in vars(pipeline) and not pipeline._interrupt  # nothing patched, nothing stopped


def test_cancel_stops_between_steps_and_releases_the_device(pipeline):
    runner = PipelineRunner(pipeline)
    stop = threading.Event()
    seen: list[int] = []

    def on_step(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            stop.set()

    with pytest.raises(RunCancelled):
        runner.upscale(Image.new("RGB", (8, 8)), WebSettings(steps=10), on_step=on_step, should_stop=stop.is_set)
    assert seen == [1, 2] and pipeline.steps_run == 2  # the pipeline stopped after the step (interrupt)
    assert "progress_bar" not in vars(pipeline)
    assert runner.lock.acquire(blocking=False)  # not left locked
    runner.lock.release()


def test_random_seed_is_resolved_before_the_call(pipeline):
    result = PipelineRunner(pipeline).upscale(Image.new("RGB", (8, 8)), WebSettings(seed=None, steps=1))
    assert isinstance(result.settings.seed, int) and pipeline.calls[-1]["seed"] == result.settings.seed


def test_metadata_has_the_upscale_command_keys(pipeline):
    result = PipelineRunner(pipeline).upscale(Image.new("RGB", (8, 8)), WebSettings(steps=1, use_tags=True, seed=231))
    metadata = result.metadata
    assert metadata["prompt"] == result.prompt and metadata["tags"] == "dog, grass" and metadata["seed"] == "231"
    record = json.loads(metadata["seesr"])
    assert set(vars(UpscaleSettings())) <= set(record)  # every field `seesr upscale` records
    assert record["interface"] == "web" and record["tags_source"] == "dape"
    assert record["model"] == "release folder /models/seesr" and record["steps"] == 1


def test_detect_tags(pipeline):
    assert PipelineRunner(pipeline).detect_tags(Image.new("RGB", (8, 8))) == ["dog", "grass"]
    with pytest.raises(UserInputError, match="without its DAPE tagger"):
        PipelineRunner(SimpleNamespace(tagger=None)).detect_tags(Image.new("RGB", (8, 8)))


def test_metadata_says_unedited_detected_tags_are_dape_s(pipeline):
    runner = PipelineRunner(pipeline)
    detected = WebSettings(steps=1, tags=("dog", "grass"), dape_tags=("dog", "grass"))
    edited = WebSettings(steps=1, tags=("dog",), dape_tags=("dog", "grass"))
    sources = [
        json.loads(runner.upscale(Image.new("RGB", (8, 8)), s).metadata["seesr"])["tags_source"]
        for s in (detected, edited)
    ]
    assert sources == ["dape", "user"]


def test_a_clip_holds_the_device_lock_and_uses_one_seed(tmp_path):
    """The Video tab's path: upscale_video on the runner's pipeline, the whole clip under the device lock."""
    from seesr.pipeline.video import open_source
    from tests.pipeline.test_video import make_clip
    from tests.web.fakes import FakeVideoPipeline

    class LockCheckingPipeline(FakeVideoPipeline):
        def __call__(self, image, **kwargs):
            assert runner.lock.locked()
            return super().__call__(image, **kwargs)

    runner = PipelineRunner(LockCheckingPipeline())
    frames: list[tuple[int, int]] = []
    clip = make_clip(tmp_path / "clip.mp4", frames=4, audio=False)
    result = runner.upscale_clip(
        open_source(str(clip)),
        tmp_path / "out",
        WebSettings(steps=1, scale=2, seed=None),
        max_output_pixels=10**7,
        on_frame=lambda *f: frames.append(f),
    )
    assert frames == [(1, 4), (2, 4), (3, 4), (4, 4)] and not runner.lock.locked()
    seeds = {call["seed"] for call in runner.pipeline.calls}
    assert len(runner.pipeline.calls) == 4 and seeds == {result.report["seed"]}  # a random seed, one for all frames
    assert result.output == tmp_path / "out" / "clip.mp4" and result.output.is_file()


def test_a_cancelled_clip_stops_after_the_current_step_and_keeps_no_clip(tmp_path):
    from seesr.pipeline.video import open_source
    from tests.pipeline.test_video import make_clip
    from tests.web.fakes import FakeVideoPipeline

    pipeline = FakeVideoPipeline()
    runner = PipelineRunner(pipeline)
    polls: list[int] = []

    def should_stop() -> bool:  # Cancel pressed during the 2nd step of the last frame
        polls.append(1)
        return len(polls) == 3 * 4 + 2

    clip = make_clip(tmp_path / "clip.mp4", frames=4, audio=False)
    with pytest.raises(RunCancelled):
        runner.upscale_clip(
            open_source(str(clip)),
            tmp_path / "out",
            WebSettings(steps=4, scale=2),
            max_output_pixels=10**7,
            should_stop=should_stop,
        )
    assert pipeline.steps_run == [4, 4, 4, 2]  # the last frame stopped after its 2nd step
    assert not (tmp_path / "out" / "clip.mp4").exists()  # a clip with a cut-short frame is not a result
    assert not runner.lock.locked()


def test_a_clip_on_the_tiny_model_reports_frames_and_stops_mid_frame(tmp_path):
    """The step callback reaches the real pipeline through upscale_video (cancel after the current step there too)."""
    from seesr.pipeline.video import open_source
    from seesr.utils.video_io import probe
    from tests.pipeline.helpers import tiny_pipeline
    from tests.pipeline.test_video import make_clip

    runner = PipelineRunner(tiny_pipeline())
    clip = make_clip(tmp_path / "clip.mp4", frames=3, audio=False)
    settings = WebSettings(steps=2, scale=2, seed=7, process_size=32)
    frames: list[tuple[int, int]] = []
    polls: list[int] = []
    result = runner.upscale_clip(
        open_source(str(clip)),
        tmp_path / "out",
        settings,
        max_output_pixels=10**6,
        on_frame=lambda *f: frames.append(f),
        should_stop=lambda: bool(polls.append(1)),
    )
    assert frames == [(1, 3), (2, 3), (3, 3)] and len(polls) == 3 * 2  # every step of every frame polled
    assert (probe(result.output).width, probe(result.output).height) == (32, 24)

    polls.clear()
    with pytest.raises(RunCancelled):
        runner.upscale_clip(
            open_source(str(clip)),
            tmp_path / "again",
            settings,
            max_output_pixels=10**6,
            should_stop=lambda: bool(polls.append(1)) or len(polls) == 3,  # during the 2nd frame's first step
        )
    assert len(polls) == 3 and not (tmp_path / "again" / "clip.mp4").exists() and not runner.lock.locked()
