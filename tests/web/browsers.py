"""Finding a Chromium for the browser tests: Debian's (on PATH) or one that Playwright installed.

Without any, :func:`no_browser` skips the browser tests on a user's machine, saying how to enable them, and fails
them under CI (``CI=true``, as CI services set it), where a missing browser is a broken set-up, not a choice.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

#: Executables looked up on PATH, in this order (Debian/Ubuntu name first).
PATH_NAMES = ("chromium", "chromium-browser")

HOW_TO_ENABLE = (
    "The web UI's browser tests need Chromium, and none was found (looked for chromium and chromium-browser on "
    "PATH, and for browsers installed by Playwright). To run them, install one: `sudo apt install chromium` "
    "(Debian/Ubuntu), or `python -m playwright install chromium` (any system, macOS included)."
)


def running_in_ci(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """True when the ``CI`` environment variable says so (``true``/``1``/``yes``, as CI services set it)."""
    value = (environ if environ is not None else os.environ).get("CI", "")
    return value.strip().lower() in {"1", "true", "yes"}


def launch_chromium(playwright: Any, args: list[str]) -> Any | None:
    """A headless Chromium: Debian's on PATH first, then Playwright's own browsers; None when there is none."""
    from playwright.sync_api import Error as PlaywrightError

    for name in PATH_NAMES:
        executable = shutil.which(name)
        if executable:
            return playwright.chromium.launch(executable_path=executable, headless=True, args=args)
    try:  # `playwright install chromium` (or --only-shell): its headless shell
        return playwright.chromium.launch(headless=True, args=args)
    except PlaywrightError as error:
        if "Executable doesn't exist" not in str(error):
            raise
    executable = playwright.chromium.executable_path  # a full Playwright Chromium without the headless shell
    if executable and Path(executable).is_file():
        return playwright.chromium.launch(executable_path=executable, headless=True, args=args)
    return None


def no_browser() -> None:
    """Fail under CI, skip elsewhere; both with :data:`HOW_TO_ENABLE`."""
    if running_in_ci():
        pytest.fail(f"{HOW_TO_ENABLE} (CI=true: a missing browser fails the tests here.)", pytrace=False)
    pytest.skip(HOW_TO_ENABLE)
