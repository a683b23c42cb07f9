"""``seesr tag``: print the DAPE tags (SeeSR's hard prompt) of images.

One line per image, ``<path>: tag, tag, ...`` (exactly the tag string the upscaler puts in front of the prompt), or
with ``--json`` one JSON array with every tag's probability and class index. Unreadable files are reported on
stderr one line each while the others are still tagged; the exit code is 1 if any failed, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys

from seesr.cli.argtypes import positive_int, probability
from seesr.cli.download import add_no_download_argument, fetch_missing
from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tag",
        help="show the DAPE tags (hard prompt) of images",
        description=(
            "Run the DAPE tagger (RAM Swin-L with the SeeSR LoRA) on images and print their tags, one line per image "
            "('<path>: tag, tag'). These are the tags `seesr upscale` puts into the prompt. "
            "Folders are expanded (non-recursive) and glob patterns are accepted."
        ),
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    parser.add_argument(
        "--model",
        metavar="PATH",
        help=(
            "tagger weights: a folder with ram/ram_swin_large_14m.pth (+ ram/DAPE.pth), a converted bundle "
            "(with tagger/) or a DAPETagger folder; default: the official files downloaded by `seesr download` "
            "(downloaded on first use)"
        ),
    )
    add_no_download_argument(parser)
    parser.add_argument(
        "--threshold",
        type=probability,
        metavar="P",
        help="one probability threshold for every tag (default: RAM's official per-tag thresholds)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON with each tag's probability and index")
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="tag language (default: en)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto)")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="tagger precision (default: fp32, as the official inference script)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=4, metavar="N", help="images per forward pass (default: 4)"
    )
    parser.add_argument(
        "--max-input-pixels",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse images with more pixels than this (default: 64 million)",
    )
    from seesr.cli.scaleout import add_ray_arguments

    add_ray_arguments(
        parser, "tagging", "The lines (or --json) are printed here, in input order, as they would be locally."
    )
    parser.set_defaults(func=run)
    return parser


def _error(message: str) -> None:
    print(f"seesr tag: error: {message}", file=sys.stderr)  # noqa: T201


class TagWorker:
    """One Ray actor of ``seesr tag --ray``: the tagger, loaded once; :meth:`process` tags one image."""

    def __init__(self, args: argparse.Namespace) -> None:
        from seesr.utils.device import DTYPES, resolve_device
        from seesr.utils.images import DEFAULT_MAX_INPUT_PIXELS
        from seesr.weights.tagger import load_tagger

        if args.model is None:
            fetch_missing(args, need="tagger")  # this machine's copy of the weights
        self.args = args
        self.max_pixels = args.max_input_pixels or DEFAULT_MAX_INPUT_PIXELS
        self.tagger = load_tagger(args.model, device=resolve_device(args.device), dtype=DTYPES[args.dtype])

    def process(self, item: dict[str, str]) -> dict[str, str]:
        from seesr.utils.images import ImageReadError, load_image

        try:
            image = load_image(item["source"], max_pixels=self.max_pixels).rgb
        except ImageReadError as error:
            return {"status": "failed", "message": str(error).replace(item["source"], item["key"])}
        result = self.tagger.tag([image], threshold=self.args.threshold, lang=self.args.lang)[0]
        return {"status": "ok", "message": "", "record": json.dumps(result.to_dict(), ensure_ascii=False)}


def _run_on_ray(args: argparse.Namespace, files: list) -> int:
    """``seesr tag --ray``: one item per image on the cluster; lines printed in input order as they complete."""
    from seesr.cli.scaleout import run_on_cluster, with_absolute_paths

    keys = [str(path) for path in files]
    waiting: dict[str, dict[str, str]] = {}
    printed = [0]
    records: list[dict] = []

    def emit(result: dict[str, str]) -> None:
        waiting[result["key"]] = result
        while printed[0] < len(keys) and keys[printed[0]] in waiting:
            done = waiting.pop(keys[printed[0]])
            printed[0] += 1
            if done["status"] != "ok":
                _error(done["message"])
            elif args.json:
                records.append({"path": done["key"], **json.loads(done["record"])})
            else:
                print(f"{done['key']}: {json.loads(done['record'])['prompt']}", flush=True)  # noqa: T201

    items = [{"key": key, "source": str(path.resolve())} for key, path in zip(keys, files, strict=True)]
    args.quiet = True  # the lines are the output: no progress bar between them
    results = run_on_cluster(
        args, items, TagWorker, (with_absolute_paths(args, "model"),), description="images", on_result=emit
    )
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))  # noqa: T201
    return EXIT_FAILURE if any(result["status"] != "ok" for result in results) else EXIT_OK


def run(args: argparse.Namespace) -> int:
    import torch

    from seesr.cli.scaleout import refuse_remote_inputs
    from seesr.utils.device import DTYPES, resolve_device
    from seesr.utils.images import DEFAULT_MAX_INPUT_PIXELS, ImageReadError, iter_image_files, load_image
    from seesr.weights.tagger import TAGGER_LOAD_ERRORS, load_tagger

    refuse_remote_inputs(args.images)
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    dtype = DTYPES[args.dtype]
    if device.type == "cpu" and dtype == torch.float16:
        raise CLIError("--dtype fp16 is not supported on the CPU; use fp32 or bf16", EXIT_USAGE)

    files, problems = iter_image_files(args.images)
    failed = len(problems)
    for problem in problems:
        _error(problem)
    if not files:
        return EXIT_FAILURE
    from seesr.cli.scaleout import check_ray_arguments

    check_ray_arguments(args)
    if args.ray is not None:
        code = _run_on_ray(args, files)
        return EXIT_FAILURE if failed else code

    if args.model is None:
        fetch_missing(args, need="tagger")  # first use: download RAM + DAPE, unless --no-download
    try:
        tagger = load_tagger(args.model, device=device, dtype=dtype)
    except TAGGER_LOAD_ERRORS as error:
        raise CLIError(str(error)) from None

    max_pixels = args.max_input_pixels or DEFAULT_MAX_INPUT_PIXELS
    records: list[dict] = []
    batch: list = []

    def flush() -> None:
        if not batch:
            return
        results = tagger.tag([image for _, image in batch], threshold=args.threshold, lang=args.lang)
        for (path, _), result in zip(batch, results, strict=True):
            if args.json:
                records.append({"path": str(path), **result.to_dict()})
            else:
                print(f"{path}: {result.prompt}", flush=True)  # noqa: T201
        batch.clear()

    for path in files:
        try:
            batch.append((path, load_image(path, max_pixels=max_pixels).rgb))
        except ImageReadError as error:
            failed += 1
            _error(str(error))
            continue
        if len(batch) >= args.batch_size:
            flush()
    flush()
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))  # noqa: T201
    return EXIT_FAILURE if failed else EXIT_OK
