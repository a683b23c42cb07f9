"""The video part of ``seesr upscale``: clips (``clip.mp4``) and frame sequences (``frames/%06d.png``).

:mod:`seesr.cli.upscale` calls :func:`add_video_arguments` for its parser, :func:`video_inputs` to tell a video run
from an image run, and :func:`run_videos` once the model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError


def _fps(value: str) -> Fraction:
    try:
        rate = Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a frame rate like 25 or 30000/1001, got {value!r}") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"frame rate must be positive, got {value}")
    return rate


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "video",
        "An INPUT that is a video file (mp4, mov, mkv, webm, avi, ...) gives OUTDIR/<stem>.<ext> (mp4/mov/mkv kept, "
        "other containers become mkv) with the frame rate, timestamps, rotation and duration of the input and its "
        "audio and subtitle streams copied as they are. A frame sequence is a pattern like 'frames/%06d.png' (or a "
        "folder with --assemble). Frames are upscaled one by one with ONE seed for the whole clip (--seed, or a "
        "random one recorded in the report), the tags of their shot, and the colour fix against their own input "
        "frame; they go to OUTDIR/<stem>.frames/ first, so an "
        "interrupted run continues with --skip-existing. OUTDIR/<stem>.video.json reports shots, tags, undecodable "
        "frames and the flicker (mean absolute difference of consecutive frames, beside the bicubic upscale's).",
    )
    group.add_argument(
        "--video-tags",
        choices=("clip", "shot", "frame"),
        default="shot",
        help="one tag set for the whole clip, per shot (default; a cut is a colour-histogram jump above "
        "--shot-threshold), or per frame (flickers most)",
    )
    group.add_argument(
        "--shot-threshold",
        type=float,
        default=0.4,
        metavar="X",
        help="shot-change threshold: histogram distance between consecutive frames, 0..1 (default: 0.4)",
    )
    group.add_argument(
        "--tag-every",
        type=int,
        default=12,
        metavar="N",
        help="tag every N-th frame of a shot, at most 3 per shot; tags found in half of them are kept (default: 12)",
    )
    group.add_argument(
        "--frame-noise",
        choices=("shared", "per-frame"),
        default="shared",
        help="shared: every frame starts from the same noise (default); per-frame: seed + frame number, for "
        "comparison (what upscaling frames one by one does; flickers more)",
    )
    group.add_argument("--codec", default=None, help="video encoder (default: libx264, else libx265, else mpeg4)")
    group.add_argument(
        "--crf", type=int, default=None, help="quality for libx264/libx265 (default: 18; lower: better)"
    )
    group.add_argument("--bitrate", default=None, metavar="RATE", help="target bitrate, e.g. 8M (instead of --crf)")
    group.add_argument(
        "--frames-only", action="store_true", help="write the PNG frames (OUTDIR/<stem>.frames/) and no video"
    )
    group.add_argument(
        "--keep-frames", action="store_true", help="keep OUTDIR/<stem>.frames/ after the video is written"
    )
    group.add_argument(
        "--assemble",
        default=None,
        metavar="VIDEO",
        help="frame sequence: also encode the upscaled frames into this video file (at --fps)",
    )
    group.add_argument(
        "--fps", type=_fps, default=None, help="frame rate for --assemble (default: 25; a video keeps its own)"
    )


def video_inputs(args: argparse.Namespace) -> list[str]:
    """The inputs when this is a video run (video files, frame patterns, folders with --assemble/--frames-only);
    [] for an image run. Mixing videos and images is a usage error."""
    from seesr.utils.video_io import is_frame_pattern, is_video_file

    sequence_flags = args.assemble is not None or args.frames_only
    kinds = [
        is_video_file(item) or is_frame_pattern(item) or (sequence_flags and Path(item).is_dir())
        for item in args.inputs
    ]
    if not any(kinds):
        if args.assemble is not None:
            raise CLIError("--assemble needs a frame sequence input (a folder or a pattern like frames/%06d.png)")
        return []
    if not all(kinds):
        raise CLIError("upscale videos and images in separate calls", EXIT_USAGE)
    if args.num_gpus > 1:
        raise CLIError("--num-gpus: videos are upscaled by one process", EXIT_USAGE)
    return list(args.inputs)


def _video_settings(args: argparse.Namespace):
    from seesr.pipeline.video import VideoSettings
    from seesr.utils.video_io import EncodeOptions

    if not 0 < args.shot_threshold <= 1:
        raise CLIError("--shot-threshold must be in (0, 1]", EXIT_USAGE)
    if args.tag_every < 1:
        raise CLIError("--tag-every must be at least 1", EXIT_USAGE)
    return VideoSettings(
        video_tags=args.video_tags,
        shot_threshold=args.shot_threshold,
        tag_every=args.tag_every,
        noise=args.frame_noise,
        frames_only=args.frames_only,
        keep_frames=args.keep_frames,
        fps=args.fps,
        assemble=Path(args.assemble) if args.assemble else None,
        encode=EncodeOptions(codec=args.codec, crf=args.crf, bitrate=args.bitrate),
    )


def all_done(args: argparse.Namespace, settings: Any) -> bool:
    """``--skip-existing`` and every clip finished by an earlier run with these settings: no model to load."""
    from seesr.pipeline.video import already_upscaled, open_source
    from seesr.utils.video_io import VideoError

    video = _video_settings(args)
    try:
        return all(already_upscaled(open_source(item), Path(args.outdir), settings, video) for item in args.inputs)
    except (VideoError, ValueError, OSError):
        return False  # the run reports the problem


def _err(message: str) -> None:
    print(message, file=sys.stderr)  # noqa: T201


def run_videos(pipe: Any, args: argparse.Namespace, settings: Any, extra: dict[str, Any]) -> int:
    """Upscale each clip or sequence in turn; a clip that fails is reported in one line and the next one goes on."""
    from seesr.pipeline.video import open_source, upscale_video, work_folder
    from seesr.utils.device import is_out_of_memory
    from seesr.utils.video_io import VideoError, pick_codec

    video = _video_settings(args)
    if len(args.inputs) > 1 and video.assemble is not None:
        raise CLIError("--assemble takes one frame sequence", EXIT_USAGE)
    if not video.frames_only:
        try:
            pick_codec(video.encode.codec)  # before the first frame, not after the last
        except VideoError as error:
            raise CLIError(str(error), EXIT_USAGE) from None
    outdir = Path(args.outdir)
    failed = 0
    claimed: dict[str, str] = {}  # output name -> the input that has it: OUTDIR/<name>.<ext> and <name>.frames/
    for item in args.inputs:
        try:
            source = open_source(item)
            if source.name in claimed:
                raise ValueError(
                    f"same output name as {claimed[source.name]} ({outdir / source.name}.*, "
                    f"{work_folder(source, outdir).name}/); rename one of them or upscale them into different -o folders"
                )
            claimed[source.name] = str(item)
            result = upscale_video(
                pipe,
                source,
                outdir,
                settings,
                video,
                skip_existing=args.skip_existing,
                show_progress=not args.quiet,
                metadata_extra=extra,
            )
        except KeyboardInterrupt:
            _err(f"seesr upscale: {item} interrupted; its finished frames are kept in {outdir}")
            raise  # seesr.cli.main prints the resume hint (--skip-existing) and exits 130
        except (VideoError, ValueError, OSError) as error:
            failed += 1
            _err(f"error: {item}: {error}" if str(item) not in str(error) else f"error: {error}")
            continue
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            failed += 1
            _err(
                f"error: {item}: out of memory (even with small tiles); its finished frames are kept in {outdir}: "
                "lower --scale or --process-size, or free memory, and rerun with --skip-existing"
            )
            continue
        for line in result.corrupt:
            _err(f"warning: {line}")
        if result.message:
            _err(f"warning: {result.message}")
        if not args.quiet:
            print(_summary(result))  # noqa: T201
    return EXIT_OK if failed == 0 else EXIT_FAILURE


def _summary(result: Any) -> str:
    if result.status == "skipped":
        return f"{result.source}: skipped (output exists) -> {result.output}"
    report = result.report
    flicker = report["flicker"]
    measured = (
        f"flicker {flicker['output']:.2f} vs bicubic {flicker['bicubic']:.2f}" if flicker["output"] is not None else ""
    )
    corrupt = f", {len(result.corrupt)} undecodable (replaced)" if result.corrupt else ""
    return (
        f"{result.source}: {result.frames} frames ({result.rendered} upscaled, {result.frames - result.rendered} "
        f"resumed{corrupt}), {len(report['shots'])} shot(s), {measured} -> {result.output}"
    )
