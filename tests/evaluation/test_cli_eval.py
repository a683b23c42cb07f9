"""``seesr eval`` through the real entry point."""

from __future__ import annotations

import json
import time

from seesr.cli.main import main


def test_eval_writes_report_and_prints_summary(small_pair_dirs, tmp_path, capsys):
    pred, gt = small_pair_dirs
    out = tmp_path / "report"
    code = main(
        [
            "eval",
            "--pred",
            str(pred),
            "--gt",
            str(gt),
            "--metrics",
            "psnr,ssim",
            "--crop-border",
            "4",
            "--out",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "per_image.png", "summary.json", "summary.md"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["crop_border"] == 4 and summary["metrics"]["ssim"]["count"] == 3
    code = main(["eval", "--pred", str(pred), "--gt", str(gt), "--metrics", "psnr", "--out", str(out)])
    assert code == 0
    assert "PSNR ↑" in capsys.readouterr().out


def test_eval_offline_names_missing_weights_quickly(small_pair_dirs, tmp_path, empty_torch_home, capsys):
    pred, gt = small_pair_dirs
    start = time.monotonic()
    code = main(
        ["eval", "--pred", str(pred), "--gt", str(gt), "--metrics", "psnr,lpips,clipiqa", "--out", str(tmp_path / "r")]
    )
    elapsed = time.monotonic() - start
    error = capsys.readouterr().err
    assert code == 1 and elapsed < 10
    assert str(empty_torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in error
    assert str(empty_torch_home / "hub" / "clip" / "RN50.pt") in error
    assert "Traceback" not in error and "--skip-unavailable" in error
    assert not (tmp_path / "r").exists()

    code = main(
        [
            "eval",
            "--pred",
            str(pred),
            "--gt",
            str(gt),
            "--metrics",
            "psnr,lpips",
            "--skip-unavailable",
            "-q",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["skipped_metrics"].keys() == {"lpips"}


def test_eval_user_errors_exit_2(tmp_path, small_pair_dirs, capsys):
    pred, _ = small_pair_dirs
    assert main(["eval", "--pred", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["eval", "--pred", str(pred), "--metrics", "psnr", "--out", str(tmp_path / "r")]) == 2
    assert "pass --gt" in capsys.readouterr().err
    assert main(["eval", "--pred", str(pred), "--metrics", "bogus", "--out", str(tmp_path / "r")]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_eval_all_images_unreadable_is_an_error(tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "a.png").write_bytes(b"garbage")
    assert main(["eval", "--pred", str(pred), "--metrics", "niqe", "--out", str(tmp_path / "r"), "-q"]) == 1
    assert "no image could be scored" in capsys.readouterr().err
    assert (tmp_path / "r" / "summary.md").exists()  # the report still says what went wrong


def test_eval_help_documents_metrics(capsys):
    assert main(["eval", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("psnr", "clipiqa", "pyiqa 0.1.16", "--crop-border", "summary.json", "HF_HUB_OFFLINE"):
        assert word in text


def test_missing_and_unreadable_pairs_fail_and_are_named(small_pair_dirs, tmp_path, capsys):
    """Issue 13 item 8 / issue 19 item 8: exit 1 (not 0), the report still covers the good pairs, the first problems
    are printed by name rather than only counted."""
    pred, gt = small_pair_dirs
    (pred / "coffee_LR4.png").unlink()  # a ground truth without a prediction
    (pred / "broken_LR4.png").write_bytes(b"not a png")  # an unreadable prediction without a ground truth
    out = tmp_path / "report"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--metrics", "psnr", "--out", str(out), "-q"]) == 1
    error = capsys.readouterr().err
    assert "problem: coffee_HR.png: ground truth without a prediction" in error
    assert "problem: broken_LR4.png: prediction unreadable" in error
    assert "3 problem(s)" in error and "cover only the images that could be scored" in error
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["psnr"]["count"] == 2 and len(summary["problems"]) == 3


def test_only_the_first_problems_are_printed(small_pair_dirs, tmp_path, capsys):
    pred, gt = small_pair_dirs
    for index in range(7):
        (pred / f"junk{index}.png").write_bytes(b"")
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--metrics", "psnr", "--out", str(tmp_path), "-q"]) == 1
    error = capsys.readouterr().err
    assert error.count("problem: ") == 5 and "... and 9 more in" in error and "summary.md" in error


def test_a_skipped_metric_is_reported_once(tmp_path, small_pair_dirs, empty_torch_home, capsys, caplog):
    """Issue 19 (noise): the "skipped" line came twice, as a log warning during the run and in the summary."""
    import logging

    pred, gt = small_pair_dirs
    argv = ["eval", "--pred", str(pred), "--gt", str(gt), "--metrics", "psnr,lpips", "--skip-unavailable"]
    with caplog.at_level(logging.INFO):
        assert main([*argv, "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    lines = [
        line
        for line in (captured.out + captured.err + caplog.text).splitlines()
        if "skip" in line.lower() and "lpips" in line.lower()
    ]
    assert len(lines) == 1 and "lpips: skipped (weights missing (offline)" in lines[0], lines
