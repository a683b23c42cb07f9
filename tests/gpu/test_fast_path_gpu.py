"""The fast path on a CUDA GPU: against the exact path, CUDA graphs against eager, re-capture after ``.to()``.

Bounds: the bf16 fast path against the exact fp32 path is held to the CPU bound of tests/speed (30 dB; measured
40-46 dB on CPU for this case); two fast-path runs that differ only in how the same kernels are launched (graphs or
eager, before or after a move) are held to 40 dB, above anything bf16 rounding alone produced on CPU (45.7 dB at
worst in `seesr doctor --check`), so a graph that reads stale or foreign memory fails. These bounds have not been
measured on a GPU yet: the first GPU run (benchmarks/gpu_check.sh) records the figures next to them.
"""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import TINY
from tests.gpu.conftest import GPU, CallCounter, exact_fp32_flags, psnr, tiny_pipeline, upscale

pytestmark = GPU

MIN_FAST_VS_EXACT_DB = 30.0
MIN_SAME_KERNELS_DB = 40.0
CASE_STEPS = 4


def _fast_config(**overrides):
    from seesr.pipeline.execution import ExecutionConfig

    return ExecutionConfig(**overrides)


def case2_reference():
    from PIL import Image

    return Image.open(TINY / "pipeline_case2_output.png").convert("RGB")


def test_exact_path_on_cuda_reproduces_the_reference_png():
    """The exact fp32 path (TF32 off) on CUDA meets the README criterion against the official output of case 2."""
    from tests.pipeline.helpers import assert_png_close

    with exact_fp32_flags():
        output = upscale(tiny_pipeline())
    reference = np.asarray(case2_reference())
    assert_png_close(output, reference)


def test_exact_preset_runs_without_tf32():
    """torch enables TF32 for cuDNN convolutions by default: the exact preset (tf32=False) must switch TF32 off for
    its call, whatever the process had set, and put the switches back afterwards."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    pipe = tiny_pipeline()
    seen: list[tuple[bool, bool]] = []
    pipe.unet.register_forward_pre_hook(
        lambda module, args: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
    )
    upscale(pipe)
    assert seen and set(seen) == {(False, False)}, set(seen)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored after the call


def test_fast_path_agrees_with_exact_on_cuda():
    with exact_fp32_flags():
        exact = upscale(tiny_pipeline())
    pipe = tiny_pipeline()
    pipe.enable_fast_path(_fast_config(dtype=torch.bfloat16, cuda_graphs=True, tile_batch_size=4))
    fast = upscale(pipe)
    assert fast.shape == exact.shape
    score = psnr(fast, exact)
    print(f"fast (bf16, graphs) vs exact on {torch.cuda.get_device_name()}: {score:.2f} dB")  # noqa: T201
    assert MIN_FAST_VS_EXACT_DB <= score < 100  # < 100: the bf16 path really ran


def test_cuda_graphs_match_eager(monkeypatch):
    replays = CallCounter(monkeypatch, torch.cuda.CUDAGraph, "replay")
    eager_pipe = tiny_pipeline()
    eager_pipe.enable_fast_path(_fast_config(cuda_graphs=False, tile_batch_size=4))
    eager = upscale(eager_pipe)
    assert replays.count == 0
    graph_pipe = tiny_pipeline()
    graph_pipe.enable_fast_path(_fast_config(cuda_graphs=True, tile_batch_size=4))
    captured = upscale(graph_pipe)  # first call: capture (and its warm-up)
    replayed = upscale(graph_pipe)  # second call: replay only
    assert replays.count >= CASE_STEPS  # at least one replay per denoising step of the second call
    print(f"graphs vs eager: {psnr(replayed, eager):.2f} dB, max diff {np.abs(replayed.astype(int) - eager).max()}")  # noqa: T201
    assert psnr(captured, eager) >= MIN_SAME_KERNELS_DB
    assert psnr(replayed, eager) >= MIN_SAME_KERNELS_DB


def test_graphs_are_recaptured_after_to(monkeypatch):
    """After ``pipe.to("cpu").to("cuda")`` the weights live in new memory: the graphs must be captured again.

    The memory the old weights occupied is refilled with NaN before the weights come back, so a graph replayed
    from the old capture would read NaN and turn the image to garbage.
    """
    captures = CallCounter(monkeypatch, torch.cuda.CUDAGraph, "capture_begin")
    pipe = tiny_pipeline()
    pipe.enable_fast_path(_fast_config(cuda_graphs=True, tile_batch_size=4))
    upscale(pipe)
    before = upscale(pipe)
    captured = captures.count
    assert captured >= 1
    pipe.to("cpu")
    weights = [p for model in (pipe.unet, pipe.controlnet) for p in model.parameters()]
    squatters = [torch.full(p.shape, float("nan"), dtype=p.dtype, device="cuda") for p in weights]  # freed blocks
    pipe.to("cuda")
    after = upscale(pipe)
    del squatters
    assert captures.count > captured, "no new CUDA graph was captured after the weights moved"
    assert psnr(after, before) >= MIN_SAME_KERNELS_DB


def test_doctor_check_passes_on_cuda():
    from seesr.cli.doctor import CHECK_MIN_PSNR_DB, run_check

    result = run_check(torch.device("cuda"))
    print(f"seesr doctor --check on cuda: {result}")  # noqa: T201
    assert result["ok"], result
    assert result["fast"]["cuda_graphs"] and result["fast"]["psnr_db"] >= CHECK_MIN_PSNR_DB
