"""Benchmark the training-data degradation: 512x512 HR crops → (USM-sharpened GT, 128x128 LR) per second.

Times :func:`seesr.data.degrade_batch` (GT sharpening, kernel sampling, the second-order Real-ESRGAN model, bicubic
re-upscaling and 8-bit quantisation) on a batch of random-content photo crops, on the CPU and, when available, on
CUDA (the generator stays on the CPU, as in training). ``--separable-usm`` also times the fast USM variant.

Writes a JSON report to stdout (and to ``--output``):

    OMP_NUM_THREADS=2 python benchmarks/bench_degradation.py --devices cpu --iters 3
    python benchmarks/bench_degradation.py --output bench_degradation.json       # CPU and CUDA if present
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from seesr.data import degrade_batch  # noqa: E402
from seesr.degradations import DegradationConfig, SharpenConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="HR crop side")
    parser.add_argument("--iters", type=int, default=3, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--devices", default="auto", help="comma list (cpu,cuda) or auto = cpu + cuda if available")
    parser.add_argument("--separable-usm", action="store_true", help="also time the separable (fast) GT sharpening")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    return parser.parse_args(argv)


def sample_batch(batch_size: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images with edges (blurred noise + squares), (B, 3, size, size) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(batch_size, 3, size // 16, size // 16, generator=generator)
    images = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    images[..., size // 4 : size // 2, size // 4 : size // 2] = 0.9
    return images.clamp(0, 1)


def time_setting(hr: torch.Tensor, config: DegradationConfig, device: torch.device, args) -> dict:
    batch = {"hr": hr.to(device)}
    generator = torch.Generator().manual_seed(args.seed)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        degrade_batch(batch, config, generator)
    sync()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        degrade_batch(batch, config, generator)
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "device": str(device),
        "usm": "separable" if config.sharpen_gt and config.sharpen_gt.separable else "exact-2d",
        "batch_seconds_median": round(median, 4),
        "batch_seconds_all": [round(t, 4) for t in times],
        "crops_per_second": round(hr.shape[0] / median, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [name.strip() for name in args.devices.split(",") if name.strip()]
    configs = [DegradationConfig.SEESR]
    if args.separable_usm:
        configs.append(DegradationConfig.SEESR.replace(sharpen_gt=SharpenConfig(separable=True)))
    hr = sample_batch(args.batch_size, args.size, args.seed)
    results = []
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            results.append({"device": name, "skipped": "CUDA not available"})
            continue
        for config in configs:
            results.append(time_setting(hr, config, device, args))
    report = {
        "benchmark": "degradation",
        "what": "degrade_batch: USM GT + kernels + second-order Real-ESRGAN (SEESR preset) + bicubic up + quantise",
        "batch_size": args.batch_size,
        "hr_size": args.size,
        "lr_size": args.size // 4,
        "iters": args.iters,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)  # noqa: T201
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
