"""Samplers of the loop against diffusers' own ``step`` on the tiny bundle's schedule; unsupported ones refused early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from seesr.pipeline.denoise import StepNoise
from seesr.pipeline.pipeline_seesr import SeeSRPipeline
from seesr.pipeline.schedulers import DDPMPlan, add_noise, make_step_plan
from tests.conftest import TINY
from tests.pipeline.helpers import small_lr, tiny_pipeline

SMALL = dict(num_inference_steps=3, process_size=64, seed=7)


def _scheduler(cls, **overrides):
    return cls.from_config(DDPMScheduler.load_config(TINY / "scheduler"), **overrides)


def _run_against_diffusers(plan, reference_scheduler, steps: int, noise_seed: int | None = None) -> None:
    """Feed the same random ε̂ to ``plan.step`` and to diffusers' ``step``; every step must be bit-identical."""
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(1, 4, 6, 5, generator=generator)
    ours = reference = sample
    noise = StepNoise(plan, sample.shape, torch.Generator().manual_seed(11), torch.device("cpu"), "per_step")
    reference_generator = torch.Generator().manual_seed(11)
    for index, timestep in enumerate(reference_scheduler.timesteps):
        model_output = torch.randn(1, 4, 6, 5, generator=generator)
        extra = {"generator": reference_generator} if isinstance(reference_scheduler, DDPMScheduler) else {}
        reference = reference_scheduler.step(model_output, timestep, reference, return_dict=False, **extra)[0]
        ours = plan.step(index, model_output, ours, noise(index, model_output))
        assert torch.equal(ours, reference), f"step {index} (t={int(timestep)})"
    assert index == steps - 1


@pytest.mark.parametrize(("spacing", "steps"), [("leading", 50), ("leading", 4), ("trailing", 2), ("trailing", 4)])
def test_ddpm_plan_is_bitwise_diffusers_step(spacing: str, steps: int) -> None:
    plan = make_step_plan(_scheduler(DDPMScheduler, timestep_spacing=spacing), steps)
    assert isinstance(plan, DDPMPlan)
    reference = _scheduler(DDPMScheduler, timestep_spacing=spacing)
    reference.set_timesteps(steps)
    assert plan.timesteps == reference.timesteps.tolist()
    _run_against_diffusers(plan, reference, steps)


def test_trailing_spacing_previous_timestep_follows_reference_1_7() -> None:
    """N = 3 does not divide 1000: the previous timestep of t is t - 1000 // 3 (REFERENCE §1.7), so step 1 (t=666)
    goes to 333, not to the next listed timestep 332 as diffusers >= 0.26 does (which the old fast path copied)."""
    scheduler = _scheduler(DDPMScheduler, timestep_spacing="trailing")
    plan = make_step_plan(scheduler, 3)
    assert plan.timesteps == [999, 666, 332]
    alphas = scheduler.alphas_cumprod
    sample = torch.ones(1, 4, 2, 2)
    eps = torch.zeros_like(sample)  # x0 = x / sqrt(ᾱ_t); mean = sqrt(ᾱ_prev) · x0 exactly
    mean = plan.step(1, eps, sample, torch.zeros_like(sample))
    expected = (alphas[333] / alphas[666]) ** 0.5
    torch.testing.assert_close(mean, expected * sample, rtol=1e-6, atol=0)
    assert not torch.allclose(mean, (alphas[332] / alphas[666]) ** 0.5 * sample, rtol=1e-6, atol=0)


def test_ddim_plan_is_diffusers_step() -> None:
    plan = make_step_plan(_scheduler(DDIMScheduler), 5)
    reference = _scheduler(DDIMScheduler)
    reference.set_timesteps(5)
    assert plan.timesteps == reference.timesteps.tolist() and not any(map(plan.needs_noise, range(5)))
    _run_against_diffusers(plan, reference, 5)


def test_dpm_solver_plan_is_diffusers_step() -> None:
    plan = make_step_plan(_scheduler(DPMSolverMultistepScheduler), 5)
    reference = _scheduler(DPMSolverMultistepScheduler)
    reference.set_timesteps(5)
    assert plan.timesteps == reference.timesteps.tolist()
    _run_against_diffusers(plan, reference, 5)


def test_add_noise_is_ddpm_add_noise() -> None:
    scheduler = _scheduler(DDPMScheduler)
    generator = torch.Generator().manual_seed(1)
    sample, noise = torch.randn(1, 4, 5, 6, generator=generator), torch.randn(1, 4, 5, 6, generator=generator)
    expected = _scheduler(DDPMScheduler).add_noise(sample, noise, torch.tensor([999]))
    assert torch.equal(add_noise(scheduler, sample, noise, 999), expected)


@pytest.mark.parametrize("cls", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_pipeline_runs_other_supported_samplers(cls) -> None:
    base = tiny_pipeline()
    pipe = SeeSRPipeline(**{**base.components, "scheduler": _scheduler(cls)})
    pipe.set_progress_bar_config(disable=True)
    output = pipe(small_lr(), **SMALL, color_fix="none", output_type="np")
    ddpm = base(small_lr(), **SMALL, color_fix="none", output_type="np")
    image = output.images[0]
    assert image.shape == ddpm.images[0].shape and np.isfinite(image).all()
    assert not np.array_equal(image, ddpm.images[0])  # the sampler really changed


def test_unsupported_scheduler_is_refused_before_any_work(monkeypatch) -> None:
    base = tiny_pipeline()
    pipe = SeeSRPipeline(**{**base.components, "scheduler": _scheduler(EulerDiscreteScheduler)})
    monkeypatch.setattr(pipe, "run_tagger", lambda image: pytest.fail("work started"))
    with pytest.raises(ValueError, match="EulerDiscreteScheduler is not supported.*DDPMScheduler, DDIMScheduler"):
        pipe(small_lr(), **SMALL)
    sde = SeeSRPipeline(
        **{**base.components, "scheduler": _scheduler(DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++")}
    )
    with pytest.raises(ValueError, match="algorithm_type"):
        sde(small_lr(), **SMALL)
    with pytest.raises(ValueError, match="epsilon prediction"):  # the DDPM plan computes epsilon steps only
        make_step_plan(_scheduler(DDPMScheduler, prediction_type="v_prediction"), 2)
