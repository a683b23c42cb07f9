"""``seesr doctor [--check] [--device D] [--verify] [--json]``: what a bug report needs, and a fast-path self-check.

Without options it prints the versions (seesr, Python, torch with its CUDA and cuDNN, diffusers, transformers, timm,
accelerate, safetensors, huggingface_hub), the device with its free memory, the attention backends that PyTorch's
SDPA can run there, and which SeeSR weight files are in the Hugging Face cache (sizes; with ``--verify`` their
checksums are computed and compared).

``--check`` builds a tiny SeeSR pipeline with random weights from a fixed seed (configs shipped in
``seesr/configs/tiny``; nothing is downloaded), upscales one small synthetic image with the ``exact`` path (fp32)
and then with the ``fast`` path (the preset a GPU user gets: bf16, batched tiles, CUDA graphs on CUDA) on the chosen
device, and prints the PSNR and largest pixel difference of the fast output against the exact one and the time
per step of each. It exits with status 1 when the fast path's PSNR is below :data:`CHECK_MIN_PSNR_DB`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seesr.cli.main import EXIT_FAILURE, EXIT_OK, CLIError

#: the fast path fails the check below this PSNR against the exact path (uint8 output of the tiny pipeline).
#: Measured on CPU, bf16 fast preset vs exact fp32, seeds 0-9 of the check: 45.7-49.5 dB (median 47.8). Faults
#: measured against it (seed 0): noise prediction x1.5 -> 30.2 dB, x0.5 -> 29.1 dB, + 10 % noise -> 29.8 dB,
#: + 30 % noise -> 20.3 dB, negated -> 17.9 dB; a 5 % scale error (45 dB) is below what this check can see.
CHECK_MIN_PSNR_DB = 35.0
#: the measured range, quoted by --help and the README
CHECK_MEASURED = "45.7-49.5 dB on CPU over 10 seeds"
CHECK_SEED = 0
#: the check's call: 24x16 LR -> 96x64 output, 12x8 latent in 2 Gaussian-blended tiles of 8x8 (overlap 4), CFG on; no
#: colour fix (AdaIN would hide part of a fault by renormalising the colours)
CHECK_CALL: dict[str, Any] = {
    "num_inference_steps": 4,
    "guidance_scale": 5.5,
    "upscale": 4,
    "process_size": 64,
    "latent_tile_size": 8,
    "latent_tile_overlap": 4,
    "color_fix": "none",
}
CHECK_LR_SIZE = (24, 16)
PACKAGES = ("seesr", "torch", "diffusers", "transformers", "timm", "accelerate", "safetensors", "huggingface_hub")
TINY_CONFIGS = "configs/tiny"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "doctor",
        help="print versions, device, attention backends and cached weights; --check tests the fast path",
        description=(
            "Print what a bug report needs: versions (seesr, Python, torch with CUDA and cuDNN, diffusers, "
            "transformers, timm, ...), the device and its free memory, the attention backends SDPA can run there, "
            "and which SeeSR weight files are in the Hugging Face cache (sizes; checksums with --verify). "
            "--check builds a tiny SeeSR pipeline with random weights from a fixed seed (configs shipped with the "
            "package, nothing downloaded), upscales one small synthetic image with the exact path (fp32) and the "
            "fast path (the preset this device gets: bf16, batched tiles, CUDA graphs on CUDA), prints the fast "
            "output's PSNR and largest difference against the exact one and the time per step of each, and exits "
            f"with status 1 when that PSNR is below {CHECK_MIN_PSNR_DB:g} dB (measured {CHECK_MEASURED}; a 30 % "
            "error in the noise prediction gives about 20 dB)."
        ),
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"run the exact and the fast path on tiny random models and fail (exit 1) if the fast output's PSNR "
        f"against the exact one is below {CHECK_MIN_PSNR_DB:g} dB (measured {CHECK_MEASURED}); a few seconds",
    )
    parser.add_argument("--device", default=None, help="device to report and check on (default: cuda, mps, cpu)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compute the checksum of every cached weight file (sha256 of 5+ GB: minutes) and compare it with the "
        "catalogue or the Hub's own hash",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from seesr.utils.device import resolve_device

    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        raise CLIError(str(error)) from None
    # 1. What a bug report needs
    report: dict[str, Any] = {
        "versions": package_versions(),
        "device": device_report(device),
        "sdpa_backends": sdpa_backends(device),
        "weights": weights_report(verify=args.verify),
    }
    # 2. The fast path against the exact path on this device
    if args.check:
        if not args.json:
            _print_report(report)
            report = {}
        report["check"] = run_check(device)
    # 3. Output and status
    if args.json:
        print(json.dumps(report, indent=2, default=str))  # noqa: T201
    else:
        _print_report(report)
    check = report.get("check")
    return EXIT_FAILURE if check is not None and not check["ok"] else EXIT_OK


# ---------------------------------------------------------------------------------------------------------------
# environment


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages SeeSR runs on (None when missing), with Python, CUDA and cuDNN."""
    import torch

    versions: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = torch.__version__  # with its local build tag (+cu130, +cpu)
    versions["torch_cuda"] = torch.version.cuda
    versions["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return versions


def device_report(device: Any) -> dict[str, Any]:
    """Name, memory (total / free, GiB) and bf16 support of ``device``."""
    import torch

    info: dict[str, Any] = {"device": str(device), "type": device.type}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        info.update(
            name=properties.name,
            capability=f"{properties.major}.{properties.minor}",
            total_gib=round(total / 2**30, 2),
            free_gib=round(free / 2**30, 2),
            bf16=torch.cuda.is_bf16_supported(),
            devices=torch.cuda.device_count(),
        )
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
        with contextlib.suppress(AttributeError, OSError, ValueError):  # sysconf: POSIX only
            pages, page_size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
            info["free_gib"] = round(pages * page_size / 2**30, 2)
    return info


def sdpa_backends(device: Any) -> dict[str, str]:
    """Each SDPA backend -> ``"ok"`` or why it cannot run on ``device`` (tried on a small attention call)."""
    import warnings

    import torch

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: only the global switches can be read
        return {"flash_attention": f"enabled: {torch.backends.cuda.flash_sdp_enabled()}"}
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    query = torch.randn(1, 2, 64, 64, device=device, dtype=dtype)
    results: dict[str, str] = {}
    names = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
    for backend in filter(None, (getattr(SDPBackend, name, None) for name in names)):
        name = backend.name.lower()
        with warnings.catch_warnings(record=True) as caught, sdpa_kernel([backend]):
            warnings.simplefilter("always")
            try:
                torch.nn.functional.scaled_dot_product_attention(query, query, query)
                results[name] = f"ok ({str(dtype).removeprefix('torch.')})"
            except RuntimeError as error:  # torch explains why in warnings; the error itself says "no backend"
                reasons = [str(item.message).strip().splitlines()[0] for item in caught]
                if not reasons and str(error).startswith("No viable backend"):
                    reasons = [f"not built for {device.type} / {str(dtype).removeprefix('torch.')}"]
                results[name] = "unavailable: " + "; ".join(dict.fromkeys(reasons or [str(error)]))[:200]
    return results


# ---------------------------------------------------------------------------------------------------------------
# weights


def _hub_hash(path: Path) -> str | None:
    """The hash the Hub recorded for a cached file: its blob name (sha256 for LFS files, git sha1 otherwise)."""
    name = path.resolve().name
    return name if len(name) in (40, 64) and all(c in "0123456789abcdef" for c in name) else None


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - git's object id, not security
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_status(entry: Any, path: Path, verify: bool, locked: dict[str, Any] | None = None) -> str:
    """How far ``path`` is known to be intact: ``verified ...``, ``MISMATCH ...``, ``size mismatch ...``,
    ``changed since ...``, ``not verified ...`` or ``no checksum known``.

    ``locked`` is the file's record in the weights lock (its sha256 and file stat when it was hashed at download):
    an unchanged file counts as verified without hashing it again. ``verify`` hashes every file now.
    """
    from seesr.weights.lock import file_stat
    from seesr.weights.reader import file_sha256

    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"size mismatch: {size} bytes, catalogue says {entry.size}"
    if locked is not None and locked.get("sha256"):
        if not verify and locked.get("stat") == file_stat(path):
            return "verified at download (sha256 in the weights lock; unchanged since)"
        expected, source = locked["sha256"], "locked sha256"
    elif entry.sha256:
        expected, source = entry.sha256, "catalogue sha256"
    else:
        expected, source = _hub_hash(path), "Hub hash"
    if expected is None:
        return "no checksum known"
    if not verify:
        changed = "changed since it was verified; " if locked is not None else ""
        return f"not verified ({changed}{source} known; run `seesr doctor --verify`)"
    actual = _git_blob_sha1(path) if len(expected) == 40 else file_sha256(path)
    return f"verified ({source})" if actual == expected else f"MISMATCH: {actual} != {source} {expected}"


def weights_report(verify: bool = False) -> dict[str, Any]:
    """Catalogue files in the Hugging Face cache (path, size, checksum status) and the converted bundle, if any."""
    from seesr.weights.catalog import CATALOG, TURBO_CATALOG, pinned_revisions
    from seesr.weights.lock import key_of, read_lock
    from seesr.weights.resolve import MissingWeightsError, cached_file, default_bundle_dir, hf_cache_dir, is_bundle

    cache_dir = hf_cache_dir()
    pins = pinned_revisions()
    try:
        locked = read_lock()
    except MissingWeightsError:  # an unreadable lock: every file is then reported as not verified
        locked = {}
    files = []
    for entry in (*CATALOG, *TURBO_CATALOG):
        path = cached_file(entry, pins[entry.repo_id], cache_dir)
        record: dict[str, Any] = {"repo": entry.repo_id, "file": entry.filename, "component": entry.component}
        if path is None:
            record["status"] = "missing"
        else:
            status = checksum_status(entry, path, verify, locked.get(key_of(entry)))
            record.update(path=str(path), size=path.stat().st_size, status=status)
        files.append(record)
    bundle = default_bundle_dir()
    bundle_files = []
    if is_bundle(bundle):
        bundle_files = [
            {"file": str(path.relative_to(bundle)), "size": path.stat().st_size}
            for path in sorted(bundle.rglob("*"))
            if path.is_file()
        ]
    return {"cache_dir": str(cache_dir), "files": files, "bundle_dir": str(bundle), "bundle_files": bundle_files}


# ---------------------------------------------------------------------------------------------------------------
# check: exact vs fast on tiny random models


def tiny_config(name: str) -> dict[str, Any]:
    """One of the tiny model configs shipped with the package (``seesr/configs/tiny/<name>.json``)."""
    from importlib.resources import files

    return json.loads(files("seesr").joinpath(TINY_CONFIGS, f"{name}.json").read_text(encoding="utf-8"))


def _randomise(model: Any, generator: Any) -> Any:
    """Make a freshly built model's output depend on every layer, as trained weights do.

    diffusers and RAM zero-initialise some layers (ControlNet's output convolutions, DAPE's label embeddings) and set
    every norm to the identity; with those the check could not see a fault in them. Zero weights are redrawn with the
    layer's own initialiser (from the seeded global RNG) and norm affines become ``1 + 0.1·N`` / ``0.1·N``.
    """
    import torch

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and weight is not None:
            weight.data = 1 + 0.1 * torch.randn(weight.shape, generator=generator)
            if module.bias is not None:
                module.bias.data = 0.1 * torch.randn(module.bias.shape, generator=generator)
        elif isinstance(weight, torch.Tensor) and hasattr(module, "reset_parameters") and not weight.any():
            module.reset_parameters()
    for parameter in model.parameters():
        if parameter.dim() >= 2 and not parameter.any():  # bare zero parameters (DAPE's label embeddings)
            parameter.data = torch.randn(parameter.shape, generator=generator)
    return model.eval()


def build_tiny_pipeline(device: Any, seed: int = CHECK_SEED) -> Any:
    """A complete tiny :class:`SeeSRPipeline` (DAPE included) with random fp32 weights, identical on every device.

    The weights are drawn on the CPU from ``seed`` (the global RNG state is restored afterwards), then moved.
    """
    from importlib.resources import as_file, files

    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from seesr.models.image_cross_attention import add_image_cross_attention
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline
    from seesr.tagger.dape import DAPETagger

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        tagger = _randomise(DAPETagger(**tiny_config("tagger")), generator)
        image_dim = tagger.config.image_embed_dim
        unet = UNet2DConditionModel.from_config(tiny_config("unet"))
        unet = _randomise(add_image_cross_attention(unet, image_dim), generator)
        controlnet = ControlNetModel.from_config(tiny_config("controlnet"))
        controlnet = _randomise(add_image_cross_attention(controlnet, image_dim), generator)
        vae = _randomise(AutoencoderKL.from_config(tiny_config("vae")), generator)
        text_encoder = _randomise(CLIPTextModel(CLIPTextConfig(**tiny_config("text_encoder"))), generator)
    with as_file(files("seesr").joinpath(TINY_CONFIGS, "tokenizer")) as folder:
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    pipe = SeeSRPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=DDPMScheduler.from_config(tiny_config("scheduler")),
        tagger=tagger,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def check_image(seed: int = CHECK_SEED) -> Any:
    """A small smooth colour image (``CHECK_LR_SIZE``) with some texture, the same for every device."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = CHECK_LR_SIZE
    coarse = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    texture = rng.integers(-12, 13, size=smooth.shape)
    return Image.fromarray(np.clip(smooth + texture, 0, 255).astype(np.uint8))


def psnr(first: Any, second: Any) -> float:
    """PSNR (dB, peak 255, all RGB channels) between two uint8 images; inf when identical."""
    from seesr.evaluation.metrics import calculate_psnr

    return calculate_psnr(first, second, test_y_channel=False)


@contextlib.contextmanager
def _restored_backend_flags() -> Iterator[None]:
    """Restore the TF32 / cuDNN switches on exit (the check sets them; other code in the process must not notice)."""
    import torch

    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.get_float32_matmul_precision(),
    )
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.backends.cudnn.benchmark = saved[2]
        torch.set_float32_matmul_precision(saved[3])


def _timed_calls(pipe: Any, image: Any, device: Any, seed: int, calls: int = 2) -> tuple[list[Any], float, float]:
    """``calls`` pipeline calls (the first one warms up: CUDA-graph capture, autotuning).

    Returns:
        The outputs (uint8 arrays), the seconds per denoising step of the last call (between the first and the last
        step's ``callback_on_step_end``, the device synchronised at each) and that call's total seconds.
    """
    import numpy as np
    import torch

    def synchronize() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        stamps.append(synchronize())
        return {}

    outputs: list[Any] = []
    for _ in range(calls):
        stamps: list[float] = []
        start = synchronize()
        result = pipe(
            image, seed=seed, callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=(), **CHECK_CALL
        )
        outputs.append(np.asarray(result.images[0]))
        total = synchronize() - start
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else total
    return outputs, per_step, total


def run_check(device: Any, min_psnr_db: float = CHECK_MIN_PSNR_DB, seed: int = CHECK_SEED) -> dict[str, Any]:
    """Exact path, then fast path, on the tiny pipeline on ``device``; ``ok`` iff every fast output's PSNR against
    the exact output is at least ``min_psnr_db``. Failures of the fast path itself are reported, not raised."""
    import numpy as np
    import torch

    from seesr.pipeline.execution import fast_path_config_for

    image = check_image(seed)
    result: dict[str, Any] = {"device": str(device), "min_psnr_db": min_psnr_db, "seed": seed, **CHECK_CALL}
    with _restored_backend_flags():
        # 1. exact: fp32 weights and maths (TF32 off on CUDA: torch enables it for cuDNN by default)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        pipe = build_tiny_pipeline(device, seed)
        exact, exact_step, exact_call = _timed_calls(pipe, image, device, seed)
        result["exact"] = {
            "dtype": "float32",
            "s_per_step": round(exact_step, 5),
            "call_s": round(exact_call, 4),
            "shape": list(exact[-1].shape),
        }
        # 2. fast: the preset a user of this device gets (bf16, fp16 on GPUs without it; graphs on CUDA)
        config = fast_path_config_for(device, enabled=True)
        try:
            config = pipe.enable_fast_path(config)  # the config in use (graphs off where they cannot run)
            fast, fast_step, fast_call = _timed_calls(pipe, image, device, seed)
        except Exception as error:  # a crash of the fast path is the finding, not a crash of the doctor
            result.update(ok=False, error=f"fast path failed: {type(error).__name__}: {error}")
            return result
        finally:
            pipe.disable_fast_path()
    scores = [psnr(output, exact[-1]) for output in fast]
    result["fast"] = {
        "dtype": str(config.dtype).removeprefix("torch."),
        "cuda_graphs": bool(config.cuda_graphs),
        "s_per_step": round(fast_step, 5),
        "call_s": round(fast_call, 4),
        "psnr_db": round(min(scores), 2),
        "max_abs_diff": int(max(np.abs(output.astype(int) - exact[-1].astype(int)).max() for output in fast)),
        "repeat_max_abs_diff": int(np.abs(fast[0].astype(int) - fast[-1].astype(int)).max()),
    }
    result["exact"]["repeat_max_abs_diff"] = int(np.abs(exact[0].astype(int) - exact[-1].astype(int)).max())
    result["ok"] = min(scores) >= min_psnr_db
    return result


# ---------------------------------------------------------------------------------------------------------------
# text output


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _print_report(report: dict[str, Any]) -> None:
    lines: list[str] = []
    if "versions" in report:
        lines.append("versions:")
        lines += [f"  {name:<16} {value or 'not installed'}" for name, value in report["versions"].items()]
        device = report["device"]
        details = ", ".join(f"{key} {value}" for key, value in device.items() if key not in ("device", "type"))
        lines.append(f"device: {device['device']} ({details})")
        backends = ", ".join(f"{name}: {status}" for name, status in report["sdpa_backends"].items())
        lines.append(f"attention (SDPA) backends: {backends}")
        lines += _weights_lines(report["weights"])
    if "check" in report:
        lines += _check_lines(report["check"])
    print("\n".join(lines), flush=True)  # noqa: T201


def _weights_lines(weights: dict[str, Any]) -> list[str]:
    lines = [f"weights in the Hugging Face cache ({weights['cache_dir']}):"]
    repos = dict.fromkeys(record["repo"] for record in weights["files"])
    for repo in repos:
        records = [record for record in weights["files"] if record["repo"] == repo]
        present = [record for record in records if "size" in record]
        optional = " (optional, --turbo)" if all(record["component"] == "turbo" for record in records) else ""
        lines.append(f"  {repo}{optional}: {len(present)} of {len(records)} files")
        lines += [f"    {r['file']}  {_size(r['size'])}  {r['status']}" for r in present]
        missing = [record["file"] for record in records if "size" not in record]
        if present and missing:
            lines.append(f"    missing: {', '.join(missing)}")
    if weights["bundle_files"]:
        total = sum(item["size"] for item in weights["bundle_files"])
        lines.append(f"converted bundle {weights['bundle_dir']}: {len(weights['bundle_files'])} files, {_size(total)}")
    else:
        lines.append(f"converted bundle {weights['bundle_dir']}: none")
    return lines


def _check_lines(check: dict[str, Any]) -> list[str]:
    lines = [
        f"check on {check['device']}: tiny random models (seed {check['seed']}), "
        f"{check['num_inference_steps']} steps, CFG {check['guidance_scale']}, latent tiles {check['latent_tile_size']}; "
        "time per step between the second call's step callbacks (device synchronised), whole call in brackets"
    ]
    if "exact" in check:
        exact = check["exact"]
        lines.append(f"  exact ({exact['dtype']}): {exact['s_per_step'] * 1000:.1f} ms/step ({exact['call_s']:.2f} s)")
    if "fast" in check:
        fast = check["fast"]
        lines.append(
            f"  fast ({fast['dtype']}, CUDA graphs {'on' if fast['cuda_graphs'] else 'off'}): "
            f"{fast['s_per_step'] * 1000:.1f} ms/step ({fast['call_s']:.2f} s), PSNR {fast['psnr_db']:.2f} dB vs exact, "
            f"max difference {fast['max_abs_diff']}/255"
        )
    if "error" in check:
        lines.append(f"  {check['error']}")
    verdict = "ok" if check["ok"] else "FAILED"
    lines.append(f"  result: {verdict} (the fast path must reach {check['min_psnr_db']:g} dB PSNR against exact)")
    return lines
