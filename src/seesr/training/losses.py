"""Training objectives of both SeeSR stages."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["DAPELoss", "dape_loss", "diffusion_loss"]


@dataclass
class DAPELoss:
    """The terms of Eq. (1); ``total`` is what is back-propagated (scalar tensors).

    ``logits_kl`` = ``logits`` − H(σ(teacher logits)): the binary cross-entropy minus its floor, the teacher's own
    entropy (a constant for the student). It is 0 exactly when the student's probabilities equal the teacher's, so
    it shows the progress the BCE value hides (logged only; the gradient is the same).
    """

    total: torch.Tensor
    feature: torch.Tensor
    logits: torch.Tensor
    logits_kl: torch.Tensor


def dape_loss(
    student_embeds: torch.Tensor,
    teacher_embeds: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    feature_weight: float = 1.0,
    logits_weight: float = 1.0,
) -> DAPELoss:
    """Eq. (1) of the paper: ``L = w·MSE(f_lr^rep, f_hr^rep) + λ·BCE(f_lr^logits, σ(f_hr^logits))``.

    Args:
        student_embeds: (B, 145, 512) image embeddings of the LoRA student on the LR image.
        teacher_embeds: (B, 145, 512) image embeddings of the frozen teacher on the HR image.
        student_logits: (B, num_classes) tag logits of the student.
        teacher_logits: (B, num_classes) tag logits of the teacher (soft targets ``σ(logits)``).
        feature_weight: weight of the representation term (official 1.0).
        logits_weight: λ (official and paper: 1.0).

    The official code evaluated ``−(p·log σ(l) + (1−p)·log(1−σ(l)))`` from sigmoids, which reaches ``log 0 = −inf``
    for saturated logits (REFERENCE.md §7 #30). ``binary_cross_entropy_with_logits`` is the same function computed
    stably in logits space, so it equals the official value wherever that is finite and never produces NaN.
    Both terms are means over all elements; the loss is computed in float32.
    """
    teacher_embeds = teacher_embeds.detach().float()
    targets = torch.sigmoid(teacher_logits.detach().float())
    feature = F.mse_loss(student_embeds.float(), teacher_embeds)
    logits = F.binary_cross_entropy_with_logits(student_logits.float(), targets)
    with torch.no_grad():
        entropy = F.binary_cross_entropy_with_logits(teacher_logits.detach().float(), targets)
    return DAPELoss(
        total=feature_weight * feature + logits_weight * logits,
        feature=feature,
        logits=logits,
        logits_kl=logits.detach() - entropy,
    )


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. (2): ``E‖ε − ε_θ(z_t, t, c)‖²`` as a float32 mean-squared error (mean over every element).

    Args:
        prediction: (B, 4, h, w) model output (noise, or velocity for v-prediction schedulers).
        target: (B, 4, h, w) the matching target.
    """
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")
