"""`seesr upscale` speed/memory options on the tiny bundle: --num-gpus (2 CPU processes), --turbo, option errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from seesr.cli.main import main
from tests.conftest import TINY
from tests.pipeline.helpers import small_lr

FAST = ["--steps", "1", "--process-size", "32", "--device", "cpu", "--seed", "1"]


def test_two_processes_split_the_inputs_and_print_one_summary(tmp_path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    small_lr(0).save(inputs / "a.png")
    small_lr(1).convert("RGB").save(inputs / "a.jpg", quality=95)  # same stem: names planned over all inputs
    small_lr(2).save(inputs / "b.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "seesr", "upscale", str(inputs), "-o", str(out), "--model", str(TINY), *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "--num-gpus", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    # a name depends on its input alone: a.jpg (first in order) gets a.png, a.png is refused, once, by name
    assert sorted(path.name for path in out.iterdir()) == ["a.png", "b.png"]
    assert done.stderr.count(f"{inputs / 'a.png'}: same output name as {inputs / 'a.jpg'}") == 1
    summaries = [line for line in done.stdout.splitlines() if "written" in line]
    assert summaries == [f"2 written, 0 skipped, 1 failed -> {out} (2 processes)"]  # each image handled once
    sources = {json.loads(Image.open(path).text["seesr"])["input"] for path in out.iterdir()}
    assert sources == {"a.jpg", "b.png"}


def test_turbo_from_a_folder(tmp_path) -> None:
    small_lr().save(tmp_path / "a.png")
    out = tmp_path / "out"
    arguments = ["upscale", str(tmp_path / "a.png"), "-o", str(out), "--model", str(TINY), "--quiet"]
    # the tiny bundle doubles as the "SD-turbo" folder (same UNet architecture)
    assert main([*arguments, "--turbo-model", str(TINY), "--process-size", "32", "--device", "cpu"]) == 0
    record = json.loads(Image.open(out / "a.png").text["seesr"])
    assert (record["steps"], record["guidance"], record["latent_tile_overlap"]) == (2, 1.0, 32)
    assert record["turbo"] is True and record["fast"] is False  # CPU: the exact loop


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--compile"], "--compile needs the fast path"),
        (["--strict-fast"], "--strict-fast needs the fast path"),
        (["--offload", "model"], "--offload needs a CUDA GPU"),
    ],
)
def test_speed_option_errors(tmp_path, capsys, extra, message) -> None:
    small_lr().save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "--model", str(TINY), *FAST, *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_turbo_weights_is_a_clear_error(tmp_path, capsys) -> None:  # caches are empty (conftest)
    small_lr().save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "--model", str(TINY), *FAST, "--turbo"]) == 1
    error = capsys.readouterr().err
    assert "stabilityai/sd-turbo" in error and "--turbo-model" in error


def test_help_documents_the_speed_options(capsys) -> None:
    assert main(["upscale", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--fast", "--no-fast", "--compile", "--offload", "--turbo", "--turbo-model", "--num-gpus"):
        assert flag in text, flag
