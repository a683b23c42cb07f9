"""The folder loop behind `seesr upscale`: output naming, OOM retry, per-file failures (fake pipeline, no models)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from PIL import Image

from seesr.pipeline.batch import UpscaleSettings, plan_outputs, upscale_files
from seesr.pipeline.vae_tiling import VAETilingConfig


class FakePipeline:
    """Returns a grey image of the right size; raises an out-of-memory error while tiles are larger than ``fits``."""

    vae_scale_factor = 8

    def __init__(self, fits: int = 1000, error: Exception | None = None):
        self.fits = fits
        self.error = error
        self.calls: list[dict] = []
        self.vae_tiling = VAETilingConfig()

    def __call__(self, image, **kwargs):
        self.calls.append({**kwargs, "vae_tiling": self.vae_tiling})
        if self.error is not None:
            raise self.error
        if kwargs["latent_tile_size"] > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        size = (image.size[0] * kwargs["upscale"], image.size[1] * kwargs["upscale"])
        return SimpleNamespace(images=[Image.new("RGB", size, (128, 128, 128))], prompts=["p"], tags=[["t"]])


def _inputs(tmp_path, names=("a.png",), size=(64, 48)):
    paths = []
    for name in names:
        Image.new("RGB", size, (10, 20, 30)).save(tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def test_output_names(tmp_path):
    files = [tmp_path / "x" / "a.png", tmp_path / "y" / "a.jpg", tmp_path / "b.webp"]
    plan = plan_outputs(files, tmp_path / "out", 4)
    assert [p.name for p in plan.values()] == ["a_png.png", "a_jpg.png", "b.png"]
    # writing next to the inputs never targets an input file
    same = plan_outputs([tmp_path / "a.png", tmp_path / "a_x4.png"], tmp_path, 4)
    assert same[tmp_path / "a.png"] == tmp_path / "a_x4_2.png" or same[tmp_path / "a.png"].name == "a_x4_2.png"
    assert tmp_path / "a.png" not in same.values() and tmp_path / "a_x4.png" not in same.values()


def test_out_of_memory_retries_with_smaller_tiles(tmp_path):
    pipe = FakePipeline(fits=12)
    settings = UpscaleSettings(seed=3, process_size=32)  # 64x48 -> 256x192 px -> latent 32x24
    report = upscale_files(pipe, _inputs(tmp_path), tmp_path / "out", settings, show_progress=False)
    assert report.ok and report.results[0].status == "ok"
    # 96 is first clipped to the latent's short side (24), then halved until it fits
    assert [call["latent_tile_size"] for call in pipe.calls] == [96, 12]
    assert pipe.calls[-1]["vae_tiling"].decoder_tile_size < VAETilingConfig().decoder_tile_size
    assert pipe.vae_tiling == VAETilingConfig()  # restored for the next image
    assert Image.open(tmp_path / "out" / "a.png").size == (256, 192)


def test_out_of_memory_gives_up_below_the_minimum_tile(tmp_path):
    pipe = FakePipeline(fits=4)
    settings = UpscaleSettings(seed=1, process_size=32)
    report = upscale_files(pipe, _inputs(tmp_path), tmp_path / "out", settings, show_progress=False)
    assert report.results[0].status == "failed" and "out of memory" in report.results[0].message


def test_failures_do_not_stop_the_folder(tmp_path):
    files = _inputs(tmp_path, ("a.png", "b.png"))
    pipe = FakePipeline(error=ValueError("image too small to process (1x1)"))
    seen = []
    report = upscale_files(
        pipe, files, tmp_path / "out", UpscaleSettings(), show_progress=False, on_result=seen.append
    )
    assert [r.status for r in report.results] == ["failed", "failed"] and len(seen) == 2
    assert "image too small" in report.results[0].message and not report.ok
    # without --seed each image gets its own random seed
    assert all(isinstance(r.seed, int) for r in report.results)
