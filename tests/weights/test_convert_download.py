"""`seesr convert` bundles (no pickle when loading) and `seesr download` (fake downloader, offline behaviour)."""

from __future__ import annotations

import json

import pytest
import torch

from seesr.cli.main import main
from seesr.pipeline.pipeline_seesr import SeeSRPipeline
from seesr.weights.resolve import default_bundle_dir, resolve_model
from tests.conftest import TINY
from tests.pipeline.helpers import tiny_pipeline


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
# download (the download path itself is tested against a local hub in test_first_use_download.py)


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
