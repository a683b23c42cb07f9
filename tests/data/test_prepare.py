"""``seesr prepare``: layout, determinism, resume after interruption (byte-identical), settings guard, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seesr.cli.main import main
from seesr.data import prepare as prepare_module
from seesr.data.prepare import PrepareError, PrepareOptions, prepare_dataset

SIZE = 64


def options(hr_folder: Path, out: Path, **changes) -> PrepareOptions:
    values = dict(
        gt_dirs=[hr_folder],
        out=out,
        epochs=2,
        mode="crop512",
        seed=3,
        size=SIZE,
        scale=4,
        min_pixels=0,
        min_file_bytes=0,
        device="cpu",
        tags=False,
        progress=False,
    )
    values.update(changes)
    return PrepareOptions(**values)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes); temporary files would show up here too."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(hr_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "full"
    report = prepare_dataset(options(hr_folder, out))
    assert report.written == 6 and report.total == 6 and not report.failed
    return out


def test_layout_names_and_sizes(uninterrupted):
    names = [f"{i:07d}" for i in range(1, 7)]
    for sub, side in (("gt", SIZE), ("sr_bicubic", SIZE), ("lr", SIZE // 4)):
        files = sorted((uninterrupted / sub).glob("*.png"))
        assert [p.stem for p in files] == names
        for path in files:
            image = Image.open(path)
            assert image.mode == "RGB" and image.size == (side, side)
    manifest = json.loads((uninterrupted / "prepare.json").read_text())
    assert manifest["items"]["0000001"].endswith("astronaut.png")  # sorted sources, epoch-major numbering
    assert manifest["items"]["0000004"].endswith("astronaut.png")
    assert manifest["settings"]["degradation"]["final_sinc_prob"] == 0.8
    # two epochs of the same source get different crops / degradations
    first = np.asarray(Image.open(uninterrupted / "lr" / "0000001.png"))
    second = np.asarray(Image.open(uninterrupted / "lr" / "0000004.png"))
    assert not np.array_equal(first, second)
    assert not (uninterrupted / "tag").exists()


def test_sr_bicubic_is_the_upscaled_lr(uninterrupted):
    import torch
    import torch.nn.functional as F

    lr = torch.from_numpy(np.array(Image.open(uninterrupted / "lr" / "0000002.png"))).permute(2, 0, 1).float()
    up = np.asarray(Image.open(uninterrupted / "sr_bicubic" / "0000002.png")).astype(np.float64)
    ours = F.interpolate(lr[None] / 255, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0]
    ours = ours.clamp(0, 1).permute(1, 2, 0).numpy() * 255
    # sr_bicubic is upscaled from the float LR, the stored LR is rounded: a few levels apart at most
    assert np.abs(ours - up).mean() < 1.0 and np.abs(ours - up).max() <= 8


def test_same_settings_give_identical_files(hr_folder, uninterrupted, tmp_path):
    prepare_dataset(options(hr_folder, tmp_path / "again"))
    assert snapshot(tmp_path / "again") == snapshot(uninterrupted)
    prepare_dataset(options(hr_folder, tmp_path / "seed4", seed=4))
    other = snapshot(tmp_path / "seed4")
    assert other["gt/0000001.png"] != snapshot(uninterrupted)["gt/0000001.png"]


def test_resume_after_interruption_between_items(hr_folder, uninterrupted, tmp_path):
    out = tmp_path / "resumed"

    class Stop(Exception):
        pass

    def stop_after_two(name: str) -> None:
        if name == "0000002":
            raise Stop

    with pytest.raises(Stop):
        prepare_dataset(options(hr_folder, out), on_item_written=stop_after_two)
    assert len(list((out / "gt").glob("*.png"))) == 2
    report = prepare_dataset(options(hr_folder, out))
    assert (report.skipped_complete, report.written) == (2, 4)
    assert snapshot(out) == snapshot(uninterrupted)


def test_resume_after_a_crash_inside_an_item(hr_folder, uninterrupted, tmp_path, monkeypatch):
    """Killed between the files of item 4: the partial item is redone and the result is still identical."""
    out = tmp_path / "crashed"
    real_save = prepare_module.save_image_atomic
    calls = {"count": 0}

    def flaky_save(image, destination, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3 * 3 + 2:  # item 4: lr written, sr_bicubic not
            raise KeyboardInterrupt
        return real_save(image, destination, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "save_image_atomic", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(options(hr_folder, out))
    assert (out / "lr" / "0000004.png").exists() and not (out / "gt" / "0000004.png").exists()
    monkeypatch.setattr(prepare_module, "save_image_atomic", real_save)
    report = prepare_dataset(options(hr_folder, out))
    assert (report.skipped_complete, report.written) == (3, 3)
    assert snapshot(out) == snapshot(uninterrupted)


def test_more_epochs_extend_an_existing_set(hr_folder, uninterrupted, tmp_path):
    out = tmp_path / "grow"
    prepare_dataset(options(hr_folder, out, epochs=1))
    report = prepare_dataset(options(hr_folder, out, epochs=2))
    assert (report.skipped_complete, report.written) == (3, 3)
    assert snapshot(out) == snapshot(uninterrupted)


def test_changed_settings_are_refused(hr_folder, tmp_path):
    out = tmp_path / "guard"
    prepare_dataset(options(hr_folder, out, epochs=1))
    with pytest.raises(PrepareError, match="different settings.*seed"):
        prepare_dataset(options(hr_folder, out, epochs=1, seed=99))
    (tmp_path / "other").mkdir()
    with pytest.raises(PrepareError, match="no usable GT images|not a folder|no images"):
        prepare_dataset(options(tmp_path / "other", tmp_path / "empty_out"))


def test_resize_mode_and_size_filters(hr_folder, tmp_path):
    out = tmp_path / "resize"
    report = prepare_dataset(options(hr_folder, out, epochs=1, mode="resize512", min_pixels=80 * 90))
    assert report.written == 2 and any("chelsea" in message for message in report.skipped_sources)
    assert Image.open(out / "gt" / "0000001.png").size == (SIZE, SIZE)


def test_cli_prepare(hr_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["prepare", "--gt", str(hr_folder), "--out", str(out), "--size", "64", "--no-tags"]
    argv += ["--min-pixels", "0", "--min-file-kib", "0", "--seed", "1", "--device", "cpu"]
    assert main(argv) == 0
    assert "3 item(s)" in capsys.readouterr().out
    assert main(argv) == 0  # resume: nothing left to do
    assert "0 written, 3 already done" in capsys.readouterr().out
    assert main(["prepare", "--gt", str(hr_folder), "--out", str(out)]) == 2
    assert "--no-tags" in capsys.readouterr().err
    assert main(argv[:-4] + ["--seed", "2", "--device", "cpu"]) == 2
    assert "different settings" in capsys.readouterr().err
