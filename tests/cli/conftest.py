"""Fixtures shared with the weights tests (private Hugging Face cache, no network)."""

from tests.weights.conftest import fresh_hf_cache, no_network  # noqa: F401 (pytest fixtures)
