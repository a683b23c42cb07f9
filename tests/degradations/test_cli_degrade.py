"""``seesr degrade``: writes LR PNGs, deterministic per (seed, name), bad files reported while the rest continue."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from seesr.cli.main import main
from tests.conftest import BLOCKS


@pytest.fixture()
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BLOCKS / "degradation_gt.png", folder / "cat.png")  # 128x96
    Image.open(BLOCKS / "colorfix_target.png").save(folder / "astronaut.jpg", quality=95)  # 96x80
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def test_degrade_writes_lr_and_reports_bad_files(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["degrade", str(inputs), "-o", str(out), "--seed", "5", "--save-gt", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1  # the broken file is an error ...
    assert "broken.png" in captured.err and "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "astronaut_gt.png", "cat.png", "cat_gt.png"]
    assert Image.open(out / "cat.png").size == (32, 24)  # ... but the others were written, at 1/4 size
    assert Image.open(out / "astronaut.png").size == (24, 20)
    assert Image.open(out / "cat_gt.png").size == (128, 96)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_degrade_is_deterministic_and_seed_dependent(inputs, tmp_path):
    cat = str(inputs / "cat.png")
    assert main(["degrade", cat, "-o", str(tmp_path / "a"), "--seed", "1", "--device", "cpu"]) == 0
    assert main(["degrade", cat, "-o", str(tmp_path / "b"), "--seed", "1", "--device", "cpu"]) == 0
    assert main(["degrade", cat, "-o", str(tmp_path / "c"), "--seed", "2", "--device", "cpu"]) == 0
    a, b, c = (np.asarray(Image.open(tmp_path / name / "cat.png")) for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_degrade_options(inputs, tmp_path, capsys):
    cat = str(inputs / "cat.png")
    out = tmp_path / "opts"
    argv = ["degrade", cat, "-o", str(out), "--count", "2", "--crop", "64", "--scale", "2", "--preset", "realesrgan"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cat_1.png", "cat_2.png"]
    assert Image.open(out / "cat_1.png").size == (32, 32)
    assert main(["degrade", cat, "-o", str(out), "--crop", "8"]) == 2
    assert "--crop must be at least 16" in capsys.readouterr().err
    assert main(["degrade", str(tmp_path / "missing.png"), "-o", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_bad_output_folder_is_refused_before_any_work(inputs, tmp_path, capsys):
    """Issue 19 D7 for degrade: `-o` under a regular file failed once per image, after degrading each of them."""
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    assert main(["degrade", str(inputs), "-o", str(blocker / "lr"), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "wrote" not in captured.out  # nothing was degraded
    assert [line for line in captured.err.splitlines() if line] == [
        f"seesr degrade: error: {blocker / 'lr'}: cannot create the folder (Not a directory); choose another -o"
    ]
    assert main(["degrade", str(inputs), "-o", str(blocker), "--device", "cpu"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "mine"
