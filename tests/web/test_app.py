"""The web UI's logic and wiring with a model-free runner (no browser): controller, limits, cancel, API safety."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import httpx
import pytest
from PIL import Image

from seesr.web.app import DEVICE_QUEUE, WebController, build_app, launch_app
from seesr.web.inputs import InputImage, InvalidUpload, read_payload
from seesr.web.runner import RunCancelled
from seesr.web.settings import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT, UserInputError, WebLimits
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
    with pytest.raises(UserInputError, match=r"At ×4 the result would be 96×64"):
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_served_app_binds_locally_and_rejects_forged_paths(tmp_path):
    runner = FakeRunner()
    app = build_app(runner, output_dir=tmp_path)
    url = launch_app(app, port=_free_port(), block=False, quiet=True)
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
