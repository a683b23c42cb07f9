"""Real-ESRGAN second-order degradation (the SeeSR training-data model), batched, generator-driven.

Typical use::

    from seesr.degradations import DegradationConfig, synthesize_pair

    generator = torch.Generator().manual_seed(0)
    gt, lr = synthesize_pair(hr, DegradationConfig.SEESR, generator, scale=4)  # hr (B, 3, H, W) in [0, 1]

:func:`degrade` degrades an image as given (no GT sharpening); :func:`synthesize_pair` sharpens the GT first, as
the official data scripts do. Kernels can be drawn ahead of time with :func:`sample_degradation_kernels`.
"""

from __future__ import annotations

from seesr.degradations.config import (
    BlurKernelConfig,
    DegradationConfig,
    DegradationStage,
    SharpenConfig,
)
from seesr.degradations.kernels import (
    DegradationKernels,
    bivariate_gaussian,
    bivariate_generalized_gaussian,
    bivariate_plateau,
    circular_lowpass_kernel,
    mesh_grid,
    sample_blur_kernel,
    sample_degradation_kernels,
    sample_final_sinc_kernel,
    sigma_matrix2,
)
from seesr.degradations.ops import (
    add_gaussian_noise,
    add_poisson_noise,
    filter2d,
    gaussian_noise,
    jpeg_compress,
    poisson_noise,
    resize,
    usm_sharp,
)
from seesr.degradations.pipeline import as_generator, degrade, sharpen_gt, synthesize_pair

__all__ = [
    "BlurKernelConfig",
    "DegradationConfig",
    "DegradationKernels",
    "DegradationStage",
    "SharpenConfig",
    "add_gaussian_noise",
    "add_poisson_noise",
    "as_generator",
    "bivariate_gaussian",
    "bivariate_generalized_gaussian",
    "bivariate_plateau",
    "circular_lowpass_kernel",
    "degrade",
    "filter2d",
    "gaussian_noise",
    "jpeg_compress",
    "mesh_grid",
    "poisson_noise",
    "resize",
    "sample_blur_kernel",
    "sample_degradation_kernels",
    "sample_final_sinc_kernel",
    "sharpen_gt",
    "sigma_matrix2",
    "synthesize_pair",
    "usm_sharp",
]
