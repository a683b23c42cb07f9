"""Folder evaluation and its report: pairing, per-image problems, learned-metric wiring, FID, offline behaviour."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seesr.evaluation import evaluate_folders, write_report
from seesr.evaluation.metrics import calculate_niqe, calculate_psnr, calculate_ssim
from seesr.evaluation.registry import MetricUnavailableError, compute_fid


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _add_problem_files(pred: Path, gt: Path, photos) -> None:
    Image.fromarray(np.ascontiguousarray(photos["coffee"][:100, :100])).save(pred / "wrong_size_out.png")
    Image.fromarray(np.ascontiguousarray(photos["coffee"][:120, :100])).save(gt / "wrong_size.png")
    (pred / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.ascontiguousarray(photos["coffee"][:32, :32])).save(gt / "corrupt.png")
    Image.fromarray(np.ascontiguousarray(photos["chelsea"][:96, :96])).save(pred / "lonely.png")
    Image.fromarray(np.ascontiguousarray(photos["chelsea"][:96, :96])).save(gt / "orphan.png")


def test_fidelity_metrics_per_image_and_problems(small_pair_dirs, photos, tmp_path):
    pred, gt = small_pair_dirs
    _add_problem_files(pred, gt, photos)
    result = evaluate_folders(pred, gt, metrics="psnr,ssim,niqe", crop_border=2, progress=False)
    by_name = {record.name: record for record in result.records}
    assert sorted(by_name) == [
        "astronaut_LR4.png",
        "chelsea_LR4.png",
        "coffee_LR4.png",
        "corrupt.png",
        "lonely.png",
        "wrong_size_out.png",
    ]

    # Good pairs: the same numbers as the metric functions called directly.
    record = by_name["chelsea_LR4.png"]
    assert record.gt == gt / "chelsea_HR.png"
    p, g = _read(record.pred), _read(record.gt)
    assert record.scores["psnr"] == pytest.approx(calculate_psnr(p, g, crop_border=2), abs=1e-12)
    assert record.scores["ssim"] == pytest.approx(calculate_ssim(p, g, crop_border=2), abs=1e-12)
    assert record.scores["niqe"] == pytest.approx(calculate_niqe(p), abs=1e-9)
    assert record.problems == []

    # Problems are per image and the rest still gets scored.
    assert any("unreadable" in problem for problem in by_name["corrupt.png"].problems)
    assert by_name["corrupt.png"].scores == {}
    mismatch = by_name["wrong_size_out.png"]
    assert any("size mismatch: prediction 100x100, ground truth 100x120" in problem for problem in mismatch.problems)
    assert set(mismatch.scores) == {"niqe"}  # no-reference metrics still run on it
    assert any("no ground truth" in problem for problem in by_name["lonely.png"].problems)
    assert set(by_name["lonely.png"].scores) == {"niqe"}
    assert any("orphan.png: ground truth without a prediction" in problem for problem in result.problems)

    summary = result.summary()
    assert summary["psnr"]["count"] == 3 and summary["niqe"]["count"] == 5
    expected_mean = np.mean(
        [by_name[n].scores["psnr"] for n in ("astronaut_LR4.png", "chelsea_LR4.png", "coffee_LR4.png")]
    )
    assert summary["psnr"]["mean"] == pytest.approx(expected_mean)

    written = write_report(result, tmp_path / "report")
    assert {path.name for path in written.values()} == {"per_image.csv", "summary.json", "summary.md", "per_image.png"}
    rows = list(csv.DictReader(written["csv"].open()))
    assert [row["image"] for row in rows] == sorted(by_name)
    assert list(rows[0]) == ["image", "prediction", "ground_truth", "psnr", "ssim", "niqe", "problems"]
    chelsea = next(row for row in rows if row["image"] == "chelsea_LR4.png")
    assert float(chelsea["psnr"]) == record.scores["psnr"]
    assert "unreadable" in next(row for row in rows if row["image"] == "corrupt.png")["problems"]

    report = json.loads(written["json"].read_text())
    assert report["mode"] == "full-reference"
    assert report["metrics"]["psnr"]["mean"] == pytest.approx(expected_mean)
    assert report["metrics"]["niqe"]["lower_better"] is True
    assert report["settings"]["crop_border"] == 2
    assert "Y channel of BT.601 YCbCr" in report["settings"]["colour"]
    assert report["package_versions"]["pyiqa"] == "0.1.16" and torch.__version__.startswith(
        report["package_versions"]["torch"]
    )
    assert len(report["problems"]) == 4

    markdown = written["markdown"].read_text()
    assert "| PSNR ↑ |" in markdown and "| NIQE ↓ |" in markdown and "crop border 2 px" in markdown
    assert "size mismatch" in markdown
    with Image.open(written["plot"]) as plot:
        assert plot.size[0] > 300 and plot.size[1] > 300


def test_identical_folders_report_inf_psnr_as_json_string(tmp_path, photos):
    folder = tmp_path / "same"
    folder.mkdir()
    Image.fromarray(np.ascontiguousarray(photos["astronaut"][:64, :64])).save(folder / "a.png")
    result = evaluate_folders(folder, folder, metrics="psnr,ssim", progress=False)
    assert result.records[0].scores == {"psnr": math.inf, "ssim": pytest.approx(1.0)}
    written = write_report(result, tmp_path / "report")
    report = json.loads(written["json"].read_text())  # strict JSON: no Infinity literal
    assert report["metrics"]["psnr"]["mean"] == "inf"
    assert "inf" in written["csv"].read_text().splitlines()[1]


def test_no_reference_mode(small_pair_dirs):
    pred, _ = small_pair_dirs
    result = evaluate_folders(pred, None, metrics="niqe", progress=False)
    assert result.mode == "no-reference"
    assert all(set(record.scores) == {"niqe"} and record.gt is None for record in result.records)
    with pytest.raises(ValueError, match="pass --gt"):
        evaluate_folders(pred, None, metrics="psnr", progress=False)


def test_bad_folders_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        evaluate_folders(tmp_path / "missing", None, metrics="niqe", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        evaluate_folders(tmp_path / "empty", None, metrics="niqe", progress=False)


def test_learned_fr_metrics_wired_with_random_backbones(torch_home, small_pair_dirs, tmp_path):
    pred, gt = small_pair_dirs
    Image.open(gt / "astronaut_HR.png").save(pred / "astronaut_LR4.png")  # one perfect prediction
    result = evaluate_folders(pred, gt, metrics="psnr,lpips,dists", progress=False, allow_download=False)
    by_name = {record.name: record for record in result.records}
    perfect = by_name["astronaut_LR4.png"].scores
    assert perfect["psnr"] == math.inf
    assert perfect["lpips"] == pytest.approx(0.0, abs=1e-6) and perfect["dists"] == pytest.approx(0.0, abs=1e-6)
    for name in ("chelsea_LR4.png", "coffee_LR4.png"):
        assert by_name[name].scores["lpips"] > 0 and by_name[name].scores["dists"] > 0
    written = write_report(result, tmp_path / "report")
    header = written["csv"].read_text().splitlines()[0]
    assert header == "image,prediction,ground_truth,psnr,lpips,dists,problems"
    report = json.loads(written["json"].read_text())
    assert report["metrics"]["lpips"]["count"] == 3 and "AlexNet" in report["metrics"]["lpips"]["implementation"]


def test_offline_missing_weights_list_every_file_or_skip(empty_torch_home, small_pair_dirs, tmp_path):
    pred, gt = small_pair_dirs
    with pytest.raises(MetricUnavailableError) as caught:
        evaluate_folders(pred, gt, progress=False, allow_download=False)  # default: the whole of Table 2
    message = str(caught.value)
    for filename in (
        "alexnet-owt-7be5be79.pth",
        "vgg16-397923af.pth",
        "pt_inception-2015-12-05-6726825d.pth",
        "ckpt_koniq10k.pt",
        "musiq_koniq_ckpt-e95806b9.pth",
        "RN50.pt",
    ):
        assert filename in message
    assert "--metrics psnr,ssim,niqe" in message

    result = evaluate_folders(pred, gt, progress=False, allow_download=False, skip_unavailable=True)
    assert result.computed_metrics == ["psnr", "ssim", "niqe"]
    assert set(result.skipped_metrics) == {"lpips", "dists", "fid", "maniqa", "musiq", "clipiqa"}
    report = json.loads(write_report(result, tmp_path / "report")["json"].read_text())
    assert "RN50.pt" in report["skipped_metrics"]["clipiqa"]
    assert "skipped" in (tmp_path / "report" / "summary.md").read_text()


@pytest.fixture(scope="session")
def fake_fid_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME with a random FID InceptionV3 (pyiqa's architecture and key names)."""
    import pyiqa.archs.inception as inception

    with pytest.MonkeyPatch.context() as patch, torch.device("meta"):
        patch.setattr(inception, "load_pretrained_network", lambda *args, **kwargs: None)
        shapes = {key: value.shape for key, value in inception.fid_inception_v3().state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif len(shape) == 4:
            state[key] = (torch.randn(shape, generator=generator) * math.sqrt(2.0 / math.prod(shape[1:]))).half()
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = torch.ones((1,)).expand(shape)
        else:
            state[key] = torch.zeros((1,) * len(shape)).expand(shape)
    home = tmp_path_factory.mktemp("fid_torch_home")
    (home / "hub" / "pyiqa").mkdir(parents=True)
    torch.save(state, home / "hub" / "pyiqa" / "pt_inception-2015-12-05-6726825d.pth")
    return home


def test_fid_over_the_paired_sets(fake_fid_torch_home, small_pair_dirs, monkeypatch, photos):
    """The paired, readable files go through pyiqa's FID InceptionV3 (pool3, 2048-d) into pyiqa's Frechet distance.

    The distance itself is pyiqa's; it is replaced here by a recording stand-in only because scipy's sqrtm of a
    2048x2048 matrix takes tens of seconds on a shared CPU.
    """
    import pyiqa.archs.fid_arch as fid_arch

    calls = []

    def recording_distance(mu1, sigma1, mu2, sigma2):
        calls.append((mu1, sigma1, mu2, sigma2))
        return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2))

    monkeypatch.setattr(fid_arch, "frechet_distance", recording_distance)
    monkeypatch.setenv("TORCH_HOME", str(fake_fid_torch_home))
    pred, gt = small_pair_dirs
    (pred / "corrupt.png").write_bytes(b"not an image")
    Image.fromarray(np.ascontiguousarray(photos["coffee"][:32, :32])).save(gt / "corrupt.png")
    result = evaluate_folders(pred, gt, metrics="fid", progress=False, allow_download=False)
    assert result.fid_count == 3  # the unreadable prediction is left out of both sets
    mu1, sigma1, mu2, sigma2 = calls[0]
    assert mu1.shape == mu2.shape == (2048,) and sigma1.shape == sigma2.shape == (2048, 2048)
    assert np.linalg.matrix_rank(sigma1.astype(np.float64)) == 2  # three images, centred
    assert not np.allclose(mu1, mu2)
    assert result.fid == pytest.approx(recording_distance(mu1, sigma1, mu2, sigma2))
    assert result.summary()["fid"]["mean"] == result.fid and result.summary()["fid"]["count"] == 3

    gt_files = sorted(gt.glob("*_HR.png"))
    compute_fid(gt_files, list(reversed(gt_files)), allow_download=False)
    np.testing.assert_allclose(calls[-1][0], calls[-1][2], rtol=1e-5, atol=1e-6)  # same set, any order
    with pytest.raises(ValueError, match="at least 2 images"):
        compute_fid(gt_files[:1], gt_files, allow_download=False)
