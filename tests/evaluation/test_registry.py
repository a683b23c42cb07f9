"""Metric registry: pinned weight locations, offline failures that name the files, weights-only loading."""

from __future__ import annotations

import argparse
import os
import time
import urllib.error

import numpy as np
import pytest
import torch

from seesr.evaluation.registry import (
    DEFAULT_NR_METRICS,
    METRICS,
    PYIQA_VERSION,
    MetricUnavailableError,
    build_scorer,
    check_weights,
    is_offline,
    parse_metric_list,
)


def test_pinned_pyiqa_and_weight_urls_match_the_installed_pyiqa():
    import pyiqa
    import torchvision
    from pyiqa.archs import dists_arch, inception, lpips_arch, maniqa_arch, musiq_arch
    from pyiqa.archs.clip_model import _MODELS

    assert pyiqa.__version__ == PYIQA_VERSION
    urls = {name: [w.url for w in info.weights] for name, info in METRICS.items()}
    assert urls["lpips"] == [
        torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url,
        lpips_arch.default_model_urls["0.1_alex"],
    ]
    assert urls["dists"] == [torchvision.models.VGG16_Weights.IMAGENET1K_V1.url, dists_arch.default_model_urls["url"]]
    assert urls["fid"] == [inception.FID_WEIGHTS_URL]
    assert urls["maniqa"] == [maniqa_arch.default_model_urls["koniq"]]
    assert urls["musiq"] == [musiq_arch.default_model_urls["koniq10k"]]
    assert urls["clipiqa"] == [_MODELS["RN50"]]
    assert urls["psnr"] == urls["ssim"] == urls["niqe"] == []
    for info in METRICS.values():
        for weight in info.weights:
            assert weight.url.endswith("/" + weight.filename)


def test_weight_paths_follow_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    lpips_files = METRICS["lpips"].weights
    assert lpips_files[0].path == tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert lpips_files[1].path == tmp_path / "hub" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"
    assert METRICS["clipiqa"].weights[0].path == tmp_path / "hub" / "clip" / "RN50.pt"
    assert set(check_weights(["psnr", "lpips", "niqe"])) == {"lpips"}


def test_parse_metric_list():
    table2 = ["psnr", "ssim", "lpips", "dists", "fid", "niqe", "maniqa", "musiq", "clipiqa"]
    assert parse_metric_list(None, has_gt=True) == table2  # tag_f1 etc. only when asked for
    assert parse_metric_list(None, has_gt=False) == list(DEFAULT_NR_METRICS) == ["niqe", "maniqa", "musiq", "clipiqa"]
    assert parse_metric_list("NIQE, clip-iqa,psnr", has_gt=True) == ["psnr", "niqe", "clipiqa"]  # Table 2 order
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric_list("psnr,bogus", has_gt=True)
    with pytest.raises(ValueError, match="pass --gt"):
        parse_metric_list("lpips,niqe", has_gt=False)


def test_is_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SEESR_OFFLINE", raising=False)
    assert not is_offline()
    assert is_offline(explicit=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_offline()


def test_missing_weights_offline_fail_fast_naming_the_files(empty_torch_home):
    start = time.monotonic()
    with pytest.raises(MetricUnavailableError) as caught:
        build_scorer("lpips", allow_download=False)
    message = str(caught.value)
    assert str(empty_torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in message
    assert "LPIPS_v0.1_alex-df73285e.pth" in message and "https://" in message
    assert time.monotonic() - start < 5


def test_failed_download_is_reported_with_the_missing_files(empty_torch_home, monkeypatch):
    """Online but unreachable: the URL error becomes a message naming the files (no retries, no traceback)."""
    import pyiqa.utils.download_util

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    monkeypatch.setattr(pyiqa.utils.download_util, "download_url_to_file", unreachable)
    start = time.monotonic()
    with pytest.raises(MetricUnavailableError, match="could not fetch its weights") as caught:
        build_scorer("dists", allow_download=True)
    assert "vgg16-397923af.pth" in str(caught.value) and "DISTS_weights-f5e65c96.pth" in str(caught.value)
    assert time.monotonic() - start < 10
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_lpips_and_dists_run_on_random_backbones(torch_home, photos, noisy):
    image = np.ascontiguousarray(photos["astronaut"][:64, :64])
    other = noisy(image, seed=1, amplitude=30)
    for name in ("lpips", "dists"):
        score = build_scorer(name, allow_download=False)
        assert score(image, image) == pytest.approx(0.0, abs=1e-6)
        assert score(other, image) > 1e-4
        assert np.isfinite(score(other, image))
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_weight_files_load_weights_only_unless_trusted(torch_home, tmp_path, monkeypatch, photos):
    """A DISTS file that holds a non-tensor object is refused by default and accepted with trust_weights."""
    home = tmp_path / "home"
    (home / "hub" / "pyiqa").mkdir(parents=True)
    (home / "hub" / "checkpoints").symlink_to(torch_home / "hub" / "checkpoints")
    payload = torch.load(torch_home / "hub" / "pyiqa" / "DISTS_weights-f5e65c96.pth", weights_only=True)
    payload["training_args"] = argparse.Namespace(lr=1e-4)
    torch.save(payload, home / "hub" / "pyiqa" / "DISTS_weights-f5e65c96.pth")
    monkeypatch.setenv("TORCH_HOME", str(home))
    with pytest.raises(MetricUnavailableError, match="--trust-metric-weights"):
        build_scorer("dists", allow_download=False)
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    score = build_scorer("dists", allow_download=False, trust_weights=True)
    image = np.ascontiguousarray(photos["chelsea"][:48, :48])
    assert score(image, image) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_maniqa_needs_only_its_own_checkpoint(tmp_path, monkeypatch):
    """pyiqa builds MANIQA's ViT with pretrained=True; we build it random, so no Hub file is needed offline."""
    import timm
    from pyiqa.archs.maniqa_arch import MANIQA

    from seesr.evaluation.registry import _timm_without_pretrained

    create_model = timm.create_model

    def create_on_meta(*args, **kwargs):  # only the shapes are needed: skip initialising the 86M-parameter ViT
        with torch.device("meta"):
            return create_model(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timm, "create_model", create_on_meta)
        with _timm_without_pretrained():
            shapes = {key: value.shape for key, value in MANIQA(pretrained=False).state_dict().items()}
    state = {
        key: torch.zeros((1,) * len(shape)).expand(shape) if shape else torch.zeros(())
        for key, shape in shapes.items()
    }
    (tmp_path / "hub" / "pyiqa").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "pyiqa" / "ckpt_koniq10k.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    original = timm.create_model
    build_scorer("maniqa", allow_download=False)  # the strict load of the checkpoint succeeds
    assert timm.create_model is original
