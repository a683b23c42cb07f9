"""``seesr benchmark``: dataset layout detection, paper numbers, and an end-to-end run with the tiny model bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from seesr.cli.main import main
from seesr.evaluation.benchmark import PAPER_TABLE2, detect_layout, guess_paper_row, paper_table_text
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
