"""``seesr prepare --coco``: annotations rescaled to size² (known boxes, masks, panoptic areas); resumable writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.evaluation import coco_case

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    return coco_case.write_case(tmp_path_factory.mktemp("coco"))


def test_boxes_and_polygons_scale_per_axis():
    from seesr.data.coco import rescale_instances

    out = rescale_instances(coco_case.instances(), 512)
    by_id = {a["id"]: a for a in out["annotations"]}
    # image 1 is 640x480: x by 0.8, y by 512/480
    assert by_id[11]["bbox"] == pytest.approx([80.0, 80 * 512 / 480, 160.0, 256.0])
    assert by_id[11]["segmentation"][0][:4] == pytest.approx([80.0, 80 * 512 / 480, 240.0, 80 * 512 / 480])
    # image 3 is 400x600: x by 1.28, y by 512/600
    assert by_id[31]["bbox"] == pytest.approx([64.0, 256.0, 256.0, 200 * 512 / 600])
    assert all(image["width"] == image["height"] == 512 for image in out["images"])
    assert [image["file_name"] for image in out["images"]] == [
        "000000000001.png",
        "000000000002.png",
        "000000000003.png",
    ]
    # polygon area rasterised at 512²: the 160x256 rectangle (measured 40960 up to edge pixels)
    assert by_id[11]["area"] == pytest.approx(160 * 256, rel=0.02)


def test_rle_mask_resized_nearest():
    from pycocotools import mask as mask_utils

    from seesr.data.coco import rescale_instances

    crowd = {a["id"]: a for a in rescale_instances(coco_case.instances(), 512)["annotations"]}[22]
    mask = mask_utils.decode(crowd["segmentation"])
    assert mask.shape == (512, 512)
    # 80x80 at (200, 200) in a 320² image -> 128x128 at (320, 320): exact under nearest resize by 1.6
    expected = np.zeros((512, 512), dtype=np.uint8)
    expected[320:448, 320:448] = 1
    assert np.array_equal(mask, expected)
    assert crowd["area"] == 128 * 128


def test_panoptic_pngs_and_areas(tmp_path: Path, case):
    from seesr.data.coco import rescale_panoptic

    panoptic = json.loads(case["panoptic"].read_text())
    names = {i: f"{i:012d}.png" for i in coco_case.IMAGES}
    out, dropped = rescale_panoptic(panoptic, case["panoptic"].with_suffix(""), tmp_path, 512, names)
    assert dropped == 0
    image2 = next(a for a in out["annotations"] if a["image_id"] == 2)
    segments = {s["id"]: s for s in image2["segments_info"]}
    assert segments[22]["area"] == 128 * 128 and segments[22]["bbox"] == [320, 320, 128, 128]
    assert sum(s["area"] for s in segments.values()) == 512 * 512
    ids = np.asarray(Image.open(tmp_path / names[2]).convert("RGB")).astype(np.int64)
    ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
    assert (ids[320:448, 320:448] == 22).all() and ids[0, 0] == coco_case.SKY_SEGMENT


def _options(case, out: Path, **extra):
    from seesr.data.coco import CocoPrepareOptions

    return CocoPrepareOptions(
        images_dir=case["images"],
        annotations=case["instances"],
        panoptic=case["panoptic"],
        out=out,
        size=64,
        progress=False,
        **extra,
    )


def test_prepare_coco_writes_resumes_and_is_deterministic(tmp_path: Path, case):
    from seesr.data.coco import INSTANCES_NAME, PANOPTIC_NAME, prepare_coco

    class Stop(Exception):
        pass

    def stop_after_first(name: str) -> None:
        raise Stop(name)

    with pytest.raises(Stop):
        prepare_coco(_options(case, tmp_path / "a"), on_item_written=stop_after_first)
    report = prepare_coco(_options(case, tmp_path / "a"))
    assert (report.written, report.skipped_complete, report.total) == (2, 1, 3)
    prepare_coco(_options(case, tmp_path / "b"))
    for sub in ("gt", "lr"):
        names = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert names == [f"{i:012d}.png" for i in (1, 2, 3)]
        for name in names:
            assert (tmp_path / "a" / sub / name).read_bytes() == (tmp_path / "b" / sub / name).read_bytes()
    assert Image.open(tmp_path / "a" / "lr" / names[0]).size == (16, 16)
    assert Image.open(tmp_path / "a" / "gt" / names[0]).size == (64, 64)
    instances = json.loads((tmp_path / "a" / INSTANCES_NAME).read_text())
    assert instances["annotations"][0]["bbox"] == pytest.approx([10.0, 80 * 64 / 480, 20.0, 32.0])
    assert (tmp_path / "a" / PANOPTIC_NAME).is_file() and len(list((tmp_path / "a" / "panoptic").iterdir())) == 3


def test_prepare_coco_limit_keeps_per_image_lr(tmp_path: Path, case):
    from seesr.data.coco import prepare_coco
    from seesr.data.prepare import PrepareError

    prepare_coco(_options(case, tmp_path / "all"))
    prepare_coco(_options(case, tmp_path / "two", limit=2))
    assert sorted(p.name for p in (tmp_path / "two" / "lr").iterdir()) == ["000000000001.png", "000000000002.png"]
    name = "000000000002.png"
    assert (tmp_path / "two" / "lr" / name).read_bytes() == (tmp_path / "all" / "lr" / name).read_bytes()
    with pytest.raises(PrepareError, match="different settings"):
        prepare_coco(_options(case, tmp_path / "two", limit=2, seed=1))


def test_cli_prepare_coco(tmp_path: Path, case, capsys):
    from seesr.cli.main import main

    argv = [
        "prepare",
        "--coco",
        str(case["images"]),
        "--annotations",
        str(case["instances"]),
        "--panoptic",
        str(case["panoptic"]),
        "--out",
        str(tmp_path / "set"),
        "--size",
        "32",
        "--limit",
        "1",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "1 COCO image(s)" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "set" / "lr").iterdir()] == ["000000000001.png"]
    assert main(["prepare", "--coco", str(case["images"]), "--out", str(tmp_path / "x")]) == 2
    assert "--annotations" in capsys.readouterr().err
