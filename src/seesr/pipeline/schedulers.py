"""Sampler steps for the denoising loop: the official DDPM, plus DDIM and DPM-Solver++ (multistep).

A *step plan* is made once per image by :func:`make_step_plan` and offers what the loop needs:

* ``timesteps``: the timesteps to run (Python ints, on the host);
* ``needs_noise(index)``: whether step ``index`` adds variance noise (drawn by the loop, see
  :class:`seesr.pipeline.denoise.StepNoise`);
* ``step(index, noise_pred, latents, noise)``: the next latents.

DDPM is the official sampler (REFERENCE §1.7). :class:`DDPMPlan` evaluates diffusers' ``DDPMScheduler.step``
arithmetic with every schedule scalar precomputed on the host, so a step is a few element-wise kernels and never
waits for the accelerator, and the noise can be drawn wherever the execution config says. The previous timestep of
``t`` is ``t − num_train_timesteps // N`` (``ᾱ_prev = 1`` when negative) as in REFERENCE §1.7 and the official
diffusers 0.21, for every spacing and step count. (diffusers ≥ 0.26 takes the next entry of the timestep list
instead; the two agree whenever ``N`` divides 1000 or the spacing is "leading".)

DDIM (η = 0) and DPM-Solver++ are deterministic: their plans call the scheduler's own ``step`` with the schedule kept
on the host (no synchronisation either). Any other scheduler is refused with a ``ValueError`` before any work: the
loop has no ``scale_model_input`` and starts the LR embedding with the DDPM noising of REFERENCE §1.8, which is only
right for these variance-preserving samplers.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = [
    "SUPPORTED_SCHEDULERS",
    "DDPMPlan",
    "DiffusersStepPlan",
    "StepPlan",
    "add_noise",
    "check_scheduler",
    "make_step_plan",
    "SCHEDULER_NAMES",
    "scheduler_from_name",
]

#: scheduler classes the loop supports (the first is the official one)
SUPPORTED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")
_DETERMINISTIC_DPM = ("dpmsolver++", "dpmsolver")
#: short names (``seesr upscale --scheduler``) -> diffusers class; "ddpm" is the official sampler
SCHEDULER_NAMES = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler"}


def scheduler_from_name(name: str, config: Any) -> Any:
    """A scheduler of the loop's supported kinds built from another scheduler's ``config`` (diffusers'
    ``from_config``, so the noise schedule and timestep spacing carry over); DPM-Solver++ is the deterministic
    multistep solver of order 2."""
    import diffusers

    if name not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    cls = getattr(diffusers, SCHEDULER_NAMES[name])
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if name == "dpm++" else {}
    scheduler = cls.from_config(config, **extra)
    check_scheduler(scheduler)
    return scheduler


class StepPlan(Protocol):
    timesteps: list[int]

    def needs_noise(self, index: int) -> bool: ...

    def step(
        self, index: int, model_output: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor: ...


def check_scheduler(scheduler: Any) -> None:
    """Raise ``ValueError`` (naming the supported schedulers) unless the loop can run ``scheduler`` exactly."""
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(
            f"scheduler {name} is not supported; use one of {', '.join(SUPPORTED_SCHEDULERS)} "
            "(e.g. DDIMScheduler.from_config(pipe.scheduler.config))"
        )
    config = scheduler.config
    if name == "DDPMScheduler":
        if config.prediction_type != "epsilon" or config.thresholding or config.clip_sample:
            raise ValueError("DDPMScheduler is supported with epsilon prediction, no clipping and no thresholding")
        if config.variance_type not in (None, "fixed_small"):
            raise ValueError(f"DDPMScheduler is supported with fixed_small variance, not {config.variance_type!r}")
    if name == "DPMSolverMultistepScheduler" and config.algorithm_type not in _DETERMINISTIC_DPM:
        raise ValueError(
            f"DPMSolverMultistepScheduler is supported with algorithm_type {' or '.join(_DETERMINISTIC_DPM)}, "
            f"not {config.algorithm_type!r}"
        )


def make_step_plan(scheduler: Any, num_inference_steps: int) -> StepPlan:
    """Set ``scheduler``'s timesteps (kept on the host) and return the plan of the loop."""
    check_scheduler(scheduler)
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    if type(scheduler).__name__ == "DDPMScheduler":
        return DDPMPlan(scheduler)
    return DiffusersStepPlan(scheduler)


class DDPMPlan:
    """``DDPMScheduler.step`` (epsilon, fixed_small, no clipping) with its scalars precomputed as 0-dim float32
    host tensors, exactly the expressions diffusers evaluates; previous timestep per REFERENCE §1.7.

    Args:
        scheduler: a ``DDPMScheduler`` after ``set_timesteps``.
    """

    def __init__(self, scheduler: Any) -> None:
        self.timesteps = [int(t) for t in scheduler.timesteps.tolist()]
        ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        alphas = scheduler.alphas_cumprod.cpu()
        one = scheduler.one.cpu() if torch.is_tensor(scheduler.one) else torch.tensor(scheduler.one)
        self._coefficients = [self._coefficients_at(alphas, one, t, t - ratio) for t in self.timesteps]

    @staticmethod
    def _coefficients_at(alphas: torch.Tensor, one: torch.Tensor, t: int, prev_t: int) -> tuple:
        alpha_prod_t = alphas[t]
        alpha_prod_t_prev = alphas[prev_t] if prev_t >= 0 else one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        original_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        std = None
        if t > 0:
            variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
            std = torch.clamp(variance, min=1e-20) ** 0.5
        return beta_prod_t ** (0.5), alpha_prod_t ** (0.5), original_coeff, current_coeff, std

    def __len__(self) -> int:
        return len(self.timesteps)

    def needs_noise(self, index: int) -> bool:
        """Whether step ``index`` adds variance noise (``t > 0``)."""
        return self._coefficients[index][4] is not None

    def step(
        self, index: int, model_output: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """x_prev from ε̂ ``model_output`` and x_t ``sample``; ``noise`` ~ N(0, I) when :meth:`needs_noise`."""
        sqrt_beta, sqrt_alpha, original_coeff, current_coeff, std = self._coefficients[index]
        pred_original_sample = (sample - sqrt_beta * model_output) / sqrt_alpha
        prev_sample = original_coeff * pred_original_sample + current_coeff * sample
        if std is not None:
            if noise is None:
                raise ValueError(f"step {index} (t={self.timesteps[index]}) needs variance noise")
            prev_sample = prev_sample + std * noise
        return prev_sample


class DiffusersStepPlan:
    """A deterministic diffusers scheduler (DDIM with η = 0, DPM-Solver++) driven through its own ``step``.

    The scheduler keeps its schedule on the host (``set_timesteps(device="cpu")``), so ``step`` does scalar work on
    the CPU and element-wise kernels on the latents' device. Stateful (DPM-Solver++ keeps earlier outputs): make a
    new plan per image.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._host_timesteps = scheduler.timesteps.cpu()
        self.timesteps = [int(t) for t in self._host_timesteps.tolist()]
        self._extra = {"eta": 0.0} if type(scheduler).__name__ == "DDIMScheduler" else {}

    def __len__(self) -> int:
        return len(self.timesteps)

    def needs_noise(self, index: int) -> bool:
        return False

    def step(
        self, index: int, model_output: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        timestep = self._host_timesteps[index]
        return self.scheduler.step(model_output, timestep, sample, return_dict=False, **self._extra)[0]


def add_noise(scheduler: Any, sample: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
    """``√ᾱ_t · sample + √(1 − ᾱ_t) · noise`` with ᾱ cast to the sample dtype: ``DDPMScheduler.add_noise``'s
    arithmetic (REFERENCE §1.8 step 3) for any supported scheduler, without moving the scheduler's tensors."""
    alphas = scheduler.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)
    alpha = alphas[timestep]
    return (alpha**0.5) * sample + ((1 - alpha) ** 0.5) * noise
