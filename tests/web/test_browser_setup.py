"""How the browser tests find Chromium (issue 19 D2): Debian's on PATH or Playwright's own; without any, skipped
with how to enable them on a user's machine, failed under CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.web.browsers import HOW_TO_ENABLE, launch_chromium, no_browser, running_in_ci

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_chromium_anywhere(tmp_path, monkeypatch) -> Path:
    """PATH and Playwright's browser folder both empty (Python and Playwright's driver need neither)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(empty))
    return empty


def test_ci_detection():
    assert running_in_ci({"CI": "true"}) and running_in_ci({"CI": "1"}) and running_in_ci({"CI": "True"})
    assert not running_in_ci({}) and not running_in_ci({"CI": "false"}) and not running_in_ci({"CI": ""})


def test_without_a_browser_users_are_told_how_to_enable_and_ci_fails(no_chromium_anywhere, monkeypatch):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        assert launch_chromium(playwright, ["--no-sandbox"]) is None
    assert "apt install chromium" in HOW_TO_ENABLE and "playwright install chromium" in HOW_TO_ENABLE
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="playwright install chromium"):
        no_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        no_browser()


def test_the_browser_tests_skip_without_chromium_and_start_no_server(no_chromium_anywhere):
    """The README's test command on a machine without Chromium: skipped (with the hint), not errors."""
    from tests.web import test_browser

    count = sum(1 for name in vars(test_browser) if name.startswith("test_"))  # 4 when this was written
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/web/test_browser.py"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{count} skipped" in done.stdout and "sudo apt install chromium" in done.stdout
    assert "SeeSR web UI on" not in done.stdout + done.stderr

    done = subprocess.run(command, cwd=REPO, env={**env, "CI": "true"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and f"{count} errors" in done.stdout and "CI=true" in done.stdout


@pytest.mark.browser
def test_playwright_installed_chromium_is_used_when_none_is_on_path(tmp_path, monkeypatch):
    """A Chromium where `playwright install chromium` puts it (here: Debian's, linked there) is found and runs."""
    from playwright.sync_api import sync_playwright

    debian = shutil.which("chromium") or shutil.which("chromium-browser")
    if debian is None:
        no_browser()
    browsers = tmp_path / "ms-playwright"
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(browsers))
    monkeypatch.setenv("PATH", str(tmp_path))
    with sync_playwright() as playwright:
        assert launch_chromium(playwright, ["--no-sandbox"]) is None
        executable = Path(playwright.chromium.executable_path)
        assert executable.is_relative_to(browsers)
        executable.parent.mkdir(parents=True)
        executable.symlink_to(debian)
        browser = launch_chromium(playwright, ["--no-sandbox", "--disable-gpu"])
        assert browser is not None
        page = browser.new_page()
        page.set_content("<title>found</title>")
        assert page.title() == "found"
        browser.close()
