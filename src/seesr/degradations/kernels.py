"""Blur kernels of the Real-ESRGAN degradation model and their random sampling.

Kernel formulas (REFERENCE.md §6.2, ADDENDUM "Check 2", all computed in float64 NumPy):

* grid: coordinates ``a = -(k-1)/2 … (k-1)/2``; ``grid[i, j] = (x=a_j, y=a_i)`` (x along columns);
* covariance ``Σ = R·diag(σx², σy²)·Rᵀ`` with ``R`` the rotation by θ; ``d = [x, y]·Σ⁻¹·[x, y]ᵀ``;
* Gaussian ``exp(-d/2)``, generalized Gaussian ``exp(-½·d^β)``, plateau ``1/(1 + d^β)``, each divided by its sum;
* circular low-pass ``ω·J1(ω·ρ)/(2π·ρ)`` with centre ``ω²/(4π)``, divided by its sum.

Sampling takes an explicit :class:`torch.Generator` (CPU) and draws only scalars from it, so it is cheap and
independent of where the image lives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seesr.degradations.config import BlurKernelConfig, DegradationConfig

__all__ = [
    "DegradationKernels",
    "bivariate_gaussian",
    "bivariate_generalized_gaussian",
    "bivariate_plateau",
    "circular_lowpass_kernel",
    "mesh_grid",
    "pad_kernel",
    "pulse_kernel",
    "sample_blur_kernel",
    "sample_degradation_kernels",
    "sample_final_sinc_kernel",
    "sigma_matrix2",
]


def mesh_grid(kernel_size: int) -> np.ndarray:
    """Coordinate grid of a ``k``×``k`` kernel: float64 (k, k, 2) with ``[..., 0] = x`` (column) and ``[..., 1] = y``."""
    axis = np.arange(-(kernel_size // 2), kernel_size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(axis, axis)
    return np.stack((xx, yy), axis=-1)


def sigma_matrix2(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """2×2 covariance ``R(θ)·diag(σx², σy²)·R(θ)ᵀ`` (float64)."""
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    scales = np.array([[sigma_x**2, 0.0], [0.0, sigma_y**2]])
    return np.dot(rotation, np.dot(scales, rotation.T))


def _covariance(sigma_x: float, sigma_y: float, theta: float, isotropic: bool) -> np.ndarray:
    if isotropic:
        return np.array([[sigma_x**2, 0.0], [0.0, sigma_x**2]])
    return sigma_matrix2(sigma_x, sigma_y, theta)


def _quadratic_form(covariance: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``d[i, j] = g·Σ⁻¹·gᵀ`` for every grid point ``g`` (float64 (k, k))."""
    inverse = np.linalg.inv(covariance)
    return np.sum(np.dot(grid, inverse) * grid, axis=2)


def bivariate_gaussian(
    kernel_size: int, sigma_x: float, sigma_y: float, theta: float, isotropic: bool = True
) -> np.ndarray:
    """Normalised (an)isotropic Gaussian kernel, float64 (k, k). Isotropic ignores ``sigma_y`` and ``theta``."""
    d = _quadratic_form(_covariance(sigma_x, sigma_y, theta, isotropic), mesh_grid(kernel_size))
    kernel = np.exp(-0.5 * d)
    return kernel / np.sum(kernel)


def bivariate_generalized_gaussian(
    kernel_size: int, sigma_x: float, sigma_y: float, theta: float, beta: float, isotropic: bool = True
) -> np.ndarray:
    """Normalised generalized Gaussian ``exp(-½·d^β)``, float64 (k, k)."""
    d = _quadratic_form(_covariance(sigma_x, sigma_y, theta, isotropic), mesh_grid(kernel_size))
    kernel = np.exp(-0.5 * np.power(d, beta))
    return kernel / np.sum(kernel)


def bivariate_plateau(
    kernel_size: int, sigma_x: float, sigma_y: float, theta: float, beta: float, isotropic: bool = True
) -> np.ndarray:
    """Normalised plateau kernel ``1/(1 + d^β)``, float64 (k, k)."""
    d = _quadratic_form(_covariance(sigma_x, sigma_y, theta, isotropic), mesh_grid(kernel_size))
    kernel = np.reciprocal(np.power(d, beta) + 1)
    return kernel / np.sum(kernel)


def _bessel_j1(values: np.ndarray) -> np.ndarray:
    try:
        from scipy import special
    except ImportError:  # pragma: no cover - scipy is part of the train extra
        raise ImportError(
            "the sinc (circular low-pass) kernel needs scipy; install it with `pip install seesr[train]`"
        ) from None
    return special.j1(values)


def circular_lowpass_kernel(cutoff: float, kernel_size: int, pad_to: int = 0) -> np.ndarray:
    """2-D sinc kernel ``ω·J1(ω·ρ)/(2π·ρ)`` normalised to sum 1, float64 (k, k), zero-padded to ``pad_to`` if larger."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {kernel_size}")
    centre = (kernel_size - 1) / 2
    rows, cols = np.meshgrid(
        np.arange(kernel_size, dtype=np.float64), np.arange(kernel_size, dtype=np.float64), indexing="ij"
    )
    rho = np.sqrt((rows - centre) ** 2 + (cols - centre) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * _bessel_j1(cutoff * rho) / (2 * np.pi * rho)
    kernel[kernel_size // 2, kernel_size // 2] = cutoff**2 / (4 * np.pi)
    kernel = kernel / np.sum(kernel)
    return pad_kernel(kernel, pad_to) if pad_to > kernel_size else kernel


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a square odd kernel symmetrically to ``size``×``size``."""
    pad = (size - kernel.shape[-1]) // 2
    if pad < 0:
        raise ValueError(f"kernel of size {kernel.shape[-1]} does not fit in {size}")
    return np.pad(kernel, ((pad, pad), (pad, pad))) if pad else kernel


def pulse_kernel(size: int = 21) -> torch.Tensor:
    """Identity kernel: float32 (size, size) with a single 1 in the centre."""
    kernel = torch.zeros(size, size)
    kernel[size // 2, size // 2] = 1.0
    return kernel


# --------------------------------------------------------------------------------------------------------------
# Random sampling
# --------------------------------------------------------------------------------------------------------------


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float64 draw from U[low, high) (a single ``torch.rand`` on the generator)."""
    u = torch.rand((), generator=generator, dtype=torch.float64, device=generator.device).item()
    return low + (high - low) * u


def _choice(generator: torch.Generator, options: Sequence, probs: Sequence[float] | None = None):
    """Pick one of ``options`` (uniform, or with ``probs``) with a single uniform draw."""
    u = _uniform(generator, 0.0, 1.0)
    if probs is None:
        return options[min(int(u * len(options)), len(options) - 1)]
    total = float(sum(probs))
    cumulative = 0.0
    for option, prob in zip(options, probs, strict=True):
        cumulative += prob / total
        if u < cumulative:
            return option
    return options[-1]


def _sample_beta(generator: torch.Generator, beta_range: tuple[float, float]) -> float:
    if _uniform(generator, 0.0, 1.0) < 0.5:
        return _uniform(generator, beta_range[0], 1.0)
    return _uniform(generator, 1.0, beta_range[1])


def sample_blur_kernel(config: BlurKernelConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw one blur kernel from ``config``: float32 (pad_to, pad_to), sums to 1.

    Draw order: size, sinc decision, then (sinc) cutoff or (mixed) type, σx, [σy, θ], [β coin, β].
    """
    kernel_size = int(_choice(generator, config.kernel_sizes))
    if _uniform(generator, 0.0, 1.0) < config.sinc_prob:
        low = math.pi / 3 if kernel_size < 13 else math.pi / 5
        kernel = circular_lowpass_kernel(_uniform(generator, low, math.pi), kernel_size)
    else:
        kernel_type = _choice(generator, config.kernel_types, config.kernel_probs)
        isotropic = kernel_type.endswith("iso") and not kernel_type.endswith("aniso")
        sigma_x = _uniform(generator, *config.sigma_range)
        if isotropic:
            sigma_y, theta = sigma_x, 0.0
        else:
            sigma_y = _uniform(generator, *config.sigma_range)
            theta = _uniform(generator, *config.rotation_range)
        if kernel_type.startswith("generalized"):
            beta = _sample_beta(generator, config.betag_range)
            kernel = bivariate_generalized_gaussian(kernel_size, sigma_x, sigma_y, theta, beta, isotropic)
        elif kernel_type.startswith("plateau"):
            beta = _sample_beta(generator, config.betap_range)
            kernel = bivariate_plateau(kernel_size, sigma_x, sigma_y, theta, beta, isotropic)
        else:
            kernel = bivariate_gaussian(kernel_size, sigma_x, sigma_y, theta, isotropic)
    return torch.from_numpy(pad_kernel(kernel, config.pad_to)).float()


def sample_final_sinc_kernel(config: DegradationConfig, generator: torch.Generator) -> torch.Tensor:
    """The last-step filter: with ``final_sinc_prob`` a sinc (ω ~ U[π/3, π]) else an identity pulse; float32 (K, K)."""
    size = config.kernel_size
    if _uniform(generator, 0.0, 1.0) < config.final_sinc_prob:
        kernel_size = int(_choice(generator, config.final_sinc_kernel_sizes))
        cutoff = _uniform(generator, math.pi / 3, math.pi)
        return torch.from_numpy(circular_lowpass_kernel(cutoff, kernel_size, pad_to=size)).float()
    return pulse_kernel(size)


@dataclass
class DegradationKernels:
    """Per-image kernels of one batch, each float32 (B, K, K) with K = 21 for the presets."""

    blur1: torch.Tensor
    blur2: torch.Tensor
    sinc: torch.Tensor

    def to(self, device: torch.device | str) -> DegradationKernels:
        """Move all three stacks to ``device``."""
        return DegradationKernels(self.blur1.to(device), self.blur2.to(device), self.sinc.to(device))

    def __len__(self) -> int:
        return self.blur1.shape[0]


def sample_degradation_kernels(
    config: DegradationConfig, generator: torch.Generator, batch_size: int = 1
) -> DegradationKernels:
    """Draw ``batch_size`` triples (first blur, second blur, final sinc), image by image in that order."""
    blur1, blur2, sinc = [], [], []
    for _ in range(batch_size):
        blur1.append(sample_blur_kernel(config.first.blur, generator))
        blur2.append(sample_blur_kernel(config.second.blur, generator))
        sinc.append(sample_final_sinc_kernel(config, generator))
    return DegradationKernels(torch.stack(blur1), torch.stack(blur2), torch.stack(sinc))
