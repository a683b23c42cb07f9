"""Multi-process (multi-GPU) batch inference: shard a list of inputs, run each shard, one summary.

Two ways to start the processes, same code path afterwards:

* ``accelerate launch --num_processes N -m seesr upscale FOLDER ...`` (or ``torchrun``): the launcher sets
  ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``;
* ``seesr upscale --num-gpus N ...``: :func:`spawn_workers` starts N local processes running the same command
  with those variables set (a free port on 127.0.0.1), waits, and stops the others when one fails.

In each process :func:`init_distributed` reads the variables and joins a ``gloo`` process group (inference
processes exchange only small Python objects, so no NCCL is needed; it also works on CPU). Every process takes the
items ``items[rank::world_size]`` (:meth:`DistributedContext.shard`) so each input is handled - and each output
written - by exactly one process (``seesr upscale`` plans the output names over *all* inputs,
:func:`seesr.pipeline.batch.plan_outputs`, so every process refuses the same name clashes); :meth:`DistributedContext.gather` brings the per-process results to rank 0,
which writes the one summary.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "free_port",
    "init_distributed",
    "is_worker",
    "shard",
    "spawn_workers",
    "worker_environment",
]

T = TypeVar("T")

#: environment variable marking a process started by :func:`spawn_workers` (so it does not launch again)
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


def _spawned(
    rank: int, world_size: int, port: int, target: Callable[..., int | None], arguments: tuple, results: Any
) -> None:
    os.environ.update(worker_environment(rank, world_size, port))
    code = target(*arguments)
    results.put((rank, int(code or 0)))


def spawn_workers(
    num_processes: int,
    target: Callable[..., int | None],
    arguments: Sequence[Any] = (),
    *,
    timeout: float | None = None,
    poll_interval: float = 0.1,
) -> int:
    """Run ``target(*arguments)`` in ``num_processes`` fresh local processes (ranks 0..N-1) and wait.

    Each process gets the environment of :func:`worker_environment` (so :func:`init_distributed` joins the group
    and :func:`is_worker` is true). ``target`` and ``arguments`` must be picklable (a module-level function); its
    return value is the process's exit code. If one process crashes (an exception or a signal), the others are
    stopped; a process that returns a non-zero code does not stop the others. Ctrl-C stops all of them.

    Args:
        num_processes: number of workers (e.g. GPUs).
        target: the work of one process.
        arguments: its positional arguments.
        timeout: seconds after which every worker still running is killed (exit code 124).

    Returns:
        0 when every worker returned 0, else the first non-zero code in rank order (a crashed worker's exit code,
        124 on timeout, 130 on Ctrl-C).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    port = free_port()
    workers = [
        context.Process(
            target=_spawned, args=(rank, num_processes, port, target, tuple(arguments), results), daemon=False
        )
        for rank in range(num_processes)
    ]
    for worker in workers:
        worker.start()
    codes: dict[int, int] = {}
    deadline = None if timeout is None else time.monotonic() + timeout

    def stop_all() -> None:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join()

    try:
        while True:
            while not results.empty():
                rank, code = results.get()
                codes[rank] = code
            finished = [worker for worker in workers if not worker.is_alive()]
            # a crash (exception, signal) leaves the others waiting in a collective: stop them; a non-zero
            # *returned* code (e.g. some inputs failed) is a normal end and the others finish their work
            crashed = [rank for rank, worker in enumerate(workers) if worker.exitcode not in (None, 0)]
            if crashed:
                rank = crashed[0]
                exit_code = workers[rank].exitcode or 1
                logger.error("worker %d crashed (exit code %d); stopping the others", rank, exit_code)
                stop_all()
                return int(exit_code) if exit_code > 0 else 1
            if len(finished) == len(workers):
                while not results.empty():
                    rank, code = results.get()
                    codes[rank] = code
                return next((code for _, code in sorted(codes.items()) if code != 0), 0)
            if deadline is not None and time.monotonic() > deadline:
                logger.error("workers still running after %.0f s; stopping them", timeout)
                stop_all()
                return 124
            time.sleep(poll_interval)
    except KeyboardInterrupt:
        stop_all()
        return 130


def is_worker() -> bool:
    """True inside a process started by :func:`spawn_workers` or an external launcher (``WORLD_SIZE`` > 1)."""
    return os.environ.get(WORKER_FLAG) == "1" or _int_env("WORLD_SIZE", 1) > 1
