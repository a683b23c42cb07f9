"""An out-of-memory error on the GPU: ``upscale_files`` retries the image with halved latent tiles and succeeds.

The process is limited to 1.5 GiB above what it holds (``torch.cuda.set_per_process_memory_fraction``) and a hook
on the UNet allocates 256 KiB per latent pixel and batch row, standing in for activations that grow with the tile:
the untiled 64x64 latent (CFG batch 2: 2 GiB) does not fit, the 32x32 tiles of the retry (512 MiB) do. The
allocation is real, so the error is the allocator's own ``torch.OutOfMemoryError``.
"""

from __future__ import annotations

import torch

from tests.gpu.conftest import GPU, case2_lr, tiny_pipeline

pytestmark = GPU

BYTES_PER_LATENT_PIXEL = 256 * 1024
HEADROOM = int(1.5 * 2**30)


def test_out_of_memory_retries_with_smaller_tiles(tmp_path):
    from seesr.pipeline.batch import UpscaleSettings, upscale_files
    from seesr.pipeline.execution import ExecutionConfig

    source = tmp_path / "in" / "lr.png"
    source.parent.mkdir()
    case2_lr().resize((128, 128)).save(source)  # x4 at process size 512: a 64x64 latent, untiled at tile 96
    pipe = tiny_pipeline()
    pipe.enable_fast_path(ExecutionConfig(cuda_graphs=False, tile_batch_size=1))
    seen: list[tuple[int, int]] = []

    def hungry(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        seen.append(tuple(sample.shape[-2:]))
        ballast = torch.empty(sample[:, 0].numel() * BYTES_PER_LATENT_PIXEL, dtype=torch.uint8, device=sample.device)
        del ballast

    handle = pipe.unet.register_forward_pre_hook(hungry, with_kwargs=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + HEADROOM) / total))
    try:
        settings = UpscaleSettings(steps=2, seed=1, process_size=512, latent_tile_size=96)
        report = upscale_files(pipe, [source], tmp_path / "out", settings, show_progress=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        handle.remove()
    result = report.results[0]
    assert result.status == "ok", result.message
    assert seen[0] == (64, 64), seen  # the first try: the whole latent in one call, which ran out of memory
    assert (32, 32) in seen, seen  # the retry: halved tiles
    assert result.output is not None and result.output.is_file()
