"""Tag agreement (``seesr eval --metrics tag_f1``) with the tiny random-weight RAM of the reference bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TINY

RAM_PTH = TINY / "ram" / "ram_swin_large_14m.pth"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """``same``: three photos; ``other``: the same names holding the photos in another order."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    root = tmp_path_factory.mktemp("tags")
    for label, order in (("same", (0, 1, 2)), ("other", (1, 2, 0))):
        (root / label).mkdir()
        for index, source in enumerate(order):
            Image.fromarray(photos[source]).resize((96, 96)).save(root / label / f"img{index}.png")
    return {"same": root / "same", "other": root / "other", "root": root}


def test_tag_agreement_by_hand():
    from seesr.evaluation.semantic.tags import tag_agreement

    scores = tag_agreement(["dog", "grass", "sky"], ["dog", "sky", "tree", "cloud"])
    assert scores["tag_precision"] == pytest.approx(2 / 3)
    assert scores["tag_recall"] == pytest.approx(2 / 4)
    assert scores["tag_f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert tag_agreement([], [])["tag_f1"] == 1.0
    assert tag_agreement(["dog"], [])["tag_f1"] == 0.0


def test_tag_f1_is_not_a_default_metric():
    from seesr.evaluation.registry import parse_metric_list

    assert not any(name.startswith("tag_") for name in parse_metric_list(None, has_gt=True))
    assert parse_metric_list("psnr,tag_f1", has_gt=True) == ["psnr", "tag_f1", "tag_precision", "tag_recall"]
    with pytest.raises(ValueError, match="ground truth"):
        parse_metric_list("tag_f1", has_gt=False)


def _eval(pred: Path, gt: Path, out: Path, tagger: Path) -> dict:
    from seesr.cli.main import main

    argv = ["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--metrics", "tag_f1"]
    assert main([*argv, "--tagger", str(tagger), "--device", "cpu", "--quiet"]) == 0
    return json.loads((out / "summary.json").read_text())["metrics"]


def test_eval_tag_f1_same_folder_is_one_other_folder_lower(folders):
    same = _eval(folders["same"], folders["same"], folders["root"] / "r1", RAM_PTH)
    assert {"tag_f1", "tag_precision", "tag_recall"} <= set(same)
    assert same["tag_f1"]["mean"] == 1.0 and same["tag_f1"]["count"] == 3
    assert same["tag_precision"]["mean"] == same["tag_recall"]["mean"] == 1.0
    other = _eval(folders["other"], folders["same"], folders["root"] / "r2", TINY)  # a model folder with ram/ works
    # tiny random RAM: different photos share most but not all tags (measured F1 mean 0.808)
    assert other["tag_f1"]["mean"] < 0.95
    header = (folders["root"] / "r2" / "per_image.csv").read_text().splitlines()[0]
    assert "tag_f1" in header and "tag_recall" in header


def test_eval_tag_f1_missing_tagger_is_a_clear_error(folders, capsys):
    from seesr.cli.main import main

    argv = ["eval", "--pred", str(folders["same"]), "--gt", str(folders["same"]), "--out", str(folders["root"] / "x")]
    code = main([*argv, "--metrics", "tag_f1", "--tagger", str(folders["root"] / "nope.pth"), "--quiet"])
    assert code == 1
    assert "nope.pth" in capsys.readouterr().err


def test_eval_tag_f1_damaged_checkpoint_is_a_clear_error(folders, capsys):
    from seesr.cli.main import main

    damaged = folders["root"] / "ram_swin_large_14m.pth"
    damaged.write_bytes(b"not a checkpoint")
    argv = ["eval", "--pred", str(folders["same"]), "--gt", str(folders["same"]), "--out", str(folders["root"] / "y")]
    assert main([*argv, "--metrics", "tag_f1", "--tagger", str(damaged), "--quiet"]) == 1
    assert "could not be loaded" in capsys.readouterr().err
