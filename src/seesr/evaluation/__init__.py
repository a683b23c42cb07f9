"""Evaluation: the metrics of SeeSR's Table 2 (PSNR/SSIM on Y, LPIPS, DISTS, FID, NIQE, MANIQA, MUSIQ, CLIP-IQA),
folder evaluation with reports, and the benchmark runner behind ``seesr eval`` / ``seesr benchmark``.

Importing this package is cheap (NumPy and Pillow); torch and pyiqa are imported when a learned metric is built.
"""

from __future__ import annotations

from seesr.evaluation.evaluate import EvaluationResult, ImageRecord, evaluate_folders
from seesr.evaluation.metrics import calculate_niqe, calculate_psnr, calculate_ssim, rgb_to_y
from seesr.evaluation.pairing import pair_files, pair_key
from seesr.evaluation.registry import (
    METRICS,
    PYIQA_VERSION,
    MetricInfo,
    MetricUnavailableError,
    build_scorer,
    check_weights,
    compute_fid,
)
from seesr.evaluation.report import write_report

__all__ = [
    "METRICS",
    "PYIQA_VERSION",
    "EvaluationResult",
    "ImageRecord",
    "MetricInfo",
    "MetricUnavailableError",
    "build_scorer",
    "calculate_niqe",
    "calculate_psnr",
    "calculate_ssim",
    "check_weights",
    "compute_fid",
    "evaluate_folders",
    "pair_files",
    "pair_key",
    "rgb_to_y",
    "write_report",
]
