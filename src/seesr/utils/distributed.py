"""Multi-process (multi-GPU) batch inference: shard a list of inputs, run each shard, one summary.

Two ways to start the processes, same code path afterwards:

* ``accelerate launch --num_processes N -m seesr upscale FOLDER ...`` (or ``torchrun``): the launcher sets
  ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``;
* ``seesr upscale --num-gpus N ...``: :func:`launch_workers` starts N copies of the same command locally with those
  variables set (a free port on 127.0.0.1), waits, and stops the others when one fails.

In each process :func:`init_distributed` reads the variables and joins a ``gloo`` process group (inference
processes exchange only small Python objects, so no NCCL is needed; it also works on CPU). Every process takes the
items ``items[rank::world_size]`` (:meth:`DistributedContext.shard`) so each input is handled - and each output
written - by exactly one process; :meth:`DistributedContext.gather` brings the per-process results to rank 0,
which writes the one summary.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "free_port",
    "init_distributed",
    "is_worker",
    "launch_workers",
    "shard",
    "worker_environment",
]

T = TypeVar("T")

#: environment variable marking a process started by :func:`launch_workers` (so it does not launch again)
WORKER_FLAG = "SEESR_DISTRIBUTED_WORKER"


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_environment(rank: int, world_size: int, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker ``rank`` of a local run (what torchrun would set)."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            WORKER_FLAG: "1",
        }
    )
    if world_size > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world_size))
    return env


def launch_workers(
    num_processes: int,
    arguments: Sequence[str],
    *,
    executable: Sequence[str] | None = None,
    timeout: float | None = None,
    poll_interval: float = 0.2,
) -> int:
    """Run ``python -m seesr ARGUMENTS`` in ``num_processes`` local processes (ranks 0..N-1) and wait.

    If one worker fails, the others are terminated. Ctrl-C is forwarded to all of them.

    Args:
        num_processes: number of workers (e.g. GPUs).
        arguments: the command line after ``seesr`` (without the option that asked for several processes).
        executable: the program to run instead of ``[sys.executable, "-m", "seesr"]``.
        timeout: seconds after which every worker still running is killed (exit code 124).

    Returns:
        0 when every worker succeeded, else the first non-zero exit code (124 on timeout).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    command = [*(executable or (sys.executable, "-m", "seesr")), *arguments]
    port = free_port()
    workers = [
        subprocess.Popen(command, env=worker_environment(rank, num_processes, port)) for rank in range(num_processes)
    ]
    exit_code = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        running = list(workers)
        while running:
            if deadline is not None and time.monotonic() > deadline:
                logger.error("workers still running after %.0f s; killing them", timeout)
                for worker in running:
                    worker.kill()
                    worker.wait()
                return 124
            for worker in list(running):
                code = worker.poll()
                if code is None:
                    continue
                running.remove(worker)
                if code != 0 and exit_code == 0:
                    exit_code = code
                    logger.error("worker %d exited with code %d; stopping the others", workers.index(worker), code)
                    for other in running:
                        other.terminate()
            time.sleep(poll_interval)
    except KeyboardInterrupt:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGINT)
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        return 130
    return exit_code


def is_worker() -> bool:
    """True inside a process started by :func:`launch_workers` or an external launcher (``WORLD_SIZE`` > 1)."""
    return os.environ.get(WORKER_FLAG) == "1" or _int_env("WORLD_SIZE", 1) > 1
