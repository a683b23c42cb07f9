"""Fetch the official files into the Hugging Face cache (and optionally a release-layout folder), and lock them.

One procedure serves ``seesr download`` and the first use of ``seesr upscale`` / ``tag`` / ``serve`` / ``prepare``
(:func:`ensure_default_weights`):

1. find what the cache lacks (:func:`~seesr.weights.resolve.find_cached`; a cached file that no longer matches the
   lock is deleted and fetched again);
2. ask the Hub once per missing file (one HEAD each, no retries, a short timeout): its commit, size and, for LFS
   files, sha256. An unreachable Hub ends the command at once with one message naming the offline routes;
3. announce the total size, then fetch every file with ``huggingface_hub.hf_hub_download`` at the commit from step 2,
   under one progress bar;
4. verify each file (the catalogue's sha256 where known, the Hub's sha256 for LFS files, the size), delete a file
   that fails, and record repository, commit and sha256 in the weights lock (:mod:`seesr.weights.lock`).

``HF_ENDPOINT`` (read at call time) selects another Hub; ``HF_HUB_OFFLINE=1`` fails at once with the missing files.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from seesr.utils.files import atomic_path
from seesr.weights import lock as weights_lock
from seesr.weights.catalog import CATALOG, WeightFile, files_for, pinned_revisions, with_override
from seesr.weights.resolve import (
    MissingWeightsError,
    default_bundle_dir,
    find_cached,
    hf_cache_dir,
    is_bundle,
    is_offline,
    missing_files_message,
    model_folder_route,
)

logger = logging.getLogger(__name__)

#: seconds to wait for the Hub's answer to the first request before calling the network unreachable
PROBE_TIMEOUT = 10.0
#: the catalogue files each command needs (``ram``: the plain RAM teacher of ``seesr prepare``)
NEEDS: dict[str, tuple[WeightFile, ...]] = {
    "pipeline": CATALOG,
    "tagger": tuple(files_for("ram")),
    "ram": tuple(entry for entry in files_for("ram") if entry.filename.startswith("ram_")),
}


class DownloadError(RuntimeError):
    """A file could not be fetched or failed verification; the message is meant for the user."""


class HubUnreachableError(MissingWeightsError):
    """The Hub could not be reached and files are missing; the message names the offline routes."""


@dataclass(frozen=True)
class RemoteFile:
    """A missing file as the Hub describes it (step 2)."""

    entry: WeightFile
    revision: str  # what was asked (branch, tag or commit)
    commit: str
    size: int | None
    hub_sha256: str | None  # the LFS sha256 the Hub reports (None for small git files)


def _hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _format_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _describe(remote: RemoteFile) -> str:
    return f"{remote.entry.repo_id}: {remote.entry.filename}"


# ---------------------------------------------------------------------------------------------------------------
# step 1: what is missing


def _remove_cached(path: Path) -> None:
    """Delete a cached file: the snapshot link and the blob it points to (only a blob inside the cache)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    cache = hf_cache_dir().resolve()
    if blob != path and blob.parent.name == "blobs" and blob.is_relative_to(cache):
        blob.unlink(missing_ok=True)


def _missing_or_changed(entries: list[WeightFile], revisions: dict[str, str] | None) -> list[WeightFile]:
    """Entries to fetch: missing ones, plus cached ones whose content no longer matches the lock (deleted first).

    A repository pinned to another revision than the locked one is locked again at the pinned one."""
    pins = pinned_revisions(revisions)
    for _attempt in range(2):
        try:
            return find_cached(entries, revisions)[1]
        except weights_lock.WeightsChangedError as error:
            relock = set()
            for entry, path, kind in error.problems:
                if kind == "revision" and pins.get(entry.repo_id):  # a pinned revision replaces the locked one
                    relock.add(entry.repo_id)
                elif kind == "content":
                    logger.warning(
                        "%s: %s changed since it was locked; fetching it again", entry.repo_id, entry.filename
                    )
                    _remove_cached(path)
                else:
                    raise
            weights_lock.forget(relock)
    return find_cached(entries, revisions)[1]


# ---------------------------------------------------------------------------------------------------------------
# step 2: ask the Hub


def _unreachable(missing: list[WeightFile], error: BaseException, route: str | None) -> HubUnreachableError:
    endpoint = _hub_endpoint() or "https://huggingface.co"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    reason = (
        f"The Hugging Face Hub ({endpoint}) cannot be reached ({type(error).__name__}: {first_line}), "
        "so nothing was downloaded."
    )
    return HubUnreachableError(missing_files_message(missing, hf_cache_dir(), reason, route))


def _ask_hub(entry: WeightFile, revision: str) -> RemoteFile:
    """One HEAD request, no retries (``huggingface_hub.get_hf_file_metadata``)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    endpoint = _hub_endpoint()
    url = hf_hub_url(entry.repo_id, entry.filename, revision=revision, endpoint=endpoint)
    metadata = get_hf_file_metadata(url, timeout=PROBE_TIMEOUT, endpoint=endpoint)
    if not metadata.commit_hash or not metadata.etag:
        raise DownloadError(
            f"{entry.repo_id}: {entry.filename}: {url} answered without the Hub's commit/ETag headers; "
            "check HF_ENDPOINT, the proxy or the firewall"
        )
    etag = metadata.etag.strip('"').lower()
    is_sha256 = len(etag) == 64 and all(char in "0123456789abcdef" for char in etag)
    return RemoteFile(entry, revision, metadata.commit_hash, metadata.size, etag if is_sha256 else None)


def plan_downloads(
    missing: list[WeightFile], pins: dict[str, str | None], route: str | None = None
) -> list[RemoteFile]:
    """Step 2 for every missing file; every file of a repository is taken at the commit of its first answer."""
    from huggingface_hub.errors import HfHubHTTPError

    plan: list[RemoteFile] = []
    commits: dict[str, str] = {}
    for entry in missing:
        revision = commits.get(entry.repo_id) or pins.get(entry.repo_id) or "main"
        try:
            remote = _ask_hub(entry, revision)
        except HfHubHTTPError as error:  # the Hub answered: no such repository, revision or file, or a server error
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise DownloadError(f"{entry.repo_id}: {entry.filename} at revision {revision}: {first_line}") from None
        except DownloadError:
            raise
        except Exception as error:  # noqa: BLE001 - DNS, refused or timed-out connections, offline mode
            raise _unreachable(missing, error, route) from None
        commits.setdefault(entry.repo_id, remote.commit)
        plan.append(remote)
    return plan


# ---------------------------------------------------------------------------------------------------------------
# steps 3 and 4: fetch under one bar, verify, lock


def _shared_bar_class(bar):
    """A ``tqdm_class`` for ``hf_hub_download`` that adds every file's bytes to ``bar`` and draws nothing itself."""

    class SharedBar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def close(self):
            pass

        def update(self, n=1):
            bar.update(n)

        def update_transfer(self, n=1):
            pass

        def set_postfix_str(self, *args, **kwargs):
            pass

        set_transfer_postfix_str = set_postfix_str

    return SharedBar


def _remember_ref(cache_dir: Path, remote: RemoteFile) -> None:
    """Point ``refs/<revision>`` at the commit, as ``hf_hub_download`` does when given a branch (we give it the
    commit, so that every file of a repository comes from the same one)."""
    if remote.revision == remote.commit:
        return
    ref = cache_dir / f"models--{remote.entry.repo_id.replace('/', '--')}" / "refs" / remote.revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(remote.commit)


def _verify_download(remote: RemoteFile, path: Path) -> dict:
    """Size and sha256 against the catalogue and the Hub; a failing file is deleted. Returns its lock record."""
    entry = with_override(remote.entry)
    size = path.stat().st_size
    problem = None
    for expected_size in (entry.size, remote.size):
        if expected_size is not None and size != expected_size:
            problem = f"has {size} bytes, {expected_size} expected"
    actual = weights_lock.sha256_of(path)
    for label, expected in (("the catalogue's", entry.sha256), ("the Hub's", remote.hub_sha256)):
        if problem is None and expected is not None and actual != expected:
            problem = f"has sha256 {actual}, not {label} {expected}"
    if problem is not None:
        _remove_cached(path)
        raise DownloadError(
            f"{_describe(remote)}: the downloaded file {problem} (a corrupted transfer or a changed file); it was "
            "deleted, run the command again to fetch it again"
        )
    return weights_lock.new_record(remote.entry, remote.commit, actual, path)


def fetch(plan: list[RemoteFile], progress: bool = True) -> None:
    """Steps 3-4: announce the total, download under one bar, verify and lock; every failure is listed at the end."""
    from huggingface_hub import hf_hub_download
    from tqdm.auto import tqdm

    known = [remote.size for remote in plan if remote.size is not None]
    total = sum(known)
    cache_dir = hf_cache_dir()
    if progress:
        print(  # noqa: T201
            f"downloading {len(plan)} file(s), {_format_size(total)}, "
            f"from {_hub_endpoint() or 'https://huggingface.co'}"
            f" into {cache_dir} (once; `--no-download` refuses, `--model FOLDER` uses files you already have)",
            file=sys.stderr,
        )
    errors, records = [], []
    with tqdm(total=total or None, unit="B", unit_scale=True, desc="download", disable=not progress) as bar:
        for remote in plan:
            bar.set_postfix_str(remote.entry.filename.rsplit("/", 1)[-1], refresh=False)
            try:
                path = Path(
                    hf_hub_download(
                        remote.entry.repo_id,
                        remote.entry.filename,
                        revision=remote.commit,
                        cache_dir=str(cache_dir),
                        endpoint=_hub_endpoint(),
                        tqdm_class=_shared_bar_class(bar),
                    )
                )
                records.append(_verify_download(remote, path))
                _remember_ref(cache_dir, remote)
            except DownloadError as error:
                errors.append(str(error))
            except Exception as error:  # noqa: BLE001 - hub/network errors: listed per file, never a traceback
                first_line = (str(error).strip().splitlines() or [""])[0][:300]
                errors.append(f"{_describe(remote)}: {type(error).__name__}: {first_line}")
    weights_lock.write_lock(records)
    if errors:
        raise DownloadError("some files could not be fetched:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------------------------------------------------------
# entry points


def _place(source: Path, destination: Path) -> None:
    """Hard-link (same file system) or copy ``source`` to ``destination`` atomically; a file of the same size that
    is already there is kept."""
    source = source.resolve()
    if destination.exists() and destination.stat().st_size == source.stat().st_size:
        return
    with atomic_path(destination, normal_mode=False) as temporary:  # a link keeps the cached file's mode
        os.unlink(temporary)  # a fresh name for the link
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)


def download_weights(
    dest: str | os.PathLike | None = None,
    revisions: dict[str, str] | None = None,
    entries: Iterable[WeightFile] = CATALOG,
    progress: bool = True,
    route: str | None = None,
) -> Path:
    """Fetch the catalogue files the cache lacks, verify and lock them; with ``dest`` also lay them out there.

    Args:
        dest: optional folder to receive the release layout (``--model dest`` then works anywhere).
        revisions: ``{repo_id: revision}`` pins (also ``SEESR_*_REVISION`` environment variables); without a pin a
            repository stays at its locked commit, or ``main`` when nothing of it is locked.
        entries: which files (default: all of :data:`~seesr.weights.catalog.CATALOG`).
        progress: announce the size and show the progress bar.
        route: the offline alternative named when the Hub is unreachable (default: ``--model FOLDER``).

    Returns:
        ``dest``, or the Hugging Face cache folder.

    Raises:
        MissingWeightsError: offline (``HF_HUB_OFFLINE=1``) or the Hub unreachable (:class:`HubUnreachableError`),
            and files are missing; lists them and the offline routes.
        DownloadError: the Hub refused a file, or a file failed verification.
    """
    entries = list(entries)
    pins = pinned_revisions(revisions)
    missing = _missing_or_changed(entries, revisions)
    if missing:
        if is_offline():
            raise MissingWeightsError(missing_files_message(missing, hf_cache_dir(), route=route))
        locked = weights_lock.read_lock()
        pins = {repo: pins.get(repo) or weights_lock.locked_commit(repo, locked) for repo in pins}
        unique = list({(entry.repo_id, entry.filename): entry for entry in missing}.values())  # one file, two targets
        fetch(plan_downloads(unique, pins, route), progress)
    if dest is None:
        return hf_cache_dir()
    found, _ = find_cached(entries, revisions, verify=False)
    dest = Path(dest)
    for entry, path in found.items():
        _place(path, dest / entry.target)
    return dest


def ensure_default_weights(
    need: str = "pipeline",
    *,
    download: bool = True,
    revisions: dict[str, str] | None = None,
    progress: bool = True,
    route: str | None = None,
) -> None:
    """Before a command loads the default model: download what ``need`` lacks (``pipeline``, ``tagger`` or ``ram``).

    Nothing happens when a converted bundle is in ``$SEESR_HOME/bundle`` or the files are cached. With
    ``download=False`` (``--no-download``) missing files raise :class:`MissingWeightsError` naming them.
    """
    if is_bundle(default_bundle_dir()):
        return
    entries = list(NEEDS[need])
    route = route or model_folder_route(entries)
    if not download:
        _, missing = find_cached(entries, revisions, verify=False)
        if missing:
            raise MissingWeightsError(
                missing_files_message(
                    missing, hf_cache_dir(), "--no-download is set, so nothing was downloaded.", route
                )
            )
        return
    download_weights(None, revisions, entries, progress, route)
