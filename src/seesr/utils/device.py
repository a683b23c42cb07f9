"""Device and dtype selection shared by the commands."""

from __future__ import annotations

import ctypes
import gc
import sys

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/"auto" picks CUDA, then Apple MPS, then CPU; anything else is passed to :class:`torch.device`."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``None``/"auto": fp32 on CPU (the exact parity mode), fp16 on CUDA/MPS."""
    if name in (None, "", "auto"):
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def is_accelerator_oom(error: BaseException) -> bool:
    """True for an accelerator allocator failure (``torch.OutOfMemoryError``, or a RuntimeError saying so)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(error, oom) or "out of memory" in str(error).lower()


def is_out_of_memory(error: BaseException) -> bool:
    """True when host memory (:class:`MemoryError`, or PyTorch's "DefaultCPUAllocator: can't allocate memory")
    or accelerator memory ran out."""
    if isinstance(error, MemoryError) or is_accelerator_oom(error):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def available_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes that a computation on ``device`` can still use: the host's available memory, plus the free memory
    of a CUDA device (large tensors may live in either); None when it cannot be measured."""
    try:
        import psutil  # a dependency of accelerate

        total = int(psutil.virtual_memory().available)
    except (ImportError, OSError):
        return None
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        total += int(torch.cuda.mem_get_info(device)[0])
    return total


def free_accelerator_memory() -> None:
    """Return the cached blocks of CUDA and MPS to the driver (other processes and later requests can use them)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def release_memory() -> None:
    """Give memory back after a large job: collect garbage (tensors kept alive by reference cycles), empty the
    accelerator caches (:func:`free_accelerator_memory`) and, on Linux with glibc, return the C heap's free pages to
    the system (``malloc_trim``; glibc keeps them otherwise, so a long-running server would stay at its peak)."""
    gc.collect()
    free_accelerator_memory()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, ...): nothing to trim
            pass
