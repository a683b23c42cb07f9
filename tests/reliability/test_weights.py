"""Hostile weight files and configs given to `seesr upscale` / `seesr tag` (issue 13 items 6 and 7).

Each case: exit 1, one line naming the planted file, no traceback, no code from the file ran (marker absent), the
model folder unchanged, no output written, and (for configs) a refusal in seconds rather than an allocation.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seesr.cli.main import main
from tests.conftest import TINY
from tests.reliability.conftest import PAYLOADS, snapshot

IMAGE = TINY / "pipeline_case1_lr.png"
WEIGHTS = "diffusion_pytorch_model.safetensors"
UPSCALE = ["--steps", "1", "--process-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    assert main(["convert", str(TINY), str(out)]) == 0
    return out


def _plant_payload(folder: Path, relative: str, kind: str, marker: Path, remove: str | None = None) -> Path:
    if remove:
        (folder / remove).unlink()
    target = folder / relative
    if target.exists():
        target.unlink()
    target.write_bytes(PAYLOADS[kind](marker))
    return target


def _edit_tensor_file(path: Path, edit) -> None:
    state = load_file(path)
    edit(state)
    path.unlink()
    save_file(state, path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 3])


def _int8(path: Path) -> None:
    def edit(state):
        name = sorted(state)[0]
        state[name] = torch.zeros(state[name].shape, dtype=torch.int8)

    _edit_tensor_file(path, edit)


def _config(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.unlink()
    path.write_text(json.dumps(config))


def _reseal(bundle: Path) -> None:
    """Rewrite the bundle's manifest.json to match its files, as the author of a hostile bundle would."""
    import hashlib

    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = {
        file.relative_to(bundle).as_posix(): {"sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                                              "size": file.stat().st_size}
        for file in sorted(bundle.rglob("*")) if file.is_file() and file != path
    }  # fmt: skip
    path.unlink()
    path.write_text(json.dumps(manifest))


def _run(command: str, model: Path, out: Path, capsys) -> tuple[int, str, float]:
    argv = ["upscale", str(IMAGE), "-o", str(out), *UPSCALE] if command == "upscale" else ["tag", str(IMAGE)]
    start = time.monotonic()
    code = main([*argv, "--model", str(model)] + (["--device", "cpu"] if command == "tag" else []))
    seconds = time.monotonic() - start
    return code, capsys.readouterr().err, seconds


def _assert_refused(code: int, err: str, planted: Path, model: Path, before, out: Path, marker: Path | None) -> str:
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(planted) in lines[0], err
    if marker is not None:
        assert not marker.exists(), f"code from {planted} ran"
    assert snapshot(model) == before, "the model folder was changed"
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    return lines[0]


# -------------------------------------------------------------------------------------------- pickle payloads
PAYLOAD_CASES = [  # (command, source folder, planted file, file removed so the payload is the one read)
    ("upscale", "release", "unet/diffusion_pytorch_model.bin", f"unet/{WEIGHTS}"),
    ("upscale", "release", "controlnet/diffusion_pytorch_model.bin", f"controlnet/{WEIGHTS}"),
    ("tag", "release", "ram/ram_swin_large_14m.pth", None),
    ("tag", "release", "ram/DAPE.pth", None),
    ("tag", "bundle", "tagger/diffusion_pytorch_model.bin", f"tagger/{WEIGHTS}"),
]


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize(("command", "source", "planted", "remove"), PAYLOAD_CASES)
def test_a_pickle_payload_never_runs(tmp_path, capsys, bundle, command, source, planted, remove, kind):
    model = shutil.copytree(TINY if source == "release" else bundle, tmp_path / "model")
    marker = tmp_path / "payload-ran"
    target = _plant_payload(model, planted, kind, marker, remove)
    if source == "bundle":
        _reseal(model)  # the manifest matches: the loader itself must refuse
    before = snapshot(model)
    code, err, _ = _run(command, model, tmp_path / "out", capsys)
    line = _assert_refused(code, err, target, model, before, tmp_path / "out", marker)
    assert "refused" in line and "weights_only=True" in line, line


# ------------------------------------------------------------------------------------ damaged tensors, configs
DAMAGE_CASES = {
    "truncated-unet": ("upscale", "release", f"unet/{WEIGHTS}", _truncate, "truncated"),
    "truncated-tagger": ("tag", "bundle", f"tagger/{WEIGHTS}", _truncate, ""),
    "int8-unet": ("upscale", "release", f"unet/{WEIGHTS}", _int8, "(I8)"),
    "int8-tagger": ("tag", "bundle", f"tagger/{WEIGHTS}", _int8, "(I8)"),
    "huge-unet-config": (
        "upscale", "release", "unet/config.json",
        lambda p: _config(p, block_out_channels=[1_000_000, 1_000_000]), "block_out_channels",
    ),
    "huge-tagger-config": ("tag", "bundle", "tagger/config.json", lambda p: _config(p, depths=[2, 2, 100_000, 2]),
                           "100000"),
    "huge-vae-config": ("upscale", "release", "vae/config.json", lambda p: _config(p, latent_channels=10**8), ""),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGE_CASES))
def test_a_damaged_file_or_hostile_config_is_one_line(tmp_path, capsys, bundle, case):
    command, source, planted, damage, words = DAMAGE_CASES[case]
    model = shutil.copytree(TINY if source == "release" else bundle, tmp_path / "model")
    damage(model / planted)
    if source == "bundle":
        _reseal(model)
    before = snapshot(model)
    code, err, seconds = _run(command, model, tmp_path / "out", capsys)
    line = _assert_refused(code, err, model / planted, model, before, tmp_path / "out", None)
    assert words in line, line
    assert seconds < 20, seconds  # refused from the config / header, not after building a huge model


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_a_payload_in_a_bundle_with_its_old_manifest_is_refused_by_the_manifest(tmp_path, capsys, bundle, kind):
    """Without a matching manifest the check of every file's sha256 refuses first (its message lists each
    mismatching file, one per line, and the fix)."""
    model = shutil.copytree(bundle, tmp_path / "model")
    marker = tmp_path / "payload-ran"
    target = _plant_payload(model, "tagger/diffusion_pytorch_model.bin", kind, marker, f"tagger/{WEIGHTS}")
    before = snapshot(model)
    code, err, _ = _run("tag", model, tmp_path / "out", capsys)
    assert code == 1 and "Traceback" not in err, err
    assert "does not match its manifest.json" in err and "tagger/diffusion_pytorch_model.bin: not part" in err
    assert not marker.exists() and snapshot(model) == before and str(target).startswith(str(model))
