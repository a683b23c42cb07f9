"""Helpers for the hostile-input corpus (issue 13): folder snapshots, marker payloads, running seesr as a user."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): relative path -> (kind, sha256 or link target, mode)."""
    entries: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            info = path.lstat()
            key = path.relative_to(folder).as_posix()
            if stat.S_ISLNK(info.st_mode):
                entries[key] = ("link", os.readlink(path), stat.S_IMODE(info.st_mode))
            elif stat.S_ISDIR(info.st_mode):
                entries[key] = ("dir", None, stat.S_IMODE(info.st_mode))
            else:
                entries[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(info.st_mode))
    return entries


class MarkerPayload:
    """Unpickling this object creates ``marker``: the proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(marker: Path) -> bytes:
    """A plain pickle (the legacy torch format's first record is a pickle too)."""
    return pickle.dumps({"state_dict": MarkerPayload(marker)})


def torch_zip_payload(marker: Path) -> bytes:
    """A ``torch.save`` zip archive (the format of .pth/.bin files) whose data.pkl runs the payload."""
    buffer = io.BytesIO()
    torch.save({"state_dict": MarkerPayload(marker)}, buffer)
    return buffer.getvalue()


PAYLOADS = {"pickle": pickle_payload, "torch-zip": torch_zip_payload}


def run_seesr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m seesr ARGS`` as a user runs it (offline, one thread, the repository's sources)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "seesr", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def error_line(err: str, path: Path | str) -> str:
    """The one stderr line that names ``path``; fails on a traceback or on zero / several such lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if str(path) in line]
    assert len(lines) == 1, f"expected one line naming {path}:\n{err}"
    return lines[0]
