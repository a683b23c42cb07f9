"""The Video tab (issue 18 item 5) without a browser: a synthetic 12-frame clip with sound, made here with PyAV, goes
through the controller (and once through the served app) into :func:`seesr.pipeline.video.upscale_video` on a fake
pipeline: progress in frames with the time left, the first frames early, cancel, the limits checked before work."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from seesr.utils.video_io import probe
from seesr.web.app import (
    DEVICE_QUEUE,
    PREVIEW_FRAMES,
    VideoProgress,
    WebController,
    _run_in_thread,
    build_app,
    format_duration,
    launch_app,
    private_server_folder,
)
from seesr.web.inputs import InputClip, InvalidUpload, read_clip_payload
from seesr.web.runner import RunCancelled
from seesr.web.settings import UserInputError, WebLimits
from tests.net import free_port
from tests.pipeline.test_video import make_clip, stream_summary
from tests.web.fakes import FakeRunner
from tests.web.test_app import CONTROLS

VIDEO_CONTROLS = {**CONTROLS, "tags_text": None, "steps": 2, "scale": 4}


def _clip(tmp_path: Path, limits: WebLimits | None = None, name: str = "holiday.mp4") -> InputClip | InvalidUpload:
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    path = make_clip(uploads / "upload.mp4")  # 12 frames of 16x12 at 8 fps, AAC sound, rotation 90
    return read_clip_payload({"path": str(path), "orig_name": name}, limits or WebLimits(), [uploads])


def test_clip_is_upscaled_with_frame_progress_previews_and_its_sound(tmp_path):
    clip = _clip(tmp_path)
    assert isinstance(clip, InputClip) and clip.frames == 12 and clip.size == (16, 12) and clip.stem == "holiday"
    runner = FakeRunner()
    controller = WebController(runner, output_dir=tmp_path / "results")
    seen: list[VideoProgress] = []
    reports: list[VideoProgress] = []
    output = controller.run_video(clip, session="s", on_progress=reports.append, **VIDEO_CONTROLS)

    seen = [p for p in reports if p.step is None]  # after each frame; the others during a frame, after each step
    assert [(p.done, p.total) for p in seen] == [(i, 12) for i in range(1, 13)]
    steps = [(p.done, p.step) for p in reports if p.step is not None]
    assert steps == [(frame, (step, 2)) for frame in range(12) for step in (1, 2)]
    assert [p.fraction for p in reports[:3]] == [0.5 / 12, 1 / 12, 1 / 12]
    assert reports[0].describe() == "Frame 1 of 12: step 1 of 2"
    assert seen[0].seconds_left is None and all(p.seconds_left is not None and p.seconds_left >= 0 for p in seen[1:])
    assert seen[-1].seconds_left == 0 and seen[1].describe().startswith("Frame 2 of 12, about ")
    assert [len(p.previews) for p in seen[:5]] == [1, 2, 3, 4, 4]  # the first frames, as soon as they are done
    assert len(output.previews) == PREVIEW_FRAMES and all(Image.open(p).size == (64, 48) for p in output.previews)

    video = output.video_path
    assert video.name == "holiday.mp4" and video.parent.parent == tmp_path / "results"
    written = probe(video)
    assert (written.width, written.height, written.rotation) == (64, 48, 90.0)
    summary = stream_summary(video)
    assert summary["decoded"] == 12 and summary["streams"][1] == stream_summary(clip.path)["streams"][1]  # sound
    assert not list(video.parent.glob("*.frames"))  # the working folder is gone
    report = json.loads((video.parent / "holiday.video.json").read_text())
    assert report["frames"] == 12 and report["seed"] == 231 == output.seed
    # one seed and the shot's tags for every frame: the clip path of `seesr upscale`, not 12 photo runs
    calls = runner.video_pipeline.calls
    assert len(calls) == 12 and {c["seed"] for c in calls} == {231} and all(c["tags"] == ["cat"] for c in calls)
    assert {c["num_inference_steps"] for c in calls} == {2} and {c["color_fix"] for c in calls} == {"wavelet"}
    assert "| Frames | 12 at 8 fps |" in output.summary_markdown and "audio:aac" in output.summary_markdown
    assert "| Seed (all frames) | 231 |" in output.summary_markdown


def test_a_clip_longer_than_the_limit_is_refused_at_upload_and_at_run(tmp_path):
    clip = _clip(tmp_path, WebLimits(max_video_frames=8))
    assert isinstance(clip, InvalidUpload)
    assert clip.message == (
        "holiday.mp4: The clip has 12 frames (1.5 s at 8 fps); this server upscales clips of up to 8 frames. "
        "Cut it shorter first, use `seesr upscale clip.mp4` on the command line, or restart `seesr serve` with a "
        "larger --max-video-frames."
    )
    runner = FakeRunner()
    controller = WebController(runner, WebLimits(max_video_frames=8), output_dir=tmp_path / "results")
    ok, message = controller.inspect_clip(clip, 4)
    assert not ok and "--max-video-frames" in message
    with pytest.raises(UserInputError, match="up to 8 frames"):
        controller.run_video(clip, session="s", **VIDEO_CONTROLS)
    assert runner.calls == [] and list((tmp_path / "results").iterdir()) == []


def test_the_size_check_of_photos_applies_to_each_clip_before_work(tmp_path):
    runner = FakeRunner()
    limits = WebLimits(max_output_pixels=64 * 64)
    controller = WebController(runner, limits, output_dir=tmp_path / "results")
    clip = _clip(tmp_path, limits)
    assert isinstance(clip, InputClip)
    assert "16x12 is processed at 680x512" in controller.inspect_clip(clip, 4)[1]  # shown at upload
    with pytest.raises(UserInputError, match=r"16x12 is processed at 680x512"):
        controller.run_video(clip, session="s", **VIDEO_CONTROLS)
    with pytest.raises(UserInputError, match="Upload a clip first"):
        controller.run_video(None, session="s", **VIDEO_CONTROLS)
    assert runner.calls == [] and list((tmp_path / "results").iterdir()) == []


def test_the_memory_guard_of_photos_refuses_a_clip_in_one_line_naming_it(tmp_path, monkeypatch):
    import seesr.pipeline.batch

    monkeypatch.setattr(seesr.pipeline.batch, "available_memory", lambda device=None: 1)  # 1 byte free
    runner = FakeRunner()
    controller = WebController(runner, output_dir=tmp_path / "results")
    clip = _clip(tmp_path)
    with pytest.raises(UserInputError, match=r"^holiday: 16x12 needs about .* of memory") as refused:
        controller.run_video(clip, session="s", **VIDEO_CONTROLS)
    assert str(tmp_path) not in str(refused.value) and "\n" not in str(refused.value)
    assert runner.video_pipeline.calls == [] and list((tmp_path / "results").iterdir()) == []


def test_uploads_that_are_not_usable_clips_are_refused_in_one_line(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    outside = make_clip(tmp_path / "outside.mp4", frames=2, audio=False)
    not_video = uploads / "notes.mp4"
    not_video.write_bytes(b"this is not a video")
    limits = WebLimits()
    refused = read_clip_payload({"path": str(outside), "orig_name": "a.mp4"}, limits, [uploads])
    assert isinstance(refused, InvalidUpload) and "must be uploaded, not referenced by a path" in refused.message
    bad = read_clip_payload({"path": str(not_video), "orig_name": "notes.mp4"}, limits, [uploads])
    assert isinstance(bad, InvalidUpload) and bad.message.startswith("notes.mp4: not a video this server can read")
    assert str(not_video) not in bad.message  # the server-side path is not echoed
    big = read_clip_payload({"path": str(not_video), "orig_name": "x.mp4"}, WebLimits(max_upload_bytes=4), [uploads])
    assert isinstance(big, InvalidUpload) and "larger than this server's upload limit" in big.message
    assert read_clip_payload(None, limits, [uploads]) is None
    clip = make_clip(uploads / "clip.mp4", frames=2, audio=False)
    large = read_clip_payload({"path": str(clip), "orig_name": "c.mp4"}, WebLimits(max_input_pixels=100), [uploads])
    assert isinstance(large, InvalidUpload) and large.message.startswith(
        "c.mp4: Its frames are 16×12 (192 pixels); this server accepts frames up to 100 pixels."
    )


def test_cancel_stops_the_clip_after_the_current_frame_and_leaves_nothing(tmp_path, monkeypatch):
    import seesr.utils.device

    released: list[int] = []
    monkeypatch.setattr(seesr.utils.device, "release_memory", lambda: released.append(1))
    runner = FakeRunner()
    controller = WebController(runner, output_dir=tmp_path / "results")
    clip = _clip(tmp_path)

    def on_progress(update: VideoProgress) -> None:
        if update.done == 3:
            controller.cancel("bob")  # someone else's cancel does nothing
        if update.done == 4:
            controller.cancel("alice")

    with pytest.raises(RunCancelled):
        controller.run_video(clip, session="alice", on_progress=on_progress, **{**VIDEO_CONTROLS, "steps": 5})
    assert runner.video_pipeline.steps_run == [5, 5, 5, 5, 1]  # the next frame stopped after its first step
    assert list((tmp_path / "results").iterdir()) == [] and released == [1]  # memory returned after the run
    # the next clip of the same session starts afresh
    assert controller.run_video(clip, session="alice", **VIDEO_CONTROLS).report["frames"] == 12


def test_the_worker_thread_reports_then_returns_raises_or_is_abandoned():
    def work(report):
        report("a")
        report("b")
        return "done"

    assert list(_run_in_thread(work, on_abandon=lambda: pytest.fail("abandoned"))) == ["a", "b", "done"]

    def failing(report):
        raise UserInputError("bad clip")

    with pytest.raises(UserInputError, match="bad clip"):
        list(_run_in_thread(failing, on_abandon=lambda: None))

    abandoned = threading.Event()
    go_on = threading.Event()

    def slow(report):
        report(1)
        go_on.wait(10)
        return 2

    updates = _run_in_thread(slow, on_abandon=abandoned.set)
    assert next(updates) == 1
    updates.close()  # the page's Cancel or a closed tab
    assert abandoned.is_set()
    go_on.set()


def test_format_duration():
    assert [format_duration(s) for s in (4.2, 65, 3700, -1)] == ["4 s", "1 min 5 s", "1 h 1 min", "0 s"]


def test_the_video_event_shares_the_device_slot(tmp_path):
    app = build_app(FakeRunner(), output_dir=tmp_path)
    by_name = {fn.api_name: fn for fn in app.fns.values()}
    assert by_name["upscale_video"].concurrency_id == DEVICE_QUEUE == by_name["upscale"].concurrency_id
    assert by_name["upscale_video"].concurrency_limit == 1


def test_served_video_tab_upscales_an_uploaded_clip_inside_the_private_folder(tmp_path, monkeypatch):
    shared = tmp_path / "shared-tmp"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(shared))
    clip = make_clip(tmp_path / "clip.mp4")
    with private_server_folder() as folder:
        app = build_app(FakeRunner(), output_dir=folder / "results")
        url = launch_app(app, port=free_port(), block=False, quiet=True)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                files = {"files": ("clip.mp4", io.BytesIO(clip.read_bytes()))}
                uploaded = client.post("/gradio_api/upload", files=files).json()[0]
                assert Path(uploaded).is_relative_to(folder)
                video = {"path": uploaded, "orig_name": "clip.mp4", "meta": {"_type": "gradio.FileData"}}
                data = [video, True, "", "x", "y", 1, 5.5, 7, False, 2, 96, "adain"]
                event = client.post("/gradio_api/call/upscale_video", json={"data": data}).json()["event_id"]
                stream = client.get(f"/gradio_api/call/upscale_video/{event}").text
                assert "event: complete" in stream, stream[-2000:]
                assert "Frame 1 of 12" in stream  # the progress text came before the result
                forged = {**video, "path": str(clip)}
                event = client.post("/gradio_api/call/upscale_video", json={"data": [forged, *data[1:]]}).json()
                refused = client.get(f"/gradio_api/call/upscale_video/{event['event_id']}").text
                assert "event: error" in refused
            results = list((folder / "results").rglob("clip.mp4"))
            assert len(results) == 1 and probe(results[0]).width == 32
            assert [entry.name for entry in shared.iterdir()] == [folder.name]  # nothing beside the private folder
        finally:
            app.close()
    assert list(shared.iterdir()) == []
