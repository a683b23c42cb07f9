"""``seesr upscale INPUT... [-o OUTDIR]``: super-resolve images, folders or glob patterns with SeeSR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from seesr.cli.argtypes import non_negative_int, positive_int
from seesr.cli.convert import add_no_verify_argument, resolve_for_loading
from seesr.cli.download import add_no_download_argument, fetch_missing
from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError

if TYPE_CHECKING:  # heavy modules: imported by run() only
    from seesr.pipeline.batch import UpscaleSettings
    from seesr.utils.distributed import DistributedContext

DEFAULT_OUTDIR = "seesr-out"
COLOR_FIXES = ("adain", "wavelet", "none")
#: the default precision, in the words of every command that upscales (upscale, benchmark)
DTYPE_DEFAULT = "fp32 on CPU, the exact mode; bf16 on CUDA GPUs, with the fast path; fp16 with --no-fast and on MPS"


def _tile_size(value: str) -> int | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of latent pixels or 'auto', got {value!r}") from None
    if size < 4:
        raise argparse.ArgumentTypeError(f"latent tile size must be >= 4, got {size}")
    return size


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "upscale",
        help="super-resolve images (files, folders, glob patterns)",
        description=(
            "Upscale real-world low-resolution photos with SeeSR. Each INPUT is an image file, a folder (its images, "
            "not recursive) or a glob pattern. Results are written as OUTDIR/<input stem>.png with the prompt, tags, "
            "seed and every setting stored as PNG text metadata; the name depends on the input alone, so reruns "
            "find it again. With -o equal to an input's own folder the result is <stem>_x<scale>.png next to it "
            "(the input is never replaced). Two inputs with the same stem (a.jpg, a.png) cannot share OUTDIR: the "
            "later one is refused by name. Images that seesr upscale wrote (recognised by their metadata) are never "
            "taken as inputs, so `seesr upscale photos -o photos --skip-existing` can be rerun. Animated GIF and "
            "multi-page TIFF files are read as their first frame (with a warning). "
            "Defaults reproduce the official test_seesr.py."
        ),
    )
    _add_file_arguments(parser)
    _add_sampling_arguments(parser)
    _add_prompt_arguments(parser)
    _add_speed_arguments(parser)
    _add_batch_arguments(parser)
    from seesr.cli.upscale_video import add_video_arguments

    add_video_arguments(parser)
    from seesr.cli.scaleout import add_ray_arguments

    add_ray_arguments(
        parser,
        "images",
        "Results are the files a local run writes, written by the actors (on a multi-machine cluster -o must be a "
        "folder every machine sees, e.g. a network share); --skip-existing resumes.",
    )
    parser.set_defaults(func=run)
    return parser


def _add_file_arguments(parser: argparse.ArgumentParser) -> None:
    """What to read and where to write, and the model."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument(
        "-o",
        "--output",
        dest="outdir",
        default=DEFAULT_OUTDIR,
        metavar="OUTDIR",
        help=f"output folder (default: {DEFAULT_OUTDIR}); created if missing; checked before the model loads; "
        "inputs are never overwritten (in an input's own folder results are named <stem>_x<scale>.png)",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="model folder: the release layout (see `seesr download --dest`) or a converted bundle "
        "(`seesr convert`); default: the files fetched by `seesr download` (downloaded on first use)",
    )
    add_no_download_argument(parser)
    add_no_verify_argument(parser)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Scale, sampler, seed and the settings of the official test_seesr.py."""
    parser.add_argument("--scale", type=positive_int, default=4, help="upscaling factor (default: 4)")
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="DDPM sampling steps (default: 50; with --turbo: 2)"
    )
    parser.add_argument(
        "--scheduler",
        choices=("ddpm", "ddim", "dpm++"),
        default="ddpm",
        help="sampler: ddpm (default) is the official one and the only one with official reference outputs; ddim "
        "and dpm++ (DPM-Solver++ multistep) are deterministic and give usable results in fewer steps (e.g. "
        "--steps 20)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale; <= 1 disables CFG (default: 5.5; with --turbo: 1.0)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed used for every image (default: a random seed per image, recorded in the PNG metadata)",
    )
    parser.add_argument(
        "--color-fix",
        choices=COLOR_FIXES,
        default="adain",
        help="colour correction towards the input: adain (official CLI default), wavelet, none",
    )
    parser.add_argument(
        "--process-size",
        type=positive_int,
        default=512,
        help="minimum processing size in pixels: smaller inputs are enlarged so their short side reaches "
        "process-size/scale first (default: 512); larger inputs are NOT reduced",
    )
    parser.add_argument(
        "--latent-tile-size",
        type=_tile_size,
        default=96,
        metavar="N|auto",
        help="latent tile side for tiled diffusion (output pixels = 8x); 'auto' picks the largest that fits free "
        "GPU memory (default: 96)",
    )
    parser.add_argument(
        "--latent-tile-overlap",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="overlap between latent tiles in latent pixels (default: 4; with --turbo: 32)",
    )
    parser.add_argument(
        "--conditioning-scale", type=float, default=1.0, help="ControlNet residual strength (default: 1.0)"
    )
    parser.add_argument(
        "--start-point",
        choices=("lr", "noise"),
        default="lr",
        help="start from the noised LR latent (lr, default) or from pure noise",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help=f"weights/compute precision (default: {DTYPE_DEFAULT})",
    )


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """The prompt around DAPE's tags, and edits of the tags."""
    parser.add_argument("--prompt", default="", help="your own text, inserted after the DAPE tags (default: empty)")
    parser.add_argument(
        "--added-prompt",
        default=None,
        metavar="TEXT",
        help='text appended to the prompt (default: "clean, high-resolution, 8k")',
    )
    parser.add_argument(
        "--negative-prompt",
        default=None,
        metavar="TEXT",
        help='negative prompt for classifier-free guidance (default: "dotted, noise, blur, lowres, smooth")',
    )
    parser.add_argument(
        "--extra-tags",
        default="",
        metavar="TAGS",
        help='comma-separated tags added to the DAPE tags of every image (e.g. "sky, tree"; default: none)',
    )
    parser.add_argument(
        "--remove-tags",
        default="",
        metavar="TAGS",
        help="comma-separated tags dropped from the DAPE tags (case-insensitive; default: none)",
    )
    parser.add_argument(
        "--no-tags",
        action="store_true",
        help="leave the DAPE tags out of the prompt (DAPE still provides the image embeddings)",
    )


def _add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """The fast path, offloading, turbo and several GPUs."""
    speed = parser.add_argument_group("speed and memory")
    speed.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fast path: bf16 models, CFG pair and latent tiles batched, CUDA graphs, no host syncs in the loop "
        "(default: on for CUDA GPUs; off on CPU/MPS, where fp32 is the exact mode); --no-fast selects the exact "
        "preset (official numerics)",
    )
    speed.add_argument(
        "--strict-fast",
        action="store_true",
        help="fail instead of falling back when a CUDA-graph capture or torch.compile fails (by default that shape "
        "runs eagerly, with one warning naming the reason)",
    )
    speed.add_argument(
        "--compile",
        action="store_true",
        help="also torch.compile the denoising step (fast path; compiles once per tile shape, about a minute)",
    )
    speed.add_argument(
        "--offload",
        choices=("model", "sequential"),
        default=None,
        help="for GPUs with <= 8 GB: keep the models in CPU memory and move each to the GPU when it runs "
        "(model: little slower; sequential: layer by layer, least memory, slow)",
    )
    speed.add_argument(
        "--turbo",
        action="store_true",
        help="turbo mode: the SD-turbo UNet with SeeSR's RCA grafted in, 2 steps, no CFG, tile overlap 32 "
        "(needs the stabilityai/sd-turbo files; see --turbo-model)",
    )
    speed.add_argument(
        "--turbo-model",
        default=None,
        metavar="PATH",
        help="SD-turbo folder (diffusers layout; implies --turbo; default: MODEL/turbo, then the Hugging Face cache)",
    )
    speed.add_argument(
        "--num-gpus",
        type=positive_int,
        default=1,
        metavar="N",
        help="split the inputs over N processes, one per GPU, with one summary (like `accelerate launch "
        "--num_processes N -m seesr upscale ...`); default: 1",
    )


def _add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """Resuming, output and the size and memory guards of a batch."""
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose result a previous run wrote (a complete PNG made from the same input file, whatever "
        "the other inputs were); empty or damaged results are made again",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no summary; errors only")
    parser.add_argument(
        "--max-input-pixels",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse inputs with more pixels than this (default: 64000000)",
    )
    parser.add_argument(
        "--max-output-pixels",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse inputs whose result, or the working image the model runs at (small inputs are enlarged to "
        "--process-size first), has more pixels than this (default: 64000000, i.e. 8000x8000: a 4x upscale of a "
        "2000x2000 photo); inputs over a 64:1 aspect ratio are always refused",
    )
    parser.add_argument(
        "--no-memory-check",
        action="store_true",
        help="do not refuse images whose estimated peak memory exceeds the memory available (default: refuse "
        "them, per file, before any work)",
    )


def _settings(args: argparse.Namespace):  # -> UpscaleSettings (heavy import kept out of module level)
    from seesr.pipeline.batch import UpscaleSettings
    from seesr.pipeline.preprocess import (
        DEFAULT_ADDED_PROMPT,
        DEFAULT_MAX_OUTPUT_PIXELS,
        DEFAULT_NEGATIVE_PROMPT,
        split_tags,
    )
    from seesr.utils.images import DEFAULT_MAX_INPUT_PIXELS

    turbo = args.turbo or args.turbo_model is not None
    if turbo:
        from seesr.models.turbo import TURBO_DEFAULTS

        defaults = {"steps": TURBO_DEFAULTS["num_inference_steps"], "guidance": TURBO_DEFAULTS["guidance_scale"]}
        defaults["latent_tile_overlap"] = TURBO_DEFAULTS["latent_tile_overlap"]
    else:
        defaults = {"steps": 50, "guidance": 5.5, "latent_tile_overlap": 4}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if isinstance(args.latent_tile_size, int) and args.latent_tile_overlap >= args.latent_tile_size:
        raise CLIError(
            f"--latent-tile-overlap ({args.latent_tile_overlap}) must be smaller than --latent-tile-size "
            f"({args.latent_tile_size})",
            EXIT_USAGE,
        )
    if args.process_size < 8:
        raise CLIError("--process-size must be at least 8", EXIT_USAGE)
    return UpscaleSettings(
        scale=args.scale,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        prompt=args.prompt,
        added_prompt=DEFAULT_ADDED_PROMPT if args.added_prompt is None else args.added_prompt,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt,
        use_tags=not args.no_tags,
        color_fix=args.color_fix,
        process_size=args.process_size,
        latent_tile_size=args.latent_tile_size,
        latent_tile_overlap=args.latent_tile_overlap,
        conditioning_scale=args.conditioning_scale,
        start_point=args.start_point,
        max_input_pixels=args.max_input_pixels or DEFAULT_MAX_INPUT_PIXELS,
        max_output_pixels=args.max_output_pixels or DEFAULT_MAX_OUTPUT_PIXELS,
        check_memory=not args.no_memory_check,
        extra_tags=tuple(split_tags(args.extra_tags)),
        remove_tags=tuple(split_tags(args.remove_tags)),
    )


def _silence_loading() -> None:
    """--quiet and worker processes: no INFO logs from seesr, no other library's loading bars or messages."""
    import logging

    from seesr.utils.logging import silence_libraries

    logging.getLogger("seesr").setLevel(logging.WARNING)
    silence_libraries()  # a no-op under seesr.cli.main, which already does this for the whole command


def _err(message: str) -> None:
    print(message, file=sys.stderr)  # noqa: T201


def _interrupted_line(statuses: list[str], total: int, outdir: Path) -> str:
    """The Ctrl-C line: how far the batch got (the resume hint follows from seesr.cli.main)."""
    counts = {status: statuses.count(status) for status in ("ok", "skipped", "failed")}
    return (
        f"seesr upscale: {len(statuses)} of {total} images done before Ctrl-C ({counts['ok']} written, "
        f"{counts['skipped']} skipped, {counts['failed']} failed -> {outdir})"
    )


def _worker(args: argparse.Namespace) -> int:
    """One process of ``--num-gpus N`` (started by :func:`seesr.utils.distributed.launch_local_workers`)."""
    import logging

    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except CLIError as error:
        _err(f"seesr upscale: error: {error}")
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def result_printer(args: argparse.Namespace, statuses: list[str]):
    """The per-file callback of a run: records each status in ``statuses`` and prints failures (and warnings, such
    as "only the first frame of an animated GIF was used") as they happen."""

    def report(result) -> None:
        statuses.append(result.status)
        if result.status == "failed":
            _err(f"error: {result.message}")
        elif result.status == "ok" and result.message and not args.quiet:
            _err(f"warning: {result.message}")

    return report


def _inputs(args: argparse.Namespace) -> tuple[list[Path], list[str], list[str]]:
    """The local input files (earlier seesr results left out, with a note), the remote ones (URIs such as
    ``s3://bucket/scans/``, listed; only with --ray) and the problems found while expanding."""
    from seesr.pipeline.batch import split_seesr_outputs
    from seesr.utils.images import iter_image_files
    from seesr.utils.ray_jobs import is_remote_uri

    uris = [item for item in args.inputs if is_remote_uri(item)]
    if uris and args.ray is None:
        raise CLIError(f"{uris[0]}: remote inputs are read by Ray actors; add --ray", EXIT_USAGE)
    remote: list[str] = []
    if uris:
        from seesr.cli.upscale_ray import list_remote_images

        remote = [file for uri in uris for file in list_remote_images(uri)]
    local = [item for item in args.inputs if item not in uris]
    files, problems = iter_image_files(local) if local else ([], [])
    files, earlier = split_seesr_outputs(files)
    if earlier and not args.quiet and _is_main_process():
        _err(
            f"note: left out {len(earlier)} image(s) that seesr upscale wrote (their PNG metadata says so), "
            f"e.g. {earlier[0]}"
        )
    if not files and not remote:
        reasons = problems or ([f"{earlier[0]} is a result of seesr upscale"] if earlier else ["nothing matched"])
        raise CLIError("no input images: " + "; ".join(reasons), EXIT_USAGE)
    return files, remote, problems


def _is_main_process() -> bool:
    """Rank 0 (or a single process): the one that prints notes and the summary."""
    import os

    return os.environ.get("RANK", "0") in ("", "0")


def check_output_folder(outdir: Path) -> None:
    """Fail now, in one line, when ``outdir`` is not a folder and cannot be made one, or is not writable.

    Folders it has to create for the check are removed again (nothing is left behind when a later step fails).
    """
    created: list[Path] = []
    try:
        missing = [parent for parent in [outdir, *outdir.parents] if not parent.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        if not outdir.is_dir():
            raise CLIError(f"-o {outdir}: is a file, not a folder; choose a folder for the results", EXIT_USAGE)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=outdir, prefix=".seesr-write-test-"):
            pass
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise CLIError(f"-o {outdir}: cannot write results there ({reason})", EXIT_USAGE) from None
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass


def _refused_by_size(files: list[Path], settings) -> list[str]:
    """The inputs that :func:`~seesr.pipeline.preprocess.check_processing_size` refuses from their header alone
    (the memory estimate needs the model and comes per file later); unreadable files are left to the batch."""
    from PIL import Image

    from seesr.pipeline.preprocess import ProcessingSizeError, check_processing_size

    refused = []
    for file in files:
        try:
            with Image.open(file) as image:
                size = image.size
            check_processing_size(
                *size,
                scale=settings.scale,
                process_size=settings.process_size,
                max_output_pixels=settings.max_output_pixels,
            )
        except ProcessingSizeError as error:
            refused.append(f"{file}: {error}")
        except Exception:  # noqa: BLE001, S112 - unreadable here: the batch reports it by name
            continue
    return refused


def _check_model(args: argparse.Namespace) -> None:
    """The model folder (and the SD-turbo one) exist and hold every file, or the defaults are fetched, before any
    process loads a model."""
    from seesr.weights.resolve import MissingWeightsError, resolve_model

    try:
        if args.model is not None:
            resolve_model(args.model, verify=False)  # files present; their sha256 is checked while loading
        if args.turbo or args.turbo_model is not None:
            from seesr.weights.turbo import find_turbo_folder

            find_turbo_folder(args.turbo_model, args.model)
    except MissingWeightsError as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    if args.model is None:
        fetch_missing(args)  # first use: download the default weights (announced), unless --no-download


def run(args: argparse.Namespace) -> int:
    from seesr.pipeline.batch import already_done, output_conflicts, plan_outputs

    # 1. Check settings, inputs, the output folder and the model files before loading anything heavy.
    settings = _settings(args)
    from seesr.cli.scaleout import check_ray_arguments
    from seesr.cli.upscale_video import video_inputs

    check_ray_arguments(args)
    videos = video_inputs(args)  # clips and frame sequences: seesr.cli.upscale_video, once the model is loaded
    if videos and args.ray is not None:
        raise CLIError("--ray upscales images; run clips and frame sequences without it", EXIT_USAGE)
    if args.ray is not None and args.num_gpus > 1:
        raise CLIError(
            "--num-gpus and --ray contradict each other: with --ray, --ray-actors sets the workers", EXIT_USAGE
        )
    files, remote, problems = _inputs(args) if not videos else ([], [], [])
    outdir = Path(args.outdir)
    check_output_folder(outdir)
    plan = plan_outputs(files, outdir, args.scale)  # over all inputs, also when each process takes a shard
    if args.skip_existing and videos:
        from seesr.cli.upscale_video import all_done

        if all_done(args, settings):
            if not args.quiet:
                print(f"0 written, {len(videos)} skipped, 0 failed -> {outdir}")  # noqa: T201
            return EXIT_OK  # every clip finished earlier: do not even load the model
    if args.skip_existing and not videos and not remote and not problems and not output_conflicts(plan):
        if all(already_done(file, target) for file, target in plan.items()):
            if not args.quiet and _is_main_process():
                print(f"0 written, {len(files)} skipped, 0 failed -> {outdir}")  # noqa: T201
            return EXIT_OK  # nothing to do: do not even load the model
    refused = _refused_by_size(files, settings)
    if (
        files and not remote and len(refused) == len(files)
    ):  # nothing could be upscaled: say why without loading the model
        if _is_main_process():
            for message in [*problems, *refused]:
                _err(f"error: {message}")
            if not args.quiet:
                print(f"0 written, 0 skipped, {len(files) + len(problems)} failed -> {outdir}")  # noqa: T201
        return EXIT_FAILURE
    _check_model(args)

    # 2. On a Ray cluster, in one process per GPU, or here.
    if args.ray is not None:
        from seesr.cli.upscale_ray import run_on_ray

        return run_on_ray(args, settings, files, remote, problems, plan)
    from seesr.utils.distributed import init_distributed, is_worker, launch_local_workers

    if args.num_gpus > 1 and not is_worker():
        import torch

        if torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
            raise CLIError(
                f"--num-gpus {args.num_gpus} but only {torch.cuda.device_count()} GPUs are visible", EXIT_USAGE
            )
        return launch_local_workers(args.num_gpus, _worker, (args,))
    try:
        context = init_distributed()
    except (ValueError, RuntimeError) as error:
        raise CLIError(f"cannot join the other processes: {error}") from None
    import logging

    own_logger = logging.getLogger("seesr")
    level = own_logger.level  # --quiet lowers it (_silence_loading); restored for the caller (tests, benchmark)
    try:
        return _run(args, settings, files, problems, plan, context)
    finally:
        own_logger.setLevel(level)
        context.close()


def resolve_execution(args: argparse.Namespace, device) -> tuple:
    """``(dtype, fast_config)`` for ``device`` from --dtype/--fast/--compile/--offload/--strict-fast (usage errors
    as :class:`CLIError`)."""
    import torch

    from seesr.pipeline.execution import fast_path_config_for
    from seesr.utils.device import resolve_dtype

    try:
        dtype = resolve_dtype(args.dtype, device)
    except (ValueError, RuntimeError) as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    if device.type == "cpu" and dtype == torch.float16:
        _err("warning: fp16 on CPU is slow and not the exact mode; consider --dtype fp32")
    if args.offload and device.type != "cuda":
        raise CLIError("--offload needs a CUDA GPU", EXIT_USAGE)
    fast_config = fast_path_config_for(
        device,
        args.fast,
        compile=args.compile,
        dtype=dtype if args.dtype else None,
        offload=bool(args.offload),
        strict=args.strict_fast,
    )
    for flag, given in (("--compile", args.compile), ("--strict-fast", args.strict_fast)):
        if given and fast_config is None:
            raise CLIError(
                f"{flag} needs the fast path (on by default on CUDA GPUs; add --fast elsewhere)", EXIT_USAGE
            )
    if fast_config is not None and not args.dtype:
        dtype = fast_config.dtype  # load straight into the fast path's dtype
    return dtype, fast_config


def load_pipeline(args: argparse.Namespace, device, *, show_steps: bool) -> tuple:
    """The pipeline of a run, as the flags ask (model, turbo, scheduler, fast path, offload), and the fields it adds
    to every PNG record; ``(pipe, metadata_extra)``. Shared by the local run and each Ray actor."""
    import torch

    from seesr.pipeline.execution import enable_offload
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline
    from seesr.weights.loading import ModelLoadError
    from seesr.weights.resolve import MissingWeightsError
    from seesr.weights.unet import CheckpointError

    dtype, fast_config = resolve_execution(args, device)
    try:
        # offloading starts from the CPU: the whole model never has to fit on the GPU at once
        pipe = SeeSRPipeline.from_pretrained(
            resolve_for_loading(args), device="cpu" if args.offload else device, dtype=dtype, load_tagger=True
        )
        if args.turbo or args.turbo_model is not None:
            from seesr.pipeline.turbo import load_turbo_pipeline
            from seesr.weights.turbo import find_turbo_folder

            pipe = load_turbo_pipeline(find_turbo_folder(args.turbo_model, args.model), pipe)
    except (MissingWeightsError, ModelLoadError, CheckpointError) as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    if args.scheduler != "ddpm":
        from seesr.pipeline.schedulers import scheduler_from_name

        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    if fast_config is not None:
        pipe.enable_fast_path(fast_config)
    if args.offload:
        enable_offload(pipe, args.offload, device)
    pipe.set_progress_bar_config(disable=not show_steps, leave=False, desc="steps")
    extra = {
        "model": getattr(getattr(pipe, "model_location", None), "description", str(args.model)),
        "device": str(device),
        "scheduler": args.scheduler,
        "dtype": {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
            pipe.unet.dtype, str(pipe.unet.dtype)
        ),
        "fast": fast_config is not None,
        "turbo": bool(args.turbo or args.turbo_model),
    }
    return pipe, extra


def _run(
    args: argparse.Namespace,
    settings: UpscaleSettings,
    files: list[Path],
    problems: list[str],
    plan: dict[Path, Path],
    context: DistributedContext,
) -> int:
    """Load the model and upscale this process's share of ``files`` (all of them in a single process)."""
    from seesr.pipeline.batch import upscale_files
    from seesr.utils.device import resolve_device
    from seesr.utils.logging import inner_progress_bars

    # 1. The device, and the model on it (clear message, no traceback, when files are missing).
    outdir = Path(args.outdir)
    try:
        device = context.device(args.device) if context.is_distributed else resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    if args.quiet or not context.is_main:
        _silence_loading()
    # the steps bar sits below the images bar: drawn on a terminal only (elsewhere it leaves ESC[A in logs)
    pipe, extra = load_pipeline(args, device, show_steps=context.is_main and not args.quiet and inner_progress_bars())

    # 2. Upscale this process's share of the inputs, reporting failures as they happen.
    if context.is_main:
        for problem in problems:
            _err(f"error: {problem}")
    done: list[str] = []
    report = result_printer(args, done)
    if not files:  # a video run: run() found clips or frame sequences (an image run always has files)
        from seesr.cli.upscale_video import run_videos

        return run_videos(pipe, args, settings, extra)
    shard = context.shard(files)
    try:
        summary = upscale_files(
            pipe,
            shard,
            outdir,
            settings,
            skip_existing=args.skip_existing,
            show_progress=not args.quiet and context.is_main,
            metadata_extra=extra,
            on_result=report,
            output_plan=plan,
        )
    except KeyboardInterrupt:
        if context.is_main:
            _err(_interrupted_line(done, len(shard), outdir))
        raise  # seesr.cli.main prints the resume hint (--skip-existing) and exits 130
    counts = {status: summary.count(status) for status in ("ok", "skipped", "failed")}
    gathered = context.gather(counts)
    if not context.is_main:
        return EXIT_OK if counts["failed"] == 0 else EXIT_FAILURE
    totals = {status: sum(part[status] for part in gathered) for status in counts}
    failed = totals["failed"] + len(problems)
    if not args.quiet:
        print(  # noqa: T201
            f"{totals['ok']} written, {totals['skipped']} skipped, {failed} failed -> {outdir}"
            + (f" ({context.world_size} processes)" if context.is_distributed else "")
        )
    return EXIT_OK if failed == 0 else EXIT_FAILURE
