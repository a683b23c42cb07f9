"""``seesr prepare`` tags: the plain RAM teacher (never the DAPE LoRA) on the saved GT, official file format."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from seesr.cli.main import main
from seesr.data.prepare import PrepareError, PrepareOptions, prepare_dataset, resolve_teacher_source
from seesr.tagger.dape import DAPETagger
from seesr.weights.tagger import load_ram_tagger
from tests.conftest import TINY

RAM_FILE = TINY / "ram" / "ram_swin_large_14m.pth"
CONFIGS = TINY / "ram" / "configs"


@pytest.fixture(scope="module")
def base_ram() -> DAPETagger:
    return load_ram_tagger(RAM_FILE, dape_path=None, config_dir=CONFIGS)


@pytest.fixture(scope="module")
def dape_ram() -> DAPETagger:
    return load_ram_tagger(RAM_FILE, dape_path=TINY / "ram" / "DAPE.pth", config_dir=CONFIGS)


def tag_options(hr_folder: Path, out: Path, tagger: Path | None) -> PrepareOptions:
    return PrepareOptions(
        gt_dirs=[hr_folder],
        out=out,
        mode="resize512",
        size=384,
        seed=0,
        min_pixels=0,
        min_file_bytes=0,
        device="cpu",
        tagger=tagger,
        tag_batch_size=2,
        progress=False,
    )


@pytest.fixture(scope="module")
def tagged(hr_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tagged") / "set"
    report = prepare_dataset(tag_options(hr_folder, out, RAM_FILE))
    assert report.tagged == 3
    return out


def test_tags_are_base_ram_on_the_saved_gt(tagged, base_ram, dape_ram):
    files = sorted((tagged / "tag").glob("*.txt"))
    assert [p.stem for p in files] == ["0000001", "0000002", "0000003"]
    gts = [Image.open(tagged / "gt" / f"{p.stem}.png").convert("RGB") for p in files]
    base = base_ram.tag(gts, mode="pipeline")
    dape = dape_ram.tag(gts, mode="pipeline")
    assert [p.read_text(encoding="utf-8") for p in files] == [f"{result.prompt}," for result in base]
    assert any(result.prompt for result in base)  # the tiny RAM does fire on these photos
    assert [r.prompt for r in base] != [r.prompt for r in dape]  # so the test can tell the teacher from DAPE


def test_bundle_folder_gives_the_teacher_without_dape(tagged, hr_folder, tmp_path, caplog):
    """The release bundle holds ram/DAPE.pth; the teacher must still be the plain RAM (as intended: no warning
    that DAPE.pth was "not found" beside a DAPE.pth)."""
    source = resolve_teacher_source(TINY)
    assert source.dape_path is None and source.ram_path == RAM_FILE and source.config_dir == CONFIGS
    out = tmp_path / "bundle"
    with caplog.at_level(logging.WARNING):
        prepare_dataset(tag_options(hr_folder, out, TINY))
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    for path in sorted((tagged / "tag").glob("*.txt")):
        assert (out / "tag" / path.name).read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_missing_tags_are_filled_in_on_resume(tagged, hr_folder):
    target = tagged / "tag" / "0000002.txt"
    expected = target.read_text(encoding="utf-8")
    target.unlink()
    report = prepare_dataset(tag_options(hr_folder, tagged, RAM_FILE))
    assert (report.written, report.skipped_complete, report.tagged) == (0, 3, 1)
    assert target.read_text(encoding="utf-8") == expected


def test_no_teacher_found_is_a_clear_error(hr_folder, tmp_path, capsys):
    with pytest.raises(PrepareError, match="--no-tags"):
        prepare_dataset(tag_options(hr_folder, tmp_path / "none", tmp_path))
    assert not (tmp_path / "none").exists()  # failed before any work
    code = main(["prepare", "--gt", str(hr_folder), "--out", str(tmp_path / "cli"), "--min-pixels", "0"])
    assert code == 2 and "--no-tags" in capsys.readouterr().err


def test_cli_prepare_with_tagger(hr_folder, tmp_path, capsys):
    out = tmp_path / "cli_tags"
    argv = ["prepare", "--gt", str(hr_folder), "--out", str(out), "--mode", "resize512", "--size", "64"]
    argv += ["--min-pixels", "0", "--min-file-kib", "0", "--tagger", str(RAM_FILE), "--device", "cpu"]
    assert main(argv) == 0
    assert "3 tagged" in capsys.readouterr().out
    assert len(list((out / "tag").glob("*.txt"))) == 3
    assert json.loads((out / "prepare.json").read_text())["settings"]["mode"] == "resize512"
