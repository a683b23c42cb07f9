"""`seesr tag`: output format, --json, --lang, unreadable files, exit codes."""

from __future__ import annotations

import json
import shutil

import torch

from seesr.cli.main import main
from tests.conftest import TINY

EXPECTED = "app icon, business suit, car logo, chinese knot, gargoyle, night view, swimming hole"


def test_tags_good_and_corrupt_files(tmp_path, capsys):
    good = tmp_path / "photo.png"
    shutil.copy(TINY / "pipeline_case1_lr.png", good)
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    code = main(["tag", str(corrupt), str(good), str(tmp_path / "missing.png"), "--model", str(TINY)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines() == [f"{good}: {EXPECTED}"]  # the fixture-D tags of this LR image
    errors = err.strip().splitlines()
    assert len(errors) == 2 and "broken.jpg" in errors[1] + errors[0] and "missing.png" in err
    assert all(line.startswith("seesr tag: error:") for line in errors)
    assert "Traceback" not in err


def test_json_and_chinese(tmp_path, capsys):
    assert (
        main(
            [
                "tag",
                str(TINY / "pipeline_case1_lr.png"),
                str(TINY / "pipeline_case2_lr.png"),
                "--model",
                str(TINY),
                "--json",
            ]
        )
        == 0
    )
    records = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in records] == [str(TINY / "pipeline_case1_lr.png"), str(TINY / "pipeline_case2_lr.png")]
    assert records[0]["prompt"] == EXPECTED
    assert "mascara" in records[1]["prompt"]
    tags = records[0]["tags"]
    assert [t["name"] for t in tags] == EXPECTED.split(", ")
    assert all(0.0 < t["probability"] < 1.0 for t in tags) and tags == sorted(tags, key=lambda t: t["index"])

    assert (
        main(["tag", str(TINY / "pipeline_case1_lr.png"), "--model", str(TINY), "--lang", "zh", "--batch-size", "1"])
        == 0
    )
    assert capsys.readouterr().out.strip().endswith("应用图标 , 商务西装, 车标, 中国结, 滴水嘴 , 夜景 , 游泳洞")


def test_threshold_override(capsys):
    assert main(["tag", str(TINY / "pipeline_case1_lr.png"), "--model", str(TINY), "--threshold", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"{TINY / 'pipeline_case1_lr.png'}:"


def test_usage_errors(capsys):
    image = str(TINY / "pipeline_case1_lr.png")
    assert main(["tag", image, "--threshold", "1.5"]) == 2
    assert main(["tag", image, "--lang", "fr"]) == 2
    assert main(["tag", image, "--batch-size", "0"]) == 2
    assert main(["tag"]) == 2
    assert main(["tag", image, "--device", "no-such-device"]) == 2
    if not torch.cuda.is_available():
        assert main(["tag", image, "--device", "cuda"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    image = str(TINY / "pipeline_case1_lr.png")
    assert main(["tag", image]) == 1  # default location: nothing in the (empty) cache
    err = capsys.readouterr().err
    assert "ram_swin_large_14m.pth" in err and "seesr download" in err and "Traceback" not in err
    assert main(["tag", image, "--model", str(tmp_path)]) == 1
    assert "no tagger found" in capsys.readouterr().err
