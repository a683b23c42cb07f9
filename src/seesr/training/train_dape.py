"""Stage 1: train DAPE, the degradation-aware prompt extractor (paper §3.2, Eq. 1; REFERENCE.md §5).

``main(config)`` reads top to bottom: build -> freeze -> select trainable -> loop -> save.

A frozen RAM teacher sees the HR image ``x``, a LoRA-adapted copy of the same RAM (the student, rank 8 on the Swin
``qkv`` q/v rows and on the tagging head's cross-attention query/key) sees the degraded LR image ``y``; both inputs
are resized to 384x384 (bilinear, no antialias) and ImageNet-normalised. The loss is Eq. (1):

    L = MSE(f_y^rep, f_x^rep) + λ · BCE(f_y^logits, σ(f_x^logits)),   λ = 1,

with ``f^rep`` the (B, 145, 512) image embeddings and ``f^logits`` the (B, 4585) tag logits. The student trains in
train mode (Swin drop-path 0.1 active, as the official ``net_g``), the teacher in eval mode.

Outputs in ``train.output_dir``: ``DAPE.pth`` (the official flat ``{name: lora tensor}`` layout) and ``tagger/``
(the LoRA merged into RAM, safetensors, loadable by :class:`seesr.tagger.DAPETagger` / ``seesr tag --model``).
Fixes over the official code (REFERENCE.md §7): BCE in logits space (#30), DDP-safe forward (#31), files paired by
stem (#24).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from seesr.training import data as training_data
from seesr.training.common import (
    TrainResult,
    epoch_loader,
    progress_bar,
    seed_global_rng,
    step_seed,
    trainable_parameters,
    weight_dtype_for,
)
from seesr.training.config import TrainDAPEConfig
from seesr.training.export import export_dape, load_dape_student, load_frozen_tagger
from seesr.training.losses import dape_loss
from seesr.training.setup import prepare_run, start_run

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _loss_terms(
    config: TrainDAPEConfig,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    batch: Any,
    pair_seed: int,
    device: torch.device,
    weight_dtype: torch.dtype,
) -> Any:
    """Eq. (1) on one batch: the degraded pair (seeded by ``pair_seed``), the teacher on the HR side without
    gradients, the student on the LR side."""
    with torch.no_grad():
        pair = training_data.dape_inputs(batch, config.data, pair_seed, device)
        teacher_out = teacher(pair.hr_ram.to(weight_dtype))
    # The prepared (possibly DDP-wrapped) student is called through forward (REFERENCE.md §7 #31).
    student_out = student(pair.lr_ram)
    return dape_loss(
        student_out.image_embeds,
        teacher_out.image_embeds,
        student_out.logits,
        teacher_out.logits,
        feature_weight=config.loss.feature_weight,
        logits_weight=config.loss.logits_weight,
    )


def main(config: TrainDAPEConfig) -> TrainResult:
    """Train stage 1 as configured; returns the losses of this call and where ``DAPE.pth`` was written."""
    train, optim = config.train, config.optim
    output_dir = Path(train.output_dir)

    # 1. Accelerator, seeding, resume check.
    accelerator, resume_from = start_run(config)
    device = accelerator.device
    weight_dtype = weight_dtype_for(accelerator.mixed_precision)

    # 2. Build: teacher = plain RAM, student = the same RAM with DAPE LoRA layers (fresh, or from a DAPE.pth).
    teacher = load_frozen_tagger(config.model.ram_model_path, None, config.model.ram_config_dir)
    student = load_dape_student(config.model)

    # 3. Freeze the teacher (eval, AMP dtype); the student keeps fp32 master weights and trains in train mode.
    teacher.requires_grad_(False)
    teacher.eval()
    torch.nn.Module.to(teacher, device=device, dtype=weight_dtype)  # (ModelMixin.to warns spuriously on dtype)
    student.train(config.model.student_dropout)  # train mode = drop-path/dropout active (official)
    if train.gradient_checkpointing:
        _base_tagger(student).visual_encoder.set_grad_checkpointing(True)  # timm Swin blocks

    # 4. Select trainable: only the LoRA tensors (apply_dape_lora marks them).
    params = trainable_parameters([student])
    logger.info(
        "trainable LoRA parameters: %d tensors, %.3fM values (of %.1fM)",
        len(params),
        sum(p.numel() for p in params) / 1e6,
        sum(p.numel() for p in student.parameters()) / 1e6,
    )

    # 5. Data, optimiser, schedule, resume; then the run record (a refused resume leaves the folder as it was).
    dataset = training_data.build_dataset(config.data, with_tags=False, seed=train.seed, online_mode="resize")
    run = prepare_run(accelerator, config, "dape", student, params, dataset, resume_from)
    student, optimizer, loader, sampler = run.model, run.optimizer, run.loader, run.sampler
    lr_scheduler, checkpointer, start = run.lr_scheduler, run.checkpointer, run.start
    max_train_steps, num_epochs = run.max_train_steps, run.num_epochs
    global_step, first_epoch, skip_batches = start.global_step, start.first_epoch, start.skip_batches
    if accelerator.is_main_process:
        accelerator.init_trackers("seesr-train-dape")

    # 6. Loop (with the optional validation loss before the first step and every loss_steps).
    losses: dict[int, float] = {}
    learnable: dict[int, float] = {}  # the loss minus its constant floor (the teacher's entropy)
    validation_losses: dict[int, float] = {}
    loss_every = config.validation.loss_steps or 0
    validation_batch = training_data.first_items(dataset, config.validation.loss_images) if loss_every else None
    if loss_every and global_step < max_train_steps:
        validation_losses[global_step] = _validation_loss(accelerator, config, teacher, student, validation_batch)
        accelerator.log({"val_loss": validation_losses[global_step]}, step=global_step)
    bar = progress_bar(max_train_steps, global_step, config.logging.progress_bar and accelerator.is_local_main_process)
    micro_index = 0
    sums = {"loss": 0.0, "loss_feature": 0.0, "loss_logits": 0.0, "loss_logits_kl": 0.0}
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:
            break
        batches = epoch_loader(
            accelerator, loader, sampler, dataset, epoch, skip_batches if epoch == first_epoch else 0
        )
        for batch in batches:
            micro_step = global_step * train.gradient_accumulation_steps + micro_index
            seed_global_rng(train.seed, micro_step, accelerator.process_index)
            with accelerator.accumulate(student):
                pair_seed = step_seed(train.seed + 1, micro_step, accelerator.process_index)
                terms = _loss_terms(config, teacher, student, batch, pair_seed, device, weight_dtype)
                accelerator.backward(terms.total)
                if accelerator.sync_gradients and optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            values = torch.stack(
                [terms.total.detach(), terms.feature.detach(), terms.logits.detach(), terms.logits_kl]
            )
            gathered = accelerator.gather(values.reshape(1, len(sums))).mean(dim=0).tolist()
            for key, value in zip(sums, gathered, strict=True):
                sums[key] += value
            micro_index += 1
            if not accelerator.sync_gradients:
                continue
            if not optimizer.step_was_skipped:
                lr_scheduler.step()
            logs = {key: value / micro_index for key, value in sums.items()}
            sums = dict.fromkeys(sums, 0.0)
            micro_index = 0
            global_step += 1
            losses[global_step] = logs["loss"]
            learnable[global_step] = config.loss.feature_weight * logs["loss_feature"] + (
                config.loss.logits_weight * logs["loss_logits_kl"]
            )
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if global_step % config.logging.log_every == 0:
                accelerator.log({**logs, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            if loss_every and (global_step % loss_every == 0 or global_step == max_train_steps):
                validation_losses[global_step] = _validation_loss(
                    accelerator, config, teacher, student, validation_batch
                )
                accelerator.log({"val_loss": validation_losses[global_step]}, step=global_step)
            if global_step % train.checkpointing_steps == 0:
                checkpointer.save(global_step)
            if global_step >= max_train_steps:
                break
    bar.close()

    # 7. Save: DAPE.pth (official layout) and the merged tagger (safetensors).
    accelerator.wait_for_everyone()
    final = None
    if global_step >= max_train_steps:
        final_student = _final_student(accelerator, student, config)
        if accelerator.is_main_process:
            final = export_dape(final_student, config.model, output_dir)
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        output_dir=output_dir,
        global_step=global_step,
        losses=losses,
        final_model_dir=final,
        models={"student": accelerator.unwrap_model(student)},
        extra_losses={"loss_above_floor": learnable, "val_loss": validation_losses},
    )


def _base_tagger(student: torch.nn.Module) -> torch.nn.Module:
    """The DAPETagger inside a peft wrapper (or the module itself)."""
    get_base = getattr(student, "get_base_model", None)
    return get_base() if callable(get_base) else student


@torch.no_grad()
def _validation_loss(
    accelerator: Any, config: TrainDAPEConfig, teacher: torch.nn.Module, student: torch.nn.Module, batch: dict
) -> float:
    """Eq. (1) minus its constant floor (feature term + λ·KL) on ``batch``, student in eval mode (no dropout)."""
    pair = training_data.dape_inputs(batch, config.data, config.train.seed, accelerator.device)
    unwrapped = accelerator.unwrap_model(student)
    was_training = unwrapped.training
    unwrapped.eval()
    try:
        with accelerator.autocast():
            student_out = unwrapped(pair.lr_ram)
    finally:
        unwrapped.train(was_training)
    teacher_out = teacher(pair.hr_ram.to(next(teacher.parameters()).dtype))
    terms = dape_loss(
        student_out.image_embeds,
        teacher_out.image_embeds,
        student_out.logits,
        teacher_out.logits,
        config.loss.feature_weight,
        config.loss.logits_weight,
    )
    return (config.loss.feature_weight * terms.feature + config.loss.logits_weight * terms.logits_kl).item()


def _final_student(accelerator: Any, student: torch.nn.Module, config: TrainDAPEConfig) -> Any:
    """The trained student with whole weights on the main process (None elsewhere); FSDP / DeepSpeed shards are
    gathered (a collective call on every process) into a fresh CPU copy."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return accelerator.unwrap_model(student)
    state = accelerator.get_state_dict(student)
    if not accelerator.is_main_process:
        return None
    copy = load_dape_student(config.model)
    copy.load_state_dict(state, strict=True)
    return copy
