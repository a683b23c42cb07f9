"""Multi-process (multi-GPU) batch inference: shard a list of inputs, run each shard, one summary.

Two ways to start the processes, same code path afterwards:

* ``accelerate launch --num_processes N -m seesr upscale FOLDER ...`` (or ``torchrun``): the launcher sets
  ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``;
* ``seesr upscale --num-gpus N ...``: :func:`launch_local_workers` starts N local processes with torch's elastic
  launcher (the machinery of ``torchrun``), which sets those variables, waits, and stops the others when one
  crashes.

In each process :func:`init_distributed` reads the variables and joins a ``gloo`` process group (inference
processes exchange only small Python objects, so no NCCL is needed; it also works on CPU). Every process takes the
items ``items[rank::world_size]`` (:meth:`DistributedContext.shard`) so each input is handled - and each output
written - by exactly one process (``seesr upscale`` plans the output names over *all* inputs,
:func:`seesr.pipeline.batch.plan_outputs`, so every process refuses the same name clashes); :meth:`DistributedContext.gather` brings the per-process results to rank 0,
which writes the one summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "init_distributed",
    "is_worker",
    "launch_local_workers",
    "shard",
]

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items of process ``rank``: ``items[rank::world_size]`` (every item in exactly one shard, order kept)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    return list(items[rank::world_size])


@dataclass
class DistributedContext:
    """This process's place in a multi-process run (a single process: rank 0 of 1, no process group).

    Attributes:
        rank / world_size / local_rank: from the launcher's environment.
        group_initialised: whether this context created the ``gloo`` process group (and must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group_initialised: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None = None) -> Any:
        """The device of this process: ``cuda:<local_rank>`` when CUDA is requested or available, else as given.

        Raises:
            ValueError: more processes on this host than visible GPUs when running on CUDA.
        """
        import torch

        if requested not in (None, "", "auto", "cuda"):
            return torch.device(requested)
        if requested == "cuda" or (requested in (None, "", "auto") and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ValueError("device 'cuda' requested but CUDA is not available")
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise ValueError(f"process {self.local_rank} needs GPU {self.local_rank} but only {count} are visible")
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        from seesr.utils.device import resolve_device

        return resolve_device(requested)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items`` (see :func:`shard`)."""
        return shard(items, self.rank, self.world_size)

    def gather(self, obj: Any) -> list[Any] | None:
        """Collect one picklable object per process on rank 0 (rank order); other ranks get None."""
        if not self.is_distributed:
            return [obj]
        import torch.distributed as dist

        received: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, received, dst=0)
        return received

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group (if this context created it)."""
        if self.group_initialised:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.group_initialised = False

    def __enter__(self) -> DistributedContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError as error:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from error


def init_distributed(timeout: timedelta = timedelta(hours=6)) -> DistributedContext:
    """Join the process group described by the launcher's environment (``RANK``, ``WORLD_SIZE``, ...).

    Without those variables (or with ``WORLD_SIZE`` 1) this is a single-process context and nothing is
    initialised. ``timeout`` bounds every collective, including the final :meth:`~DistributedContext.gather`
    while slower ranks finish their shards.
    """
    world_size = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local_rank = _int_env("LOCAL_RANK", rank)
    if world_size <= 1:
        return DistributedContext()
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ValueError(f"WORLD_SIZE={world_size} but {name} is not set; start with accelerate/torchrun")
        dist.init_process_group(backend="gloo", rank=rank, world_size=world_size, timeout=timeout)
        created = True
    logger.debug("process %d of %d (local rank %d) joined", rank, world_size, local_rank)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, group_initialised=created)


@contextlib.contextmanager
def _quiet_launcher_logs() -> Iterator[None]:
    """The elastic agent logs each worker's traceback and a failure table at ERROR; the worker already said in one
    line what went wrong, so the agent's loggers are raised to CRITICAL for the launch (restored after)."""
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.distributed.launcher")]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for item, level in zip(loggers, levels, strict=True):
            item.setLevel(level)


def _entry(target: Callable[..., int | None], arguments: tuple) -> int:
    """Run in each worker: share the host's CPU threads between the workers, then run ``target``."""
    import torch

    world = _int_env("LOCAL_WORLD_SIZE", 1)
    if "OMP_NUM_THREADS" not in os.environ and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return int(target(*arguments) or 0)


def launch_local_workers(num_processes: int, target: Callable[..., int | None], arguments: Sequence[Any] = ()) -> int:
    """Run ``target(*arguments)`` in ``num_processes`` local processes with torch's elastic launcher (what
    ``torchrun --nproc-per-node N`` does for a script) and wait for all of them.

    Each process gets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` (so
    :func:`init_distributed` joins the group and :func:`is_worker` is true). ``target`` and ``arguments`` must be
    picklable (a module-level function); its return value is the process's exit code. A process that raises stops
    the others; a non-zero *returned* code (e.g. some inputs failed) does not. Ctrl-C stops all of them.

    Returns:
        0 when every process returned 0, else the first non-zero code in rank order; 1 when a process crashed,
        130 on Ctrl-C.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=f"seesr-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port, chosen by the launcher
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        with _quiet_launcher_logs():
            codes = elastic_launch(config, _entry)(target, tuple(arguments))
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        logger.error("process %d crashed (exit code %d)", rank, failure.exitcode)
        return 1
    except (KeyboardInterrupt, SignalException):
        return 130
    return next((int(code) for _, code in sorted(codes.items()) if code), 0)


def is_worker() -> bool:
    """True inside a process of a multi-process run (:func:`launch_local_workers`, ``torchrun``, ``accelerate
    launch``): ``WORLD_SIZE`` > 1."""
    return _int_env("WORLD_SIZE", 1) > 1
