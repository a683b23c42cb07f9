"""Eq. (1)/(2) losses, the learning-rate schedules, deterministic sampling and checkpoint bookkeeping."""

from __future__ import annotations

import pytest
import torch

from seesr.training.common import (
    EpochShuffleSampler,
    TrainingError,
    build_lr_scheduler,
    build_optimizer,
    step_generator,
)
from seesr.training.config import OptimizerConfig
from seesr.training.losses import dape_loss, diffusion_loss


def _official_bce(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The official formula, from sigmoids (REFERENCE.md §5.2)."""
    p = torch.sigmoid(teacher_logits)
    q = torch.sigmoid(student_logits)
    return (-(p * torch.log(q) + (1 - p) * torch.log(1 - q))).mean()


def test_dape_loss_equals_official_formula_where_finite():
    generator = torch.Generator().manual_seed(0)
    s_embeds, t_embeds = torch.randn(2, 145, 512, generator=generator), torch.randn(2, 145, 512, generator=generator)
    s_logits, t_logits = torch.randn(2, 4585, generator=generator) * 3, torch.randn(2, 4585, generator=generator) * 3
    terms = dape_loss(s_embeds, t_embeds, s_logits, t_logits, feature_weight=1.0, logits_weight=1.0)
    assert terms.feature.item() == pytest.approx(((s_embeds - t_embeds) ** 2).mean().item(), rel=1e-6)
    assert terms.logits.item() == pytest.approx(_official_bce(s_logits, t_logits).item(), rel=1e-5)
    assert terms.total.item() == pytest.approx(terms.feature.item() + terms.logits.item(), rel=1e-6)
    weighted = dape_loss(s_embeds, t_embeds, s_logits, t_logits, feature_weight=2.0, logits_weight=0.5)
    assert weighted.total.item() == pytest.approx(2 * terms.feature.item() + 0.5 * terms.logits.item(), rel=1e-6)


def test_dape_loss_has_no_nan_for_saturated_logits():
    """The official sigmoid/log form gives inf/NaN at |logit| ~ 100 in fp32; the logits-space BCE stays finite."""
    s_logits = torch.tensor([[120.0, -120.0, 0.0]], requires_grad=True)
    t_logits = torch.tensor([[-50.0, 50.0, 0.0]])
    assert not torch.isfinite(_official_bce(s_logits.detach(), t_logits))
    embeds = torch.zeros(1, 2, 4, requires_grad=True)
    terms = dape_loss(embeds, torch.zeros(1, 2, 4), s_logits, t_logits)
    terms.total.backward()
    assert torch.isfinite(terms.total) and terms.total.item() > 70  # confidently wrong -> large but finite
    assert torch.isfinite(s_logits.grad).all()


def test_dape_loss_gradient_only_reaches_student():
    s = torch.randn(1, 3, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, requires_grad=True)
    sl, tl = torch.randn(1, 5, requires_grad=True), torch.randn(1, 5, requires_grad=True)
    dape_loss(s, t, sl, tl).total.backward()
    assert s.grad is not None and sl.grad is not None
    assert t.grad is None and tl.grad is None


def test_diffusion_loss_is_float32_mse():
    prediction = torch.randn(2, 4, 8, 8).half()
    target = torch.randn(2, 4, 8, 8)
    loss = diffusion_loss(prediction, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(((prediction.float() - target) ** 2).mean().item(), rel=1e-6)


def _lrs(optim: OptimizerConfig, steps: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], optim, optim.learning_rate)
    scheduler = build_lr_scheduler(optimizer, optim, steps)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_dape_schedule_warmup_then_multistep():
    optim = OptimizerConfig(
        learning_rate=1e-4, lr_scheduler="multistep", lr_warmup_steps=4, lr_milestones=[6, 8], lr_gamma=0.5
    )
    lrs = _lrs(optim, 10)
    assert lrs[:4] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4])
    assert lrs[4:6] == pytest.approx([1e-4, 1e-4])
    assert lrs[6:8] == pytest.approx([5e-5, 5e-5])
    assert lrs[8:] == pytest.approx([2.5e-5, 2.5e-5])


def test_stage2_constant_schedule_ignores_warmup():
    assert _lrs(OptimizerConfig(learning_rate=5e-5, lr_scheduler="constant", lr_warmup_steps=500), 5) == [5e-5] * 5


def test_8bit_adam_missing_gives_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("no bitsandbytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(TrainingError, match="pip install bitsandbytes"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimizerConfig(use_8bit_adam=True), 1e-4)
    with pytest.raises(TrainingError, match="nothing to train"):
        build_optimizer([], OptimizerConfig(), 1e-4)


def test_epoch_sampler_is_a_deterministic_permutation():
    sampler = EpochShuffleSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert list(sampler) == first  # same epoch -> same order
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochShuffleSampler(10, seed=3, shuffle=False)) == list(range(10))


def test_step_generator_depends_on_seed_step_and_process():
    draw = lambda *key: torch.rand(3, generator=step_generator(*key)).tolist()  # noqa: E731
    assert draw(1, 5, 0) == draw(1, 5, 0)
    assert len({tuple(draw(1, 5, 0)), tuple(draw(1, 6, 0)), tuple(draw(1, 5, 1)), tuple(draw(2, 5, 0))}) == 4
