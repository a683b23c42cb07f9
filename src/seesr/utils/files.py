"""Files written atomically, and file checksums. Atomically: a temporary file beside the destination, renamed over
it once complete, so that a reader (or a rerun after a crash, Ctrl-C or a killed worker) sees the old file or the
new one, never a part."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _process_umask() -> int:
    """The umask, read once at import (reading it means setting it: not something to do while threads write)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _process_umask()


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str = ".part", normal_mode: bool = True) -> Iterator[str]:
    """Yield a temporary path in ``destination``'s folder (created if missing) to write to; when the block ends
    without an error it replaces ``destination``; otherwise it is removed. ``suffix``: what writers that guess the
    format from the name need (e.g. ``.mp4``). ``normal_mode``: give the file the permissions of a normal new file
    (not mkstemp's 0600); off when the path was replaced by a hard link to a file whose mode must stay."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix, dir=destination.parent)
    os.close(handle)
    try:
        yield temporary
        if normal_mode:
            os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text_atomic(text: str, destination: str | os.PathLike) -> Path:
    """Write a UTF-8 text file atomically."""
    with atomic_path(destination) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
    return Path(destination)


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weights checksums, the input a result was made from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
