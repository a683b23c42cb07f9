"""Checkpoint contents for ``accelerator.save_state``: only the *trainable* tensors of a model.

Accelerate would otherwise write every tensor of the prepared module, frozen ones included (for stage 2 that is the
whole 865M-parameter SD-2 UNet in every checkpoint). The save hook below writes ``trainable.safetensors`` (the
parameters with ``requires_grad``, keyed by their name in the unwrapped module) and removes the module from what
accelerate saves; the load hook restores those tensors, checking that the key set matches exactly.

FSDP and DeepSpeed shard or own the model state themselves, so the hooks are only installed for the other
distributed types (single process, DDP on GPUs or CPUs); with FSDP/DeepSpeed accelerate's own format is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TRAINABLE_STATE_NAME = "trainable.safetensors"


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the parameters of ``module`` that require grad (detached, contiguous, on CPU)."""
    return {
        name: param.detach().to("cpu").contiguous() for name, param in module.named_parameters() if param.requires_grad
    }


def load_trainable_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Copy ``state`` into the trainable parameters of ``module``; the key sets and shapes must match exactly."""
    params = {name: param for name, param in module.named_parameters() if param.requires_grad}
    missing = sorted(params.keys() - state.keys())
    unexpected = sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not match the trainable parameters of this run "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}); "
            "was it written with a different configuration?"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = state[name]
            if value.shape != param.shape:
                raise ValueError(
                    f"checkpoint {source}: {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def install_trainable_state_hooks(accelerator: Any) -> bool:
    """Register save/load pre-hooks that checkpoint only trainable tensors; returns False if not applicable."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        return False

    def save_hook(models: list[torch.nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
        for index, model in enumerate(models):
            if accelerator.is_main_process:
                name = TRAINABLE_STATE_NAME if index == 0 else f"trainable_{index}.safetensors"
                state = trainable_state_dict(accelerator.unwrap_model(model))
                save_file(state, str(Path(output_dir) / name), metadata={"format": "pt"})
        weights.clear()  # nothing else of the models goes into accelerate's files

    def load_hook(models: list[torch.nn.Module], input_dir: str) -> None:
        for index, model in enumerate(list(models)):
            name = TRAINABLE_STATE_NAME if index == 0 else f"trainable_{index}.safetensors"
            path = Path(input_dir) / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: not a checkpoint written by `seesr train`")
            load_trainable_state_dict(accelerator.unwrap_model(model), load_file(str(path)), str(path))
        models.clear()  # tell accelerate the models are already restored

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    return True
