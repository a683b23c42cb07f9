"""Sane-size checks for configs read from disk, run before any model is built from them.

A config file is data a user may have downloaded from anywhere: a hostile one (a Swin with a million blocks, a
channel count of 10**9) must be refused by name before it allocates memory or builds millions of modules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class ConfigLimitError(ValueError):
    """A config value outside the sizes any SeeSR model uses; the one-line message names the file and field."""


def _numbers(value: object) -> list[float]:
    """Every number in ``value`` (a number, or lists of numbers nested to any depth); booleans are not numbers."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [number for item in value for number in _numbers(item)]
    return []


def check_config_limits(
    config: Mapping[str, object],
    limits: Mapping[str, int],
    *,
    source: str | os.PathLike,
    max_list_length: int = 16,
) -> None:
    """Raise :class:`ConfigLimitError` for the first field of ``limits`` whose number (or any list item) is not in
    ``0..limit``, or for any list longer than ``max_list_length`` (block lists, depths, ...).

    Fields missing from ``config`` are fine (the model's defaults apply).
    """
    for key, value in config.items():
        if isinstance(value, (list, tuple)) and len(value) > max_list_length:
            raise ConfigLimitError(
                f"{source}: '{key}' has {len(value)} entries (at most {max_list_length}); this config does not "
                "describe a SeeSR model"
            )
    for key, limit in limits.items():
        bad = [number for number in _numbers(config.get(key)) if not 0 <= number <= limit]
        if bad:
            raise ConfigLimitError(
                f"{source}: '{key}' = {bad[0]!r} is outside 0..{limit}; this config does not describe a SeeSR "
                "model (a damaged or hostile file?)"
            )
