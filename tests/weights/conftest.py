"""Fixtures for the weights tests (also used by tests/cli): private HF cache, no network."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def fresh_hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache and SEESR_HOME private to one test; returns the hub cache folder.

    The catalogue's sha256 and sizes are replaced by those of the tiny files that stand in for the official ones
    (``SEESR_CATALOG_OVERRIDE``), so a cache filled from the tiny bundle passes the weights lock's checks."""
    from seesr.weights.catalog import CATALOG, TRAINING_CATALOG
    from tests.conftest import TINY
    from tests.weights.hub_server import catalogue_override

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("SEESR_HOME", str(tmp_path / "seesr"))
    entries = [entry for entry in CATALOG + TRAINING_CATALOG if (TINY / entry.target).is_file()]
    override = catalogue_override(entries, TINY, tmp_path / "catalogue-override.json")
    monkeypatch.setenv("SEESR_CATALOG_OVERRIDE", str(override))
    return tmp_path / "hf" / "hub"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
