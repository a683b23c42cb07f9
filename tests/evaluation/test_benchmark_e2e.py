"""``seesr benchmark`` end to end: LR/HR dataset -> ``seesr upscale`` with the tiny model bundle -> ``seesr eval``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from seesr.cli.main import main
from tests.conftest import TINY


@pytest.mark.slow
def test_benchmark_end_to_end_with_tiny_bundle(tmp_path, photos, capsys):
    """LR/ + HR/ dataset -> tiny SeeSR (2 steps) -> eval; a rerun resumes instead of recomputing."""
    dataset = tmp_path / "RealSR-mini"
    for name in ("astronaut", "chelsea"):
        hr = Image.fromarray(np.ascontiguousarray(photos[name][100:196, 100:196]))
        (dataset / "HR").mkdir(parents=True, exist_ok=True)
        (dataset / "LR").mkdir(exist_ok=True)
        hr.save(dataset / "HR" / f"{name}.png")
        hr.resize((24, 24), Image.BICUBIC).save(dataset / "LR" / f"{name}.png")
    out = tmp_path / "run"
    argv = [
        "benchmark", "--dataset", str(dataset), "--out", str(out), "--model", str(TINY), "--steps", "2",
        "--process-size", "96", "--metrics", "psnr,ssim,niqe", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    outputs = sorted((out / "sr").iterdir())
    assert [p.name for p in outputs] == ["astronaut.png", "chelsea.png"]
    assert all(Image.open(p).size == (96, 96) for p in outputs)

    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["metrics"]["psnr"]["count"] == 2 and summary["metrics"]["niqe"]["count"] == 2
    assert np.isfinite(summary["metrics"]["psnr"]["mean"]) and summary["metrics"]["ssim"]["paper"] == 0.7216
    assert "Paper (SeeSR)" in (out / "report" / "summary.md").read_text()
    record = json.loads((out / "benchmark.json").read_text())
    assert record["paper_row"] == "realsr" and record["layout"] == "LR/ + HR/"
    command = record["upscale_command"]
    assert command[:3] == ["seesr", "upscale", str(dataset / "LR")]
    assert "--skip-existing" in command and command[command.index("--seed") + 1] == "0"

    # Resumable: existing outputs are kept, one missing output is recomputed.
    kept = outputs[0].stat().st_mtime_ns
    outputs[1].unlink()
    assert main(argv) == 0
    assert outputs[0].stat().st_mtime_ns == kept and outputs[1].exists()

    # Evaluation only, against the same folder.
    capsys.readouterr()
    assert main([*argv, "--eval-only"]) == 0
    assert "report:" in capsys.readouterr().out

    # New settings: refused (issue 19 D8) instead of labelling the old images with them.
    assert main([*argv, "--steps", "3"]) == 2
    assert "steps: 2 -> 3" in capsys.readouterr().err
    assert outputs[0].stat().st_mtime_ns == kept
