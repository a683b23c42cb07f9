"""The entry point: --help, --version, exit codes, one-line errors, Ctrl-C, quiet output."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest

from seesr import __version__
from seesr.cli import main as cli_main
from seesr.cli.main import main
from tests.conftest import TINY


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


# --- one-line errors (issue 13 item 7) -------------------------------------------------------------------------------


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("name", cli_main.EXPECTED_ERRORS)
def test_expected_error_classes_exist(name):
    """The table names classes by string (so the CLI imports none of them): each name must still resolve."""
    module, _, attribute = name.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), attribute), type)


@pytest.fixture()
def pred_folder(tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    shutil.copy(TINY / "pipeline_case1_lr.png", folder / "a.png")
    return folder


def test_an_os_error_is_one_line_naming_the_file(pred_folder, tmp_path, capsys):
    """`seesr eval --out` on a regular file raised a raw FileExistsError traceback."""
    report = tmp_path / "report.txt"
    report.write_text("mine")
    argv = ["eval", "--pred", str(pred_folder), "--gt", str(pred_folder), "--metrics", "psnr", "--out", str(report)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _error_lines(err)[-1] == f"seesr eval: error: {report}: file exists; remove it or choose another name"
    assert report.read_text() == "mine"


def test_debug_adds_the_traceback_before_or_after_the_command(pred_folder, tmp_path, capsys):
    report = tmp_path / "report.txt"
    report.write_text("mine")
    argv = ["eval", "--pred", str(pred_folder), "--gt", str(pred_folder), "--metrics", "psnr", "--out", str(report)]
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        assert main(debug_argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "FileExistsError" in err
        assert _error_lines(err)[-1].startswith("seesr eval: error: ")


def test_an_unexpected_error_is_one_line_with_its_own_exit_code(monkeypatch, tmp_path, capsys):
    import seesr.cli.degrade

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(seesr.cli.degrade, "run", broken)
    assert main(["degrade", str(tmp_path), "-o", str(tmp_path / "out")]) == cli_main.EXIT_INTERNAL == 70
    assert _error_lines(capsys.readouterr().err) == [
        "seesr degrade: internal error: KeyError: 'a bug' (run with --debug for the traceback)"
    ]


def test_cli_error_keeps_its_exit_code_and_message(tmp_path, capsys):
    assert main(["degrade", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out"), "--scale", "0"]) == 2
    assert _error_lines(capsys.readouterr().err) == ["seesr degrade: error: --scale must be a positive integer"]


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            PermissionError(13, "Permission denied", "/srv/out"),
            "error: /srv/out: permission denied; check its permissions",
        ),
        (
            FileNotFoundError(2, "No such file or directory", "x.yaml"),
            "error: x.yaml: no such file or directory; check",
        ),
        (MemoryError(), "error: out of memory; try a smaller input"),
        (  # PyTorch's CPU allocator raises a plain RuntimeError
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: 9 bytes"),
            "error: out of memory ([enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator",
        ),
        (ValueError("photo.png: a 3x100000 image is too large"), "error: photo.png: a 3x100000 image is too large"),
    ],
)
def test_describe_error(error, line):
    message, code = cli_main.describe_error(error)
    assert message.startswith(line) and code == 1


# --- Ctrl-C (issue 19 item 8) ----------------------------------------------------------------------------------------


def test_ctrl_c_names_the_command_and_how_to_resume(monkeypatch, tmp_path, capsys):
    import seesr.data.prepare

    def interrupted(options, runner=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(seesr.data.prepare, "prepare_dataset", interrupted)
    argv = ["prepare", "--gt", str(tmp_path), "--out", str(tmp_path / "set"), "--no-tags"]
    assert main(argv) == 130
    assert _error_lines(capsys.readouterr().err) == [
        "seesr prepare: interrupted; run the same command again to resume where it stopped"
    ]
    assert cli_main.interrupted_message("train seesr").endswith(
        "with --resume latest to continue from the last saved checkpoint"
    )
    assert cli_main.interrupted_message("eval") == "seesr eval: interrupted"


# --- help (issue 19 item 8) ------------------------------------------------------------------------------------------


def test_help_texts_name_no_file_users_do_not_have():
    parsers = [cli_main.build_parser(), *cli_main._subcommand_parsers(cli_main.build_parser())]
    assert len(parsers) > 12  # every command and the two training stages
    for parser in parsers:
        text = parser.format_help()
        for name in ("REFERENCE.md", "PARITY-NOTES", "STYLE.md", "/work/"):
            assert name not in text, (parser.prog, name)
        assert "--debug" in text and "--verbose" in text, parser.prog


# --- quiet by default (issue 19 item 7) ------------------------------------------------------------------------------


def test_upscale_shows_only_our_bars_unless_verbose(tmp_path, capsys):
    """The tiny bundle through `seesr upscale`: no transformers "Loading weights" bar, no ESC[A of nested bars."""
    argv = ["upscale", str(TINY / "pipeline_case1_lr.png"), "--model", str(TINY), "--steps", "1"]
    argv += ["--process-size", "32", "--device", "cpu", "--dtype", "fp32"]
    assert main([*argv, "-o", str(tmp_path / "quiet")]) == 0
    err = capsys.readouterr().err
    assert "images:" in err  # our own bar
    assert "Loading weights" not in err and "\x1b[A" not in err
    assert main(["-v", *argv, "-o", str(tmp_path / "verbose")]) == 0
    assert "Loading weights" in capsys.readouterr().err


_NOISY_COMMAND = """
import logging, sys, warnings
import diffusers.utils.logging
import torchvision.models
import seesr.cli.degrade

def run(args):  # what prepare and eval used to print: a diffusers logger warning, a torchvision deprecation
    diffusers.utils.logging.get_logger("diffusers.models.modeling_utils").warning("modules kept in float32: []")
    torchvision.models.squeezenet1_1(pretrained=False)
    logging.getLogger("seesr.data").warning("our own warning")
    warnings.warn_explicit("our own user warning", UserWarning, "prepare.py", 1, module="seesr.data.prepare")
    return 0

seesr.cli.degrade.run = run
from seesr.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_library_warnings_are_hidden_unless_verbose(tmp_path):
    """Libraries' own loggers and Python warnings, in a fresh process (diffusers binds its handler at import)."""
    script = tmp_path / "noisy.py"
    script.write_text(_NOISY_COMMAND)
    errors = []
    for flags in ([], ["-v"]):
        command = [sys.executable, str(script), *flags, "degrade", "x.png", "-o", str(tmp_path)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        errors.append(result.stderr)
    quiet, verbose = errors
    assert "kept in float32" not in quiet and "deprecated" not in quiet
    assert "our own warning" in quiet and "our own user warning" in quiet
    assert "kept in float32" in verbose and "'pretrained' is deprecated" in verbose


def test_ctrl_c_in_a_command_run_by_another_stops_both(monkeypatch, tmp_path, capsys):
    """`seesr benchmark` runs `seesr upscale` through main(): Ctrl-C there must not go on to the evaluation."""
    import seesr.cli.upscale

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(seesr.cli.upscale, "run", interrupted)
    dataset = tmp_path / "RealSR"
    dataset.mkdir()
    for name in ("a_LR4.png", "a_HR.png"):
        shutil.copy(TINY / "pipeline_case1_lr.png", dataset / name)
    code = main(["benchmark", "--dataset", str(dataset), "--out", str(tmp_path / "bench"), "--metrics", "psnr"])
    err = capsys.readouterr().err
    assert code == 130
    assert _error_lines(err)[-1] == (
        "seesr benchmark: interrupted; run the same command again to resume: the images already upscaled are kept"
    )
    assert "evaluating" not in err and not (tmp_path / "bench" / "report").exists()
