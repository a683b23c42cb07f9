"""``seesr benchmark``: dataset layout detection, paper numbers, and an end-to-end run with the tiny model bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from seesr.cli.benchmark import _upscale_settings
from seesr.cli.main import build_parser, main
from seesr.evaluation.benchmark import (
    PAPER_TABLE2,
    SETTINGS_RECORD,
    detect_layout,
    guess_paper_row,
    paper_table_text,
)
from seesr.evaluation.registry import METRICS


def _touch_images(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name)


@pytest.mark.parametrize(("lr", "hr"), [("LR", "HR"), ("lr", "gt"), ("test_LR", "test_HR"), ("LQ", "GT")])
def test_detects_folder_pairs(tmp_path, lr, hr):
    _touch_images(tmp_path / lr, "0001.png", "0002.png")
    _touch_images(tmp_path / hr, "0001.png", "0002.png")
    layout = detect_layout(tmp_path)
    assert layout.lr_dir == tmp_path / lr and layout.hr_dir == tmp_path / hr
    assert [p.name for p in layout.lr_files] == ["0001.png", "0002.png"] and len(layout.hr_files) == 2


def test_detects_realsr_naming_recursively(tmp_path):
    _touch_images(tmp_path / "Canon" / "Test" / "4", "Canon_001_LR4.png", "Canon_001_HR.png")
    _touch_images(tmp_path / "Nikon" / "Test" / "4", "Nikon_001_LR4.png", "Nikon_001_HR.png")
    layout = detect_layout(tmp_path)
    assert [p.name for p in layout.lr_files] == ["Canon_001_LR4.png", "Nikon_001_LR4.png"]
    assert [p.name for p in layout.hr_files] == ["Canon_001_HR.png", "Nikon_001_HR.png"]
    assert layout.lr_dir is None  # mixed folders: the LR files are passed one by one


def test_lr_only_is_no_reference_and_overrides_win(tmp_path):
    _touch_images(tmp_path / "photos", "x.png")
    layout = detect_layout(tmp_path / "photos")
    assert layout.hr_files is None and layout.notes
    _touch_images(tmp_path / "mixed", "a_LR4.png", "a_HR.png")
    _touch_images(tmp_path / "mine_hr", "a.png")
    layout = detect_layout(tmp_path, lr_dir="mixed", hr_dir="mixed")
    assert [p.name for p in layout.lr_files] == ["a_LR4.png"] and [p.name for p in layout.hr_files] == ["a_HR.png"]
    layout = detect_layout(tmp_path, lr_dir="photos", hr_dir=tmp_path / "mine_hr")
    assert layout.lr_dir == tmp_path / "photos" and layout.hr_dir == tmp_path / "mine_hr"


def test_layout_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no LR images found.*--lr-dir"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(ValueError, match="--hr-dir needs --lr-dir"):
        detect_layout(tmp_path, hr_dir=tmp_path / "empty")


def test_paper_rows():
    assert guess_paper_row("/data/RealSRVal_crop128") == "realsr"
    assert guess_paper_row("/data/DRealSRVal_crop128") == "drealsr"
    assert guess_paper_row("/data/DIV2K_V2_val") == "div2k-val"
    assert guess_paper_row("/data/holiday") is None
    for row in PAPER_TABLE2.values():
        assert set(row) <= set(METRICS)
    assert PAPER_TABLE2["div2k-val"]["fid"] == 31.93 and PAPER_TABLE2["realsr"]["musiq"] == 69.77
    assert "125.55" in paper_table_text() and "0.6813" in paper_table_text()


def test_benchmark_help_shows_paper_numbers(capsys):
    assert main(["benchmark", "--help"]) == 0
    text = capsys.readouterr().out
    assert "31.93" in text and "147.39" in text and "test_LR/+test_HR/" in text


def _dataset_with_old_outputs(tmp_path: Path, record: dict | None) -> tuple[Path, Path]:
    dataset, out = tmp_path / "RealSR-mini", tmp_path / "run"
    _touch_images(dataset / "LR", "a.png")
    _touch_images(dataset / "HR", "a.png")
    _touch_images(out / "sr", "a.png")
    if record is not None:
        (out / SETTINGS_RECORD).write_text(json.dumps({"settings": record}))
    return dataset, out


def test_rerun_with_other_settings_is_refused_before_any_work(tmp_path, capsys):
    """Issue 19 D8: the old images are not reused under the new settings' label (nor is a model loaded)."""
    dataset, out = tmp_path / "RealSR-mini", tmp_path / "run"
    argv = ["benchmark", "--dataset", str(dataset), "--out", str(out), "--model", str(tmp_path / "no-model")]
    args = build_parser().parse_args([*argv, "--steps", "2"])
    record = _upscale_settings(args, [dataset / "LR" / "a.png"])
    _dataset_with_old_outputs(tmp_path, record)
    before = (out / "sr" / "a.png").read_bytes()

    assert main([*argv, "--steps", "20", "--color-fix", "wavelet", "--metrics", "psnr"]) == 2
    error = capsys.readouterr().err
    assert "were upscaled with other settings (color_fix: default -> wavelet, steps: 2 -> 20)" in error
    assert "new --out folder" in error and f"delete {out / 'sr'}" in error
    assert (out / "sr" / "a.png").read_bytes() == before and not (out / "benchmark.json").exists()
    assert json.loads((out / SETTINGS_RECORD).read_text())["settings"] == record

    _touch_images(dataset / "LR", "b.png")  # other LR images: refused too
    assert main([*argv, "--steps", "2", "--metrics", "psnr"]) == 2
    assert "inputs: other files" in capsys.readouterr().err


def test_images_without_a_settings_record_are_refused(tmp_path, capsys):
    dataset, out = _dataset_with_old_outputs(tmp_path, None)
    assert main(["benchmark", "--dataset", str(dataset), "--out", str(out), "--metrics", "psnr"]) == 2
    error = capsys.readouterr().err
    assert "holds 1 image(s) but no upscale-settings.json" in error and "--eval-only" in error


def test_eval_only_reports_the_recorded_settings(tmp_path):
    dataset, out = _dataset_with_old_outputs(tmp_path, {"steps": 7})
    assert (
        main(["benchmark", "--dataset", str(dataset), "--out", str(out), "--eval-only", "--metrics", "psnr", "-q"])
        == 0
    )
    record = json.loads((out / "benchmark.json").read_text())
    assert record["upscale_settings"] == {"steps": 7} and record["upscale_command"] is None


def test_evaluation_problems_still_write_benchmark_json(tmp_path, capsys):
    dataset, out = _dataset_with_old_outputs(tmp_path, {})
    _touch_images(dataset / "HR", "missing.png")  # a ground truth without an upscaled image
    assert main(["benchmark", "--dataset", str(dataset), "--out", str(out), "--eval-only", "--metrics", "psnr"]) == 1
    assert "missing.png: ground truth without a prediction" in capsys.readouterr().err
    assert json.loads((out / "benchmark.json").read_text())["eval_exit_code"] == 1
