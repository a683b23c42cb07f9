"""The ``--ray`` flags shared by ``seesr upscale``, ``seesr prepare`` and ``seesr tag``, and their one entry point.

A command builds its work items and names a worker class (loaded once per actor); :func:`run_on_cluster` connects
(or starts a local cluster), runs them with :func:`seesr.utils.ray_jobs.run_items` and turns Ray's problems into
one-line :class:`~seesr.cli.main.CLIError` messages. See README "Scaling out".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from seesr.cli.argtypes import non_negative_float, non_negative_int, positive_int
from seesr.cli.main import EXIT_FAILURE, EXIT_USAGE, CLIError


def add_ray_arguments(parser: argparse.ArgumentParser, what: str, outputs: str) -> None:
    """``--ray [ADDRESS]``, ``--ray-actors``, ``--ray-gpus-per-actor``, ``--ray-cpus-per-actor``, ``--ray-retries``.

    ``what``: the work (e.g. "images"); ``outputs``: a sentence on what the actors write and how a run resumes."""
    group = parser.add_argument_group(
        "Ray cluster (pip install 'seesr[ray]')",
        f"Run the {what} on a pool of Ray actors, each loading the model once: one per GPU of the cluster, or one "
        f"per machine without GPUs. {outputs} An actor that dies is replaced and its item retried.",
    )
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="use Ray: without ADDRESS, the cluster in RAY_ADDRESS or else a new local one; 'auto' joins the "
        "cluster this machine is part of; or ray://HEAD:10001 / HEAD:6379",
    )
    group.add_argument("--ray-actors", type=positive_int, default=None, metavar="N", help="actor pool size")
    group.add_argument(
        "--ray-gpus-per-actor",
        type=non_negative_float,
        default=None,
        metavar="G",
        help="GPUs each actor reserves (default: 1 when the cluster has GPUs, else 0; 0.5 puts two on a GPU)",
    )
    group.add_argument(
        "--ray-cpus-per-actor",
        type=non_negative_float,
        default=None,
        metavar="C",
        help="CPUs each actor reserves (default: 1 with GPUs, else the cluster's CPUs split over the actors)",
    )
    group.add_argument(
        "--ray-retries",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="retries of an item whose actor died under it (a crash, the OOM killer, a lost node; default: 3); "
        "after that it is reported as failed, while the other items go on",
    )


def refuse_remote_inputs(paths: Sequence[str] | None) -> None:
    """``s3://``-style inputs are listed and fetched by ``seesr upscale --ray`` only: elsewhere one clear line."""
    from seesr.utils.ray_jobs import is_remote_uri

    for path in paths or ():
        if is_remote_uri(str(path)):
            raise CLIError(
                f"{path}: filesystem URIs are read by `seesr upscale --ray` only; give a local path (or a mounted "
                "share)",
                EXIT_USAGE,
            )


def check_ray_arguments(args: argparse.Namespace) -> None:
    """The --ray-* flags make sense only with --ray; say so before any work."""
    if args.ray is not None:
        return
    flags = {
        "--ray-actors": args.ray_actors,
        "--ray-gpus-per-actor": args.ray_gpus_per_actor,
        "--ray-cpus-per-actor": args.ray_cpus_per_actor,
    }
    for flag, value in flags.items():
        if value is not None:
            raise CLIError(f"{flag} needs --ray", EXIT_USAGE)


def run_on_cluster(
    args: argparse.Namespace,
    items: Sequence[dict[str, str]],
    worker_class: type,
    worker_args: tuple,
    *,
    description: str,
    on_result: Callable[[dict[str, str]], None] | None = None,
) -> list[dict[str, str]]:
    """Run ``items`` on the cluster that ``--ray`` names; one result per item, in order."""
    from seesr.utils.ray_jobs import RayJobError, RayOptions, ray_session, run_items

    options = RayOptions(
        address=args.ray or None,
        actors=args.ray_actors,
        gpus_per_actor=args.ray_gpus_per_actor,
        cpus_per_actor=args.ray_cpus_per_actor,
        retries=args.ray_retries,
    )
    try:
        with ray_session(options.address, quiet=not getattr(args, "verbose", False)):
            return run_items(
                items,
                worker_class,
                worker_args,
                options,
                on_result=on_result,
                show_progress=not getattr(args, "quiet", False),
                description=description,
            )
    except RayJobError as error:
        raise CLIError(str(error), EXIT_FAILURE) from None


def with_absolute_paths(args: argparse.Namespace, *names: str) -> argparse.Namespace:
    """A copy of ``args`` whose named options, when they are local paths, are absolute: a Ray actor may run in
    another folder (or on another machine that mounts the same share), where a relative ``--model`` means nothing."""
    from seesr.utils.ray_jobs import is_remote_uri

    values = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not is_remote_uri(str(value)) and Path(value).exists():
            values[name] = Path(value).resolve() if isinstance(value, Path) else str(Path(value).resolve())
    return argparse.Namespace(**{**vars(args), **values})
