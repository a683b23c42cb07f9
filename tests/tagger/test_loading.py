"""Resolving the folder layouts users have to a tagger (release layout, converted folder, bundle, flat preset)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from seesr.weights.tagger import (
    TaggerNotFoundError,
    TaggerSource,
    default_tagger_source,
    load_tagger,
    resolve_tagger_source,
)
from tests.conftest import TINY
from tests.tagger.conftest import CONFIGS, DAPE_PTH, RAM_PTH


def test_release_layout_with_ram_folder():
    source = resolve_tagger_source(TINY)
    assert source.ram_path == RAM_PTH and source.dape_path == DAPE_PTH and source.config_dir == CONFIGS


def test_flat_preset_layout(tmp_path):
    for file in (RAM_PTH, DAPE_PTH):
        (tmp_path / file.name).symlink_to(file)
    shutil.copytree(CONFIGS, tmp_path / "configs")
    source = resolve_tagger_source(tmp_path)
    assert source.ram_path == tmp_path / RAM_PTH.name and source.dape_path == tmp_path / DAPE_PTH.name
    assert source.config_dir == tmp_path / "configs"


def test_converted_folder_and_bundle(tmp_path, dape_tagger):
    dape_tagger.save_pretrained(tmp_path / "bundle" / "tagger")
    for path in (tmp_path / "bundle", tmp_path / "bundle" / "tagger"):
        source = resolve_tagger_source(path)
        assert source.pretrained_dir == tmp_path / "bundle" / "tagger"
    tagger = load_tagger(tmp_path / "bundle", dtype=torch.float32)
    assert torch.equal(tagger.label_embed, dape_tagger.label_embed) and not tagger.training


def test_load_official_release_layout(dape_tagger):
    tagger = load_tagger(TINY)
    assert torch.equal(tagger.fc.weight, dape_tagger.fc.weight)
    assert torch.equal(
        tagger.tagging_head.encoder.layer[0].crossattention.self.query.weight,
        dape_tagger.tagging_head.encoder.layer[0].crossattention.self.query.weight,
    )


def test_missing_dape_falls_back_to_plain_ram_with_a_warning(tmp_path, caplog, base_tagger):
    (tmp_path / "ram").mkdir()
    (tmp_path / "ram" / RAM_PTH.name).symlink_to(RAM_PTH)
    shutil.copytree(CONFIGS, tmp_path / "ram" / "configs")
    with caplog.at_level(logging.WARNING):
        tagger = load_tagger(tmp_path)
    assert "DAPE.pth not found" in caplog.text
    assert torch.equal(
        tagger.visual_encoder.layers[0].blocks[0].attn.qkv.weight,
        base_tagger.visual_encoder.layers[0].blocks[0].attn.qkv.weight,
    )
    with pytest.raises(TaggerNotFoundError, match="DAPE.pth"):
        load_tagger(tmp_path, require_dape=True)


def test_not_found_messages(tmp_path):
    with pytest.raises(TaggerNotFoundError, match="no such file"):
        resolve_tagger_source(tmp_path / "missing")
    with pytest.raises(TaggerNotFoundError, match="ram/ram_swin_large_14m.pth") as error:
        resolve_tagger_source(tmp_path)
    # the repository, the file and the folder to put it in (issue 15 item 5)
    assert "xinyu1205/recognize_anything_model: ram_swin_large_14m.pth" in str(error.value)
    assert "CSWRY/SeeSR: DAPE.pth" in str(error.value) and f"in {tmp_path / 'ram'}" in str(error.value)
    with pytest.raises(TaggerNotFoundError, match="seesr download"):
        load_tagger(None)  # conftest points the Hugging Face cache at an empty folder


def _fake_hub_file(cache: Path, repo_id: str, filename: str, source: Path) -> Path:
    """Lay out ``source`` as huggingface_hub's cache does (refs/main -> snapshots/<rev>/filename)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0123456789abcdef")
    target = repo / "snapshots" / "0123456789abcdef" / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


def test_default_location_reads_the_hugging_face_cache(tmp_path, monkeypatch):
    from seesr.weights.catalog import files_for
    from tests.weights.hub_server import catalogue_override

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # the tiny RAM/DAPE stand in for the official files: their sha256/size replace the catalogue's (weights lock)
    override = catalogue_override(files_for("ram"), TINY, tmp_path / "catalogue-override.json")
    monkeypatch.setenv("SEESR_CATALOG_OVERRIDE", str(override))
    with pytest.raises(TaggerNotFoundError, match="ram_swin_large_14m.pth"):
        default_tagger_source()
    ram = _fake_hub_file(cache, "xinyu1205/recognize_anything_model", "ram_swin_large_14m.pth", RAM_PTH)
    assert default_tagger_source() == TaggerSource(ram_path=ram, dape_path=None)
    dape = _fake_hub_file(cache, "CSWRY/SeeSR", "DAPE.pth", DAPE_PTH)
    assert default_tagger_source() == TaggerSource(ram_path=ram, dape_path=dape)
