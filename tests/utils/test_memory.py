"""Out-of-memory recognition and the memory measurement used by the processing-size guard (issue 13 item 2)."""

from __future__ import annotations

import torch

from seesr.utils.device import available_memory, is_out_of_memory


def test_cpu_allocator_failure_counts_as_out_of_memory():
    # what PyTorch raises when a CPU tensor cannot be allocated (not an OutOfMemoryError, no "out of memory")
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried ")
    assert is_out_of_memory(cpu)
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("x"))


def test_available_memory_is_a_plausible_byte_count():
    free = available_memory("cpu")
    assert free is not None and 10**7 < free < 10**15
