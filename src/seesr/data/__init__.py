"""Training data: paired folders from ``seesr prepare``, HR crops for on-the-fly degradation, and the prepare step.

See :mod:`seesr.data.datasets` for the item dictionaries (keys, shapes and value ranges).
"""

from __future__ import annotations

from seesr.data.datasets import (
    OnlineDegradationDataset,
    PairedImageFolder,
    degrade_batch,
    item_generator,
    list_images,
)
from seesr.data.prepare import PrepareError, PrepareOptions, PrepareReport, prepare_dataset
from seesr.data.transforms import ram_values_from_lr, random_crop_gt, resize_gt

__all__ = [
    "OnlineDegradationDataset",
    "PairedImageFolder",
    "PrepareError",
    "PrepareOptions",
    "PrepareReport",
    "degrade_batch",
    "item_generator",
    "list_images",
    "prepare_dataset",
    "ram_values_from_lr",
    "random_crop_gt",
    "resize_gt",
]
