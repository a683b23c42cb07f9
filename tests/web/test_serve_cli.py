"""``seesr serve`` argument handling: help, usage errors and failures reported before any model is loaded.

Starting the server for real (model loading, serving, the page) is covered by ``test_browser.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from seesr.cli.main import main
from seesr.cli.serve import _is_loopback
from tests.net import free_port

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_options(capsys):
    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--host",
        "--port",
        "--device",
        "--max-upload-mb",
        "--max-input-pixels",
        "--process-size",
        "--max-video-frames",
    ):
        assert option in text
    assert "127.0.0.1" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "--port must be between 1 and 65535"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
        (["--max-input-pixels", "0"], "--max-input-pixels must be a positive integer"),
        (["--max-queue", "-1"], "--max-queue must be a positive integer"),
        (["--max-video-frames", "0"], "--max-video-frames must be a positive integer"),
        (["--process-size", "4"], "--process-size must be at least 8"),
        (["--host", "no-such-host.invalid"], "is not an address of this machine"),
        (["--device", "nope"], "--device nope:"),
    ],
)
def test_usage_errors(argv, message, capsys):
    port = [] if "--port" in argv else ["--port", str(free_port())]
    assert main(["serve", *port, *argv]) == 2
    assert message in capsys.readouterr().err


def test_port_in_use_fails_before_loading_the_model(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "/nonexistent"]) == 1
    error = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in error and "choose another --port" in error


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["serve", "--port", str(free_port()), "--device", "cpu", "--model", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "seesr serve: error:" in error and "is not a SeeSR model folder" in error and "Traceback" not in error


def test_loopback_detection():
    assert _is_loopback("127.0.0.1") and _is_loopback("localhost") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.10")


def test_without_gradio_the_command_says_which_extra_to_install(monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real_find_spec(name, *a)
    )
    assert main(["serve"]) == 1
    assert "pip install 'seesr[web]'" in capsys.readouterr().err


def test_help_says_where_the_page_defaults_come_from(capsys):
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "defaults of `seesr upscale`" in text and "--demo-defaults" in text and "wavelet" in text
    assert "private folder (mode 0700)" in text


SERVE_WITH_A_FAKE_MODEL = """
import sys
import seesr.cli.serve
import seesr.pipeline.pipeline_seesr
from tests.web.fakes import FakeRunner

class Fake(FakeRunner):
    def set_progress_bar_config(self, **kwargs):
        pass

seesr.pipeline.pipeline_seesr.SeeSRPipeline.from_pretrained = classmethod(lambda cls, *args, **kwargs: Fake())
seesr.cli.serve.resolve_for_loading = lambda args: args.model
from seesr.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # about 20 s: a fresh interpreter imports the CLI, and Gradio takes seconds to close
def test_sigterm_stops_the_server_and_removes_its_private_folder(tmp_path):
    """Issue 13 item 8: the server's files live in a 0700 folder that is gone once the server stops (SIGTERM too)."""
    parent = tmp_path / "tmp"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(parent), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    argv = ["serve", "--model", str(tmp_path), "--device", "cpu", "--port", str(free_port())]
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_WITH_A_FAKE_MODEL, *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "SeeSR web UI on" in line:
                break
        assert "SeeSR web UI on" in lines[-1], "".join(lines)
        (folder,) = parent.iterdir()
        assert folder.name.startswith("seesr-serve-") and stat.S_IMODE(folder.stat().st_mode) == 0o700
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert list(parent.iterdir()) == []
