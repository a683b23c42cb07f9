"""``seesr degrade``: show what SeeSR is trained on by degrading your own images.

Each image goes through the official data path: unsharp-masked GT, then the second-order Real-ESRGAN
degradation (blur, resize, noise, JPEG, twice, then a sinc filter), giving an LR 1/scale the size. The seed of an
image is derived from ``--seed`` and its file name, so re-running gives the same LR and different images get
different degradations.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from pathlib import Path

from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "degrade",
        help="synthesise low-resolution training inputs from your images (Real-ESRGAN degradation)",
        description=(
            "Degrade your own high-resolution images the way SeeSR's training inputs are made, to see what the model "
            "learns to undo or to make test inputs: each image is sharpened (unsharp mask, as the training targets "
            "are), then blurred, resized, noised and JPEG-compressed twice and sinc-filtered (Real-ESRGAN's "
            "second-order degradation), and written at 1/SCALE of its size as OUTDIR/NAME.png. Deterministic: the "
            "same image, file name and --seed give the same result; different names get different degradations."
        ),
        epilog="example: seesr degrade photos/ -o lr/ --seed 1 --save-gt",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the LR PNGs")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default: 0)")
    parser.add_argument(
        "--preset",
        default="seesr",
        choices=("seesr", "realesrgan"),
        help="degradation settings: seesr (SeeSR's data scripts; default) or realesrgan (the same, with the final "
        "LR rounded to 8 bit in the tensor as Real-ESRGAN's training does; the PNGs are 8-bit either way)",
    )
    parser.add_argument("--scale", type=int, default=4, help="down-scaling factor (default: 4, as SeeSR)")
    parser.add_argument(
        "--count", type=int, default=1, help="LR variants per image, written as NAME_1.png ... (default: 1)"
    )
    parser.add_argument(
        "--crop",
        type=int,
        metavar="SIZE",
        help="degrade a random SIZE x SIZE crop (training uses 512) instead of the whole image",
    )
    parser.add_argument("--save-gt", action="store_true", help="also write the sharpened GT as NAME_gt.png")
    parser.add_argument("--no-sharpen", action="store_true", help="degrade the image as is (skip the GT sharpening)")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto, the GPU when there is one)"
    )
    parser.set_defaults(func=run)
    return parser


def image_seed(seed: int, name: str, variant: int = 0) -> list[int]:
    """Seed words of one output: (seed, crc32 of the file name, variant)."""
    return [seed & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8")), variant]


def _require_scipy() -> None:
    try:
        import scipy.special  # noqa: F401  (Bessel J1 of the sinc kernels)
    except ImportError:
        raise CLIError(
            "the degradation needs scipy; install the training extra: pip install 'seesr[train]'", EXIT_FAILURE
        ) from None


def _output_folder(output: Path) -> Path:
    """Make sure OUTDIR is a writable folder before any work (one line naming it otherwise)."""
    if output.exists() and not output.is_dir():
        raise CLIError(f"{output}: exists and is not a folder; choose another -o", EXIT_USAGE)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"{output}: cannot create the folder ({error.strerror or error}); choose another -o") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise CLIError(f"{output}: the folder is not writable; choose another -o")
    return output


def run(args: argparse.Namespace) -> int:
    _require_scipy()
    from tqdm.auto import tqdm

    from seesr.data.datasets import item_generator
    from seesr.data.transforms import pil_to_tensor, random_crop_gt, tensor_to_pil
    from seesr.degradations import DegradationConfig, degrade, sharpen_gt
    from seesr.degradations.pipeline import MIN_HR_SIZE
    from seesr.utils.device import is_out_of_memory, resolve_device
    from seesr.utils.images import ImageReadError, iter_image_files, load_image, save_image_atomic

    if args.scale < 1:
        raise CLIError("--scale must be a positive integer", EXIT_USAGE)
    if args.count < 1:
        raise CLIError("--count must be at least 1", EXIT_USAGE)
    minimum = max(MIN_HR_SIZE, args.scale)
    if args.crop is not None and args.crop < minimum:
        raise CLIError(f"--crop must be at least {minimum}", EXIT_USAGE)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    config = DegradationConfig.preset(args.preset)
    if args.no_sharpen:
        config = config.replace(sharpen_gt=None)

    files, problems = iter_image_files(args.images)
    for problem in problems:
        print(f"seesr degrade: {problem}", file=sys.stderr)  # noqa: T201
    if not files:
        raise CLIError("no input images", EXIT_USAGE if problems else EXIT_FAILURE)
    output = _output_folder(Path(args.output))

    failures = len(problems)
    written = 0
    for path in tqdm(files, desc="degrade", unit="img", disable=len(files) < 2):
        try:
            hr = pil_to_tensor(load_image(path).rgb)
            height, width = hr.shape[-2:]
            if args.crop is None and min(height, width) < minimum:
                raise ImageReadError(f"{path}: {width}x{height} is too small (at least {minimum} px per side)")
            for variant in range(args.count):
                generator = item_generator(*image_seed(args.seed, path.name, variant))
                image = random_crop_gt(hr, args.crop, generator, hflip=False) if args.crop else hr
                gt = sharpen_gt(image[None].to(device), config)
                lr = degrade(gt, config, generator, scale=args.scale)
                suffix = f"_{variant + 1}" if args.count > 1 else ""
                save_image_atomic(tensor_to_pil(lr[0]), output / f"{path.stem}{suffix}.png", protected=files)
                if args.save_gt:
                    save_image_atomic(tensor_to_pil(gt[0]), output / f"{path.stem}{suffix}_gt.png", protected=files)
                written += 1
        except ImageReadError as error:  # its message names the file
            failures += 1
            print(f"seesr degrade: {error}", file=sys.stderr)  # noqa: T201
        except OSError as error:
            failures += 1
            print(f"seesr degrade: {path}: {error.strerror or error}", file=sys.stderr)  # noqa: T201
        except (RuntimeError, MemoryError) as error:  # the CPU allocator's failure is a RuntimeError
            if not is_out_of_memory(error):
                raise
            failures += 1
            print(f"seesr degrade: {path}: out of memory (try --crop 512 or a smaller image)", file=sys.stderr)  # noqa: T201
    print(f"wrote {written} LR image(s) to {output}" + (f"; {failures} problem(s)" if failures else ""))  # noqa: T201
    return EXIT_FAILURE if failures else EXIT_OK
