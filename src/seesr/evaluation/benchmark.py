"""Reproduce a row of SeeSR's Table 2: find a dataset's LR/HR folders, upscale the LR images, evaluate against HR.

Expected numbers (SeeSR, CVPR 2024, Table 2; x4, 50 DDPM steps, SD-2-base, the released SeeSR + DAPE weights):

============  =====  ======  ======  ======  ======  ======  ======  =====  =======
dataset       PSNR   SSIM    LPIPS   DISTS   FID     NIQE    MANIQA  MUSIQ  CLIPIQA
============  =====  ======  ======  ======  ======  ======  ======  =====  =======
DIV2K-Val     21.19  0.5386  0.3843  0.2257  31.93   4.9275  0.6198  68.33  0.6946
RealSR        (*)    0.7216  0.3009  0.2223  125.55  5.4081  0.6442  69.77  0.6612
DRealSR       (*)    0.7691  0.3189  0.2315  147.39  6.3967  0.6042  64.93  0.6804
RealLR200     -      -       -       -       -       (*)     0.6254  69.71  0.6813
============  =====  ======  ======  ======  ======  ======  ======  =====  =======

(*) not legible in the text of the paper this package was written from; see Table 2 of the PDF. RealLR200 has no
ground truth (no-reference metrics only).

Datasets as the paper uses them: DIV2K-Val = 3,000 random 512x512 crops of the DIV2K validation set, degraded with
the training pipeline (``seesr degrade``); RealSR and DRealSR = the StableSR test sets (LR centre-cropped to
128x128, HR 512x512; Hugging Face dataset ``Iceclear/StableSR-TestSets``); RealLR200 = 200 real LR photos.
Diffusion sampling is stochastic: expect to match within a few percent, not to the last digit.

Layouts recognised under ``--dataset DIR`` (folder names case-insensitive):
``LR/``+``HR/``, ``lr/``+``gt/``, ``LQ/``+``GT/``, ``lq/``+``hq/``, ``test_LR/``+``test_HR/``, ``input/``+``target/``;
RealSR's own naming, ``*_LR4.png`` next to ``*_HR.png`` (searched recursively, e.g. ``Canon/Test/4/``); or a folder
of LR images only (no-reference). ``--lr-dir`` / ``--hr-dir`` override the detection.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seesr.utils.files import write_text_atomic

__all__ = [
    "DATASET_LAYOUTS",
    "PAPER_TABLE2",
    "SETTINGS_RECORD",
    "DatasetLayout",
    "SettingsMismatchError",
    "check_upscale_settings",
    "read_upscale_settings",
    "detect_layout",
    "guess_paper_row",
    "paper_table_text",
    "write_upscale_settings",
]

#: In a benchmark's --out folder: the settings the images in ``sr/`` were upscaled with (written before upscaling).
SETTINGS_RECORD = "upscale-settings.json"

PAPER_TABLE2: dict[str, dict[str, float | None]] = {
    "div2k-val": {
        "psnr": 21.19,
        "ssim": 0.5386,
        "lpips": 0.3843,
        "dists": 0.2257,
        "fid": 31.93,
        "niqe": 4.9275,
        "maniqa": 0.6198,
        "musiq": 68.33,
        "clipiqa": 0.6946,
    },
    "realsr": {
        "psnr": None,
        "ssim": 0.7216,
        "lpips": 0.3009,
        "dists": 0.2223,
        "fid": 125.55,
        "niqe": 5.4081,
        "maniqa": 0.6442,
        "musiq": 69.77,
        "clipiqa": 0.6612,
    },
    "drealsr": {
        "psnr": None,
        "ssim": 0.7691,
        "lpips": 0.3189,
        "dists": 0.2315,
        "fid": 147.39,
        "niqe": 6.3967,
        "maniqa": 0.6042,
        "musiq": 64.93,
        "clipiqa": 0.6804,
    },
    "reallr200": {"niqe": None, "maniqa": 0.6254, "musiq": 69.71, "clipiqa": 0.6813},
}
"""SeeSR's row of Table 2 per dataset; None = a value not legible in the paper text used here."""

PAPER_ROW_NAMES = {"div2k-val": "DIV2K-Val", "realsr": "RealSR", "drealsr": "DRealSR", "reallr200": "RealLR200"}

# (LR folder, HR folder), lower-case, in priority order.
DATASET_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("lr", "hr"),
    ("lr", "gt"),
    ("lq", "gt"),
    ("lq", "hq"),
    ("test_lr", "test_hr"),
    ("input", "target"),
    ("input", "gt"),
)
_LR_ONLY = ("lr", "lq", "test_lr", "input")
_LR_SUFFIX = re.compile(r"[_\-]lr\d*$", re.IGNORECASE)
_HR_SUFFIX = re.compile(r"[_\-]hr$", re.IGNORECASE)


def paper_table_text() -> str:
    """Table 2's SeeSR rows as fixed-width text (for ``--help``)."""
    metrics = ("psnr", "ssim", "lpips", "dists", "fid", "niqe", "maniqa", "musiq", "clipiqa")
    header = f"  {'dataset':<10}" + "".join(f"{m.upper():>9}" for m in metrics)
    lines = [header]
    for key, row in PAPER_TABLE2.items():
        cells = []
        for metric in metrics:
            if metric not in row:
                cells.append(f"{'-':>9}")
            elif row[metric] is None:
                cells.append(f"{'(*)':>9}")
            else:
                decimals = 2 if metric in ("psnr", "fid", "musiq") else 4
                cells.append(f"{row[metric]:>9.{decimals}f}")
        lines.append(f"  {PAPER_ROW_NAMES[key]:<10}" + "".join(cells))
    return "\n".join(lines)


@dataclass
class DatasetLayout:
    """Where a dataset's LR inputs and HR references are.

    ``lr_files`` are the pipeline inputs; ``hr_files`` the ground truths (None: no-reference dataset).
    ``lr_dir`` is set when the LR images are exactly the images of one folder (it can then be passed as-is).
    """

    root: Path
    description: str
    lr_files: list[Path]
    hr_files: list[Path] | None
    lr_dir: Path | None = None
    hr_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def _subfolders(root: Path) -> dict[str, Path]:
    return {child.name.lower(): child for child in sorted(root.iterdir()) if child.is_dir()}


def _resolve_override(root: Path, value: str | Path) -> Path:
    path = Path(value)
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        path = root / path
    if not path.is_dir():
        raise ValueError(f"{value}: not a folder")
    return path


def _split_by_suffix(files: list[Path]) -> tuple[list[Path], list[Path]]:
    lr = [f for f in files if _LR_SUFFIX.search(f.stem)]
    hr = [f for f in files if _HR_SUFFIX.search(f.stem)]
    return lr, hr


def detect_layout(
    root: str | Path, lr_dir: str | Path | None = None, hr_dir: str | Path | None = None
) -> DatasetLayout:
    """Find the LR inputs and HR references of a benchmark dataset (see the module docstring for the layouts).

    Raises:
        ValueError: the folder does not exist or no LR images can be found; the message says what was tried.
    """
    from seesr.evaluation.pairing import list_images

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--dataset {root}: not a folder")

    if lr_dir is not None or hr_dir is not None:
        lr_path = _resolve_override(root, lr_dir) if lr_dir is not None else None
        hr_path = _resolve_override(root, hr_dir) if hr_dir is not None else None
        if lr_path is None:
            raise ValueError("--hr-dir needs --lr-dir as well (or neither, to detect both)")
        lr_files = list_images(lr_path)
        hr_files = list_images(hr_path) if hr_path is not None else None
        if hr_path is not None and lr_path.resolve() == hr_path.resolve():
            lr_files, hr_files = _split_by_suffix(lr_files)
            return _checked(DatasetLayout(root, f"{lr_path} (*_LR*/*_HR naming)", lr_files, hr_files, None, None))
        only_lr = lr_files if hr_files is None else [f for f in lr_files if not _HR_SUFFIX.search(f.stem)]
        return _checked(
            DatasetLayout(
                root,
                f"--lr-dir {lr_path}" + (f", --hr-dir {hr_path}" if hr_path else ""),
                only_lr,
                hr_files,
                lr_path if only_lr == lr_files else None,
                hr_path,
            )
        )

    folders = _subfolders(root)
    for lr_name, hr_name in DATASET_LAYOUTS:
        if lr_name in folders and hr_name in folders:
            lr_path, hr_path = folders[lr_name], folders[hr_name]
            return _checked(
                DatasetLayout(
                    root,
                    f"{lr_path.name}/ + {hr_path.name}/",
                    list_images(lr_path),
                    list_images(hr_path),
                    lr_path,
                    hr_path,
                )
            )

    lr_files, hr_files = _split_by_suffix(list_images(root, recursive=True))
    if lr_files and hr_files:
        return _checked(DatasetLayout(root, "*_LR*.png + *_HR.png naming", lr_files, hr_files))

    for lr_name in _LR_ONLY:
        if lr_name in folders:
            lr_path = folders[lr_name]
            layout = DatasetLayout(root, f"{lr_path.name}/ (no ground truth)", list_images(lr_path), None, lr_path)
            layout.notes.append("no HR folder found: no-reference metrics only")
            return _checked(layout)
    own = list_images(root)
    if own:
        layout = DatasetLayout(root, f"{root.name}/ images (no ground truth)", own, None, root)
        layout.notes.append("no HR folder found: no-reference metrics only")
        return _checked(layout)
    tried = ", ".join(f"{a.upper()}/+{b.upper()}/" for a, b in DATASET_LAYOUTS[:5])
    raise ValueError(
        f"--dataset {root}: no LR images found (looked for {tried}, *_LR4/*_HR file names and images in the folder); "
        "point at them with --lr-dir/--hr-dir"
    )


def _checked(layout: DatasetLayout) -> DatasetLayout:
    if not layout.lr_files:
        raise ValueError(f"{layout.root}: layout {layout.description} has no LR images")
    if layout.hr_files is not None and not layout.hr_files:
        raise ValueError(f"{layout.root}: layout {layout.description} has no HR images")
    return layout


def guess_paper_row(root: str | Path) -> str | None:
    """The key of :data:`PAPER_TABLE2` that the dataset folder's name suggests, or None."""
    name = re.sub(r"[^a-z0-9]", "", Path(root).resolve().name.lower())
    for key, pattern in (
        ("drealsr", "drealsr"),
        ("realsr", "realsr"),
        ("reallr200", "reallr200"),
        ("div2k-val", "div2k"),
    ):
        if pattern in name:
            return key
    return None


class SettingsMismatchError(ValueError):
    """``OUT/sr`` holds images made with other settings (or with unknown ones); the message says what to do."""


def read_upscale_settings(out: str | Path) -> dict[str, Any] | None:
    """The settings recorded in ``OUT/upscale-settings.json``, or None when there is no record."""
    path = Path(out) / SETTINGS_RECORD
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["settings"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SettingsMismatchError(f"{path}: unreadable ({error}); delete it and {Path(out) / 'sr'}") from None


def check_upscale_settings(out: str | Path, settings: dict[str, Any], images: list[Path]) -> None:
    """Refuse to resume when ``images`` (the outputs already in ``OUT/sr``) were made with other ``settings``.

    An empty ``OUT/sr`` always passes (nothing would be reused). Images without a record (an older seesr, or put
    there by hand) are refused too, since nothing says how they were made.
    """
    if not images:
        return
    out = Path(out)
    sr_dir = out / "sr"
    redo = f"use a new --out folder, or delete {sr_dir} to upscale them again with these settings"
    previous = read_upscale_settings(out)
    if previous is None:
        raise SettingsMismatchError(
            f"{sr_dir} holds {len(images)} image(s) but no {SETTINGS_RECORD} saying how they were made; {redo} "
            "(or evaluate them as they are with --eval-only)"
        )
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
    if changed:
        details = ", ".join(_change(key, previous.get(key), settings.get(key)) for key in changed)
        raise SettingsMismatchError(
            f"the {len(images)} image(s) in {sr_dir} were upscaled with other settings ({details}); rerun with the "
            f"same options to resume, or {redo}"
        )


def write_upscale_settings(out: str | Path, settings: dict[str, Any]) -> Path:
    """Record ``settings`` as those of the images in ``OUT/sr`` (atomically, before any image is written)."""
    record = {"settings": settings, "note": "settings of the images in sr/ (seesr benchmark compares them on reruns)"}
    return write_text_atomic(json.dumps(record, indent=1) + "\n", Path(out) / SETTINGS_RECORD)


def _change(key: str, old: Any, new: Any) -> str:
    if isinstance(old, list) or isinstance(new, list):
        return f"{key}: other files"
    return f"{key}: {'default' if old is None else old} -> {'default' if new is None else new}"
