"""Both stages under ``accelerate launch`` with 2 CPU processes (DDP over gloo): the replicas stay in sync.

With accelerate 1.x, ``accelerate launch --cpu --num_processes 2`` starts a *single* process unless an MPI hostfile
is given; the way to get two CPU processes is the multi-process launcher with CPU forced through the environment:
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...`` (each process then reports
``DistributedType.MULTI_CPU``, backend gloo).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.conftest import subprocess_env

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.parametrize("stage", ["seesr", "dape"])
def test_two_cpu_processes_keep_parameters_in_sync(stage, tmp_path, raw_base_model_dir, pairs_dir):
    output = tmp_path / stage
    output.mkdir()
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
        str(raw_base_model_dir),
        str(pairs_dir),
        str(output),
    ]
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    ranks = [torch.load(output / f"rank{index}.pt", weights_only=True) for index in (0, 1)]
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
