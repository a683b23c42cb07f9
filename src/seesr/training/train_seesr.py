"""Stage 2: train SeeSR's ControlNet and RCA layers on a frozen Stable Diffusion 2 base (paper §3.3, Eq. 2;
REFERENCE.md §4).

``main(config)`` reads top to bottom: build -> freeze -> select trainable -> loop -> save.

Per optimisation (micro-)step, for a batch of GT ``x`` (B, 3, H, W) in [0, 1] and its LR image upscaled to the same
size ``c`` (B, 3, H, W) in [0, 1]:

1. ``z0 = VAE.encode(2x − 1).sample() · 0.18215``; ``t ~ U{0..999}``, ``ε ~ N(0, I)``, ``z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε``;
2. text = CLIP(tags), where each tag prompt is replaced by "" with probability ``null_text_ratio`` (0.5);
3. DAPE embeddings ``r`` (B, 145, 512) of ``c`` (bicubic to 384, clamped, ImageNet-normalised), never dropped;
4. ``ε̂ = UNet(z_t, t, text, r, ControlNet(z_t, t, text, c, r))``; loss ``‖ε − ε̂‖²`` (Eq. 2).

Fixes over the official script (REFERENCE.md §7): the UNet is built from the stock SD-2 UNet with fresh RCA
(#22), files are paired by stem (#24), the data are shuffled (#28), checkpoints every 10000 steps (#27), and the
final ControlNet and UNet are saved to separate ``controlnet/`` and ``unet/`` folders (#23).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seesr.training import data as training_data
from seesr.training.common import (
    TrainingError,
    TrainResult,
    epoch_loader,
    progress_bar,
    seed_global_rng,
    step_generator,
    step_seed,
    trainable_parameters,
    weight_dtype_for,
)
from seesr.training.config import SeeSRModelConfig, TrainSeeSRConfig, config_to_dict
from seesr.training.export import export_seesr_model, load_frozen_tagger
from seesr.training.losses import diffusion_loss
from seesr.training.setup import prepare_run, start_run

__all__ = ["SeeSRTrainingModule", "main"]

logger = logging.getLogger(__name__)


class SeeSRTrainingModule(nn.Module):
    """ControlNet followed by the UNet, as one module so that one DDP wrapper synchronises every trainable tensor.

    Args:
        unet: SeeSR UNet (stock SD-2 UNet + RCA); only its RCA layers require grad.
        controlnet: SeeSR ControlNet (fully trainable).
        residual_dtype: dtype the ControlNet residuals are cast to before entering the UNet (the official script
            casts them to the mixed-precision weight dtype).
    """

    def __init__(self, unet: nn.Module, controlnet: nn.Module, residual_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.residual_dtype = residual_dtype

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeds: torch.Tensor,
        control_image: torch.Tensor,
        image_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """Noise prediction.

        Args:
            noisy_latents: (B, 4, h, w) ``z_t``.
            timesteps: (B,) int64 diffusion steps.
            text_embeds: (B, 77, D_text) CLIP text embeddings.
            control_image: (B, 3, 8h, 8w) LR image upscaled to the GT size, in [0, 1].
            image_embeds: (B, 145, D_img) DAPE embeddings (the RCA context).

        Returns:
            (B, 4, h, w) predicted noise (or velocity for v-prediction schedulers).
        """
        from seesr.models.image_cross_attention import IMAGE_KEY

        attention_kwargs = {IMAGE_KEY: image_embeds}
        down_residuals, mid_residual = self.controlnet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=text_embeds,
            controlnet_cond=control_image,
            conditioning_scale=1.0,
            cross_attention_kwargs=attention_kwargs,
            return_dict=False,
        )
        return self.unet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=text_embeds,
            cross_attention_kwargs=attention_kwargs,
            down_block_additional_residuals=[residual.to(self.residual_dtype) for residual in down_residuals],
            mid_block_additional_residual=mid_residual.to(self.residual_dtype),
            return_dict=False,
        )[0]


def _load_frozen_parts(model: SeeSRModelConfig) -> dict[str, Any]:
    """Tokenizer, text encoder, VAE, noise scheduler and DAPE tagger (float32, CPU) from the configured files.

    Read by :mod:`seesr.weights.loading` (config sizes and file headers checked; the tokenizer checked against the
    text encoder's vocabulary, ECOSYSTEM §6; the scheduler always DDPM although the SD-2 file says PNDM)."""
    from seesr.weights.loading import ModelLoadError, load_scheduler, load_text_encoder, load_tokenizer, load_vae

    base = Path(model.pretrained_model_name_or_path)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (base / part).is_dir():
            raise TrainingError(f"{base} is not a Stable Diffusion 2 base folder: {part}/ is missing")
    cpu = torch.device("cpu")
    try:
        text_encoder = load_text_encoder(base / "text_encoder", torch.float32, cpu)
        parts = dict(
            tokenizer=load_tokenizer(base / "tokenizer", int(text_encoder.config.vocab_size)),
            text_encoder=text_encoder,
            vae=load_vae(base / "vae", torch.float32, cpu),
            noise_scheduler=load_scheduler(base / "scheduler"),
        )
    except ModelLoadError as error:
        raise TrainingError(str(error)) from None
    return {**parts, "tagger": load_frozen_tagger(model.ram_model_path, model.dape_model_path, model.ram_config_dir)}


def _load_base_unet(folder: Path, announce: bool = True) -> Any:
    """The stock SD-2 UNet (float32). A SeeSR UNet folder (with RCA) is accepted: its SD-2 weights are used and its
    RCA tensors are not, which is said in one line."""
    import json

    from seesr.weights.unet import load_stock_unet

    try:
        seesr_unet = bool(
            json.loads((folder / "config.json").read_text(encoding="utf-8")).get("use_image_cross_attention")
        )
    except (OSError, ValueError):
        seesr_unet = False
    try:
        unet = load_stock_unet(folder, dtype=torch.float32)  # through seesr.weights.reader, RCA tensors left out
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if seesr_unet and announce:
        logger.info(
            "%s is a SeeSR UNet: stage 2 uses its SD-2 weights and starts fresh RCA layers (its trained RCA weights "
            "are not used; set model.unet_model_name_or_path to continue from them)",
            folder,
        )
    return unet


def _caption_tagger(config: TrainSeeSRConfig, tagger: nn.Module, weight_dtype: torch.dtype, device: Any) -> Any:
    """The tagger that captions untagged images (``data.mode: online``; None otherwise).

    ``model.caption_tagger: ram`` (default) is the plain RAM in float32, as the official ``make_tags.py`` captioned
    the training set (REFERENCE §6.5); ``dape`` is the run's frozen DAPE tagger in the mixed-precision dtype (what
    seesr did before). A ``model.ram_model_path`` folder gives the tagger that folder holds.
    """
    if config.data.mode != "online":
        return None
    if config.model.caption_tagger == "dape":
        return tagger
    if config.model.dape_model_path is None and weight_dtype == torch.float32:
        return tagger  # already plain RAM in float32
    ram = load_frozen_tagger(config.model.ram_model_path, None, config.model.ram_config_dir)
    ram.requires_grad_(False)
    return nn.Module.to(ram, device=device, dtype=torch.float32).eval()


def _build_trainable(model: SeeSRModelConfig, image_dim: int, announce: bool = True) -> tuple[Any, Any]:
    """(UNet, ControlNet), float32 on CPU: the stock SD-2 UNet with fresh RCA and its ControlNet clone (or the
    trained folders to continue from). Only the RCA layers of the UNet and the whole ControlNet require grad."""
    from seesr.models.build import build_seesr_unet_and_controlnet
    from seesr.models.image_cross_attention import freeze_all_but_image_cross_attention
    from seesr.weights.unet import load_seesr_controlnet, load_seesr_unet

    if model.unet_model_name_or_path:
        if not model.controlnet_model_name_or_path:
            raise TrainingError("model.unet_model_name_or_path needs model.controlnet_model_name_or_path as well")
        unet = load_seesr_unet(model.unet_model_name_or_path, image_cross_attention_dim=image_dim)
        freeze_all_but_image_cross_attention(unet)
    else:
        base_unet = _load_base_unet(Path(model.pretrained_model_name_or_path) / "unet", announce)
        unet, controlnet = build_seesr_unet_and_controlnet(base_unet, image_dim, unet_trainable="rca")
    if model.controlnet_model_name_or_path:
        controlnet = load_seesr_controlnet(model.controlnet_model_name_or_path, image_cross_attention_dim=image_dim)
    controlnet.requires_grad_(True)
    unet.train()
    controlnet.train()
    return unet, controlnet


def _build_models(config: TrainSeeSRConfig) -> dict[str, Any]:
    """Every component (float32, CPU); the soft-prompt width of the RCA layers is read from the tagger's config."""
    parts = _load_frozen_parts(config.model)
    parts["unet"], parts["controlnet"] = _build_trainable(config.model, int(parts["tagger"].config.image_embed_dim))
    return parts


def _encode_prompts(tokenizer: Any, text_encoder: nn.Module, prompts: list[str], device: torch.device) -> torch.Tensor:
    """(B, 77, D) CLIP last hidden states; padded to the encoder's positions, no attention mask (as SD-2)."""
    ids = tokenizer(
        prompts,
        max_length=text_encoder.config.max_position_embeddings,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return text_encoder(ids)[0]


def _model_inputs(
    config: TrainSeeSRConfig,
    parts: dict[str, Any],
    batch: Any,
    pair_seed: int,
    generator: torch.Generator,
    device: torch.device,
    weight_dtype: torch.dtype,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """One batch made into the module's inputs ``(noisy latents, timesteps, text embeddings, control, image
    embeddings)`` and the loss target, without gradients: the degraded pair (seeded by ``pair_seed``), the GT latent
    noised at random timesteps, the tags (a fraction dropped for CFG) and DAPE's image embeddings of the LR."""
    noise_scheduler, vae, tagger = parts["noise_scheduler"], parts["vae"], parts["tagger"]
    with torch.no_grad():
        pair = training_data.stage2_inputs(batch, config.data, pair_seed, device)
        latents = vae.encode(pair.gt.to(weight_dtype)).latent_dist.sample(generator=generator)
        latents = latents.float() * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=device
        ).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        tags = training_data.fill_missing_tags(pair.tags, pair.gt, parts["caption_tagger"])
        keep = torch.rand(len(tags), generator=generator, device=device) >= config.model.null_text_ratio
        prompts = [tag if kept else "" for tag, kept in zip(tags, keep.tolist(), strict=True)]
        text_embeds = _encode_prompts(parts["tokenizer"], parts["text_encoder"], prompts, device)
        ram_input = training_data.stage2_ram_input(pair.control).to(dtype=weight_dtype)
        image_embeds = tagger.encode_image(ram_input)[1]  # soft prompt only: no tagging head needed
        control = pair.control.to(device=device, dtype=weight_dtype)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
    return (noisy_latents, timesteps, text_embeds, control, image_embeds), target


def _save_final(
    accelerator: Any, config: TrainSeeSRConfig, module: Any, tagger: Any, weight_dtype: torch.dtype
) -> Path | None:
    """The trained model, written by the main process: official ``unet/`` + ``controlnet/`` and a complete model
    folder. The frozen parts are written from their float32 sources, never from the copies cast to the AMP dtype for
    training. Returns the model folder on the main process, None on the others."""
    output_dir = Path(config.train.output_dir)
    final_unet, final_controlnet = _final_models(accelerator, module, config)
    final_dir = None
    if accelerator.is_main_process:
        final_dir = output_dir / "model"
        nn.Module.to(final_unet, dtype=torch.float32)
        nn.Module.to(final_controlnet, dtype=torch.float32)
        if not config.model.keep_frozen_unet_fp32 and weight_dtype != torch.float32:
            _restore_frozen_weights(final_unet, config.model, int(tagger.config.image_embed_dim))
        export_seesr_model(
            final_unet,
            final_controlnet,
            config.model,
            final_dir,
            output_dir / "official",
            _load_frozen_parts(config.model),
        )
    accelerator.wait_for_everyone()
    return final_dir


def main(config: TrainSeeSRConfig) -> TrainResult:
    """Train stage 2 as configured; returns the losses of this call and where the model was written."""
    train, optim = config.train, config.optim
    output_dir = Path(train.output_dir)

    # 1. Accelerator, seeding, resume check. Unused-parameter detection stays off: every trainable tensor is used.
    accelerator, resume_from = start_run(config)
    device = accelerator.device
    weight_dtype = weight_dtype_for(accelerator.mixed_precision)

    # 2. Build.
    parts = _build_models(config)
    text_encoder, vae, tagger = parts["text_encoder"], parts["vae"], parts["tagger"]
    unet, controlnet = parts["unet"], parts["controlnet"]

    # 3. Freeze: VAE, text encoder and DAPE are frozen, in eval mode and stored in the AMP dtype.
    for frozen in (vae, text_encoder, tagger):
        frozen.requires_grad_(False)
        frozen.eval()
        nn.Module.to(frozen, device=device, dtype=weight_dtype)  # (ModelMixin.to warns spuriously on dtype casts)
    if not config.model.keep_frozen_unet_fp32 and weight_dtype != torch.float32:
        for param in unet.parameters():
            if not param.requires_grad:
                param.data = param.data.to(weight_dtype)
    if train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    unet.train()
    controlnet.train()
    parts["caption_tagger"] = _caption_tagger(config, tagger, weight_dtype, device)

    # 4. Select trainable: the whole ControlNet and the RCA layers of the UNet (by type, not by name).
    module = SeeSRTrainingModule(unet, controlnet, residual_dtype=weight_dtype)
    params = trainable_parameters([controlnet, unet])
    logger.info(
        "trainable parameters: %.1fM of %.1fM (ControlNet %.1fM, UNet RCA %.1fM)",
        sum(p.numel() for p in params) / 1e6,
        sum(p.numel() for p in module.parameters()) / 1e6,
        sum(p.numel() for p in controlnet.parameters()) / 1e6,
        sum(p.numel() for p in unet.parameters() if p.requires_grad) / 1e6,
    )

    # 5. Data, optimiser, schedule, resume; then the run record (a refused resume leaves the folder as it was).
    dataset = training_data.build_dataset(config.data, with_tags=True, seed=train.seed, online_mode="crop")
    run = prepare_run(accelerator, config, "seesr", module, params, dataset, resume_from)
    module, optimizer, loader, sampler = run.model, run.optimizer, run.loader, run.sampler
    lr_scheduler, checkpointer, start = run.lr_scheduler, run.checkpointer, run.start
    max_train_steps, num_epochs = run.max_train_steps, run.num_epochs
    global_step, first_epoch, skip_batches = start.global_step, start.first_epoch, start.skip_batches

    if accelerator.is_main_process:
        tracker_config = {
            k: v for k, v in _flatten(config_to_dict(config)).items() if isinstance(v, int | float | str | bool)
        }
        accelerator.init_trackers("seesr-train-seesr", config=tracker_config)

    # 6. Loop (with the optional fixed-draw validation loss before the first step and every loss_steps).
    losses: dict[int, float] = {}
    validation_losses: dict[int, float] = {}
    loss_every = config.validation.loss_steps or 0
    validation_batch = training_data.first_items(dataset, config.validation.loss_images) if loss_every else None
    if loss_every and global_step < max_train_steps:
        validation_losses[global_step] = _validation_loss(accelerator, config, parts, module, validation_batch)
        accelerator.log({"val_loss": validation_losses[global_step]}, step=global_step)
    bar = progress_bar(max_train_steps, global_step, config.logging.progress_bar and accelerator.is_local_main_process)
    micro_index = 0
    accumulated = 0.0
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:
            break
        batches = epoch_loader(
            accelerator, loader, sampler, dataset, epoch, skip_batches if epoch == first_epoch else 0
        )
        for batch in batches:
            micro_step = global_step * train.gradient_accumulation_steps + micro_index
            seed_global_rng(train.seed, micro_step, accelerator.process_index)
            generator = step_generator(train.seed, micro_step, accelerator.process_index, device)
            with accelerator.accumulate(module):
                pair_seed = step_seed(train.seed + 1, micro_step, accelerator.process_index)
                inputs, target = _model_inputs(config, parts, batch, pair_seed, generator, device, weight_dtype)
                loss = diffusion_loss(module(*inputs), target)
                accelerator.backward(loss)
                if accelerator.sync_gradients and optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            accumulated += accelerator.gather(loss.detach().reshape(1)).mean().item()
            micro_index += 1
            if not accelerator.sync_gradients:
                continue
            if not optimizer.step_was_skipped:
                lr_scheduler.step()
            step_loss = accumulated / micro_index
            accumulated, micro_index = 0.0, 0
            global_step += 1
            losses[global_step] = step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if global_step % config.logging.log_every == 0:
                accelerator.log({"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)

            if global_step % train.checkpointing_steps == 0:
                checkpointer.save(global_step)
            if loss_every and (global_step % loss_every == 0 or global_step == max_train_steps):
                validation_losses[global_step] = _validation_loss(accelerator, config, parts, module, validation_batch)
                accelerator.log({"val_loss": validation_losses[global_step]}, step=global_step)
            if config.validation.steps and global_step % config.validation.steps == 0:
                _validate(accelerator, config, parts, module, global_step)
            if global_step >= max_train_steps:
                break
    bar.close()

    # 7. Save: official unet/ + controlnet/ (separate folders) and a complete model folder (main process).
    accelerator.wait_for_everyone()
    final_dir = None
    if global_step >= max_train_steps:
        final_dir = _save_final(accelerator, config, module, tagger, weight_dtype)
    accelerator.end_training()
    unwrapped = accelerator.unwrap_model(module)
    return TrainResult(
        output_dir=output_dir,
        global_step=global_step,
        losses=losses,
        final_model_dir=final_dir,
        models={"unet": unwrapped.unet, "controlnet": unwrapped.controlnet},
        extra_losses={"val_loss": validation_losses},
    )


def _restore_frozen_weights(unet: nn.Module, model: SeeSRModelConfig, image_dim: int) -> None:
    """Put the float32 source values back into the frozen UNet tensors (they were stored in the AMP dtype)."""
    source, _ = _build_trainable(model, image_dim, announce=False)
    fresh = dict(source.named_parameters())
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if not param.requires_grad:
                param.copy_(fresh[name])


def _final_models(accelerator: Any, module: nn.Module, config: TrainSeeSRConfig) -> tuple[Any, Any]:
    """The trained (UNet, ControlNet) with whole weights on the main process (None, None elsewhere).

    Single process and DDP: the unwrapped models. FSDP / DeepSpeed: their parameters may be sharded, so the full
    state dict is gathered (a collective call on every process) and loaded into fresh CPU copies.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        unwrapped = accelerator.unwrap_model(module)
        return unwrapped.unet, unwrapped.controlnet
    state = accelerator.get_state_dict(module)
    if not accelerator.is_main_process:
        return None, None
    fresh = _build_models(config)
    copy = SeeSRTrainingModule(fresh["unet"], fresh["controlnet"])
    copy.load_state_dict(state, strict=True)
    return copy.unet, copy.controlnet


@torch.no_grad()
def _validation_loss(
    accelerator: Any, config: TrainSeeSRConfig, parts: dict[str, Any], module: nn.Module, batch: dict[str, Any]
) -> float:
    """Eq. (2) with fixed draws on ``batch``: every image at ``loss_timesteps`` evenly spread timesteps, fixed noise
    from ``Generator().manual_seed(validation.seed)``, posterior means as latents, captions kept (no dropout)."""
    validation = config.validation
    device = accelerator.device
    vae, tagger, scheduler = parts["vae"], parts["tagger"], parts["noise_scheduler"]
    dtype = next(vae.parameters()).dtype
    unwrapped = accelerator.unwrap_model(module)
    pair = training_data.stage2_inputs(batch, config.data, validation.seed, device)
    count, steps = pair.gt.shape[0], validation.loss_timesteps
    total = scheduler.config.num_train_timesteps
    timesteps = ((torch.arange(steps, dtype=torch.float64) + 0.5) * total / steps).long().repeat(count).to(device)
    latents = vae.encode(pair.gt.to(dtype)).latent_dist.mean.float() * vae.config.scaling_factor
    latents = latents.repeat_interleave(steps, dim=0)
    generator = torch.Generator().manual_seed(validation.seed)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    tags = training_data.fill_missing_tags(pair.tags, pair.gt, parts["caption_tagger"])
    text = _encode_prompts(parts["tokenizer"], parts["text_encoder"], tags, device).repeat_interleave(steps, dim=0)
    image_embeds = tagger.encode_image(training_data.stage2_ram_input(pair.control).to(dtype))[1]
    image_embeds = image_embeds.repeat_interleave(steps, dim=0)
    control = pair.control.to(dtype).repeat_interleave(steps, dim=0)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    was_training = unwrapped.training
    unwrapped.eval()
    try:
        with accelerator.autocast():
            prediction = unwrapped(
                scheduler.add_noise(latents, noise, timesteps), timesteps, text, control, image_embeds
            )
    finally:
        unwrapped.train(was_training)
    return diffusion_loss(prediction, target).item()


def _validate(
    accelerator: Any, config: TrainSeeSRConfig, parts: dict[str, Any], module: nn.Module, step: int
) -> list[Any]:
    """Upscale ``validation.images`` with the current weights through :class:`SeeSRPipeline` into
    ``<output_dir>/validation/step-<step>/`` (and TensorBoard); returns the PIL images (main process only)."""
    if not accelerator.is_main_process:
        return []
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline
    from seesr.utils.images import load_image, save_image_atomic

    unwrapped = accelerator.unwrap_model(module)
    pipeline = SeeSRPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=unwrapped.unet,
        controlnet=unwrapped.controlnet,
        scheduler=parts["noise_scheduler"],
        tagger=parts["tagger"],
    )
    pipeline.set_progress_bar_config(disable=True)
    folder = Path(config.train.output_dir) / "validation" / f"step-{step:07d}"
    unwrapped.unet.eval()
    unwrapped.controlnet.eval()
    images = []
    try:
        with accelerator.autocast():
            for index, path in enumerate(config.validation.images):
                result = pipeline(
                    load_image(path).rgb,
                    num_inference_steps=config.validation.num_inference_steps,
                    guidance_scale=config.validation.guidance_scale,
                    process_size=config.validation.process_size,
                    seed=config.validation.seed,
                )
                image = result.images[0]
                save_image_atomic(
                    image, folder / f"{index:02d}_{Path(path).stem}.png", metadata={"prompt": result.prompts[0]}
                )
                images.append(image)
    finally:
        unwrapped.unet.train()
        unwrapped.controlnet.train()
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            for index, image in enumerate(images):
                tracker.writer.add_image(f"validation/{index}", np.asarray(image), step, dataformats="HWC")
    logger.info("validation images written to %s", folder)
    return images


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
