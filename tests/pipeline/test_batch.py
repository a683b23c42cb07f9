"""The folder loop behind `seesr upscale`: output naming, OOM retry, per-file failures (fake pipeline, no models)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from seesr.pipeline.batch import (
    UpscaleSettings,
    output_conflicts,
    plan_outputs,
    read_record,
    split_seesr_outputs,
    upscale_files,
)
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


def test_output_names_depend_only_on_the_input(tmp_path):
    """Issue 19 D6: before, a name depended on the other inputs of the batch (``a_png.png`` / ``a_jpg.png``)."""
    files = [tmp_path / "x" / "a.png", tmp_path / "y" / "a.jpg", tmp_path / "b.webp"]
    plan = plan_outputs(files, tmp_path / "out", 4)
    assert [p.name for p in plan.values()] == ["a.png", "a.png", "b.png"]
    for file in files:
        assert plan_outputs([file], tmp_path / "out", 4)[file] == plan[file]
    # two inputs with one name: the later one is refused by name (every run alike), never renamed
    conflicts = output_conflicts(plan)
    assert list(conflicts) == [files[1]] and "same output name as" in conflicts[files[1]]
    assert str(files[0]) in conflicts[files[1]]
    # writing next to the inputs: a fixed suffix, whatever else is in the folder
    same = plan_outputs([tmp_path / "a.png", tmp_path / "b.jpg"], tmp_path, 4)
    assert [p.name for p in same.values()] == ["a_x4.png", "b_x4.png"]
    clash = plan_outputs([tmp_path / "a.png", tmp_path / "a_x4.jpg"], tmp_path, 4)
    assert output_conflicts(clash) == {} and tmp_path / "a.png" not in clash.values()


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_skip_existing_redoes_empty_damaged_and_foreign_results(tmp_path):
    """Issue 13 item 8: a 0-byte or unreadable output counted as done."""
    files = _inputs(tmp_path, ("a.png", "b.png", "c.png"))
    out = tmp_path / "out"
    settings = UpscaleSettings(seed=1, process_size=32)
    assert upscale_files(FakePipeline(), files, out, settings, show_progress=False).ok
    (out / "a.png").write_bytes(b"")
    data = (out / "b.png").read_bytes()
    (out / "b.png").write_bytes(data[: len(data) // 2])
    report = upscale_files(FakePipeline(), files, out, settings, skip_existing=True, show_progress=False)
    assert [r.status for r in report.results] == ["ok", "ok", "skipped"]
    assert Image.open(out / "a.png").size == (256, 192) and Image.open(out / "b.png").size == (256, 192)


def test_skip_existing_skips_what_a_previous_run_wrote_whatever_the_batch(tmp_path):
    """Issue 19 D6: the same input is skipped in a batch with other files; another file with its name is not."""
    first = _inputs(tmp_path, ("y.jpg",))
    out = tmp_path / "out"
    settings = UpscaleSettings(seed=1, process_size=32)
    upscale_files(FakePipeline(), first, out, settings, show_progress=False)
    (tmp_path / "more").mkdir()
    second = first + _inputs(tmp_path / "more", ("z.png",))
    report = upscale_files(FakePipeline(), second, out, settings, skip_existing=True, show_progress=False)
    assert [r.status for r in report.results] == ["skipped", "ok"] and _names(out) == ["y.png", "z.png"]
    record = read_record(out / "y.png")
    assert record["input"] == "y.jpg" and len(record["input_sha256"]) == 64
    # another picture called y: its result is made, not mistaken for the earlier one
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "y.png"
    Image.new("RGB", (64, 48), (200, 0, 0)).save(other)
    report = upscale_files(FakePipeline(), [other], out, settings, skip_existing=True, show_progress=False)
    assert report.results[0].status == "ok"


def test_results_of_older_versions_are_matched_by_input_name(tmp_path):
    from PIL import PngImagePlugin

    files = _inputs(tmp_path, ("a.png",))
    (tmp_path / "out").mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_itxt("seesr", '{"input": "a.png", "seed": 1}')  # no input_sha256 yet
    Image.new("RGB", (256, 192)).save(tmp_path / "out" / "a.png", pnginfo=info)
    report = upscale_files(
        FakePipeline(), files, tmp_path / "out", UpscaleSettings(), skip_existing=True, show_progress=False
    )
    assert report.results[0].status == "skipped"


def test_seesr_outputs_are_recognised_by_their_metadata(tmp_path):
    files = _inputs(tmp_path, ("a.png", "b.jpg"))
    settings = UpscaleSettings(seed=1, process_size=32)
    upscale_files(FakePipeline(), files, tmp_path, settings, show_progress=False)  # -o = the input folder
    everything = sorted(tmp_path.iterdir())
    inputs, outputs = split_seesr_outputs(everything)
    assert [p.name for p in inputs] == ["a.png", "b.jpg"] and [p.name for p in outputs] == ["a_x4.png", "b_x4.png"]


def test_someone_elses_picture_is_never_replaced(tmp_path):
    files = _inputs(tmp_path, ("a.png",))
    (tmp_path / "out").mkdir()
    Image.new("RGB", (5, 5)).save(tmp_path / "out" / "a.png")
    before = (tmp_path / "out" / "a.png").read_bytes()
    report = upscale_files(FakePipeline(), files, tmp_path / "out", UpscaleSettings(), show_progress=False)
    assert report.results[0].status == "failed" and "not written by seesr upscale" in report.results[0].message
    assert (tmp_path / "out" / "a.png").read_bytes() == before


def test_processing_size_guard_refuses_per_file_and_the_batch_goes_on(tmp_path, monkeypatch):
    """Issue 13 item 2: a thin strip was enlarged to a huge working image; now it is refused before any work."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (3, 1000)).save(strip)
    files = [strip, *_inputs(tmp_path, ("big.png", "ok.png"), size=(64, 48))]
    Image.new("RGB", (200, 150)).save(files[1])
    pipe = FakePipeline()
    settings = UpscaleSettings(seed=1, process_size=32, max_output_pixels=256 * 192)
    report = upscale_files(pipe, files, tmp_path / "out", settings, show_progress=False)
    assert [r.status for r in report.results] == ["failed", "failed", "ok"]
    assert "aspect ratio" in report.results[0].message and str(strip) in report.results[0].message
    assert "--max-output-pixels" in report.results[1].message and "800x600" in report.results[1].message
    assert len(pipe.calls) == 1  # the refused files never reached the pipeline
    # more than the memory available: refused with the estimate, unless the check is turned off
    monkeypatch.setattr("seesr.pipeline.batch.available_memory", lambda device=None: 10_000_000)
    report = upscale_files(pipe, files[2:], tmp_path / "out2", settings, show_progress=False)
    assert report.results[0].status == "failed" and "GB of memory" in report.results[0].message
    assert "--no-memory-check" in report.results[0].message
    no_check = UpscaleSettings(seed=1, process_size=32, check_memory=False)
    assert upscale_files(pipe, files[2:], tmp_path / "out2", no_check, show_progress=False).ok


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried"),
    ],
)
def test_host_memory_errors_fail_one_file_and_the_batch_goes_on(tmp_path, error):
    """Issue 13 item 2: MemoryError was not caught per file, so the batch stopped."""

    class RunsOutOnce(FakePipeline):
        def __call__(self, image, **kwargs):
            if not self.calls:
                self.calls.append(kwargs)
                raise error
            return super().__call__(image, **kwargs)

    files = _inputs(tmp_path, ("a.png", "b.png"))
    report = upscale_files(RunsOutOnce(), files, tmp_path / "out", UpscaleSettings(seed=1), show_progress=False)
    assert [r.status for r in report.results] == ["failed", "ok"]
    assert "out of memory" in report.results[0].message and str(files[0]) in report.results[0].message


def test_memory_error_while_reading_fails_one_file(tmp_path, monkeypatch):
    import seesr.pipeline.batch as batch

    real = batch.load_image

    def huge_first(path, **kwargs):
        if path.name == "a.png":
            raise MemoryError
        return real(path, **kwargs)

    monkeypatch.setattr(batch, "load_image", huge_first)
    files = _inputs(tmp_path, ("a.png", "b.png"))
    report = upscale_files(FakePipeline(), files, tmp_path / "out", UpscaleSettings(seed=1), show_progress=False)
    assert [r.status for r in report.results] == ["failed", "ok"] and "out of memory" in report.results[0].message


def test_tag_edits_reach_the_pipeline(tmp_path):
    pipe = FakePipeline()
    settings = UpscaleSettings(seed=1, extra_tags=("sky",), remove_tags=("car",))
    upscale_files(pipe, _inputs(tmp_path), tmp_path / "out", settings, show_progress=False)
    assert pipe.calls[0]["extra_tags"] == ["sky"] and pipe.calls[0]["remove_tags"] == ["car"]


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
