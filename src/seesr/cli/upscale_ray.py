"""``seesr upscale --ray``: the same files as a local run, made by a pool of Ray actors.

The driver plans every output name (:func:`~seesr.pipeline.batch.plan_outputs`, name clashes refused by name as in
a local run), hands one item per input to :func:`seesr.cli.scaleout.run_on_cluster`, prints failures as they come
and one summary. Each actor (:class:`UpscaleActor`) loads the pipeline once, exactly as the local run loads it
(:func:`seesr.cli.upscale.load_pipeline`), and runs :func:`~seesr.pipeline.batch.upscale_files` on one input at a
time: same settings, seeds, atomic writes and PNG record, so ``--skip-existing`` treats a cluster's results and a
local run's alike. Inputs may also be remote URIs (``s3://bucket/scans/``, ``gs://...``: any filesystem pyarrow
opens): the actor copies the file into a private temporary folder first.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError

#: suffixes of remote files taken as images when a remote folder is listed
REMOTE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class UpscaleActor:
    """One actor of ``seesr upscale --ray``: the pipeline, loaded once; :meth:`process` upscales one input."""

    def __init__(self, args: argparse.Namespace, settings: Any) -> None:
        from seesr.cli.upscale import _check_model, _silence_loading, load_pipeline
        from seesr.utils.device import resolve_device

        _silence_loading()
        _check_model(args)  # the weights on this machine (fetched on first use, unless --no-download)
        self.settings = settings
        self.skip_existing = args.skip_existing
        # Ray gives each actor its own GPU(s) through CUDA_VISIBLE_DEVICES: "auto" finds it as cuda:0
        self.pipe, self.extra = load_pipeline(args, resolve_device(args.device), show_steps=False)

    def process(self, item: dict[str, str]) -> dict[str, str]:
        from seesr.utils.ray_jobs import is_remote_uri

        if not is_remote_uri(item["source"]):
            result = self._upscale(Path(item["source"]), Path(item["target"]))
            return {**result, "message": result["message"].replace(item["source"], item["key"])}
        with tempfile.TemporaryDirectory(prefix="seesr-ray-") as folder:
            local = _copy_remote(item["source"], Path(folder))
            result = self._upscale(local, Path(item["target"]))
            return {**result, "message": result["message"].replace(str(local), item["source"])}

    def _upscale(self, source: Path, target: Path) -> dict[str, str]:
        from seesr.pipeline.batch import upscale_files

        report = upscale_files(
            self.pipe,
            [source],
            target.parent,
            self.settings,
            skip_existing=self.skip_existing,
            show_progress=False,
            metadata_extra=self.extra,
            output_plan={source: target},
        )
        result = report.results[0]
        return {"status": result.status, "message": result.message or "", "seed": str(result.seed)}


def _copy_remote(uri: str, folder: Path) -> Path:
    """Copy one remote file into ``folder`` under its own name (so the PNG record names the input as usual)."""
    import shutil

    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    local = folder / PurePosixPath(path).name
    with filesystem.open_input_stream(path) as stream, open(local, "wb") as out:
        shutil.copyfileobj(stream, out, 1 << 20)
    return local


def list_remote_images(uri: str) -> list[str]:
    """The image files of a remote folder (not recursive, sorted), or the file itself; URIs in the input's scheme.

    Raises:
        CLIError: the filesystem cannot be opened or the path does not exist.
    """
    try:
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise CLIError(f"{uri}: no such file or folder", EXIT_USAGE)
        if info.type == fs.FileType.File:
            return [uri]
        entries = filesystem.get_file_info(fs.FileSelector(path, recursive=False))
    except CLIError:
        raise
    except Exception as error:  # noqa: BLE001 - pyarrow raises OSError/ArrowInvalid/... for unknown schemes
        raise CLIError(f"{uri}: cannot be listed ({str(error).splitlines()[0]})", EXIT_USAGE) from None
    scheme = uri.split("://", 1)[0]
    return sorted(
        f"{scheme}://{entry.path.lstrip('/') if scheme != 'file' else entry.path}"
        for entry in entries
        if entry.type == fs.FileType.File and PurePosixPath(entry.path).suffix.lower() in REMOTE_IMAGE_SUFFIXES
    )


def plan_items(
    files: list[Path], remote: list[str], plan: dict[Path, Path], outdir: Path
) -> tuple[list[dict[str, str]], list[str]]:
    """One item per input (absolute paths, so that every actor finds them), and the refusals of a local run
    (:func:`~seesr.pipeline.batch.output_conflicts`) extended to remote inputs with the same name."""
    from seesr.pipeline.batch import output_conflicts

    conflicts = output_conflicts(plan)
    claimed = {target.resolve(): str(file) for file, target in plan.items() if file not in conflicts}
    items = [
        {"key": str(file), "source": str(file.resolve()), "target": str(plan[file].resolve())}
        for file in files
        if file not in conflicts
    ]
    refused = [conflicts[file] for file in files if file in conflicts]
    for uri in remote:
        target = (outdir / f"{PurePosixPath(uri.split('://', 1)[1]).stem}.png").resolve()
        if target in claimed:
            refused.append(f"{uri}: same output name as {claimed[target]} ({target}); rename one of them")
            continue
        claimed[target] = uri
        items.append({"key": uri, "source": uri, "target": str(target)})
    return items, refused


def run_on_ray(
    args: argparse.Namespace,
    settings: Any,
    files: list[Path],
    remote: list[str],
    problems: list[str],
    plan: dict[Path, Path],
) -> int:
    """``seesr upscale --ray``: plan, run on the cluster, report; the exit code of a local run."""
    from seesr.cli.scaleout import run_on_cluster, with_absolute_paths
    from seesr.cli.upscale import _err, result_printer

    outdir = Path(args.outdir)
    items, refused = plan_items(files, remote, plan, outdir)
    for message in [*problems, *refused]:
        _err(f"error: {message}")
    statuses: list[str] = []
    printer = result_printer(args, statuses)
    results = run_on_cluster(
        args,
        items,
        UpscaleActor,
        (with_absolute_paths(args, "model"), settings),
        description="images",
        on_result=lambda result: printer(argparse.Namespace(status=result["status"], message=result["message"])),
    )
    counts = {status: sum(result["status"] == status for result in results) for status in ("ok", "skipped")}
    failed = len(results) - counts["ok"] - counts["skipped"] + len(refused) + len(problems)
    if not args.quiet:
        print(  # noqa: T201
            f"{counts['ok']} written, {counts['skipped']} skipped, {failed} failed -> {outdir} (Ray)"
        )
    return EXIT_OK if failed == 0 else EXIT_FAILURE
