"""``seesr serve`` with the tiny model, driven in a real headless Chromium (Debian's on PATH, or Playwright's).

The server is the real command (``python -m seesr serve --model tests/fixtures/reference/tiny``) in a subprocess,
so this also checks the CLI wiring, the model loading and the safe defaults. A screenshot of the finished page is
written to ``artifacts/web/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY
from tests.net import free_port
from tests.web.browsers import launch_chromium, no_browser

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "web"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_INPUT_PIXELS = 250_000
MAX_UPLOAD_MB = 1
UI_TIMEOUT_MS = 60_000


class Server:
    """``seesr serve`` in a subprocess; ``log`` collects its stdout and stderr."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log: list[str] = []
        self.url: str | None = None
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(tmp / "gradio"),
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable, "-m", "seesr", "serve",
            "--model", str(TINY),
            "--port", str(self.port),
            "--device", "cpu",
            "--process-size", "64",  # keeps the tiny model's latents tiny: 40x32 at x2 -> 80x64 px
            "--max-input-pixels", str(MAX_INPUT_PIXELS),
            "--max-upload-mb", str(MAX_UPLOAD_MB),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip())
            match = re.search(r"SeeSR web UI on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def wait(self, timeout: float) -> str:
        self._ready.wait(timeout)
        assert self.url, "seesr serve did not start:\n" + "\n".join(self.log[-40:])
        return self.url

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("serve"))
    try:
        running.wait(timeout=240)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium or Playwright's; none: skipped with how to install one (failed under CI=true)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = launch_chromium(playwright, CHROMIUM_ARGS)
        if launched is None:
            no_browser()
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server: Server):  # browser first: without one, no server is started just to be skipped
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(server.url)
    yield page
    context.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    paths = {name: folder / f"{name}.png" for name in ("cat", "wide", "heavy", "notes")}
    Image.fromarray(data.chelsea()[90:122, 160:200]).save(paths["cat"])  # 40x32 real photo crop
    Image.new("RGB", (700, 400), (90, 120, 150)).save(paths["wide"])  # 280k pixels, a few KB
    noise = np.random.default_rng(0).integers(0, 256, (620, 620, 3), dtype=np.uint8)
    Image.fromarray(noise).save(paths["heavy"])  # about 1.1 MB, few pixels
    paths["notes"].write_text("meeting notes, definitely not a PNG")
    return paths


def _upload(page, path: Path) -> None:
    page.locator("#seesr-input input[type=file]").set_input_files(str(path))


def _clear_input(page) -> None:
    clear = page.locator("#seesr-input button[aria-label='Clear']")
    if clear.count():
        clear.first.click()


def test_bad_uploads_get_clear_messages_and_the_app_keeps_serving(page, images):
    from playwright.sync_api import expect

    expect(page).to_have_title("SeeSR")
    defaults = page.locator("#seesr-defaults")
    expect(defaults).to_contain_text(re.compile(r"defaults of .?seesr upscale.?: colour fix adain, a new random seed"))
    info = page.locator("#seesr-input-info")
    expect(info).to_contain_text("up to 1 MB and 0.2 MP")

    _upload(page, images["notes"])
    expect(info).to_contain_text("notes.png: not an image file")

    _upload(page, images["wide"])
    expect(info).to_contain_text("The image is 700×400 (0.3 MP); this server accepts images up to 0.2 MP")

    _upload(page, images["heavy"])
    expect(
        page.get_by_text(re.compile(r"exceed the maximum allowed size of 1(\.0)? ?MB", re.IGNORECASE))
    ).to_be_visible()

    # still serving: a good photo is accepted and described
    _clear_input(page)
    _upload(page, images["cat"])
    expect(info).to_contain_text("Input 40×32 px → result 160×128 px at ×4")


def test_detect_edit_run_compare_download(page, images, server, tmp_path):
    from playwright.sync_api import expect

    _upload(page, images["cat"])
    expect(page.locator("#seesr-input-info")).to_contain_text("40×32")
    page.locator("#seesr-scale input[type=number]").fill("2")
    page.locator("#seesr-steps input[type=number]").fill("2")
    expect(page.locator("#seesr-input-info")).to_contain_text("result 80×64 px at ×2")

    page.locator("#seesr-detect").click()
    expect(page.locator("#seesr-tags-info")).to_contain_text("DAPE found", timeout=UI_TIMEOUT_MS)
    tags_box = page.locator("#seesr-tags textarea")
    detected = [tag.strip() for tag in tags_box.input_value().split(",") if tag.strip()]
    assert detected, "the tiny DAPE found no tags for the photo"
    edited = ["tabby cat", *detected[1:]]
    tags_box.fill(", ".join(edited))

    page.locator("#seesr-run").click()
    prompt_used = page.locator("#seesr-prompt-used textarea")
    expect(prompt_used).to_have_value(re.compile("tabby cat"), timeout=UI_TIMEOUT_MS)
    assert prompt_used.input_value().startswith(", ".join(edited) + ", ")
    assert detected[0] not in prompt_used.input_value().split(", ")[:1]
    summary = page.locator("#seesr-settings-used")
    expect(summary).to_contain_text("(yours)")
    expect(summary).to_contain_text("×2: 40×32 → 80×64 px")
    seed = page.locator("#seesr-seed input").input_value()  # a random seed (the CLI's default), shown after the run
    expect(summary).to_contain_text(re.compile(rf"Seed\s*{seed}\b"))

    # the comparison shows both images at the output size
    compare = page.locator("#seesr-compare img")
    expect(compare).to_have_count(2)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#seesr-compare img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    sizes = compare.evaluate_all("images => images.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[80, 64], [80, 64]]

    # the download is the PNG with its settings
    with page.expect_download() as download_info:
        page.locator("#seesr-download").click()
    saved = tmp_path / "download.png"
    download_info.value.save_as(saved)
    with Image.open(saved) as result:
        assert result.size == (80, 64)
        assert result.text["prompt"] == prompt_used.input_value()
        assert result.text["tags"] == ", ".join(edited)
        assert '"steps": 2' in result.text["seesr"] and '"interface": "web"' in result.text["seesr"]
        assert result.text["seed"] == seed and '"color_fix": "adain"' in result.text["seesr"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_result.png"), full_page=True)


def test_progress_and_cancel(page, images, server):
    from playwright.sync_api import expect

    _upload(page, images["cat"])
    expect(page.locator("#seesr-input-info")).to_contain_text("40×32")
    page.locator("#seesr-steps input[type=number]").fill("200")
    page.locator("#seesr-tags textarea").fill("cat")  # skip tagging: straight to the steps
    page.locator("#seesr-run").click()
    expect(page.locator("#seesr-compare").get_by_text(re.compile(r"Denoising"))).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.locator("#seesr-cancel").click()
    expect(page.locator("#seesr-settings-used")).to_contain_text("Cancelling")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("run cancelled" in line for line in server.log):
        time.sleep(0.2)
    assert any("run cancelled" in line for line in server.log), "\n".join(server.log[-20:])

    # the device is free again: a short run completes; DAPE's tags, left as detected, are labelled DAPE's
    page.locator("#seesr-detect").click()
    expect(page.locator("#seesr-tags-info")).to_contain_text("DAPE found", timeout=UI_TIMEOUT_MS)
    detected = page.locator("#seesr-tags textarea").input_value()
    page.locator("#seesr-steps input[type=number]").fill("1")
    page.locator("#seesr-run").click()
    prompt_used = page.locator("#seesr-prompt-used textarea")
    expect(prompt_used).to_have_value(re.compile("^" + re.escape(detected + ", ")), timeout=UI_TIMEOUT_MS)
    expect(page.locator("#seesr-settings-used")).to_contain_text("(DAPE)")


def test_video_tab_upscales_a_clip_with_progress_previews_and_download(page, server, tmp_path):
    """Issue 18 item 5: a clip uploaded in the Video tab, upscaled with the Photo tab's settings, downloadable."""
    from playwright.sync_api import expect

    from seesr.utils.video_io import probe
    from tests.pipeline.test_video import make_clip, stream_summary

    clip = make_clip(tmp_path / "walk.mp4", frames=6)  # 16x12 at 8 fps with sound
    page.locator("#seesr-scale input[type=number]").fill("2")
    page.locator("#seesr-steps input[type=number]").fill("1")
    page.get_by_role("tab", name="Video").click()
    page.locator("#seesr-clip input[type=file]").set_input_files(str(clip))
    expect(page.locator("#seesr-clip-info")).to_contain_text("6 frames at 8 fps. Input 16×12 px")
    page.locator("#seesr-video-run").click()
    expect(page.locator("#seesr-video-status")).to_contain_text("Done: 6 frames", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#seesr-video-previews img")).to_have_count(4)
    expect(page.locator("#seesr-video-used")).to_contain_text("×2: 16×12 → 32×24 px")

    with page.expect_download() as download_info:
        page.locator("#seesr-clip-download").click()
    saved = tmp_path / "download.mp4"
    download_info.value.save_as(saved)
    assert (probe(saved).width, probe(saved).height) == (32, 24)
    assert stream_summary(saved)["decoded"] == 6 and probe(saved).copied_streams == ["audio:aac"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_video.png"), full_page=True)


def test_video_tab_cancel_frees_the_device(page, server, tmp_path):
    from playwright.sync_api import expect

    from tests.pipeline.test_video import make_clip

    clip = make_clip(tmp_path / "long.mp4", frames=6, audio=False)
    page.locator("#seesr-steps input[type=number]").fill("200")
    page.get_by_role("tab", name="Video").click()
    page.locator("#seesr-clip input[type=file]").set_input_files(str(clip))
    expect(page.locator("#seesr-clip-info")).to_contain_text("6 frames")
    page.locator("#seesr-video-run").click()
    progress = page.locator("#seesr-clip-out").get_by_text(re.compile(r"Frame 1 of 6: step \d+ of 200"))
    expect(progress).to_be_visible(timeout=UI_TIMEOUT_MS)  # the steps of the first frame move the bar
    page.locator("#seesr-video-cancel").click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("clip cancelled" in line for line in server.log):
        time.sleep(0.2)
    assert any("clip cancelled" in line for line in server.log), "\n".join(server.log[-20:])

    # the device is free again: a short photo-tab-settings clip run completes
    page.get_by_role("tab", name="Photo").click()
    page.locator("#seesr-steps input[type=number]").fill("1")
    page.locator("#seesr-scale input[type=number]").fill("2")
    page.get_by_role("tab", name="Video").click()
    page.locator("#seesr-video-run").click()
    expect(page.locator("#seesr-video-status")).to_contain_text("Done: 6 frames", timeout=UI_TIMEOUT_MS)
