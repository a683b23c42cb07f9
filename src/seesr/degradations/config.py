"""Typed configuration of the Real-ESRGAN second-order degradation model.

One :class:`DegradationStage` type describes a stage (blur kernel distribution, resize, noise, JPEG); a
:class:`DegradationConfig` holds two of them (``first``, ``second``) plus the final sinc filter and the GT
sharpening. The official values are available as named presets:

* :attr:`DegradationConfig.SEESR`: what SeeSR's ``utils_data/make_paired_data*.py`` use (REFERENCE.md §6.2-6.3);
  the final LR stays float (no 8-bit rounding; it is quantised when written to PNG).
* :attr:`DegradationConfig.REALESRGAN`: Real-ESRGAN x4plus training (same probabilities and ranges), whose model
  rounds the LR to 8 bit in the tensor (``round_output=True``). That flag is the only difference.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

KERNEL_TYPES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
KERNEL_SIZES: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)


@dataclass(frozen=True)
class BlurKernelConfig:
    """Distribution of one random blur kernel (drawn per image).

    With probability ``sinc_prob`` a circular low-pass (sinc) kernel with cutoff ω ~ U[π/3, π] (size < 13) or
    U[π/5, π] (size >= 13); otherwise one of ``kernel_types`` picked with ``kernel_probs``, with
    σ_x, σ_y ~ U[``sigma_range``] (isotropic types: σ_y = σ_x, θ = 0), θ ~ U[``rotation_range``] and the shape β
    drawn as "p = 0.5: U[β_lo, 1], else U[1, β_hi]" from ``betag_range`` (generalized) or ``betap_range``
    (plateau). The size is uniform over ``kernel_sizes``; every kernel is zero-padded (centred) to ``pad_to``.
    """

    kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma_range: tuple[float, float] = (0.2, 3.0)
    rotation_range: tuple[float, float] = (-math.pi, math.pi)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    pad_to: int = 21

    def __post_init__(self) -> None:
        if len(self.kernel_types) != len(self.kernel_probs):
            raise ValueError("kernel_types and kernel_probs must have the same length")
        unknown = set(self.kernel_types) - set(KERNEL_TYPES)
        if unknown:
            raise ValueError(f"unknown kernel types {sorted(unknown)}; choose from {KERNEL_TYPES}")
        for size in self.kernel_sizes:
            if size % 2 != 1 or size > self.pad_to:
                raise ValueError(f"kernel size {size} must be odd and <= pad_to ({self.pad_to})")
        _check_probability("sinc_prob", self.sinc_prob)


@dataclass(frozen=True)
class DegradationStage:
    """One order of the degradation: blur → resize → noise → JPEG.

    * ``blur_prob``: probability of applying the blur (1.0 in the first stage, 0.8 in the second).
    * ``resize_probs``: probabilities of (up, down, keep); the scale is U[1, ``resize_range[1]``] (up) or
      U[``resize_range[0]``, 1] (down). The first stage scales the current image; the second stage scales the
      *target* LR size (H/scale, W/scale). The interpolation mode is uniform over ``resize_modes``.
    * Noise: Gaussian with probability ``gaussian_noise_prob`` (σ ~ U[``noise_range``] on the 0-255 scale),
      otherwise Poisson (scale ~ U[``poisson_scale_range``]); channel-shared ("gray") noise per image with
      probability ``gray_noise_prob``.
    * ``jpeg_range``: JPEG quality ~ U[jpeg_range] per image, a continuous float used unrounded.
    """

    blur: BlurKernelConfig = field(default_factory=BlurKernelConfig)
    blur_prob: float = 1.0
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)

    def __post_init__(self) -> None:
        _check_probability("blur_prob", self.blur_prob)
        _check_probability("gaussian_noise_prob", self.gaussian_noise_prob)
        _check_probability("gray_noise_prob", self.gray_noise_prob)
        if len(self.resize_probs) != 3 or abs(sum(self.resize_probs) - 1.0) > 1e-6:
            raise ValueError(
                f"resize_probs {self.resize_probs} must be three probabilities (up, down, keep) summing to 1"
            )
        unknown = set(self.resize_modes) - set(RESIZE_MODES)
        if unknown or not self.resize_modes:
            raise ValueError(f"resize_modes must be a non-empty subset of {RESIZE_MODES}")
        if not (0 < self.resize_range[0] <= 1 <= self.resize_range[1]):
            raise ValueError(f"resize_range {self.resize_range} must satisfy 0 < low <= 1 <= high")
        if not (0 < self.jpeg_range[0] <= self.jpeg_range[1] < 100):
            raise ValueError(f"jpeg_range {self.jpeg_range} must lie in (0, 100)")


@dataclass(frozen=True)
class SharpenConfig:
    """Unsharp masking of the GT (BasicSR ``USMSharp``): Gaussian ``radius``×``radius`` (σ from OpenCV's rule).

    ``separable`` blurs with two 1-D passes (~12x faster on CPU, within ~2e-6 of the official 2-D filter).
    """

    weight: float = 0.5
    threshold: float = 10.0
    radius: int = 51
    separable: bool = False


@dataclass(frozen=True)
class DegradationConfig:
    """The complete second-order degradation model.

    ``sharpen_gt``: USM applied to the HR before degrading (the sharpened GT is also the training target);
    ``None`` disables it. ``final_sinc_prob`` / ``final_sinc_kernel_sizes``: the sinc filter of the last step
    (otherwise an identity pulse). ``round_output``: quantise the final LR to 8 bit in the tensor.
    """

    first: DegradationStage = field(default_factory=DegradationStage)
    second: DegradationStage = field(default_factory=DegradationStage)
    final_sinc_prob: float = 0.8
    final_sinc_kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    sharpen_gt: SharpenConfig | None = field(default_factory=SharpenConfig)
    round_output: bool = False

    SEESR: ClassVar[DegradationConfig]
    REALESRGAN: ClassVar[DegradationConfig]

    def __post_init__(self) -> None:
        _check_probability("final_sinc_prob", self.final_sinc_prob)

    @property
    def kernel_size(self) -> int:
        """Side of every sampled kernel after padding (21 for the presets)."""
        return max(self.first.blur.pad_to, self.second.blur.pad_to)

    def replace(self, **changes: Any) -> DegradationConfig:
        """A copy with some top-level fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON representation (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationConfig:
        """Inverse of :meth:`to_dict`."""

        def stage(value: dict[str, Any]) -> DegradationStage:
            value = dict(value)
            value["blur"] = BlurKernelConfig(**_tuples(value.get("blur", {})))
            return DegradationStage(**_tuples(value))

        data = dict(data)
        sharpen = data.get("sharpen_gt")
        return cls(
            first=stage(data.get("first", {})),
            second=stage(data.get("second", {})),
            final_sinc_prob=float(data.get("final_sinc_prob", 0.8)),
            final_sinc_kernel_sizes=tuple(data.get("final_sinc_kernel_sizes", KERNEL_SIZES)),
            sharpen_gt=None if sharpen is None else SharpenConfig(**sharpen),
            round_output=bool(data.get("round_output", False)),
        )

    @classmethod
    def preset(cls, name: str) -> DegradationConfig:
        """Look a preset up by name (``"seesr"`` or ``"realesrgan"``, case-insensitive)."""
        presets = {"seesr": cls.SEESR, "realesrgan": cls.REALESRGAN}
        try:
            return presets[name.lower()]
        except KeyError:
            raise ValueError(f"unknown degradation preset {name!r}; choose one of {', '.join(presets)}") from None


def _tuples(value: dict[str, Any]) -> dict[str, Any]:
    return {key: tuple(item) if isinstance(item, list) else item for key, item in value.items()}


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


DegradationConfig.SEESR = DegradationConfig(
    first=DegradationStage(
        blur=BlurKernelConfig(sigma_range=(0.2, 3.0), sinc_prob=0.1),
        blur_prob=1.0,
        resize_probs=(0.2, 0.7, 0.1),
        resize_range=(0.15, 1.5),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 30.0),
        poisson_scale_range=(0.05, 3.0),
        gray_noise_prob=0.4,
        jpeg_range=(30.0, 95.0),
    ),
    second=DegradationStage(
        blur=BlurKernelConfig(sigma_range=(0.2, 1.5), sinc_prob=0.1),
        blur_prob=0.8,
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
        gray_noise_prob=0.4,
        jpeg_range=(30.0, 95.0),
    ),
    final_sinc_prob=0.8,
    sharpen_gt=SharpenConfig(weight=0.5, threshold=10.0, radius=51),
    round_output=False,
)
DegradationConfig.REALESRGAN = dataclasses.replace(DegradationConfig.SEESR, round_output=True)
