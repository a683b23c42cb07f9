"""Training (and upscaling) on several machines, as the README shows it: the same ``accelerate launch --num_machines 2
--machine_rank R --main_process_ip ... -m seesr train STAGE --config ...`` typed on every machine.

Here the two "machines" are two launchers on this one (one CPU process each, gloo over 127.0.0.1, one shared
output folder as a network share would be). A launcher alone waits for the other; together they form one world of
two processes that trains, checkpoints with both processes' random state, and writes the model once. Training
with CPU processes needs accelerate's multi-process launcher with CPU forced through the environment
(``ACCELERATE_USE_CPU=1 ... --multi_gpu``): ``--cpu`` alone starts one process per machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY
from tests.net import free_port
from tests.pipeline.helpers import small_lr
from tests.training.conftest import dape_overrides, seesr_overrides, subprocess_env

FAST = ["--steps", "1", "--process-size", "32", "--device", "cpu", "--seed", "1"]


def _machine_command(rank: int, port: int, seesr_arguments: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "seesr", *seesr_arguments,
    ]  # fmt: skip


def _train_arguments(stage: str, config: Path, overrides: list[str]) -> list[str]:
    arguments = ["train", stage, "--config", str(config)]
    for item in overrides:
        arguments += ["--set", item]
    return arguments


def _run_on_two_machines(seesr_arguments: list[str], logs: Path, expected_code: int = 0) -> list[str]:
    """Start machine 0 and machine 1 together; both must exit with ``expected_code``. Returns their outputs."""
    port = free_port()
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    machines = []
    for rank in (0, 1):
        log = (logs / f"machine{rank}.log").open("w")
        command = _machine_command(rank, port, seesr_arguments)
        machines.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log))
    texts = []
    try:
        for process, log in machines:
            process.wait(timeout=420)
            log.close()
            texts.append(Path(log.name).read_text())
            assert process.returncode == expected_code, texts[-1][-4000:]
    finally:
        for process, _ in machines:
            if process.poll() is None:
                process.kill()
    return texts


@pytest.mark.parametrize("stage", ["seesr", "dape"])
def test_two_machines_train_one_model(stage, tmp_path, raw_base_model_dir, pairs_dir):
    output = tmp_path / "shared" / "run"
    config = tmp_path / f"{stage}.yaml"
    config.write_text("train:\n  mixed_precision: 'no'\n")
    extra = {"train__max_train_steps": 2, "train__checkpointing_steps": 2}
    if stage == "seesr":
        overrides = seesr_overrides(raw_base_model_dir, pairs_dir, output, **extra)
    else:
        overrides = dape_overrides(pairs_dir, output, **extra)

    texts = _run_on_two_machines(_train_arguments(stage, config, overrides), tmp_path)

    # one world of two processes (one per machine): the run record and the checkpoint say so
    assert json.loads((output / "versions.json").read_text())["num_processes"] == 2
    manifest = json.loads((output / "checkpoint-2" / "checkpoint.json").read_text())
    assert manifest["num_processes"] == 2 and {"rng_0.json", "rng_1.json"} <= set(manifest["files"])
    # the model is written once, by machine 0, and announced there only
    if stage == "seesr":
        assert (output / "model" / "model_index.json").is_file()
    else:
        assert (output / "DAPE.pth").is_file()
    assert "trained model written to" in texts[0] and "trained model written to" not in texts[1]
    assert not list(output.rglob("*.partial"))


def test_two_machines_share_a_folder_of_images(tmp_path):
    """``seesr upscale`` under the same launcher: each image upscaled once, by one of the machines, one summary."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(3):
        small_lr(index).save(inputs / f"img{index}.png")
    out = tmp_path / "shared" / "out"
    arguments = ["upscale", str(inputs), "-o", str(out), "--model", str(TINY), *FAST]
    texts = _run_on_two_machines(arguments, tmp_path)
    assert sorted(path.name for path in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    summaries = [line for text in texts for line in text.splitlines() if " written, " in line]
    assert summaries == [f"3 written, 0 skipped, 0 failed -> {out} (2 processes)"]
