"""Quiet by default: the command line shows seesr's own messages and progress bars, and third-party output only with -v.

Third-party output comes from three places, each handled here:

* transformers and diffusers have their own loggers and loading bars (transformers' "Loading weights" bar on every
  model load, diffusers' "modules ... should be kept in float32: []" warning); huggingface_hub has its own logger.
  Their verbosity is set to *error* and their loading bars are turned off. huggingface_hub's download bars stay on:
  they are the progress of ``seesr download``.
* Other libraries log through the standard ``logging`` tree (accelerate, timm, matplotlib, httpx): records that do not
  come from ``seesr`` are dropped below ERROR by a filter on the root logger's handlers.
* Python warnings (torchvision's deprecation warnings, torch's UserWarnings) are ignored unless seesr raised them.

:func:`quiet_libraries` does all of this for the duration of a ``with`` block and restores every setting on exit, so
a program that imports seesr as a library keeps its own settings. transformers and diffusers are not imported for this
(that would cost seconds on commands that never load a model): when one of them is first imported inside the block,
it is silenced right after its import.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, TextIO

__all__ = ["OWN_LOGGER", "inner_progress_bars", "quiet_libraries", "silence_libraries"]

OWN_LOGGER = "seesr"

Restore = Callable[[], None]

_silenced = False  # silencing is in force: a nested call (seesr benchmark runs seesr upscale) changes nothing


def _silence_hf_logging(module: ModuleType) -> Restore:
    """``transformers.utils.logging`` and ``diffusers.utils.logging`` (same API): errors only, no loading bars."""
    verbosity, bars = module.get_verbosity(), module.is_progress_bar_enabled()
    module.set_verbosity_error()
    module.disable_progress_bar()

    def restore() -> None:
        module.set_verbosity(verbosity)
        (module.enable_progress_bar if bars else module.disable_progress_bar)()

    return restore


def _silence_hub_logging(module: ModuleType) -> Restore:
    """``huggingface_hub.utils.logging``: errors only (download bars are left alone)."""
    verbosity = module.get_verbosity()
    module.set_verbosity_error()
    return lambda: module.set_verbosity(verbosity)


# module whose import is watched -> how to silence it (returns how to undo that)
_LIBRARIES: dict[str, Callable[[ModuleType], Restore]] = {
    "transformers.utils.logging": _silence_hf_logging,
    "diffusers.utils.logging": _silence_hf_logging,
    "huggingface_hub.utils.logging": _silence_hub_logging,
}


class _NotifyingLoader(importlib.abc.Loader):
    """Runs the real loader, then ``callback(module)``; the module keeps the real loader as its ``__loader__``."""

    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]):
        self.loader, self.callback = loader, callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.callback(module)


class _AfterImport(importlib.abc.MetaPathFinder):
    """A post-import hook (the standard library has none): ``callbacks[name](module)`` runs once ``name`` is imported.

    It finds the module with the other finders on ``sys.meta_path`` and only wraps the loader they return.
    """

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]]):
        self.callbacks = callbacks

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.callbacks:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _NotifyingLoader(spec.loader, self.callbacks[fullname])
                return spec
        return None


class _OwnRecordsOnly(logging.Filter):
    """Passes seesr's records and every record at ERROR or above."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return record.levelno >= logging.ERROR or name == OWN_LOGGER or name.startswith(OWN_LOGGER + ".")


def silence_libraries() -> Restore:
    """Silence third-party loggers, loading bars and log records now; return the function that undoes it.

    Python warnings are not covered (they need :func:`warnings.catch_warnings`, which only :func:`quiet_libraries`
    can scope). While silencing is already in force, this does nothing (and so does the function it returns).
    """
    global _silenced
    if _silenced:
        return lambda: None
    _silenced = True
    undo: list[Restore] = []

    # 1. Libraries with their own loggers and bars: now if imported, otherwise right after their import.
    def silence(module: ModuleType) -> None:
        try:
            undo.append(_LIBRARIES[module.__name__](module))
        except Exception:  # a library that changed its API must neither break its import nor the command
            logging.getLogger(__name__).debug("could not silence %s", module.__name__, exc_info=True)

    pending = {}
    for name in _LIBRARIES:
        if name in sys.modules:
            silence(sys.modules[name])
        else:
            pending[name] = silence
    hook = _AfterImport(pending)
    sys.meta_path.insert(0, hook)

    # 2. Standard-logging records from other libraries, on the root logger's handlers.
    record_filter = _OwnRecordsOnly()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(record_filter)

    def restore() -> None:
        global _silenced
        _silenced = False
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
        for handler in handlers:
            handler.removeFilter(record_filter)
        while undo:  # newest first
            undo.pop()()

    return restore


@contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Within the block, only seesr's own output (and errors) is shown; ``verbose=True`` changes nothing.

    Blocks can be nested (``seesr benchmark`` runs ``seesr upscale`` inside its own block): the outermost one acts.
    """
    if verbose:
        yield
        return
    restore = silence_libraries()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=rf"{OWN_LOGGER}(\.|$)")  # inserted first: wins
            yield
    finally:
        restore()


def inner_progress_bars(stream: TextIO | None = None) -> bool:
    """Whether a progress bar shown *below another one* (steps within images) should be drawn.

    Only on a terminal: elsewhere (a log file, a CI console) tqdm's cursor movements for a second bar end up as
    ``ESC[A`` sequences in the text, so only the outer bar is drawn.
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
