"""`seesr convert` bundles (no pickle when loading) and `seesr download` (fake downloader, offline behaviour)."""

from __future__ import annotations

import json

import pytest
import torch

from seesr.cli.main import main
from seesr.pipeline.pipeline_seesr import SeeSRPipeline
from seesr.weights.catalog import CATALOG, files_for
from seesr.weights.download import DownloadError, download_weights
from seesr.weights.resolve import MissingWeightsError, default_bundle_dir, resolve_model
from tests.conftest import TINY
from tests.pipeline.helpers import tiny_pipeline
from tests.weights.helpers import put_in_cache


def _same_weights(pipe, reference):
    for name in ("unet", "controlnet", "vae", "text_encoder", "tagger"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("convert") / "bundle"
    assert main(["convert", str(TINY), str(out)]) == 0
    return out


def test_bundle_layout_is_safetensors_only(bundle):
    files = {path.relative_to(bundle).as_posix() for path in bundle.rglob("*") if path.is_file()}
    assert not [name for name in files if name.endswith((".pth", ".bin", ".pt", ".ckpt"))]
    for required in (
        "model_index.json",
        "unet/seesr_config.json",
        "controlnet/diffusion_pytorch_model.safetensors",
        "tagger/config.json",
        "scheduler/scheduler_config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ):
        assert required in files
    index = json.loads((bundle / "model_index.json").read_text())
    assert index["_class_name"] == "SeeSRPipeline" and index["tagger"] == ["seesr", "DAPETagger"]
    assert json.loads((bundle / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDPMScheduler"
    assert resolve_model(bundle).kind == "bundle"


def test_bundle_loads_without_pickle_and_matches_release(bundle, monkeypatch):
    reference = tiny_pipeline()  # loaded from the release files (pickled .pth) before torch.load is disabled

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called while loading a converted bundle")

    monkeypatch.setattr(torch, "load", no_pickle)
    pipe = SeeSRPipeline.from_pretrained(bundle)
    assert pipe.model_location.kind == "bundle"
    _same_weights(pipe, reference)
    assert pipe.scheduler.config.timestep_spacing == "leading" and pipe.scheduler.config.steps_offset == 1


def test_convert_refuses_existing_output_and_bad_source(bundle, tmp_path, fresh_hf_cache, capsys):
    assert main(["convert", str(TINY), str(bundle)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    # only OUT: converts the default location, which is empty here
    assert main(["convert", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "file(s) missing" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_default_bundle_in_seesr_home(bundle, fresh_hf_cache):
    import shutil

    shutil.copytree(bundle, default_bundle_dir())
    assert resolve_model(None).kind == "bundle"


def test_save_pretrained_round_trip(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "saved")
    assert resolve_model(tmp_path / "saved").kind == "bundle"


# ---------------------------------------------------------------------------------------------------------------
# download


def test_download_offline_lists_missing_files_without_network(fresh_hf_cache, no_network, capsys):
    with pytest.raises(MissingWeightsError, match=f"{len(CATALOG)} file"):
        download_weights(downloader=lambda *a, **k: pytest.fail("downloader called while offline"))
    assert main(["download"]) == 1
    err = capsys.readouterr().err
    assert "xinyu1205/recognize_anything_model: ram_swin_large_14m.pth" in err and "Traceback" not in err


def _fake_downloader(calls):
    def download(repo_id, filename, revision=None, cache_dir=None):
        entry = next(e for e in CATALOG if e.repo_id == repo_id and e.filename == filename)
        calls.append((repo_id, filename, revision))
        from pathlib import Path

        return str(put_in_cache(Path(cache_dir), entry, TINY / entry.target, ref=revision))

    return download


def test_download_into_cache_and_release_layout(fresh_hf_cache, no_network, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []
    entries = [entry for entry in CATALOG if entry.sha256 is None]
    dest = download_weights(tmp_path / "release", {"CSWRY/SeeSR": "v1.0"}, entries, False, _fake_downloader(calls))
    assert len(calls) == len(entries)
    assert all(rev == "v1.0" for repo, _, rev in calls if repo == "CSWRY/SeeSR")
    for entry in entries:
        assert (dest / entry.target).read_bytes() == (TINY / entry.target).read_bytes()
    # a second run finds everything in the cache and downloads nothing
    calls.clear()
    download_weights(None, {"CSWRY/SeeSR": "v1.0"}, entries, False, _fake_downloader(calls))
    assert calls == []


def test_download_verifies_sha256(fresh_hf_cache, no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    ram = [entry for entry in files_for("ram") if entry.sha256 is not None]
    assert ram and ram[0].sha256.startswith("15c729c7")
    with pytest.raises(DownloadError, match="expected 5625634877"):
        download_weights(None, None, ram, False, _fake_downloader([]))
    from dataclasses import replace

    sized = replace(ram[0], size=(TINY / ram[0].target).stat().st_size)
    with pytest.raises(DownloadError, match="sha256"):
        download_weights(None, None, [sized], False, _fake_downloader([]))


def test_download_turbo_flag_adds_the_optional_sd_turbo_files(fresh_hf_cache, no_network, capsys):
    from seesr.cli.main import main
    from seesr.weights.catalog import TURBO_CATALOG, TURBO_REPO, pinned_revisions

    assert TURBO_CATALOG and all(entry.repo_id == TURBO_REPO for entry in TURBO_CATALOG)
    assert all(entry.target.startswith("turbo/") for entry in TURBO_CATALOG)
    assert pinned_revisions({TURBO_REPO: "abc"})[TURBO_REPO] == "abc"
    # offline: the listing of missing files now names the SD-turbo files too, and nothing is fetched
    assert main(["download", "--turbo"]) == 1
    err = capsys.readouterr().err
    assert f"{TURBO_REPO}: unet/diffusion_pytorch_model.safetensors" in err and "Traceback" not in err
    assert main(["download"]) == 1
    assert TURBO_REPO not in capsys.readouterr().err
