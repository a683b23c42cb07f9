"""``seesr benchmark --semantic`` end to end: prepare --coco (3 images) -> tiny SeeSR bundle -> tiny Mask2Former and
tiny RAM -> Table 3 rows (GT, zoomed LR, SeeSR) as CSV/JSON/Markdown/PNG; resumable; --pred and --limit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from seesr.cli.main import main
from tests.conftest import TINY
from tests.evaluation import coco_case

pytest.importorskip("pycocotools")
pytest.importorskip("torchmetrics")

RAM_PTH = TINY / "ram" / "ram_swin_large_14m.pth"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    from seesr.data.coco import CocoPrepareOptions, prepare_coco

    root = tmp_path_factory.mktemp("semantic")
    case = coco_case.write_case(root / "coco")
    options = CocoPrepareOptions(
        images_dir=case["images"],
        annotations=case["instances"],
        panoptic=case["panoptic"],
        out=root / "set",
        size=64,
        progress=False,
    )
    prepare_coco(options)
    return {"set": root / "set", "segmenter": coco_case.save_tiny_mask2former(root / "m2f"), "root": root}


def _argv(prepared: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "benchmark", "--semantic", "--dataset", str(prepared["set"]), "--out", str(out),
        "--segmenter", str(prepared["segmenter"]), "--tagger", str(RAM_PTH), "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_semantic_benchmark_end_to_end_with_tiny_bundle(prepared, tmp_path: Path):
    out = tmp_path / "run"
    argv = _argv(prepared, out, "--model", str(TINY), "--steps", "2", "--process-size", "64")
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "sr").iterdir()) == [f"{i:012d}.png" for i in (1, 2, 3)]
    report = out / "semantic"
    with open(report / "table3.csv", newline="") as stream:
        rows = {row["row"]: row for row in csv.DictReader(stream)}
    assert list(rows) == ["GT", "Zoomed LR", "SeeSR"]
    for row in rows.values():
        assert row["images"] == "3"
        for key in ("pq", "ap_box", "ap_mask", "miou"):
            assert 0.0 <= float(row[key]) <= 100.0
    assert float(rows["GT"]["tag_f1"]) == 1.0  # the GT against itself
    assert 0.0 <= float(rows["SeeSR"]["tag_f1"]) <= 1.0
    document = json.loads((report / "table3.json").read_text())
    assert "OpenSeeD" in document["note"] and document["paper"]["SeeSR"]["pq"] == 30.0
    markdown = (report / "table3.md").read_text()
    assert "OpenSeeD" in markdown and "| SeeSR |" in markdown and "paper (OpenSeeD): GT" in markdown
    assert (report / "table3.png").stat().st_size > 0

    # Resumable: a rerun reuses every row (cache files untouched) and the upscaled images.
    cached = {p: p.stat().st_mtime_ns for p in (report / "rows").iterdir()}
    kept = (out / "sr" / "000000000001.png").stat().st_mtime_ns
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (report / "rows").iterdir()} == cached
    assert (out / "sr" / "000000000001.png").stat().st_mtime_ns == kept


def test_semantic_benchmark_pred_folder_and_limit(prepared, tmp_path: Path):
    out = tmp_path / "pred"
    assert main(_argv(prepared, out, "--pred", str(prepared["set"] / "gt"), "--label", "copy", "--limit", "2")) == 0
    document = json.loads((out / "semantic" / "table3.json").read_text())
    rows = {row["label"]: row for row in document["rows"]}
    assert list(rows) == ["GT", "Zoomed LR", "copy"] and rows["copy"]["images"] == 2
    assert rows["copy"]["scores"] == rows["GT"]["scores"]  # the same images, the same segmenter: the same row
    assert not (out / "sr").exists()


def test_semantic_benchmark_rejects_a_plain_folder(tmp_path: Path, capsys):
    (tmp_path / "images").mkdir()
    assert main(["benchmark", "--semantic", "--dataset", str(tmp_path / "images"), "--out", str(tmp_path / "o")]) == 2
    assert "prepare --coco" in capsys.readouterr().err


def test_semantic_benchmark_offline_without_segmenter_stops_before_upscaling(prepared, tmp_path: Path, capsys):
    out = tmp_path / "offline"
    argv = ["benchmark", "--semantic", "--dataset", str(prepared["set"]), "--out", str(out), "--model", str(TINY)]
    assert main([*argv, "--offline", "--quiet"]) == 1
    assert "not in the Hugging Face cache" in capsys.readouterr().err
    assert not (out / "sr").exists()
    assert main(["benchmark", "--dataset", str(prepared["set"]), "--out", str(out), "--limit", "2"]) == 2
    assert "only with --semantic" in capsys.readouterr().err
