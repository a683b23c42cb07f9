"""What both training stages do around building their model: first the accelerator, the seeds and the checkpoint
to resume from (:func:`start_run`); then, before the first step, data, optimiser, schedule, ``accelerator.prepare``,
checkpointer, resume, and the run record (``config.yaml``, ``versions.json``) (:func:`prepare_run`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seesr.training import data as training_data
from seesr.training.checkpointing import Checkpointer, ResumePoint, find_resume_checkpoint
from seesr.training.common import (
    EpochShuffleSampler,
    build_accelerator,
    build_lr_scheduler,
    build_optimizer,
    effective_learning_rate,
    resolve_max_train_steps,
)
from seesr.training.config import write_run_record


def start_run(config: Any) -> tuple[Any, tuple[Path, dict[str, Any]] | None]:
    """The accelerator and the checkpoint to resume from (None: a fresh start); seeds every process. The resume is
    checked before anything is written: a refused one changes nothing."""
    from accelerate.utils import set_seed

    train = config.train
    accelerator = build_accelerator(train, config.logging)
    set_seed(train.seed, device_specific=True)
    resume_from = find_resume_checkpoint(
        Path(train.output_dir),
        train.resume_from_checkpoint,
        train.allow_pickle_resume,
        announce=accelerator.is_main_process,
    )
    return accelerator, resume_from


@dataclass
class PreparedRun:
    """The trained module, its optimiser, data and schedule after ``accelerator.prepare``, and where it starts."""

    model: Any
    optimizer: torch.optim.Optimizer
    sampler: EpochShuffleSampler
    loader: Any
    lr_scheduler: Any
    checkpointer: Checkpointer
    max_train_steps: int
    num_epochs: int
    start: ResumePoint


def prepare_run(
    accelerator: Any,
    config: Any,
    stage: str,
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    dataset: Any,
    resume_from: tuple[Path, dict[str, Any]] | None,
) -> PreparedRun:
    """1. sampler and loader over ``dataset``; 2. the optimiser of ``params`` at the effective learning rate;
    3. ``accelerator.prepare``; 4. the schedule over the resolved number of steps; 5. the checkpointer, and the resume
    from ``resume_from``; 6. the run record, written by the main process after a resume that succeeded (a refused
    one leaves the folder as it was)."""
    train, optim = config.train, config.optim
    output_dir = Path(train.output_dir)
    sampler = EpochShuffleSampler(len(dataset), seed=train.seed, shuffle=config.data.shuffle)
    loader = training_data.build_loader(dataset, sampler, train.train_batch_size, config.data.num_workers)
    optimizer = build_optimizer(params, optim, effective_learning_rate(optim, train, accelerator.num_processes))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    max_train_steps, num_epochs = resolve_max_train_steps(train, len(loader))
    lr_scheduler = build_lr_scheduler(optimizer, optim, max_train_steps)
    checkpointer = Checkpointer(
        accelerator,
        model,
        optimizer,
        lr_scheduler,
        output_dir,
        len(loader),
        train.gradient_accumulation_steps,
        train.checkpoints_total_limit,
    )
    start = checkpointer.load(resume_from, train.allow_pickle_resume)
    if accelerator.is_main_process:
        record = {
            "stage": stage,
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
        }
        write_run_record(config, output_dir, extra=record)
    return PreparedRun(
        model, optimizer, sampler, loader, lr_scheduler, checkpointer, max_train_steps, num_epochs, start
    )
