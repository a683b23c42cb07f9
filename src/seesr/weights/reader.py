"""The one reader of weight files in seesr: every checkpoint the package loads is read here.

Rules applied to every file:

* **formats**: ``.safetensors`` is read with safetensors; anything else (``.pth``, ``.bin``, ``.ckpt``, ``.pt``) with
  ``torch.load(weights_only=True)``, memory-mapped when the file is a zip-format checkpoint (legacy files are read
  without the map). Nothing is ever unpickled with ``weights_only=False``.
* **checksums**: ``sha256=`` compares the file's sha256 before anything is parsed.
* **dtypes**: tensors of a dtype no SeeSR model uses (int8, uint8, float8, complex, ...) are refused by name;
  ``dtype=`` casts every floating-point tensor (integer and bool buffers keep theirs).
* **keys**: :func:`check_keys` names the missing and unexpected keys (the first few of each, then the count);
  :func:`check_tensors` compares shapes and float-ness with a model (one on the meta device is fine).

Every problem raises :class:`WeightReadError` with a one-line message that names the file and what to do: a corrupt or
truncated file says "delete it and download again"; a file with pickled code says it was refused and why. A missing
file raises :class:`FileNotFoundError` naming it (callers that know the repository add where to get it).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from seesr.utils.files import file_sha256

__all__ = [
    "SUPPORTED_DTYPES",
    "WeightReadError",
    "check_keys",
    "check_tensors",
    "file_sha256",
    "read_json_config",
    "read_state_dict",
    "read_tensor_specs",
    "read_torch_object",
    "verify_sha256",
]

#: dtypes a SeeSR checkpoint may hold: floating point weights, integer / bool buffers (position ids, counters).
SUPPORTED_DTYPES = frozenset(
    {torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool}
)
#: How many keys an error message lists before giving the count of the rest.
MAX_LISTED = 8

_SAFETENSORS_SUFFIXES = (".safetensors",)
_CORRUPT_HINT = "delete it and download again"


class WeightReadError(ValueError):
    """A weight file that cannot be used as it is; the one-line message names the file and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# checksums


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`WeightReadError` when ``path``'s sha256 is not ``expected`` (case-insensitive hex)."""
    actual = file_sha256(path)
    if actual.lower() != expected.strip().lower():
        raise WeightReadError(
            f"{path}: sha256 {actual} does not match the expected {expected.strip().lower()}; the file is corrupt, "
            f"truncated or was changed: {_CORRUPT_HINT}"
        )


# ---------------------------------------------------------------------------------------------------------------
# reading


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size == 0:
        raise WeightReadError(f"{path}: the file is empty (an interrupted download?); {_CORRUPT_HINT}")
    return path


def _is_safetensors(path: Path) -> bool:
    """By name, or by content for a misnamed file (an 8-byte header length followed by the JSON header's ``{``)."""
    if path.suffix.lower() in _SAFETENSORS_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _torch_load_error(path: Path, error: BaseException) -> WeightReadError:
    """Classify a ``torch.load(weights_only=True)`` failure as refused pickle code or a corrupt file."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and (
        "GLOBAL" in text or "Unsupported operand" in text or "Unsupported class" in text
    ):
        # name what was refused, never torch's advice to allow-list it (that would run the payload)
        found = re.search(r"GLOBAL ([\w.]+)|Unsupported (?:operand|class) ?([^\s.,;:]*)", text)
        detail = f"it asks for {next(g for g in found.groups() if g is not None)}" if found else "pickle code"
        return WeightReadError(
            f"{path}: refused: the file holds pickled Python objects, not plain tensors ({detail}); only safetensors "
            "and plain PyTorch state dicts are read (weights_only=True). Use the official file or convert it"
        )
    first_line = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return WeightReadError(
        f"{path}: cannot be read as a PyTorch checkpoint, the file is corrupt or truncated ({first_line}); "
        f"{_CORRUPT_HINT}"
    )


def _torch_load(path: Path, device: str | torch.device, mmap: bool) -> Any:
    try:
        try:
            return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
        except RuntimeError as error:  # legacy (non-zip) serialisation cannot be memory-mapped
            if not mmap or "mmap can only be used" not in str(error):
                raise
            return torch.load(path, map_location=device, weights_only=True)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - every unpickling/zip error becomes one clear line
        raise _torch_load_error(path, error) from None


def _safetensors_load(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError) as error:
        raise WeightReadError(
            f"{path}: not a readable safetensors file, it is corrupt or truncated ({error}); {_CORRUPT_HINT}"
        ) from None
    except (TypeError, ValueError) as error:  # an unknown dtype string in the header
        raise WeightReadError(f"{path}: unsupported tensor type in the safetensors header ({error})") from None


def _check_dtypes(state: Mapping[str, torch.Tensor], path: Path) -> None:
    bad = [f"{key} ({value.dtype})" for key, value in state.items() if value.dtype not in SUPPORTED_DTYPES]
    if bad:
        raise WeightReadError(
            f"{path}: {len(bad)} tensor(s) of an unsupported dtype: {_listing(bad)}; SeeSR weights are floating point "
            "(quantised checkpoints are not supported)"
        )


def read_state_dict(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    sha256: str | None = None,
    mmap: bool = True,
    entry: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from a safetensors or PyTorch file.

    Args:
        path: the file (``.safetensors``, or ``.pth``/``.bin``/``.ckpt``/``.pt`` read with ``weights_only=True``).
        device: where the tensors are placed (``"meta"`` is not accepted; use :func:`read_tensor_specs`).
        dtype: cast every floating-point tensor to it (None keeps the stored dtypes).
        sha256: expected sha256 of the file, checked before parsing.
        mmap: memory-map zip-format PyTorch files (tensors are read on first use).
        entry: for PyTorch files holding ``{entry: state_dict, ...}`` (RAM's ``{"model": ...}``), the entry to
            return when present.

    Raises:
        FileNotFoundError: no such file.
        WeightReadError: checksum mismatch, corrupt/truncated file, pickled code, not a flat tensor dict, or a
            tensor of an unsupported dtype.
    """
    path = _existing_file(path)
    if sha256:
        verify_sha256(path, sha256)
    if _is_safetensors(path):
        state = _safetensors_load(path, device)
    else:
        data = _torch_load(path, device, mmap)
        if entry is not None and isinstance(data, Mapping) and isinstance(data.get(entry), Mapping):
            data = data[entry]
        if not isinstance(data, Mapping) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in data.items()
        ):
            raise WeightReadError(f"{path}: does not hold a flat {{name: tensor}} state dict")
        state = dict(data)
    _check_dtypes(state, path)
    if dtype is not None:
        state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
    return state


def read_torch_object(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", sha256: str | None = None, mmap: bool = False
) -> Any:
    """Any ``weights_only=True`` object from a PyTorch file (optimizer / scheduler state: dicts, lists, numbers,
    tensors). Errors as :func:`read_state_dict`; nothing that needs pickled code is ever loaded."""
    path = _existing_file(path)
    if sha256:
        verify_sha256(path, sha256)
    return _torch_load(path, device, mmap)


def read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a config file (``config.json``, an index, a scheduler config); a missing, unreadable or
    non-object file raises :class:`WeightReadError` naming it (the config's values are the caller's to check)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise WeightReadError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise WeightReadError(f"{path} does not hold a JSON object")
    return data


def read_tensor_specs(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype name)}`` of a safetensors file, read from its header only (no tensor is loaded)."""
    from safetensors import SafetensorError, safe_open

    path = _existing_file(path)
    try:
        with safe_open(path, framework="pt") as handle:
            specs = {}
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                specs[key] = (tuple(tensor_slice.get_shape()), str(tensor_slice.get_dtype()))
            return specs
    except (SafetensorError, OSError) as error:
        raise WeightReadError(
            f"{path}: not a readable safetensors file, it is corrupt or truncated ({error}); {_CORRUPT_HINT}"
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# checks


def _listing(items: Iterable[str], limit: int = MAX_LISTED) -> str:
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _key_problems(have: set[str], want: set[str], strict: bool, limit: int) -> list[str]:
    missing, unexpected = want - have, (have - want if strict else set())
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing, limit)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected, limit)}")
    return problems


def check_keys(
    state: Iterable[str],
    expected_keys: Iterable[str],
    *,
    source: str | os.PathLike,
    strict: bool = True,
    limit: int = MAX_LISTED,
) -> None:
    """Raise :class:`WeightReadError` naming missing (and, if ``strict``, unexpected) keys.

    ``state`` is a state dict or any iterable of its keys. The message lists the first ``limit`` keys of each kind,
    then how many more there are.
    """
    problems = _key_problems(set(state), set(expected_keys), strict, limit)
    if problems:
        raise WeightReadError(f"{source}: does not match the model: " + "; ".join(problems))


def check_tensors(
    state: Mapping[str, Any],
    expected: Mapping[str, torch.Tensor],
    *,
    source: str | os.PathLike,
    strict: bool = True,
    limit: int = MAX_LISTED,
) -> None:
    """Keys (see :func:`check_keys`), shapes and dtype kinds of ``state`` against ``expected`` (e.g. the state dict of
    a model built on the meta device, so nothing is allocated before the check).

    ``state`` values may be tensors or ``(shape, dtype name)`` pairs from :func:`read_tensor_specs`. A floating-point
    model tensor needs a floating-point checkpoint tensor (an int8 tensor where a weight belongs is refused).
    """
    problems = _key_problems(set(state.keys()), set(expected.keys()), strict, limit)
    wrong_shape, wrong_kind = [], []
    for key, reference in expected.items():
        if key not in state:
            continue
        shape, is_float, dtype_name = _describe(state[key])
        if shape != tuple(reference.shape):
            wrong_shape.append(f"{key} {shape} vs model {tuple(reference.shape)}")
        elif reference.is_floating_point() and not is_float:
            wrong_kind.append(f"{key} ({dtype_name})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) of the wrong shape: {_listing(wrong_shape, limit)}")
    if wrong_kind:
        problems.append(
            f"{len(wrong_kind)} non-floating-point tensor(s) where weights belong: {_listing(wrong_kind, limit)}"
        )
    if problems:
        raise WeightReadError(f"{source}: does not match the model: " + "; ".join(problems))


_FLOAT_NAMES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def _describe(value: Any) -> tuple[tuple[int, ...], bool, str]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.is_floating_point(), str(value.dtype).removeprefix("torch.")
    shape, dtype_name = value
    return tuple(shape), str(dtype_name).upper() in _FLOAT_NAMES, str(dtype_name)
