"""Pieces both training stages share: accelerator set-up, optimiser and schedule, deterministic sampling and
randomness, and the per-run record (checkpoints: :mod:`seesr.training.checkpointing`).

Determinism contract (what makes ``--resume`` reproduce an uninterrupted run step for step):

* the shuffle order of epoch ``e`` depends only on ``(seed, e)`` (:class:`EpochShuffleSampler`);
* every random draw of optimisation step ``s`` on process ``r`` (noise, timesteps, prompt dropout, on-the-fly
  degradation) comes from :func:`step_generator` ``(seed, s, r)``, never from a running global stream;
* the global torch RNG, which the models' dropout / drop-path use, is re-seeded at every micro-step by
  :func:`seed_global_rng` (other consumers, such as DataLoader iterator creation, would otherwise make a resumed
  run draw different masks than the uninterrupted one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from seesr.training.config import LoggingConfig, OptimizerConfig, TrainLoopConfig

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A training run cannot proceed for a reason the user can fix (missing files, missing optional packages)."""


@dataclass
class TrainResult:
    """What ``main(config)`` returns.

    Attributes:
        output_dir: the run folder (checkpoints, logs, final model).
        global_step: optimisation steps completed, including those before a resume.
        losses: ``{step: loss}`` for the steps run by *this* call (mean over processes and accumulation).
        final_model_dir: the exported model folder, on the main process (None on the others, and when the run
            stopped before ``max_train_steps``).
        models: the trained modules of this process, unwrapped (stage 2: ``unet``, ``controlnet``; stage 1:
            ``student``), for use right after training in the same Python process.
        extra_losses: other per-step scalars by name (stage 1: ``loss_above_floor`` = feature term + λ·KL, the
            part of Eq. (1) the student can reduce).
    """

    output_dir: Path
    global_step: int
    losses: dict[int, float] = field(default_factory=dict)
    final_model_dir: Path | None = None
    models: dict[str, Any] = field(default_factory=dict)
    extra_losses: dict[str, dict[int, float]] = field(default_factory=dict)


class EpochShuffleSampler(Sampler[int]):
    """Shuffles ``range(length)`` with a permutation that depends only on ``(seed, epoch)``.

    Call :meth:`set_epoch` before iterating each epoch. ``shuffle=False`` yields the natural order (what the
    official DataLoaders did).
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


def epoch_loader(
    accelerator: Any, loader: Any, sampler: EpochShuffleSampler, dataset: Any, epoch: int, skip: int
) -> Any:
    """The prepared ``loader`` positioned at ``epoch`` (skipping ``skip`` batches when resuming mid-epoch).

    Accelerate's loaders re-apply their own iteration counter as the epoch at every ``__iter__`` (counting from 0
    in each process), which after a resume would replay epoch 0's order; so the epoch is set on the loader itself,
    which passes it on to the sampler and the dataset.
    """
    sampler.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    current = accelerator.skip_first_batches(loader, skip) if skip else loader
    for candidate in (loader, current):
        if hasattr(candidate, "set_epoch"):
            candidate.set_epoch(epoch)
    return current


def step_seed(seed: int, step: int, process_index: int) -> int:
    """A 63-bit seed unique to (run seed, optimisation step, process)."""
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + process_index * 0xC2B2AE3D) % (2**63 - 1)


def seed_global_rng(seed: int, micro_step: int, process_index: int) -> None:
    """Seed torch's global RNG (CPU and every GPU) for one micro-step of one process (dropout, drop-path)."""
    torch.manual_seed(step_seed(seed + 2, micro_step, process_index))


def step_generator(seed: int, step: int, process_index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` for every random draw of one optimisation step."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, step, process_index))


def build_accelerator(
    train: TrainLoopConfig, logging_config: LoggingConfig, find_unused_parameters: bool = False
) -> Any:
    """An :class:`accelerate.Accelerator` for the run (mixed precision, accumulation, tracker, project folder).

    The tracker is TensorBoard when requested and installed; otherwise a warning is logged and no tracker is used
    (accelerate's default).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    output_dir = Path(train.output_dir)
    project = ProjectConfiguration(
        project_dir=str(output_dir), logging_dir=str(output_dir / logging_config.logging_dir)
    )
    log_with = resolve_tracker(logging_config.report_to)
    if train.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(train.mixed_precision),
        log_with=log_with,
        project_config=project,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )


def resolve_mixed_precision(requested: str) -> str:
    """The mixed precision the run uses: ``requested``, or "no" (float32, with one warning from the main process)
    when the processes run on CPUs, where fp16/bf16 autocast does not cover every layer of the models."""
    if requested == "no":
        return requested
    from accelerate import PartialState

    state = PartialState()
    if state.device.type != "cpu":
        return requested
    if state.is_main_process:
        logger.warning(
            "train.mixed_precision is %s but this machine has no GPU: training runs in float32 "
            '(set train.mixed_precision: "no" to silence this warning)',
            requested,
        )
    return "no"


def resolve_tracker(report_to: str) -> str | None:
    """The accelerate tracker name to use, or None ("none", or the requested tracker's package is missing)."""
    if report_to in ("", "none", None):
        return None
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                logger.warning(
                    "tensorboard is not installed (pip install 'seesr[train]'); logging to the console only"
                )
                return None
    return report_to


def trainable_parameters(modules: Iterable[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Parameters with ``requires_grad`` of ``modules``, each once, in module order."""
    seen: set[int] = set()
    params = []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


def build_optimizer(params: list[torch.nn.Parameter], optim: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW (or bitsandbytes' AdamW8bit when ``optim.use_8bit_adam``) over ``params``."""
    if not params:
        raise TrainingError("nothing to train: no parameter has requires_grad=True")
    kwargs = dict(
        lr=lr, betas=(optim.adam_beta1, optim.adam_beta2), weight_decay=optim.weight_decay, eps=optim.adam_epsilon
    )
    if optim.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError(
                "optim.use_8bit_adam needs bitsandbytes: pip install bitsandbytes (or set optim.use_8bit_adam=false)"
            ) from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimizerConfig, max_train_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, stepped once per optimisation step.

    ``multistep`` reproduces BasicSR's ``MultiStepLR`` with linear warm-up (stage 1): the factor is
    ``min(1, (s + 1) / warmup) · gamma ** #(milestones <= s)``. The others are diffusers' schedules (stage 2's
    official ``constant`` ignores ``lr_warmup_steps``).
    """
    if optim.lr_scheduler == "multistep":
        milestones = sorted(optim.lr_milestones)
        warmup = optim.lr_warmup_steps
        gamma = optim.lr_gamma

        def factor(step: int) -> float:
            warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
            return warm * gamma ** sum(1 for milestone in milestones if milestone <= step)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        optim.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=optim.lr_warmup_steps,
        num_training_steps=max_train_steps,
    )


def effective_learning_rate(optim: OptimizerConfig, train: TrainLoopConfig, num_processes: int) -> float:
    if optim.scale_lr:
        return optim.learning_rate * train.train_batch_size * train.gradient_accumulation_steps * num_processes
    return optim.learning_rate


def resolve_max_train_steps(train: TrainLoopConfig, batches_per_epoch: int) -> tuple[int, int]:
    """``(max_train_steps, num_epochs)`` from the config and the per-process number of batches per epoch."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / train.gradient_accumulation_steps))
    max_steps = train.max_train_steps or train.num_train_epochs * steps_per_epoch
    return max_steps, math.ceil(max_steps / steps_per_epoch)


def weight_dtype_for(mixed_precision: str) -> torch.dtype:
    """Storage dtype of the frozen modules under the run's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="steps", disable=not enabled, dynamic_ncols=True)
