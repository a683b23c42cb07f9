"""The web UI's logic and wiring with a model-free runner (no browser): controller, limits, cancel, API safety."""

from __future__ import annotations

import gc
import io
import os
import stat
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from seesr.web.app import DEVICE_QUEUE, WebController, build_app, launch_app, private_server_folder
from seesr.web.inputs import InputImage, InvalidUpload, read_payload
from seesr.web.runner import RunCancelled
from seesr.web.settings import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT, UserInputError, WebLimits
from tests.net import free_port
from tests.web.fakes import FakeRunner

CONTROLS = dict(
    tags_text="cat, armchair",
    use_tags=True,
    prompt="",
    added_prompt=DEFAULT_ADDED_PROMPT,
    negative_prompt=DEFAULT_NEGATIVE_PROMPT,
    steps=3,
    guidance_scale=5.5,
    seed=231,
    random_seed=False,
    color_fix="wavelet",
    scale=4,
    latent_tile_size=96,
)


def _input(size=(24, 16), alpha=False) -> InputImage:
    rgb = Image.new("RGB", size, (120, 60, 30))
    return InputImage(rgb=rgb, alpha=Image.new("L", size, 128) if alpha else None, stem="cat")


def test_importing_the_web_package_and_serve_command_is_cheap():
    code = (
        "import sys, seesr.web, seesr.web.app, seesr.cli.serve;"
        "heavy = [m for m in ('gradio', 'diffusers', 'transformers') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_saves_png_with_metadata_and_same_size_comparison(tmp_path):
    runner = FakeRunner()
    controller = WebController(runner, output_dir=tmp_path)
    output = controller.run(_input(), session="s", **CONTROLS)
    assert runner.calls[-1][0] == "upscale" and runner.calls[-1][2].tags == ("cat", "armchair")
    after, before = Image.open(output.after_path), Image.open(output.before_path)
    assert after.size == before.size == (96, 64)
    assert after.text["prompt"] == output.prompt and output.prompt.startswith("cat, armchair")
    assert output.after_path.name == "cat_seesr_x4.png" and output.after_path.parent.parent == tmp_path
    assert "`armchair`" in output.summary_markdown and "| Seed | 231 |" in output.summary_markdown
    assert "24×16 → 96×64" in output.summary_markdown and output.seed == 231


def test_old_results_are_deleted_but_never_the_users_own_folders(tmp_path):
    controller = WebController(FakeRunner(), output_dir=tmp_path)
    old = controller.run(_input(), session="s", **CONTROLS).after_path.parent
    users = tmp_path / "holiday-2019"  # a folder of the user's, in the folder they gave as output_dir
    users.mkdir()
    (users / "beach.png").write_bytes(b"a photo")
    three_hours_ago = time.time() - 3 * 3600
    for folder in (old, users):
        os.utime(folder, (three_hours_ago, three_hours_ago))
    new = controller.run(_input(), session="s", **CONTROLS).after_path.parent
    assert not old.exists() and new.is_dir()
    assert (users / "beach.png").read_bytes() == b"a photo"


def test_random_seed_is_reported(tmp_path):
    controller = WebController(FakeRunner(), output_dir=tmp_path)
    first = controller.run(_input(), session="s", **{**CONTROLS, "random_seed": True})
    second = controller.run(_input(), session="s", **{**CONTROLS, "random_seed": True})
    assert first.seed != second.seed
    assert f"| Seed | {first.seed} |" in first.summary_markdown


def test_alpha_is_carried_to_the_result(tmp_path):
    output = WebController(FakeRunner(), output_dir=tmp_path).run(_input(alpha=True), session="s", **CONTROLS)
    after = Image.open(output.after_path)
    assert after.mode == "RGBA" and after.getchannel("A").getextrema() == (128, 128)


def test_run_refuses_bad_input_before_calling_the_model(tmp_path):
    runner = FakeRunner()
    controller = WebController(runner, WebLimits(max_output_pixels=64 * 64), output_dir=tmp_path)
    with pytest.raises(UserInputError, match="Upload a photo first"):
        controller.run(None, session="s", **CONTROLS)
    with pytest.raises(UserInputError, match="not an image"):
        controller.run(InvalidUpload("x.png: not an image"), session="s", **CONTROLS)
    with pytest.raises(UserInputError, match=r"24x16 is processed at 768x512"):  # enlarged to 512 first
        controller.run(_input(), session="s", **CONTROLS)
    with pytest.raises(UserInputError, match="steps must be"):
        controller.run(_input(), session="s", **{**CONTROLS, "steps": 10_000})
    assert runner.calls == []


def test_detect_returns_editable_text(tmp_path):
    controller = WebController(FakeRunner(), output_dir=tmp_path)
    text, status = controller.detect(_input())
    assert text == "cat, sofa, window" and "3 tags" in status
    assert "24×16" in controller.describe_input((24, 16), 4) and "96×64" in controller.describe_input((24, 16), 4)


def test_cancel_stops_the_run_of_that_session_only(tmp_path):
    runner = FakeRunner(steps_delay=0.02)
    controller = WebController(runner, WebLimits(max_steps=1000), output_dir=tmp_path)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            controller.run(_input(), session="alice", **{**CONTROLS, "steps": 500})
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    assert runner.started.wait(10)
    controller.cancel("bob")  # someone else's cancel does nothing to alice's run
    assert thread.is_alive()
    controller.cancel("alice")
    thread.join(10)
    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], RunCancelled)
    # the next run of the same session starts afresh
    assert controller.run(_input(), session="alice", **CONTROLS).seed == 231


def test_payload_paths_outside_the_upload_folders_are_refused(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    inside = uploads / "abc" / "cat.png"
    inside.parent.mkdir()
    Image.new("RGB", (8, 6)).save(inside)
    outside = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(outside)
    sneaky = uploads / ".." / "x.png"
    limits = WebLimits()
    upload = read_payload({"path": str(inside), "orig_name": "../../cat.png"}, limits, [uploads])
    assert isinstance(upload, InputImage) and upload.size == (8, 6) and upload.stem == "cat"
    for payload in ({"path": str(outside)}, {"path": str(sneaky)}, {"url": "http://example.com/x.png"}, "x.png"):
        result = read_payload(payload, limits, [uploads])
        assert isinstance(result, InvalidUpload) and "must be uploaded" in result.message
    assert read_payload(None, limits, [uploads]) is None


def test_model_events_share_one_device_slot(tmp_path):
    app = build_app(FakeRunner(), output_dir=tmp_path)
    by_name = {fn.api_name: fn for fn in app.fns.values()}
    for name in ("detect_tags", "upscale"):
        assert by_name[name].concurrency_id == DEVICE_QUEUE and by_name[name].concurrency_limit == 1


def test_served_app_binds_locally_and_rejects_forged_paths(tmp_path):
    runner = FakeRunner()
    app = build_app(runner, output_dir=tmp_path)
    url = launch_app(app, port=free_port(), block=False, quiet=True)
    try:
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/").status_code == 200
            payload = {"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}]}
            event = client.post("/gradio_api/call/detect_tags", json=payload).json()["event_id"]
            stream = client.get(f"/gradio_api/call/detect_tags/{event}").text
            assert "event: error" in stream
            # the server's own files are not served either
            assert client.get("/gradio_api/file=/etc/hostname").status_code in (403, 404)
    finally:
        app.close()
    assert runner.calls == []


def test_odd_shaped_images_are_refused_before_any_work(tmp_path):
    """Issue 13 item 2: the working size (short side enlarged to process_size first) counts, at upload and at run."""
    runner = FakeRunner()
    controller = WebController(runner, WebLimits(max_output_pixels=2048 * 2048), output_dir=tmp_path)
    strip = _input(size=(20, 1000))  # x4: 80x4000, but worked on at 512x25600
    with pytest.raises(UserInputError, match=r"processed at 512x25600"):
        controller.run(strip, session="s", **CONTROLS)
    assert "processed at 512x25600" in controller.describe_input((20, 1000), 4)
    with pytest.raises(UserInputError, match="aspect ratio"):
        controller.run(_input(size=(3, 100_000)), session="s", **CONTROLS)
    assert runner.calls == []


class _OutOfMemoryRunner(FakeRunner):
    """Holds a large object in its frame, then fails like an allocator (``make_error()`` is raised once)."""

    def __init__(self, make_error) -> None:
        super().__init__()
        self.make_error = make_error
        self.held: weakref.ref | None = None

    def upscale(self, image, settings, **kwargs):
        if self.make_error is None:
            return super().upscale(image, settings, **kwargs)
        buffer = bytearray(64 * 1024 * 1024)
        self.held = weakref.ref(_Holder(buffer))
        holder = self.held()  # noqa: F841 - kept alive by this frame only
        make_error, self.make_error = self.make_error, None
        raise make_error()


class _Holder:
    def __init__(self, buffer: bytearray) -> None:
        self.buffer = buffer
        self.cycle = self  # freed only by garbage collection


@pytest.mark.parametrize(
    "error", [MemoryError, lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")]
)
def test_out_of_memory_is_a_message_and_the_memory_is_returned(tmp_path, monkeypatch, error):
    """Issue 13 item 2: an allocator failure is a message for that request, not a dead server holding the memory."""
    import seesr.utils.device

    freed_at_release: list[bool] = []
    real_release = seesr.utils.device.release_memory

    def release() -> None:
        real_release()
        freed_at_release.append(runner.held is not None and runner.held() is None)

    monkeypatch.setattr(seesr.utils.device, "release_memory", release)
    runner = _OutOfMemoryRunner(error)
    controller = WebController(runner, output_dir=tmp_path)
    with pytest.raises(UserInputError, match=r"ran out of memory for this image \((MemoryError|OutOfMemoryError)"):
        controller.run(_input(), session="s", **CONTROLS)
    assert freed_at_release == [True]  # the failed run's objects were gone when the memory was handed back
    assert controller.run(_input(), session="s", **CONTROLS).seed == 231  # and the server goes on
    assert len(freed_at_release) == 2  # returned after successful runs too


def test_other_errors_are_not_taken_for_memory_errors(tmp_path):
    controller = WebController(_OutOfMemoryRunner(lambda: ValueError("a bug")), output_dir=tmp_path)
    with pytest.raises(ValueError, match="a bug"):
        controller.run(_input(), session="s", **CONTROLS)
    gc.collect()


def test_unedited_detected_tags_are_labelled_dape_s(tmp_path):
    controller = WebController(FakeRunner(), output_dir=tmp_path)
    detected, _ = controller.detect(_input())
    kept = controller.run(_input(), session="s", **{**CONTROLS, "tags_text": detected}, detected_tags_text=detected)
    edited = controller.run(_input(), session="s", **{**CONTROLS, "tags_text": "cat"}, detected_tags_text=detected)
    assert "| Tags | `cat`, `sofa`, `window` (DAPE) |" in kept.summary_markdown
    assert "| Tags | `cat` (yours) |" in edited.summary_markdown


def test_private_server_folder(tmp_path, monkeypatch):
    """Issue 13 item 8: uploads, Gradio's cache and results in a folder only this user can read, removed after."""
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    with private_server_folder() as folder:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and (folder / "results").is_dir()
        assert os.environ["GRADIO_TEMP_DIR"] == str(folder / "gradio")
        (folder / "results" / "x.png").write_bytes(b"x")
    assert not folder.exists() and "GRADIO_TEMP_DIR" not in os.environ

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "mine"))  # the user's choice of disk is kept
    with private_server_folder() as folder:
        assert folder.parent == tmp_path / "mine" and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "mine") and list((tmp_path / "mine").iterdir()) == []


def test_served_uploads_and_results_stay_in_the_private_folder(tmp_path, monkeypatch):
    shared = tmp_path / "shared-tmp"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(shared))
    with private_server_folder() as folder:
        app = build_app(FakeRunner(), output_dir=folder / "results")
        url = launch_app(app, port=free_port(), block=False, quiet=True)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                png = io.BytesIO()
                Image.new("RGB", (24, 16), (200, 100, 50)).save(png, format="PNG")
                uploaded = client.post("/gradio_api/upload", files={"files": ("cat.png", png.getvalue())}).json()[0]
                assert Path(uploaded).is_relative_to(folder)
                image = {"path": uploaded, "orig_name": "cat.png", "meta": {"_type": "gradio.FileData"}}
                data = [image, "cat", None, True, "", "x", "y", 2, 5.5, 1, False, 2, 96, "adain"]
                event = client.post("/gradio_api/call/upscale", json={"data": data}).json()["event_id"]
                stream = client.get(f"/gradio_api/call/upscale/{event}").text
                assert "event: complete" in stream, stream[-2000:]
            written = [path for path in folder.rglob("*.png")]
            assert any(path.name == "cat_seesr_x2.png" for path in written)
            assert [entry.name for entry in shared.iterdir()] == [folder.name]  # nothing beside the private folder
        finally:
            app.close()
    assert list(shared.iterdir()) == []
