"""`seesr convert` never deletes what it reads and never replaces a file (issue 13 item 3); the bundle carries a
manifest of every file's sha256 that loads check (issue 15 item 4)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import pytest

from seesr.cli.main import main
from seesr.weights.manifest import MANIFEST_NAME, BundleChangedError
from seesr.weights.resolve import resolve_model
from tests.conftest import TINY


def _snapshot(folder):
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file()
    }


@pytest.fixture
def release(tmp_path):
    """A copy of the tiny release folder (the fixture itself is never a conversion's source here)."""
    return shutil.copytree(TINY, tmp_path / "release")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "bundle"
    assert main(["convert", str(TINY), str(out)]) == 0
    return out


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "bundle")


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_output_overlapping_the_source_is_refused_and_nothing_is_touched(release, tmp_path, capsys, where):
    before = _snapshot(tmp_path)
    out = {"same": release, "inside": release / "converted", "containing": tmp_path}[where]
    assert main(["convert", str(release), str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert {"same": "is the source", "inside": "is inside the source", "containing": "contains the source"}[
        where
    ] in err
    assert _snapshot(tmp_path) == before  # the release's .pth files are still there, unchanged
    assert (release / "ram" / "DAPE.pth").is_file()


def test_a_regular_file_is_never_replaced(release, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["convert", str(release), str(target), "--overwrite"]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "mine"


def test_overwrite_replaces_only_a_bundle(release, bundle_copy, tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    assert main(["convert", str(release), str(other), "--overwrite"]) == 2
    assert "not a converted SeeSR bundle" in capsys.readouterr().err and (other / "a.jpg").is_file()
    (bundle_copy / "stale.txt").write_text("old")
    assert main(["convert", str(release), str(bundle_copy), "--overwrite"]) == 0
    assert not (bundle_copy / "stale.txt").exists() and (bundle_copy / MANIFEST_NAME).is_file()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging or old copy left


def test_bundle_has_the_users_normal_permissions(release, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["convert", str(release), str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # mkdtemp's 0700 before


def test_manifest_lists_every_file_with_its_sha256(bundle):
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    files = {path.relative_to(bundle).as_posix() for path in bundle.rglob("*") if path.is_file()}
    assert set(manifest["files"]) == files - {MANIFEST_NAME}
    record = manifest["files"]["unet/diffusion_pytorch_model.safetensors"]
    data = (bundle / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert record == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_tampered_byte_is_refused_unless_no_verify(bundle_copy, tmp_path, capsys):
    path = bundle_copy / "controlnet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleChangedError, match="controlnet/diffusion_pytorch_model.safetensors: sha256 differs"):
        resolve_model(bundle_copy)
    assert resolve_model(bundle_copy, verify=False).kind == "bundle"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    argv = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", str(bundle_copy)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "controlnet/diffusion_pytorch_model.safetensors" in err and "--no-verify" in err
    assert main([*argv, "--no-verify", "--steps", "1", "--process-size", "32", "--device", "cpu"]) == 0


def test_truncated_and_extra_files_are_refused_even_without_hashing(bundle_copy):
    unet = bundle_copy / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:-100])
    (bundle_copy / "tagger" / "pytorch_model.bin").write_bytes(b"payload")
    with pytest.raises(BundleChangedError) as info:
        resolve_model(bundle_copy, verify=False)
    message = str(info.value)
    assert "unet/diffusion_pytorch_model.safetensors: " in message and "truncated" in message
    assert "tagger/pytorch_model.bin: not part of the bundle" in message


def test_same_size_edit_of_a_config_is_refused(bundle_copy):
    """A config edited in place (same size, other content) is caught by its sha256."""
    config = bundle_copy / "unet" / "config.json"
    data = config.read_bytes()
    config.write_bytes(data[:-1] + (b" " if data[-1:] != b" " else b"\n"))
    with pytest.raises(BundleChangedError, match="unet/config.json: sha256 differs"):
        resolve_model(bundle_copy)


def test_tag_checks_the_bundles_tagger_files(bundle_copy, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    weights = next((bundle_copy / "tagger").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["tag", str(tmp_path / "a.png"), "--model", str(bundle_copy)]) == 1
    err = capsys.readouterr().err
    assert f"tagger/{weights.name}: sha256 differs" in err and "Traceback" not in err
