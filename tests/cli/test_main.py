"""The entry point: --help, --version, exit codes."""

from __future__ import annotations

import subprocess
import sys

from seesr import __version__
from seesr.cli.main import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "upscale" in out or "COMMAND" in out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["no-such-command"]) == 2


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "seesr", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and __version__ in result.stdout
