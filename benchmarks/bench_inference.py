"""Benchmark SeeSR inference end to end: LR PNG on disk -> DAPE -> diffusion -> VAE -> colour fix -> output PNG.

Models: full-size SeeSR UNet / ControlNet built from the official configs
(``tests/fixtures/reference/manifests/seesr_{unet,controlnet}_config.json``), SD-2-base VAE and OpenCLIP-H text
encoder from their configs (REFERENCE §8.1) and a full-size DAPE (Swin-L + tagging head, ``DAPETagger()``
defaults), all with random weights built directly on the device (timing does not depend on weight values, so no
download is needed). ``--tiny`` uses the tiny reference bundle instead (CPU smoke runs in seconds).

Cases (``--cases``, comma separated; full size / tiny):

* ``x4_128``   128² -> 512², 50 steps, CFG 5.5 (untiled)          / 16² -> 64², 4 steps
* ``x4_512``   512² -> 2048², 50 steps (9 latent tiles, banded VAE) / 32² -> 128², 4 steps, tiled
* ``x4_1024``  1024² -> 4096², 50 steps (36 tiles, banded VAE)      / 48² -> 192², 4 steps, tiled
* ``turbo_128`` / ``turbo_512``: turbo mode (SD-turbo UNet + grafted RCA, 2 trailing steps, no CFG, overlap 32)
* ``offload_128`` / ``offload_512``: as ``x4_*`` with model CPU offload (the <= 8 GB card setting; CUDA only;
  offload cases always run last because they leave the models offloaded); ``offload_seq_128``: sequential offload
  (run it in its own process: a pipeline cannot switch from model to sequential offload)
* ``check_tiny``: correctness on the device: the tiny bundle in the exact fp32 path vs the fast path (PSNR) and
  CUDA graphs vs eager (max difference); the GPU counterpart of ``tests/speed``.

Modes (``--mode``): ``fast`` (default on CUDA: bf16, batched tiles, CUDA graphs, ``--compile`` optional),
``baseline`` (fp16 weights, official per-tile loop: what the official code does, minus xformers),
``parity`` (fp32, the exact path).

Each case is warmed up (``--warmup`` runs, the first includes CUDA-graph capture / compilation), then timed
``--runs`` times (CUDA-synchronised wall clock, median reported) with peak allocated / reserved CUDA memory.
One JSON file per case is written to ``--output-dir`` as soon as the case finishes (``inference_<mode>_<case>.json``),
so a run cut short by ``--deadline-at`` or a timeout keeps what it measured.

    python benchmarks/bench_inference.py --cases x4_128,turbo_128 --output-dir benchmarks/results   # GPU
    python benchmarks/bench_inference.py --tiny --device cpu --runs 1 --warmup 0                    # CPU smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

MANIFESTS = ROOT / "tests/fixtures/reference/manifests"
TINY = ROOT / "tests/fixtures/reference/tiny"

#: SD-2-base ``vae/config.json`` (REFERENCE §8.1): AutoencoderKL, 4 levels, latent 4, scaling 0.18215.
SD2_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}

#: SD-2-base ``text_encoder/config.json`` (REFERENCE §8.1): OpenCLIP-H text tower as a CLIPTextModel.
SD2_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


@dataclass(frozen=True)
class Case:
    """One benchmark case: LR size, sampler settings and the expected minimum time on a GPU (for deadlines)."""

    name: str
    lr_size: int
    steps: int = 50
    guidance_scale: float = 5.5
    turbo: bool = False
    latent_tile_size: int = 96
    latent_tile_overlap: int = 4
    process_size: int = 512
    min_seconds: float = 30.0
    offload: str | None = None


FULL_CASES: dict[str, Case] = {
    "x4_128": Case("x4_128", 128, min_seconds=30),
    "x4_512": Case("x4_512", 512, min_seconds=90),
    "x4_1024": Case("x4_1024", 1024, min_seconds=200),
    "turbo_128": Case(
        "turbo_128", 128, steps=2, guidance_scale=1.0, turbo=True, latent_tile_overlap=32, min_seconds=20
    ),
    "turbo_512": Case(
        "turbo_512", 512, steps=2, guidance_scale=1.0, turbo=True, latent_tile_overlap=32, min_seconds=40
    ),
    "offload_128": Case("offload_128", 128, offload="model", min_seconds=60),
    "offload_512": Case("offload_512", 512, offload="model", min_seconds=150),
    "offload_seq_128": Case("offload_seq_128", 128, offload="sequential", min_seconds=90),
}
TINY_CASES: dict[str, Case] = {
    "x4_128": Case("x4_128", 16, steps=4, latent_tile_size=12, process_size=64, min_seconds=0),
    "x4_512": Case("x4_512", 32, steps=4, latent_tile_size=12, process_size=64, min_seconds=0),
    "x4_1024": Case("x4_1024", 48, steps=4, latent_tile_size=12, process_size=64, min_seconds=0),
    "turbo_128": Case(
        "turbo_128",
        16,
        steps=2,
        guidance_scale=1.0,
        turbo=True,
        latent_tile_size=12,
        latent_tile_overlap=8,
        process_size=64,
        min_seconds=0,
    ),
    "turbo_512": Case(
        "turbo_512",
        32,
        steps=2,
        guidance_scale=1.0,
        turbo=True,
        latent_tile_size=12,
        latent_tile_overlap=8,
        process_size=64,
        min_seconds=0,
    ),
    "offload_128": Case(
        "offload_128", 16, steps=4, latent_tile_size=12, process_size=64, min_seconds=0, offload="model"
    ),
    "offload_512": Case(
        "offload_512", 32, steps=4, latent_tile_size=12, process_size=64, min_seconds=0, offload="model"
    ),
    "offload_seq_128": Case(
        "offload_seq_128", 16, steps=4, latent_tile_size=12, process_size=64, min_seconds=0, offload="sequential"
    ),
}
DEFAULT_CASES = "x4_128,turbo_128,x4_512,x4_1024"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny reference bundle instead of full-size models")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated cases (default {DEFAULT_CASES})")
    parser.add_argument(
        "--mode", choices=["fast", "baseline", "parity"], default=None, help="default: fast on CUDA, parity on CPU"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoising call (fast mode)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="disable CUDA graphs (fast mode)")
    parser.add_argument("--tile-batch-size", type=int, default=None, help="latent tiles per call (fast mode)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per case")
    parser.add_argument("--steps", type=int, default=None, help="override the number of denoising steps")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"), help="JSON files go here")
    parser.add_argument("--deadline-at", type=float, default=None, help="UNIX time after which no case starts")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# environment


def environment(device: torch.device) -> dict[str, Any]:
    import diffusers
    import transformers

    info: dict[str, Any] = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        info["multiprocessors"] = properties.multi_processor_count
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------
# models


def _config(path: Path) -> dict[str, Any]:
    config = json.loads(path.read_text())
    config.pop("use_image_cross_attention", None)
    return {key: value for key, value in config.items() if not key.startswith("_")}


def build_full_pipeline(device: torch.device) -> Any:
    """Full-size SeeSR pipeline with random weights, created on ``device`` in float32."""
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from seesr.models.image_cross_attention import add_image_cross_attention
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline
    from seesr.tagger.dape import DAPETagger

    torch.manual_seed(0)
    with torch.device(device):
        unet = add_image_cross_attention(
            UNet2DConditionModel.from_config(_config(MANIFESTS / "seesr_unet_config.json"))
        )
        controlnet = add_image_cross_attention(
            ControlNetModel.from_config(_config(MANIFESTS / "seesr_controlnet_config.json"))
        )
        vae = AutoencoderKL.from_config(SD2_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD2_TEXT_ENCODER_CONFIG))
        tagger = DAPETagger()
        torch.nn.init.normal_(tagger.label_embed)  # the official init is zeros: every tag would score the same
    pipe = SeeSRPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(TINY / "tokenizer"),  # the real CLIP BPE vocabulary
        unet=unet.eval(),
        controlnet=controlnet.eval(),
        scheduler=DDPMScheduler.from_pretrained(TINY / "scheduler"),  # SD-2-base's scheduler file, verbatim
        tagger=tagger.eval(),
    )
    return pipe


def build_tiny_pipeline(device: torch.device) -> Any:
    """The tiny reference bundle as a pipeline (fp32) on ``device``."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from seesr.pipeline.pipeline_seesr import SeeSRPipeline
    from seesr.pipeline.vae_tiling import VAETilingConfig
    from seesr.weights.tagger import load_ram_tagger
    from seesr.weights.unet import load_seesr_controlnet, load_seesr_unet

    pipe = SeeSRPipeline(
        vae=AutoencoderKL.from_pretrained(TINY / "vae").to(device).eval(),
        text_encoder=CLIPTextModel.from_pretrained(TINY / "text_encoder", dtype=torch.float32).to(device).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(TINY / "tokenizer"),
        unet=load_seesr_unet(TINY / "unet", device=device),
        controlnet=load_seesr_controlnet(TINY / "controlnet", device=device),
        scheduler=DDPMScheduler.from_pretrained(TINY / "scheduler"),
        tagger=load_ram_tagger(
            TINY / "ram/ram_swin_large_14m.pth", TINY / "ram/DAPE.pth", config_dir=TINY / "ram/configs"
        ).to(device),
    )
    # small thresholds so that the larger tiny cases exercise the banded VAE like the large full-size ones
    pipe.vae_tiling = VAETilingConfig(encoder_tile_size=96, encoder_pad=8, decoder_tile_size=12, decoder_pad=2)
    return pipe


def turbo_variant(pipe: Any, tiny: bool) -> Any:
    """A turbo pipeline sharing ``pipe``'s parts: SD-turbo-shaped UNet (random, or the tiny UNet) + grafted RCA."""
    from diffusers import UNet2DConditionModel

    from seesr.models.turbo import graft_rca, turbo_scheduler_from_config
    from seesr.pipeline.turbo import load_turbo_pipeline

    if tiny:
        return load_turbo_pipeline(TINY, pipe)
    reference = next(pipe.unet.parameters())
    with torch.device(reference.device):
        stock = UNet2DConditionModel.from_config(_config(MANIFESTS / "seesr_unet_config.json"))
    torch.nn.Module.to(stock, dtype=reference.dtype)
    unet = graft_rca(stock, pipe.unet)
    turbo = type(pipe)(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=unet,
        controlnet=pipe.controlnet,
        scheduler=turbo_scheduler_from_config(),
        tagger=pipe.tagger,
    )
    turbo.vae_tiling = pipe.vae_tiling
    if getattr(pipe, "fast_path", None) is not None:
        from seesr.pipeline.execution import enable_fast_path

        enable_fast_path(turbo, pipe.fast_path)
    return turbo


def apply_mode(pipe: Any, mode: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Set up ``pipe`` for ``mode``; returns the settings to record."""
    from seesr.pipeline import execution

    if mode == "fast":
        config = execution.ExecutionConfig(
            dtype=torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16,
            compile=args.compile,
            cuda_graphs=device.type == "cuda" and not args.no_cuda_graphs,
            tile_batch_size=args.tile_batch_size,
        )
        config = execution.enable_fast_path(pipe, config)
        return {
            "dtype": str(config.dtype).removeprefix("torch."),
            "vae_dtype": str(config.vae_dtype).removeprefix("torch."),
            "cuda_graphs": config.cuda_graphs,
            "compile": config.compile,
            "channels_last": config.channels_last,
        }
    pipe.fast_path = None
    dtype = torch.float16 if mode == "baseline" else torch.float32
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16  # fp16 convolutions are not implemented on every CPU
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        torch.nn.Module.to(getattr(pipe, name), dtype=dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode == "baseline"  # official: TF32 on; parity: exact fp32
        torch.backends.cudnn.allow_tf32 = mode == "baseline"
    return {"dtype": str(dtype).removeprefix("torch."), "cuda_graphs": False, "compile": False}


# ---------------------------------------------------------------------------------------------------------------
# cases


def lr_image(size: int) -> Any:
    """A real photo (scikit-image's astronaut, shipped with the wheel) resized to ``size²`` with PIL bicubic."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC)


def tile_count(case: Case) -> int:
    from seesr.pipeline.tiling import tile_grid

    latent = case.lr_size * 4 // 8
    return len(tile_grid(latent, latent, case.latent_tile_size, case.latent_tile_overlap))


def run_case(pipe: Any, case: Case, args: argparse.Namespace, device: torch.device, deadline: float | None) -> dict:
    from seesr.utils.images import load_image, save_image_atomic

    steps = args.steps or case.steps
    call = {
        "num_inference_steps": steps,
        "guidance_scale": case.guidance_scale,
        "latent_tile_size": case.latent_tile_size,
        "latent_tile_overlap": case.latent_tile_overlap,
        "process_size": case.process_size,
        "upscale": 4,
        "seed": 0,
    }
    if getattr(pipe, "fast_path", None) is None and args.tile_batch_size:
        call["tile_batch_size"] = args.tile_batch_size
    times: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "lr.png"
        lr_image(case.lr_size).save(source)
        output = Path(folder) / "sr.png"

        def once() -> float:
            synchronize(device)
            start = time.perf_counter()
            image = load_image(source).rgb
            result = pipe(image, **call)
            save_image_atomic(result.images[0], output)
            synchronize(device)
            return time.perf_counter() - start

        first = once()
        for _ in range(max(0, args.warmup - 1)):
            once()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for index in range(args.runs):
            if index > 0 and deadline is not None and time.time() + statistics.median(times) > deadline:
                break
            times.append(once())
        from PIL import Image

        out_size = Image.open(output).size
        predictor = getattr(pipe, "_fast_predictor", None)
    report = {
        "case": case.name,
        "lr_size": [case.lr_size, case.lr_size],
        "output_size": list(out_size),
        "steps": steps,
        "guidance_scale": case.guidance_scale,
        "turbo": case.turbo,
        "latent_tiles": tile_count(case),
        "latent_tile_size": case.latent_tile_size,
        "latent_tile_overlap": case.latent_tile_overlap,
        "warmup_runs": max(1, args.warmup),
        "first_run_s": round(first, 4),
        "times_s": [round(value, 4) for value in times],
        "median_s": round(statistics.median(times), 4),
        "mean_s": round(statistics.fmean(times), 4),
        "min_s": round(min(times), 4),
        "s_per_step": round(statistics.median(times) / steps, 4),
        "predictor_modes": sorted(set(predictor.modes.values())) if predictor is not None else [],
        "call_shapes": sorted({repr(list(key[0][0])) for key in predictor.modes}) if predictor is not None else [],
        "offload": case.offload,
    }
    if device.type == "cuda":
        report["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        report["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
    return report


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    error = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * math.log10(255.0**2 / error)


def run_check(device: torch.device, args: argparse.Namespace) -> dict:
    """Tiny bundle on ``device``: exact fp32 path vs fast path, CUDA graphs vs eager, fp32 vs the fixture PNG."""
    from PIL import Image

    from seesr.pipeline import execution

    results: dict[str, Any] = {"case": "check_tiny"}
    fixtures = {
        "case1": {"prompt": "", "num_inference_steps": 4, "process_size": 256, "seed": 42},
        "case2": {
            "prompt": "None",
            "num_inference_steps": 4,
            "process_size": 128,
            "latent_tile_size": 12,
            "seed": 123,
        },
    }
    for name, call in fixtures.items():
        image = Image.open(TINY / f"pipeline_{name}_lr.png").convert("RGB")
        reference = np.asarray(Image.open(TINY / f"pipeline_{name}_output.png").convert("RGB"))
        outputs = {}
        for variant in ("parity", "fast", "fast_eager"):
            pipe = build_tiny_pipeline(device)
            pipe.set_progress_bar_config(disable=True)
            if variant == "parity":
                if device.type == "cuda":
                    torch.backends.cuda.matmul.allow_tf32 = False
                    torch.backends.cudnn.allow_tf32 = False
            else:
                graphs = variant == "fast" and device.type == "cuda"
                execution.enable_fast_path(pipe, execution.ExecutionConfig(cuda_graphs=graphs, tile_batch_size=4))
            outputs[variant] = np.asarray(pipe(image, **call).images[0])
            del pipe
        diff = np.abs(outputs["parity"].astype(int) - reference.astype(int))
        results[name] = {
            "parity_vs_fixture_max_abs": int(diff.max()),
            "parity_vs_fixture_identical": round(float((diff == 0).mean()), 6),
            "fast_vs_parity_psnr_db": round(psnr(outputs["fast"], outputs["parity"]), 2),
            "graphs_vs_eager_max_abs": int(
                np.abs(outputs["fast"].astype(int) - outputs["fast_eager"].astype(int)).max()
            ),
        }
    results["ok"] = all(
        results[name]["parity_vs_fixture_max_abs"] <= 4
        and results[name]["parity_vs_fixture_identical"] >= 0.99
        and results[name]["graphs_vs_eager_max_abs"] <= 1
        for name in fixtures
    )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mode = args.mode or ("fast" if device.type == "cuda" else "parity")
    table = TINY_CASES if args.tiny else FULL_CASES
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    names.sort(key=lambda name: name in table and table[name].offload is not None)  # offload mutates: run last
    unknown = [name for name in names if name not in table and name != "check_tiny"]
    if unknown:
        print(f"unknown cases {unknown}; choose from {sorted(table)} or check_tiny", file=sys.stderr)  # noqa: T201
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    base_info = environment(device)
    failures = 0
    pipe = None
    build_s = None
    for name in names:
        label = f"{'tiny_' if args.tiny else ''}{mode}{'_compile' if args.compile else ''}_{name}"
        path = args.output_dir / f"inference_{label}.json"
        record: dict[str, Any] = {
            "benchmark": "inference",
            "models": "tiny reference bundle" if args.tiny else "full-size SeeSR (random weights)",
            "mode": mode,
            **base_info,
        }
        case = table.get(name)
        if args.deadline_at is not None and time.time() + (case.min_seconds if case else 20) > args.deadline_at:
            record.update(case=name, status="skipped: deadline")
            path.write_text(json.dumps(record, indent=2) + "\n")
            print(f"{name}: skipped (deadline)", flush=True)  # noqa: T201
            continue
        if case is not None and case.offload is not None and device.type != "cuda":
            record.update(case=name, status="skipped: offloading needs CUDA")
            path.write_text(json.dumps(record, indent=2) + "\n")
            print(f"{name}: skipped (offloading needs CUDA)", flush=True)  # noqa: T201
            continue
        try:
            if name == "check_tiny":
                record.update(run_check(device, args))
                record["status"] = "ok" if record["ok"] else "failed"
            else:
                if pipe is None:
                    start = time.perf_counter()
                    pipe = build_tiny_pipeline(device) if args.tiny else build_full_pipeline(device)
                    pipe.set_progress_bar_config(disable=True)
                    settings = apply_mode(pipe, mode, device, args)
                    synchronize(device)
                    build_s = time.perf_counter() - start
                if case.offload is not None:
                    from seesr.pipeline.execution import enable_offload

                    enable_offload(pipe, case.offload, device)
                target = turbo_variant(pipe, args.tiny) if case.turbo else pipe
                target.set_progress_bar_config(disable=True)
                record.update(settings)
                record["build_s"] = round(build_s or 0.0, 2)
                record.update(run_case(target, case, args, device, args.deadline_at))
                record["status"] = "ok"
                del target
        except Exception as error:  # record and go on with the next case
            failures += 1
            record.update(
                case=name, status=f"error: {type(error).__name__}: {error}", traceback=traceback.format_exc()
            )
        if pipe is not None:
            pipe._fast_predictor = None  # drop this case's CUDA graphs: each case's peak memory is its own
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        path.write_text(json.dumps(record, indent=2) + "\n")
        summary = {key: record.get(key) for key in ("case", "status", "median_s", "peak_allocated_gib")}
        print(json.dumps(summary), flush=True)  # noqa: T201
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
