"""Run with 2 CPU processes by test_distributed.py: two steps of one stage, then every process writes its trainable
tensors and losses so that the test can check that the replicas stayed identical. (One stage per launch:
``main`` ends with ``accelerator.end_training()``, which closes the process group.)

Usage: ddp_worker.py seesr|dape BASE_MODEL_DIR PAIRS_DIR OUTPUT_DIR [--resume]

Checkpoints are written after both steps; with ``--resume`` the run continues from ``checkpoint-1`` (which the test
copied into OUTPUT_DIR) instead of starting afresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from accelerate import PartialState  # noqa: E402

from seesr.training.checkpointing import trainable_state_dict  # noqa: E402
from seesr.training.config import load_config  # noqa: E402
from tests.training.conftest import dape_overrides, seesr_overrides  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    stage = sys.argv[1]
    base, pairs, output = map(Path, sys.argv[2:5])
    extra = {"train__checkpointing_steps": 1}
    if "--resume" in sys.argv[5:]:
        extra["train__resume_from_checkpoint"] = "latest"
    if stage == "seesr":
        from seesr.training.train_seesr import main as train

        overrides = seesr_overrides(base, pairs, output, train__max_train_steps=2, optim__learning_rate=1e-3, **extra)
    else:
        from seesr.training.train_dape import main as train

        overrides = dape_overrides(pairs, output, train__max_train_steps=2, optim__learning_rate=1e-3, **extra)
    result = train(load_config(stage, None, overrides))
    state = PartialState()
    torch.save(
        {
            "world_size": state.num_processes,
            "trainable": {name: trainable_state_dict(model) for name, model in result.models.items()},
            "losses": result.losses,
        },
        output / f"rank{state.process_index}.pt",
    )


if __name__ == "__main__":
    main()
