"""Build fake Hugging Face cache layouts from the tiny release bundle (no network involved)."""

from __future__ import annotations

import shutil
from pathlib import Path

from seesr.weights.catalog import CATALOG, WeightFile
from tests.conftest import TINY

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_path(cache_dir: Path, entry: WeightFile, commit: str = FAKE_COMMIT) -> Path:
    return cache_dir / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots" / commit / entry.filename


def put_in_cache(
    cache_dir: Path, entry: WeightFile, source: Path, commit: str = FAKE_COMMIT, ref: str | None = None
) -> Path:
    """Place ``source`` where huggingface_hub keeps ``entry`` (snapshots/<commit>/<filename>, refs/<ref or main>)."""
    repo_dir = cache_dir / f"models--{entry.repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / (ref or "main")).write_text(commit)
    target = cache_path(cache_dir, entry, commit)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def fill_cache_from_tiny(cache_dir: Path, skip: tuple[str, ...] = ()) -> None:
    """Every catalog file, taken from the tiny bundle at its release-layout path, except ``skip`` (filenames)."""
    for entry in CATALOG:
        if entry.filename not in skip:
            put_in_cache(cache_dir, entry, TINY / entry.target)
