"""Evaluation: the metrics of SeeSR's Table 2 (PSNR/SSIM on Y, LPIPS, DISTS, FID, NIQE, MANIQA, MUSIQ, CLIP-IQA),
folder evaluation with reports, and the benchmark runner behind ``seesr eval`` / ``seesr benchmark``.

Names are imported lazily, so ``import seesr.evaluation`` (and the CLI) stays cheap; torch and pyiqa are imported
only when a learned metric is built.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "EvaluationResult": "seesr.evaluation.evaluate",
    "ImageRecord": "seesr.evaluation.evaluate",
    "evaluate_files": "seesr.evaluation.evaluate",
    "evaluate_folders": "seesr.evaluation.evaluate",
    "calculate_niqe": "seesr.evaluation.metrics",
    "calculate_psnr": "seesr.evaluation.metrics",
    "calculate_ssim": "seesr.evaluation.metrics",
    "rgb_to_y": "seesr.evaluation.metrics",
    "pair_files": "seesr.evaluation.pairing",
    "pair_key": "seesr.evaluation.pairing",
    "METRICS": "seesr.evaluation.registry",
    "PYIQA_VERSION": "seesr.evaluation.registry",
    "MetricInfo": "seesr.evaluation.registry",
    "MetricUnavailableError": "seesr.evaluation.registry",
    "build_scorer": "seesr.evaluation.registry",
    "check_weights": "seesr.evaluation.registry",
    "compute_fid": "seesr.evaluation.registry",
    "write_report": "seesr.evaluation.report",
    "PAPER_TABLE2": "seesr.evaluation.benchmark",
    "DatasetLayout": "seesr.evaluation.benchmark",
    "detect_layout": "seesr.evaluation.benchmark",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'seesr.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
