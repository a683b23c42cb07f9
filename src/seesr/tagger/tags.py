"""RAM tag vocabulary, per-class thresholds and tag-string formatting.

The three files in ``seesr/tagger/data/`` are the official RAM ``ram_tag_list.txt`` (4585 English tags, class index =
line number), ``ram_tag_list_chinese.txt`` (the parallel Chinese list; many entries keep a trailing space, which the
official tag strings keep too) and ``ram_tag_list_threshold.txt`` (one float per class). They are read with
``str.splitlines()``, as the official loader does, so the trailing newline of the last two files adds no entry.

This module is cheap to import (no torch): the CLI and the web UI use it to format results.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources

NUM_CLASSES = 4585
TAG_SEPARATOR = ", "  # official inference joins the English (and Chinese) tag names with ", "
LANGUAGES = ("en", "zh")

_TAG_FILES = {"en": "ram_tag_list.txt", "zh": "ram_tag_list_chinese.txt"}
_THRESHOLD_FILE = "ram_tag_list_threshold.txt"


def _read_lines(name: str) -> list[str]:
    text = resources.files("seesr.tagger").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    return text.splitlines()


@functools.cache
def load_tag_list(lang: str = "en") -> tuple[str, ...]:
    """The 4585 tag names of RAM in class-index order, ``lang`` = "en" or "zh" (names exactly as in the file)."""
    if lang not in _TAG_FILES:
        raise ValueError(f"unknown tag language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    names = tuple(_read_lines(_TAG_FILES[lang]))
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"{_TAG_FILES[lang]}: expected {NUM_CLASSES} tags, found {len(names)}")
    return names


@functools.cache
def load_class_thresholds() -> tuple[float, ...]:
    """The official per-class thresholds (4585 floats; a tag is on iff ``probability > threshold``).

    The official constructor's ``threshold=0.68`` argument is overwritten by this file for every class, so the file
    is the only effective threshold. Compare in float32 (``torch.tensor(..., dtype=torch.float32)``) for parity.
    """
    values = tuple(float(line) for line in _read_lines(_THRESHOLD_FILE) if line.strip())
    if len(values) != NUM_CLASSES:
        raise RuntimeError(f"{_THRESHOLD_FILE}: expected {NUM_CLASSES} thresholds, found {len(values)}")
    return values


def tag_index(name: str, lang: str = "en") -> int:
    """Class index of a tag name (surrounding spaces ignored); ``KeyError`` if it is not a RAM tag."""
    index = _name_to_index(lang).get(name.strip())
    if index is None:
        raise KeyError(f"{name!r} is not a RAM tag")
    return index


@functools.cache
def _name_to_index(lang: str) -> dict[str, int]:
    lookup: dict[str, int] = {}
    for index, name in enumerate(load_tag_list(lang)):
        lookup.setdefault(name.strip(), index)
    return lookup


def format_tags(names: list[str] | tuple[str, ...]) -> str:
    """Join tag names the way the official inference does (``", "``; empty string when there are none)."""
    return TAG_SEPARATOR.join(names)


@dataclass(frozen=True)
class Tag:
    """One detected tag: its name (in the requested language), sigmoid probability and RAM class index."""

    name: str
    probability: float
    index: int


@dataclass
class TagResult:
    """Tags of one image, in ascending class-index order, and ``prompt`` = their names joined with ", "."""

    tags: list[Tag] = field(default_factory=list)
    prompt: str = ""

    @property
    def names(self) -> list[str]:
        return [tag.name for tag in self.tags]

    def to_dict(self) -> dict:
        """JSON-friendly form: ``{"prompt": str, "tags": [{"name", "probability", "index"}, ...]}``."""
        return {
            "prompt": self.prompt,
            "tags": [{"name": t.name, "probability": t.probability, "index": t.index} for t in self.tags],
        }
