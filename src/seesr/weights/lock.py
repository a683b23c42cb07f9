"""The weights lock: which commit and which sha256 every downloaded file had, checked on every later load.

``seesr download`` (and the first-use download) writes ``$SEESR_HOME/weights-lock.json``, one record per file of
each Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``) it fetched into::

    {"version": 1,
     "files": [{"cache": "/home/me/.cache/huggingface/hub", "repo": "CSWRY/SeeSR", "filename": "DAPE.pth",
                "commit": "<40 hex>", "sha256": "<64 hex>", "size": 7190000, "stat": [size, mtime_ns, inode]}, ...]}

Loads take each repository at its locked commit (unless a revision is pinned with ``--revision`` or a
``SEESR_*_REVISION`` variable, which must then agree with the lock) and refuse a file whose size or sha256 changed,
naming it. ``stat`` remembers the file as it was when last hashed: an untouched file is not hashed again, a touched one
is. A cached file without a lock entry (fetched by an older seesr or another tool) is hashed once, checked against the
catalogue's sha256 where one is known, and locked from then on.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from seesr.utils.files import write_text_atomic
from seesr.weights.catalog import WeightFile, with_override
from seesr.weights.resolve import MissingWeightsError, seesr_home

logger = logging.getLogger(__name__)

LOCK_NAME = "weights-lock.json"
LOCK_VERSION = 1
HASH_CHUNK = 8 * 1024 * 1024
LARGE_FILE = 1 << 30  # files worth a line before hashing them
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class WeightsChangedError(MissingWeightsError):
    """A cached file differs from what was locked (or from the catalogue); the message names it.

    Attributes:
        problems: ``(entry, path, kind)`` per file, ``kind`` being ``"content"`` (size or sha256) or ``"revision"``.
    """

    def __init__(self, message: str, problems: list[tuple[WeightFile, Path, str]]):
        super().__init__(message)
        self.problems = problems


def lock_path() -> Path:
    return seesr_home() / LOCK_NAME


def key_of(entry: WeightFile) -> str:
    return f"{entry.repo_id}/{entry.filename}"


def _read_all(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        raise MissingWeightsError(
            f"{path}: unreadable weights lock ({error}); delete it and run `seesr download`"
        ) from None
    files = data.get("files", []) if isinstance(data, dict) else []
    return [record for record in files if isinstance(record, dict)] if isinstance(files, list) else []


def _write_all(records: list[dict], path: Path) -> None:
    try:
        write_text_atomic(json.dumps({"version": LOCK_VERSION, "files": records}, indent=1) + "\n", path)
    except OSError as error:
        logger.warning("could not write the weights lock %s: %s", path, error)


def _cache() -> str:
    from seesr.weights.resolve import hf_cache_dir

    return str(hf_cache_dir().expanduser().resolve())


def read_lock(path: Path | None = None) -> dict[str, dict]:
    """The records of the current Hugging Face cache by ``REPO/FILENAME`` (empty when nothing is locked yet)."""
    cache = _cache()
    return {
        f"{record.get('repo')}/{record.get('filename')}": record
        for record in _read_all(path or lock_path())
        if record.get("cache") == cache
    }


def write_lock(records: Iterable[dict], path: Path | None = None) -> None:
    """Merge ``records`` (of the current cache) into the lock and write it atomically (best effort)."""
    path = path or lock_path()
    records = list(records)
    if not records:
        return
    cache = _cache()
    new = {(cache, record["repo"], record["filename"]): {**record, "cache": cache} for record in records}
    kept = [r for r in _read_all(path) if (r.get("cache"), r.get("repo"), r.get("filename")) not in new]
    _write_all(kept + list(new.values()), path)


def forget(repo_ids: Iterable[str], path: Path | None = None) -> None:
    """Drop the current cache's records of ``repo_ids`` (a download at another pinned revision locks them again)."""
    path = path or lock_path()
    cache, repo_ids = _cache(), set(repo_ids)
    records = _read_all(path)
    kept = [r for r in records if not (r.get("cache") == cache and r.get("repo") in repo_ids)]
    if len(kept) != len(records):
        _write_all(kept, path)


def locked_commit(repo_id: str, lock: dict[str, dict]) -> str | None:
    """The commit the lock holds ``repo_id`` at (None when nothing of it is locked)."""
    return next((record["commit"] for record in lock.values() if record.get("repo") == repo_id), None)


def sha256_of(path: Path, progress: bool = False) -> str:
    """sha256 of a file (:func:`seesr.weights.reader.file_sha256`); large files are announced when ``progress``."""
    from seesr.weights.reader import file_sha256

    size = Path(path).stat().st_size
    if progress and size >= LARGE_FILE:
        logger.info("checking %s (%.1f GB) against the weights lock", Path(path).name, size / 1e9)
    return file_sha256(path, chunk_size=HASH_CHUNK)


def snapshot_commit(path: Path, entry: WeightFile) -> str | None:
    """The commit of a Hugging Face cache path ``.../snapshots/<commit>/<filename>`` (None elsewhere)."""
    parts = Path(path).parts
    depth = len(Path(entry.filename).parts)
    if len(parts) > depth + 1 and parts[-depth - 2] == "snapshots":
        return parts[-depth - 1]
    return None


def file_stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def new_record(entry: WeightFile, commit: str, sha256: str, path: Path) -> dict:
    return {
        "repo": entry.repo_id,
        "filename": entry.filename,
        "commit": commit,
        "sha256": sha256,
        "size": path.stat().st_size,
        "stat": file_stat(path),
    }


def check_cached(
    entry: WeightFile, path: Path, lock: dict[str, dict], pinned: str | None = None, progress: bool = False
) -> tuple[dict | None, str | None, str]:
    """Check one cached file against its lock record (or the catalogue when it has none).

    Returns ``(record to write or None, problem or None, kind)``: ``problem`` is a user-facing line naming the file,
    ``kind`` is ``"revision"`` (another commit than the locked one) or ``"content"`` (size or sha256).
    """
    expected = with_override(entry)
    record = lock.get(key_of(entry))
    commit = snapshot_commit(path, entry) or ""
    name = f"{entry.repo_id}: {entry.filename}"
    redownload = "run `seesr download` to fetch it again"
    if record is not None and record.get("commit") != commit:
        asked = f", and revision {pinned} was asked" if pinned else ""
        return (
            None,
            (
                f"{name}: the lock {lock_path()} holds commit {record.get('commit')} but the cache has commit {commit}"
                f"{asked}; run `seesr download --revision {entry.repo_id}=REV` to fetch and lock the revision you want"
            ),
            "revision",
        )
    want_sha = (record or {}).get("sha256") or expected.sha256
    want_size = (record or {}).get("size") or expected.size
    if record is not None and expected.sha256 and record.get("sha256") != expected.sha256:
        return (
            None,
            f"{name}: locked sha256 {record.get('sha256')} is not the catalogue's {expected.sha256}; {redownload}",
            "content",
        )
    size = Path(path).stat().st_size
    if want_size is not None and size != want_size:
        return (
            None,
            f"{name}: {path} has {size} bytes, {want_size} expected (truncated or changed); {redownload}",
            "content",
        )
    if record is not None and record.get("stat") == file_stat(Path(path)):
        return None, None, ""  # not touched since it was last hashed
    actual = sha256_of(Path(path), progress)
    if want_sha is not None and actual != want_sha:
        return (
            None,
            f"{name}: {path} has sha256 {actual}, {want_sha} expected (corrupt or changed); {redownload}",
            "content",
        )
    return new_record(entry, commit, actual, Path(path)), None, ""
