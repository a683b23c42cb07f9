"""The manifest of a converted bundle: every file's sha256 and size, written last and checked when the bundle loads.

``OUT/manifest.json``::

    {"version": 1, "algorithm": "sha256",
     "files": {"unet/diffusion_pytorch_model.safetensors": {"sha256": "<64 hex>", "size": 123}, ...}}

A load (:func:`verify_manifest`) refuses a bundle with a changed, truncated, missing or extra file, naming it;
``--no-verify`` skips the hashing (sizes and the file list are still compared) for speed on trusted disks. A bundle
without a manifest (made by seesr before 0.1.1) loads with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from seesr.weights.resolve import MissingWeightsError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class BundleChangedError(MissingWeightsError):
    """A converted bundle's files differ from its manifest; the message names them."""


def _bundle_files(folder: Path) -> list[Path]:
    """Every file of the bundle except the manifest, hidden files and READMEs (a user may add notes)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.name != MANIFEST_NAME
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and not path.name.upper().startswith("README")
    )


def write_manifest(folder: str | os.PathLike) -> Path:
    """Hash every file of ``folder`` into ``folder/manifest.json`` (call it when the bundle is complete)."""
    from seesr.weights.reader import file_sha256

    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): {"sha256": file_sha256(path), "size": path.stat().st_size}
        for path in _bundle_files(folder)
    }
    manifest = {"version": MANIFEST_VERSION, "algorithm": "sha256", "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return folder / MANIFEST_NAME


def verify_manifest(folder: str | os.PathLike, hashes: bool = True, only: str | None = None) -> None:
    """Compare ``folder`` with its manifest; raise :class:`BundleChangedError` naming every difference.

    ``hashes=False`` (``--no-verify``) compares the file list and sizes only; ``only="tagger"`` checks that
    subfolder alone (``seesr tag --model BUNDLE`` reads nothing else).
    """
    from seesr.weights.reader import file_sha256

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        expected: dict[str, dict] = manifest["files"]
    except FileNotFoundError:
        logger.warning("%s has no %s (an older seesr made it): its files are not checked", folder, MANIFEST_NAME)
        return
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BundleChangedError(f"{folder / MANIFEST_NAME}: unreadable bundle manifest ({error})") from None
    present = {path.relative_to(folder).as_posix(): path for path in _bundle_files(folder)}
    if only is not None:
        expected = {name: record for name, record in expected.items() if name.startswith(f"{only}/")}
        present = {name: path for name, path in present.items() if name.startswith(f"{only}/")}
    problems = [f"{name}: missing" for name in expected if name not in present]
    problems += [f"{name}: not part of the bundle (not in its manifest)" for name in present if name not in expected]
    for name, path in present.items():
        record = expected.get(name)
        if record is None:
            continue
        size = path.stat().st_size
        if size != record["size"]:
            problems.append(f"{name}: {size} bytes, {record['size']} expected (truncated or changed)")
        elif hashes and file_sha256(path) != record["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (corrupt or changed)")
    if problems:
        raise BundleChangedError(
            f"converted bundle {folder} does not match its {MANIFEST_NAME}:\n  "
            + "\n  ".join(problems)
            + "\nRe-create it with `seesr convert SRC OUT` (or pass --no-verify to skip the sha256 check)."
        )
