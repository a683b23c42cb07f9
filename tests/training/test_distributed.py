"""Both stages under ``accelerate launch`` with 2 CPU processes (DDP over gloo): the replicas stay in sync.

With accelerate 1.x, ``accelerate launch --cpu --num_processes 2`` starts a *single* process unless an MPI hostfile
is given; the way to get two CPU processes is the multi-process launcher with CPU forced through the environment:
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...`` (each process then reports
``DistributedType.MULTI_CPU``, backend gloo).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.conftest import subprocess_env

WORKER = Path(__file__).with_name("ddp_worker.py")


def _launch(stage: str, base: Path, pairs: Path, output: Path, *extra: str) -> list[dict]:
    """Run ddp_worker.py under 2 CPU processes; returns what each process saved."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(WORKER),
        stage,
        str(base),
        str(pairs),
        str(output),
        *extra,
    ]
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return [torch.load(output / f"rank{index}.pt", weights_only=True) for index in (0, 1)]


@pytest.mark.parametrize("stage", ["seesr", "dape"])
def test_two_cpu_processes_keep_parameters_in_sync(stage, tmp_path, raw_base_model_dir, pairs_dir):
    output = tmp_path / stage
    output.mkdir()
    ranks = _launch(stage, raw_base_model_dir, pairs_dir, output)
    assert [rank["world_size"] for rank in ranks] == [2, 2]

    # identical replicas after two optimiser steps on different data shards
    assert ranks[0]["trainable"].keys() == ranks[1]["trainable"].keys()
    for model, tensors in ranks[0]["trainable"].items():
        assert tensors
        for name, value in tensors.items():
            torch.testing.assert_close(
                value, ranks[1]["trainable"][model][name], rtol=0, atol=0, msg=f"{model}.{name}"
            )
    # ... that did train (zero-initialised tensors moved), and one loss per step averaged over both processes
    if stage == "seesr":
        assert torch.count_nonzero(ranks[0]["trainable"]["controlnet"]["controlnet_mid_block.weight"]) > 0
        assert (output / "model" / "model_index.json").is_file()  # exported once, by the main process
    else:
        assert any(torch.count_nonzero(v) for n, v in ranks[0]["trainable"]["student"].items() if "lora_B" in n)
        assert (output / "DAPE.pth").is_file()
    assert ranks[0]["losses"] == ranks[1]["losses"] and sorted(ranks[0]["losses"]) == [1, 2]

    # every process wrote its random state into the checkpoints, which were published complete
    manifest = json.loads((output / "checkpoint-2" / "checkpoint.json").read_text())
    assert manifest["num_processes"] == 2 and {"rng_0.json", "rng_1.json"} <= set(manifest["files"])
    assert not list(output.glob("*.partial"))

    # resumed under 2 processes from checkpoint-1: step 2 and the final weights are those of the run that never
    # stopped (one stage only, to keep the test short: both stages share the Checkpointer; DAPE's student draws
    # drop-path masks from each process's global RNG)
    if stage != "dape":
        return
    resumed_dir = tmp_path / f"{stage}-resumed"
    shutil.copytree(output / "checkpoint-1", resumed_dir / "checkpoint-1")
    resumed = _launch(stage, raw_base_model_dir, pairs_dir, resumed_dir, "--resume")
    assert sorted(resumed[0]["losses"]) == [2]
    assert resumed[0]["losses"][2] == pytest.approx(ranks[0]["losses"][2], rel=1e-6, abs=1e-8)
    for model, tensors in ranks[0]["trainable"].items():
        for name, value in tensors.items():
            torch.testing.assert_close(
                resumed[1]["trainable"][model][name], value, rtol=1e-5, atol=1e-7, msg=f"{model}.{name}"
            )
