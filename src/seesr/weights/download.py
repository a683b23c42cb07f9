"""Fetch the official files into the Hugging Face cache (and optionally a release-layout folder).

Downloads go through ``huggingface_hub.hf_hub_download``: resumable (interrupted downloads continue from the
``.incomplete`` file), with progress bars, into the standard cache that ``--model``-less runs read. Files with a
known sha256 are verified after download. With ``HF_HUB_OFFLINE=1`` nothing touches the network: the call fails at
once with the list of files that are not in the cache yet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from seesr.weights.catalog import CATALOG, WeightFile, pinned_revisions
from seesr.weights.resolve import MissingWeightsError, cached_file, hf_cache_dir, is_offline, missing_files_message

logger = logging.getLogger(__name__)

HASH_CHUNK = 8 * 1024 * 1024


class DownloadError(RuntimeError):
    """A file could not be fetched or failed verification; the message is meant for the user."""


def sha256_of(path: Path, progress: bool = False) -> str:
    """Streaming sha256 of a file (with a tqdm bar for large files when ``progress``)."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as stream,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=f"verify {path.name}", disable=not progress or size < 64 << 20
        ) as bar,
    ):
        for chunk in iter(lambda: stream.read(HASH_CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify(entry: WeightFile, path: Path, progress: bool = False) -> None:
    """Raise :class:`DownloadError` when ``path`` does not have the catalog size/sha256 (if known)."""
    if entry.size is not None and path.stat().st_size != entry.size:
        raise DownloadError(
            f"{entry.repo_id}/{entry.filename}: {path} has {path.stat().st_size} bytes, expected {entry.size} "
            "(incomplete or changed file; delete it and run `seesr download` again)"
        )
    if entry.sha256 is not None:
        actual = sha256_of(path, progress)
        if actual != entry.sha256:
            raise DownloadError(
                f"{entry.repo_id}/{entry.filename}: sha256 {actual} does not match the expected {entry.sha256}; "
                f"delete {path} and run `seesr download` again"
            )


def _place(source: Path, destination: Path) -> None:
    """Hard-link (same file system) or copy ``source`` to ``destination`` atomically; a file of the same size already there is kept."""
    source = source.resolve()
    if destination.exists() and destination.stat().st_size == source.stat().st_size:
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.part")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, destination)


def download_weights(
    dest: str | os.PathLike | None = None,
    revisions: dict[str, str] | None = None,
    entries: Iterable[WeightFile] = CATALOG,
    progress: bool = True,
    downloader: Callable[..., str] | None = None,
) -> Path:
    """Fetch every catalog file into the Hugging Face cache; with ``dest`` also lay them out as a release folder.

    Args:
        dest: optional folder to receive the release layout (``--model dest`` then works anywhere).
        revisions: ``{repo_id: revision}`` pins (also ``SEESR_*_REVISION`` environment variables).
        entries: which files (default: all of :data:`~seesr.weights.catalog.CATALOG`).
        progress: show download/verification progress bars.
        downloader: replacement for ``huggingface_hub.hf_hub_download`` (tests).

    Returns:
        ``dest``, or the Hugging Face cache folder.

    Raises:
        MissingWeightsError: offline (``HF_HUB_OFFLINE=1``) and files are not cached yet; lists them.
        DownloadError: a download failed or a file failed verification.
    """
    entries = list(entries)
    pins = pinned_revisions(revisions)
    cache_dir = hf_cache_dir()
    if is_offline():
        missing = [entry for entry in entries if cached_file(entry, pins[entry.repo_id], cache_dir) is None]
        if missing:
            raise MissingWeightsError(missing_files_message(missing, cache_dir))
    if downloader is None:
        from huggingface_hub import hf_hub_download

        downloader = hf_hub_download
    errors: list[str] = []
    fetched: dict[str, Path] = {}
    for entry in entries:
        revision = pins[entry.repo_id]
        already = cached_file(entry, revision, cache_dir)
        try:
            if already is not None:
                path = already
            else:
                logger.info("downloading %s/%s", entry.repo_id, entry.filename)
                path = Path(downloader(entry.repo_id, entry.filename, revision=revision, cache_dir=str(cache_dir)))
            if already is None or entry.sha256 is not None:
                verify(entry, path, progress)
        except DownloadError as error:
            errors.append(str(error))
            continue
        except Exception as error:  # hub/network errors: listed per file, never a traceback
            errors.append(f"{entry.repo_id}/{entry.filename}: {type(error).__name__}: {error}")
            continue
        fetched[entry.target] = path
    if errors:
        raise DownloadError("some files could not be fetched:\n  " + "\n  ".join(errors))
    if dest is None:
        return cache_dir
    dest = Path(dest)
    for target, path in fetched.items():
        _place(path, dest / target)
    return dest
