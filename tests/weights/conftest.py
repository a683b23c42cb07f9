"""Fixtures for the weights tests (also used by tests/cli): private HF cache, no network."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def fresh_hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache and SEESR_HOME private to one test; returns the hub cache folder."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("SEESR_HOME", str(tmp_path / "seesr"))
    return tmp_path / "hf" / "hub"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
