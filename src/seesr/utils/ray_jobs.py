"""Run a list of work items on a Ray cluster: a pool of actors, each loading its model once (Ray Data).

Every command that scales out (``seesr upscale/prepare/tag --ray``) describes its work the same way:

* **items**: one ``dict`` of strings per unit of work (an input file and its target, an item number, ...), with a
  unique ``"key"``;
* **a worker class**: constructed once per actor (``worker_class(*worker_args)``: load the pipeline there), whose
  ``process(item) -> dict`` does one item and returns ``{"status": "ok" | "skipped" | "failed", "message": str}``
  plus any more string fields. It writes its outputs itself, atomically, as the local run does.

:func:`run_items` feeds the items through ``Dataset.map_batches`` with an actor pool (one item per task). An
exception inside ``process`` is caught in the actor and becomes a ``failed`` result (it is not retried: bad input
stays bad). An actor that *dies* (a crash in native code, the kernel's OOM killer, a lost node) is replaced by Ray
Data, and the one task it was running is dropped (an errored block, ``DataContext.max_errored_blocks``) while the
other items go on; the driver then runs the dropped items again, up to ``retries`` times each, and gives up on an
item that keeps killing its worker (reported as failed). The driver shows one progress bar and hands each result to
``on_result`` as it arrives.

:func:`ray_session` connects to a cluster (an address, ``auto``, or ``RAY_ADDRESS``) or starts a local one, and
restores what it changed on exit. This module knows nothing about SeeSR; the workers live with their commands.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "RayJobError",
    "RayResources",
    "RayOptions",
    "is_remote_uri",
    "plan_resources",
    "ray_session",
    "run_items",
]


class RayJobError(RuntimeError):
    """Ray is missing, the cluster cannot be reached, or it cannot hold one actor (message meant for the user)."""


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray (the ``--ray*`` flags).

    Attributes:
        address: ``None`` (``RAY_ADDRESS`` if set, else a new local cluster), ``"auto"`` (the cluster this machine
            belongs to) or ``"ray://host:10001"`` / ``"host:6379"``.
        actors: size of the actor pool; None: one per GPU of the cluster, or one per node without GPUs.
        gpus_per_actor: None: 1 when the cluster has GPUs, else 0. Fractions share a GPU between actors.
        cpus_per_actor: None: 1 with GPUs; without GPUs the cluster's CPUs split evenly over the actors.
        retries: attempts of an item whose actor died while holding it (a crash, a lost node), after the first.
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    retries: int = 3


@dataclass(frozen=True)
class RayResources:
    """What :func:`plan_resources` decided: the pool size and what each actor reserves."""

    actors: int
    num_cpus: float
    num_gpus: float

    def describe(self) -> str:
        unit = f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.num_cpus:g} CPU"
        return f"{self.actors} actor{'s' if self.actors != 1 else ''}, {unit} each"


def is_remote_uri(text: str) -> bool:
    """``s3://...``, ``gs://...``, ``hdfs://...``, ``file:///...``: a filesystem URI for pyarrow, not a path."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.isalnum() and len(scheme) > 1


def plan_resources(options: RayOptions, cluster: dict[str, float], nodes: int, items: int) -> RayResources:
    """The actor pool for ``items`` items on a cluster with ``cluster`` resources (``ray.cluster_resources()``).

    Raises:
        RayJobError: the cluster cannot hold one actor of the requested size.
    """
    total_gpus = float(cluster.get("GPU", 0.0))
    total_cpus = float(cluster.get("CPU", 0.0))
    gpus = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if total_gpus else 0.0)
    if gpus > total_gpus:
        raise RayJobError(f"each actor asks for {gpus:g} GPU but the cluster has {total_gpus:g}")
    if options.actors is not None:
        actors = options.actors
    elif gpus:
        actors = max(1, math.floor(total_gpus / gpus))
    else:
        actors = max(1, nodes)  # a whole model per actor: one per machine unless asked for more
    actors = max(1, min(actors, items))
    if options.cpus_per_actor is not None:
        cpus = options.cpus_per_actor
    elif gpus:
        cpus = 1.0
    else:
        cpus = max(1.0, math.floor(total_cpus / actors))
    if cpus > total_cpus:
        raise RayJobError(f"each actor asks for {cpus:g} CPUs but the cluster has {total_cpus:g}")
    return RayResources(actors=actors, num_cpus=cpus, num_gpus=gpus)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data needs pyarrow: fail here, in one line, when it is missing
    except ImportError as error:
        raise RayJobError(f"--ray needs Ray Data: pip install 'seesr[ray]' ({error})") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None, *, quiet: bool = True) -> Iterator[Any]:
    """Connect to Ray for the duration of the block (yields the ``ray`` module).

    Already connected (e.g. a notebook or a test called ``ray.init``): that session is used and left open.
    Otherwise ``address`` as in :class:`RayOptions`; a cluster this call started (or joined) is left on exit.
    ``quiet``: the actors' own output (library warnings, loading bars) is not relayed to this terminal; their
    results and failures come back as results either way.
    """
    ray = _import_ray()
    if ray.is_initialized():
        with _cluster_notices_logged(quiet):
            yield ray
        return
    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    saved = {name: os.environ.get(name) for name in ("RAY_BACKEND_LOG_LEVEL",)}
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal" if quiet else "warning")
    try:
        with _native_stderr_quiet(quiet):  # Ray's C++ start-up lines ("Set ray log level ...")
            ray.init(
                address=None if address in (None, "", "local") else address,
                include_dashboard=False,
                logging_level=logging.ERROR if quiet else logging.WARNING,
                log_to_driver=not quiet,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        _restore_environment(saved)
        where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
        reason = str(error).splitlines()[0]
        if "Could not find any running Ray instance" in reason:
            reason = (
                "no Ray cluster runs on this machine (start one with `ray start --head`, or leave out the address "
                "to start a local one)"
            )
        raise RayJobError(f"cannot start or reach Ray at {where}: {reason}") from None
    try:
        with _cluster_notices_logged(quiet):
            yield ray
    finally:
        ray.shutdown()
        _restore_environment(saved)


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A ``host:port`` or ``ray://host:port`` address where nothing answers is refused within ``timeout`` seconds
    (Ray itself would keep trying to reach it for minutes)."""
    if address in (None, "", "auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # Ray says what it makes of it
    import socket

    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise RayJobError(
            f"cannot reach Ray at {address}: {error.strerror or error} (is the cluster started, e.g. `ray start "
            "--head`, and the address its head's?)"
        ) from None


@contextlib.contextmanager
def _cluster_notices_logged(enabled: bool) -> Iterator[None]:
    """Ray's driver prints the cluster's notices to *stdout* (e.g. a task retry: "(raylet) Task ... failed. There
    are 3 retries remaining", with the actor's whole traceback), which would garble ``seesr tag --json``. For the
    block they go to this module's debug log instead; the run's own summary says what failed and why. (Ray has no
    setting for this: its printer, ``ray._private.worker.print_to_stdstream``, is swapped and put back.)"""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if not enabled or original is None:
        yield
        return

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            logger.debug("ray (%s): %s", data.get("pid", "?"), line)

    ray_worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


@contextlib.contextmanager
def _native_stderr_quiet(enabled: bool) -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (what native code prints there); Python errors still raise."""
    if not enabled:
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _restore_environment(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class _ItemMapper:
    """The callable class Ray Data runs in each actor: builds the worker once, then one item per call."""

    def __init__(self, worker_class: type, worker_args: tuple) -> None:
        self.worker = worker_class(*worker_args)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        keys = list(batch)
        rows = [{key: _plain(batch[key][index]) for key in keys} for index in range(len(batch["key"]))]
        results = [self._one(row) for row in rows]
        fields = sorted({name for result in results for name in result})
        return {name: [str(result.get(name, "")) for result in results] for name in fields}

    def _one(self, row: dict[str, str]) -> dict[str, str]:
        try:
            result = dict(self.worker.process(row))
        except Exception as error:  # noqa: BLE001 - one bad item is reported, the actor goes on
            logger.debug("item %s failed", row.get("key"), exc_info=True)
            result = {"status": "failed", "message": f"{row.get('key')}: {type(error).__name__}: {error}"}
        result["key"] = row["key"]
        result.setdefault("message", "")
        return result


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


@contextlib.contextmanager
def _data_context(max_errored_blocks: int) -> Iterator[None]:
    """Ray Data settings for one run (restored afterwards): our progress bar instead of Ray's, and failed items
    reported instead of failing the whole run."""
    from ray.data import DataContext

    context = DataContext.get_current()
    names = ("max_errored_blocks", "enable_progress_bars", "print_on_execution_start", "enable_auto_log_stats")
    saved = {name: getattr(context, name) for name in names}
    context.max_errored_blocks = max_errored_blocks
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.CRITICAL)  # a stopped run is one RayJobError line, not Ray's tracebacks
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        data_logger.setLevel(level)


@dataclass
class _Run:
    """One :func:`run_items` call: what it runs with, and the results so far."""

    worker_class: type
    worker_args: tuple
    options: RayOptions
    resources: RayResources
    bar: Any
    on_result: Callable[[dict[str, str]], None] | None
    total: int
    description: str
    results: dict[str, dict[str, str]]

    def record(self, result: dict[str, str]) -> None:
        self.results[result["key"]] = result
        if self.on_result is not None:
            with self.bar.external_write_mode():  # what on_result prints goes above the bar, not into it
                self.on_result(result)
        self.bar.update(1)


def run_items(
    items: Sequence[dict[str, str]],
    worker_class: type,
    worker_args: tuple,
    options: RayOptions,
    *,
    on_result: Callable[[dict[str, str]], None] | None = None,
    show_progress: bool = True,
    description: str = "items",
) -> list[dict[str, str]]:
    """Process ``items`` on the connected Ray cluster (see the module docstring); one result per item, in order.

    An item whose actor died more than ``options.retries`` times gets ``status`` ``"failed"`` with a message
    saying so. Must run inside :func:`ray_session`.

    Raises:
        RayJobError: the workers cannot start (their constructor fails), or a pass stopped without finishing a
            single item (e.g. the cluster went away).
    """
    import ray
    from tqdm.auto import tqdm

    if not items:
        return []
    keys = [item["key"] for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("item keys must be unique")
    resources = plan_resources(options, ray.cluster_resources(), len(ray.nodes()), len(items))
    logger.debug("Ray: %s", resources.describe())
    progress = tqdm(
        total=len(items), desc=f"{description} (Ray: {resources.describe()})", unit="item", disable=not show_progress
    )
    run = _Run(worker_class, tuple(worker_args), options, resources, progress, on_result, len(items), description, {})
    with _data_context(max_errored_blocks=len(items)), progress:
        _run_until_done(run, list(items))
    return [run.results[key] for key in keys]


def _run_until_done(run: _Run, items: list[dict[str, str]]) -> None:
    """Passes over the items without a result. Ray Data skips the task of an item whose actor died holding it (an
    errored block, allowed by ``max_errored_blocks``) and replaces the actor, so after a pass the items without a
    result are exactly those whose actor died under them: each is retried up to ``retries`` times, then given up."""
    deaths: dict[str, int] = {}
    pending = items
    while pending:
        done_before = len(run.results)
        stopped = _one_pass(run, pending)
        pending = [item for item in pending if item["key"] not in run.results]
        if stopped is not None:  # Ray gave up on the pass itself: go on while passes make progress
            if len(run.results) == done_before:
                raise RayJobError(_stop_message(stopped, len(run.results), run.total, run.description))
            continue
        for item in pending:
            deaths[item["key"]] = deaths.get(item["key"], 0) + 1
            if deaths[item["key"]] > run.options.retries:
                run.record(_given_up(item["key"], deaths[item["key"]]))
            else:
                logger.debug("retrying %s: its Ray worker died", item["key"])
        pending = [item for item in pending if item["key"] not in run.results]


def _one_pass(run: _Run, items: list[dict[str, str]]) -> BaseException | None:
    """Run ``items`` once through an actor pool (as many actors as the plan says, at most one per item); returns
    None when the pass ran to its end, or the Ray error that stopped it. A worker that cannot start is raised."""
    import ray

    with warnings.catch_warnings():  # Ray 2.60 names no parameter for the retries yet, only **ray_remote_args
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = ray.data.from_items(list(items), override_num_blocks=len(items)).map_batches(
            _ItemMapper,
            fn_constructor_args=(run.worker_class, run.worker_args),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(
                size=min(run.resources.actors, len(items)), max_tasks_in_flight_per_actor=1
            ),
            num_cpus=run.resources.num_cpus,
            num_gpus=run.resources.num_gpus,
            max_restarts=-1,  # a dead actor is replaced ...
            max_task_retries=0,  # ... and the item it held is retried by the driver (see _run_until_done)
        )
    try:
        for row in dataset.iter_rows():
            run.record({name: str(_plain(value)) for name, value in row.items()})
    except Exception as error:
        if not _is_ray_error(error):
            raise
        if "error raised in its creation task" in str(error) and not run.results:
            raise RayJobError(_stop_message(error, 0, run.total, run.description)) from None
        logger.debug("a Ray pass stopped: %s", _actor_error(error))
        return error
    return None


def _is_ray_error(error: BaseException) -> bool:
    """An error of Ray itself (an actor that died for good, a lost node, an actor that cannot start), not one of
    the driver's own code."""
    return any(cls.__module__.split(".")[0] == "ray" for cls in type(error).__mro__[:-1])


def _stop_message(error: BaseException, done: int, total: int, description: str) -> str:
    cause = _actor_error(error)
    if "error raised in its creation task" in str(error) and not done:  # the worker's constructor failed
        return f"the Ray workers could not start: {cause}"
    return (
        f"the Ray run stopped after {done} of {total} {description}: {cause}; what was written is complete: "
        "rerun the same command with --skip-existing to finish"
    )


def _actor_error(error: BaseException) -> str:
    """What the actor raised, in one line. Ray chains its own exceptions (an ``ActorDiedError`` caused by a
    ``SystemException``, ...) and puts the actor's traceback in their text: the last ``Name: message`` line there
    is the actor's own error (a ``CLIError`` is already a message for the user and loses its name)."""
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and all(link is not seen for seen in chain):
        chain.append(link)
        link = link.__cause__ or link.__context__
    texts = [_ANSI.sub("", str(link)) for link in chain]
    for text in texts:
        raised = [line.strip() for line in text.splitlines() if _RAISED_LINE.match(line.strip())]
        if raised:
            name, _, message = raised[-1].partition(": ")
            name = name.rsplit(".", 1)[-1]
            return message if name == "CLIError" else f"{name}: {message}"
    for text in reversed(texts):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[0]
    return type(error).__name__


_RAISED_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b[^:\s]*: \S")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _given_up(key: str, deaths: int) -> dict[str, str]:
    return {
        "key": key,
        "status": "failed",
        "message": f"{key}: the Ray worker processing it died {'once' if deaths == 1 else f'{deaths} times'} (a "
        "crash, out of memory or a lost node); given up",
    }
