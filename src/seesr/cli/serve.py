"""``seesr serve``: start the web UI (Gradio) on this machine.

Loads the model once, then serves a page where a user uploads a photo, sees and edits DAPE's tags, upscales it and
downloads the PNG. Safe by default: it listens on 127.0.0.1 only, runs one job per device at a time, and refuses
uploads above the byte and pixel limits set here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

from seesr.cli.convert import add_no_verify_argument, resolve_for_loading
from seesr.cli.download import add_no_download_argument, fetch_missing
from seesr.cli.main import EXIT_USAGE, CLIError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 25.0
DEFAULT_MAX_INPUT_PIXELS = 2048 * 2048
DEFAULT_MAX_OUTPUT_PIXELS = 4096 * 4096
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_VIDEO_FRAMES = 300


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``seesr serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="web UI: upload a photo, check and edit its tags, upscale, compare and download",
        description=(
            "Start the SeeSR web UI (needs the `web` extra: pip install 'seesr[web]'). The model is loaded once; "
            "the page then lets you upload a photo, detect and edit DAPE's tags, set the prompt, steps, guidance, "
            "seed, colour fix, scale and tile size, run with a progress bar and cancel, compare before/after and "
            "download the PNG with its settings; a Video tab upscales a short clip the way `seesr upscale clip.mp4` "
            "does, with progress in frames, the first frames shown early and the clip to download (--max-video-frames). "
            "Only this machine can connect unless --host says otherwise. "
            "The page starts from the defaults of `seesr upscale` (the same colour fix, added and negative prompts, "
            "steps, guidance and scale, and a new random seed per run); --demo-defaults starts from the official "
            "Gradio demo's instead. Uploads and results are kept in a private folder (mode 0700) that is removed "
            "when the server stops."
        ),
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="model folder: a release layout (unet/, controlnet/, ram/, SD-2-base parts), the official "
        "preset/models folder, or a converted bundle; default: the weights fetched by `seesr download` (downloaded "
        "on first use)",
    )
    add_no_download_argument(parser)
    add_no_verify_argument(parser)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 exposes the UI, and the "
        "device, to your whole network)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, mps, or auto (CUDA, then MPS, then CPU; default)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="weights dtype of the diffusion models (auto: bf16 with the fast path on CUDA, fp16 on MPS, fp32 on CPU; "
        "DAPE always runs in fp32)",
    )
    parser.add_argument(
        "--process-size",
        type=int,
        default=512,
        metavar="PX",
        help="minimum processing size: inputs whose short side is below PX/scale are enlarged first "
        "(official default 512)",
    )
    parser.add_argument(
        "--demo-defaults",
        action="store_true",
        help="start the page from the official SeeSR Gradio demo's values instead of seesr upscale's: wavelet "
        'colour fix, added prompt "clean, high-resolution, 8k, best quality, masterpiece", its longer negative '
        "prompt, seed 231",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest accepted upload in megabytes (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    parser.add_argument(
        "--max-input-pixels",
        type=int,
        default=DEFAULT_MAX_INPUT_PIXELS,
        metavar="N",
        help=f"largest accepted input, width×height (default {DEFAULT_MAX_INPUT_PIXELS}, i.e. 2048×2048)",
    )
    parser.add_argument(
        "--max-output-pixels",
        type=int,
        default=DEFAULT_MAX_OUTPUT_PIXELS,
        metavar="N",
        help="largest result, width×height after scaling, and largest working size (small or very long images are "
        f"enlarged to --process-size first) (default {DEFAULT_MAX_OUTPUT_PIXELS}, i.e. 4096×4096)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help=f"requests allowed to wait for the device; more are told the queue is full (default {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--max-video-frames",
        type=int,
        default=DEFAULT_MAX_VIDEO_FRAMES,
        metavar="N",
        help="longest clip the Video tab accepts, in frames; a longer one is refused at upload, before any work "
        f"(default {DEFAULT_MAX_VIDEO_FRAMES}: 10 s at 30 fps; every frame is a full upscale, so use `seesr upscale "
        "clip.mp4` for long clips)",
    )
    parser.set_defaults(func=run)
    return parser


def _limits(args: argparse.Namespace):  # -> WebLimits (imported lazily)
    from seesr.web.settings import WebLimits

    if args.max_upload_mb <= 0:
        raise CLIError("--max-upload-mb must be positive", EXIT_USAGE)
    try:
        return WebLimits(
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            max_input_pixels=args.max_input_pixels,
            max_output_pixels=args.max_output_pixels,
            max_queue=args.max_queue,
            max_video_frames=args.max_video_frames,
        )
    except ValueError as error:
        option = str(error).split()[0].replace("WebLimits.", "--").replace("_", "-")
        raise CLIError(f"{option} must be a positive integer", EXIT_USAGE) from None


def _check_address(host: str, port: int) -> None:
    """Fail before the (slow) model load if the address cannot be used."""
    if not 1 <= port <= 65535:
        raise CLIError(f"--port must be between 1 and 65535, got {port}", EXIT_USAGE)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise CLIError(f"--host {host!r} is not an address of this machine", EXIT_USAGE) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as error:
            raise CLIError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Load the model, build the page and serve it until interrupted."""
    if importlib.util.find_spec("gradio") is None:
        raise CLIError("the web UI needs Gradio: pip install 'seesr[web]'")
    limits = _limits(args)
    if args.process_size < 8:
        raise CLIError("--process-size must be at least 8", EXIT_USAGE)
    _check_address(args.host, args.port)

    from seesr.utils.device import resolve_device, resolve_dtype

    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except (ValueError, RuntimeError) as error:
        raise CLIError(f"--device {args.device}: {error}", EXIT_USAGE) from None

    from seesr.pipeline.fast import fast_path_config_for
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline
    from seesr.weights.loading import ModelLoadError
    from seesr.weights.resolve import MissingWeightsError

    # the same speed defaults as `seesr upscale`: the fast path on CUDA GPUs, the exact fp32 path elsewhere
    dtype_given = args.dtype not in (None, "auto")
    fast_config = fast_path_config_for(device, dtype=dtype if dtype_given else None)
    if fast_config is not None and not dtype_given:
        dtype = fast_config.dtype
    logger.info("loading the model on %s (%s)…", device, str(dtype).replace("torch.", ""))
    if args.model is None:
        fetch_missing(args)  # first use: download the default weights (announced), unless --no-download
    try:
        pipeline = SeeSRPipeline.from_pretrained(
            resolve_for_loading(args), device=device, dtype=dtype, load_tagger=True
        )
    except (MissingWeightsError, ModelLoadError) as error:
        raise CLIError(str(error)) from None
    if fast_config is not None:
        pipeline.enable_fast_path(fast_config)
    pipeline.set_progress_bar_config(disable=True)

    _serve(pipeline, args, limits, device)
    return 0


def _serve(pipeline: Any, args: argparse.Namespace, limits: Any, device: Any) -> None:
    """Serve the page until Ctrl+C or SIGTERM; the server's private folder (uploads, results) is removed either way."""
    from seesr.web.app import build_app, launch_app, private_server_folder
    from seesr.web.settings import WebSettings

    make_defaults = WebSettings.official_demo if args.demo_defaults else WebSettings
    with _stop_on_sigterm(), private_server_folder() as folder:
        app = build_app(
            pipeline,
            limits=limits,
            defaults=make_defaults(process_size=args.process_size),
            output_dir=folder / "results",
        )
        if not _is_loopback(args.host):
            logger.warning(
                "listening on %s: anyone who can reach this machine can use the UI and its %s; there is no login",
                args.host,
                device,
            )
        url = launch_app(app, host=args.host, port=args.port, block=False, quiet=True)
        print(f"SeeSR web UI on {url}  (Ctrl+C to stop)", flush=True)  # noqa: T201 - CLI output
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Let SIGTERM (``kill``, service managers) stop the server like Ctrl+C, so that its clean-up runs; the previous
    handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
