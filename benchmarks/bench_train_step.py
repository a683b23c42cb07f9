"""Benchmark one SeeSR stage-2 training step (VAE encode + ControlNet + UNet forward/backward + AdamW step).

Default (GPU): full-size SD-2-base UNet/ControlNet built from ``tests/fixtures/reference/manifests/seesr_unet_config.json``
with random weights, batch 4 at 512x512, bf16 autocast, gradient checkpointing. ``--tiny`` uses the tiny fixture
configs so the script can be checked on a CPU in seconds. The text encoder and the DAPE tagger are frozen
inference-only parts and are replaced by random embeddings of the right shape ((B, 77, 1024) and (B, 145, 512));
the VAE encode of the GT batch is included.

Writes a JSON report (samples/s, step time, peak memory, settings) to ``--output`` and prints it.

    python benchmarks/bench_train_step.py --output bench_train_step.json            # GPU, full size
    python benchmarks/bench_train_step.py --tiny --device cpu --steps 3 --warmup 1   # CPU smoke run
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

ROOT = Path(__file__).resolve().parent.parent
FULL_UNET_CONFIG = ROOT / "tests/fixtures/reference/manifests/seesr_unet_config.json"
TINY_UNET_CONFIG = ROOT / "tests/fixtures/reference/tiny/unet/config.json"
TINY_VAE_CONFIG = ROOT / "tests/fixtures/reference/tiny/vae/config.json"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import SD2_VAE_CONFIG  # noqa: E402  (the one copy of the SD-2-base VAE config)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny fixture models (CPU smoke test)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 4 (tiny: 2)")
    parser.add_argument("--resolution", type=int, default=None, help="GT size in pixels; default 512 (tiny: 64)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None, help="default bf16 (CPU: fp32)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="disable gradient checkpointing")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps")
    parser.add_argument("--output", type=Path, default=Path("bench_train_step.json"), help="JSON report path")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from seesr.models.build import build_seesr_unet_and_controlnet
    from seesr.training.common import trainable_parameters
    from seesr.training.train_seesr import SeeSRTrainingModule

    unet_config = json.loads((TINY_UNET_CONFIG if args.tiny else FULL_UNET_CONFIG).read_text())
    unet_config.pop("use_image_cross_attention", None)
    vae_config = json.loads(TINY_VAE_CONFIG.read_text()) if args.tiny else dict(SD2_VAE_CONFIG)
    torch.manual_seed(0)
    base_unet = UNet2DConditionModel.from_config(unet_config)
    unet, controlnet = build_seesr_unet_and_controlnet(base_unet, 512, unet_trainable="rca")
    vae = AutoencoderKL.from_config(vae_config).requires_grad_(False).eval()
    torch.nn.Module.to(vae, device=device, dtype=dtype)  # (ModelMixin.to warns spuriously on dtype casts)
    if not args.no_gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    module = SeeSRTrainingModule(unet.train(), controlnet.train(), residual_dtype=dtype).to(device)
    params = trainable_parameters([controlnet, unet])
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-2)
    return dict(
        module=module,
        vae=vae,
        optimizer=optimizer,
        params=params,
        text_dim=unet_config["cross_attention_dim"],
        trainable=sum(p.numel() for p in params),
        total=sum(p.numel() for p in module.parameters()),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    batch = args.batch_size or (2 if args.tiny else 4)
    resolution = args.resolution or (64 if args.tiny else 512)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    start = time.perf_counter()
    parts = build(args, device, dtype)
    build_s = time.perf_counter() - start
    module, vae, optimizer = parts["module"], parts["vae"], parts["optimizer"]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> float:
        gt = torch.rand(batch, 3, resolution, resolution, generator=generator, device=device)
        text = torch.randn(batch, 77, parts["text_dim"], generator=generator, device=device, dtype=dtype)
        image_embeds = torch.randn(batch, 145, 512, generator=generator, device=device, dtype=dtype)
        with torch.no_grad():
            latents = vae.encode((gt * 2 - 1).to(dtype)).latent_dist.sample(generator=generator).float() * 0.18215
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(0, 1000, (batch,), generator=generator, device=device)
        noisy = latents + noise  # the schedule's scalars do not change the cost
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            prediction = module(noisy, timesteps, text, gt.to(dtype), image_embeds)
        loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parts["params"], 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(args.steps):
        tic = time.perf_counter()
        losses.append(step())
        synchronize()
        times.append(time.perf_counter() - tic)

    median = statistics.median(times)
    report = {
        "benchmark": "seesr stage-2 training step (VAE encode + ControlNet + UNet fwd/bwd + AdamW)",
        "models": "tiny fixture configs"
        if args.tiny
        else "full-size SD-2-base SeeSR UNet + ControlNet (random weights)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "precision": precision,
        "gradient_checkpointing": not args.no_gradient_checkpointing,
        "batch_size": batch,
        "resolution": resolution,
        "trainable_parameters": parts["trainable"],
        "total_parameters": parts["total"],
        "build_s": round(build_s, 3),
        "steps": args.steps,
        "step_time_s_median": round(median, 4),
        "step_time_s_mean": round(statistics.fmean(times), 4),
        "samples_per_s": round(batch / median, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        if device.type == "cuda"
        else None,
        "losses_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
        "torch": torch.__version__,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))  # noqa: T201
    return 0 if report["losses_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
