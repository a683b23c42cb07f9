"""Locked revisions (issue 15 item 3): the lock records repository, commit and sha256; loads refuse changed files.

Offline on the tiny bundle (a fake Hugging Face cache), plus a local hub for re-locking at another revision.
"""

from __future__ import annotations

import json

import pytest

from seesr.cli.main import main
from seesr.weights import lock as weights_lock
from seesr.weights.catalog import CATALOG
from seesr.weights.download import download_weights
from seesr.weights.lock import WeightsChangedError
from seesr.weights.resolve import MissingWeightsError, resolve_model
from tests.conftest import TINY
from tests.weights.helpers import FAKE_COMMIT, cache_path, fill_cache_from_tiny, put_in_cache
from tests.weights.hub_server import tiny_hub, use_hub

OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
DAPE = next(entry for entry in CATALOG if entry.filename == "DAPE.pth")
UNET = next(entry for entry in CATALOG if entry.filename == "seesr/unet/diffusion_pytorch_model.safetensors")


@pytest.fixture
def locked_cache(fresh_hf_cache, no_network):
    """The tiny files in a fake cache at FAKE_COMMIT, locked by a first load."""
    fill_cache_from_tiny(fresh_hf_cache)
    assert resolve_model(None).kind == "cache"
    return fresh_hf_cache


def test_first_load_locks_every_file_with_commit_and_sha256(locked_cache):
    import hashlib

    lock = json.loads(weights_lock.lock_path().read_text())
    assert lock["version"] == 1 and len(lock["files"]) == len(CATALOG)
    record = weights_lock.read_lock()["CSWRY/SeeSR/DAPE.pth"]
    assert record["repo"] == "CSWRY/SeeSR" and record["commit"] == FAKE_COMMIT
    assert record["cache"] == str(locked_cache.resolve())
    assert record["sha256"] == hashlib.sha256((TINY / "ram" / "DAPE.pth").read_bytes()).hexdigest()


def test_tampered_byte_is_refused_naming_the_file(locked_cache, tmp_path, capsys):
    path = cache_path(locked_cache, DAPE)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsChangedError, match=r"CSWRY/SeeSR: DAPE.pth: .* has sha256 .* \(corrupt or changed\)"):
        resolve_model(None)
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--no-download"]) == 1
    err = capsys.readouterr().err
    assert "CSWRY/SeeSR: DAPE.pth" in err and "seesr download" in err and "Traceback" not in err


def test_truncated_file_is_refused(locked_cache):
    path = cache_path(locked_cache, UNET)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 100])
    with pytest.raises(WeightsChangedError, match=rf"{UNET.filename}: .* has {size - 100} bytes, {size} expected"):
        resolve_model(None)


def test_wrong_revision_is_refused(locked_cache, monkeypatch):
    """A pin (environment variable or --revision) that disagrees with the lock is refused, naming both commits."""
    for entry in CATALOG:
        if entry.repo_id == DAPE.repo_id:
            put_in_cache(locked_cache, entry, TINY / entry.target, commit=OTHER_COMMIT, ref=OTHER_COMMIT)
    monkeypatch.setenv("SEESR_SEESR_REVISION", OTHER_COMMIT)
    with pytest.raises(WeightsChangedError) as info:
        resolve_model(None)
    message = str(info.value)
    assert f"holds commit {FAKE_COMMIT} but the cache has commit {OTHER_COMMIT}" in message
    assert "seesr download --revision CSWRY/SeeSR=REV" in message
    # a pin whose files are not cached at all: they are listed as missing
    monkeypatch.setenv("SEESR_SEESR_REVISION", "0" * 40)
    with pytest.raises(MissingWeightsError, match="file\\(s\\) missing"):
        resolve_model(None)


def test_without_a_pin_the_locked_commit_is_used_not_main(locked_cache):
    """refs/main moving to another commit (another tool refreshed the cache) does not change what loads."""
    for entry in CATALOG:
        if entry.repo_id == DAPE.repo_id:
            put_in_cache(locked_cache, entry, TINY / entry.target, commit=OTHER_COMMIT)  # refs/main -> OTHER
    location = resolve_model(None)
    assert FAKE_COMMIT in str(location.unet) and OTHER_COMMIT not in str(location.unet)


def test_catalogue_hash_checked_on_first_lock(fresh_hf_cache, no_network, monkeypatch):
    """Without a lock, a cached file is checked against the catalogue's known sha256/size before it is locked."""
    monkeypatch.delenv("SEESR_CATALOG_OVERRIDE")  # the real RAM sha256 and size: the tiny RAM is not it
    fill_cache_from_tiny(fresh_hf_cache)
    with pytest.raises(WeightsChangedError, match="ram_swin_large_14m.pth: .* 5625634877 expected"):
        resolve_model(None)
    assert "xinyu1205/recognize_anything_model/ram_swin_large_14m.pth" not in weights_lock.read_lock()


@pytest.fixture
def hub(fresh_hf_cache, monkeypatch):
    server = tiny_hub(CATALOG, TINY).start()
    use_hub(monkeypatch, server)
    yield server
    server.stop()


def test_download_revision_pin_relocks_and_repairs(hub, monkeypatch, capsys):
    download_weights(progress=False)
    first = hub.refs["CSWRY/SeeSR"]["main"]
    assert weights_lock.locked_commit("CSWRY/SeeSR", weights_lock.read_lock()) == first
    # the repository gets a new commit; `seesr download --revision REPO=HASH` fetches and locks it
    hub.add("CSWRY/SeeSR", OTHER_COMMIT, dict(hub.repos["CSWRY/SeeSR"][first]), ref=None)
    assert main(["download", "--revision", f"CSWRY/SeeSR={OTHER_COMMIT}", "--quiet"]) == 0
    lock = weights_lock.read_lock()
    assert {record["commit"] for record in lock.values() if record["repo"] == "CSWRY/SeeSR"} == {OTHER_COMMIT}
    assert OTHER_COMMIT in str(resolve_model(None).unet)  # later loads follow the lock
    monkeypatch.setenv("SEESR_SEESR_REVISION", first)
    with pytest.raises(WeightsChangedError, match="holds commit"):
        resolve_model(None)
    monkeypatch.delenv("SEESR_SEESR_REVISION")
    # a damaged cached file is fetched again by `seesr download`
    path = resolve_model(None).dape_checkpoint
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    hub.requests.clear()
    assert main(["download", "--quiet"]) == 0
    assert [p for method, p in hub.requests if method == "GET"] == [f"/CSWRY/SeeSR/resolve/{OTHER_COMMIT}/DAPE.pth"]
    assert resolve_model(None).dape_checkpoint.read_bytes() == (TINY / "ram" / "DAPE.pth").read_bytes()


def test_download_of_an_unknown_revision_is_one_clear_line(hub, capsys):
    missing = "1" * 40
    assert main(["download", "--revision", f"CSWRY/SeeSR={missing}"]) == 1
    err = capsys.readouterr().err
    assert f"at revision {missing}" in err and "Traceback" not in err
    assert not weights_lock.read_lock()  # nothing locked, nothing half-fetched
