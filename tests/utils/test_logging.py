"""seesr.utils.logging: third-party loggers, loading bars, log records and warnings are hidden inside the block and
restored after it; seesr's own output is kept; a library first imported inside the block is silenced too."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
import warnings

import pytest

from seesr.utils import logging as seesr_logging
from seesr.utils.logging import inner_progress_bars, quiet_libraries, silence_libraries


def _warn(module: str) -> None:
    warnings.warn_explicit("deprecated thing", DeprecationWarning, f"{module}.py", 1, module=module)


def test_warnings_from_other_libraries_are_hidden_and_ours_kept():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with quiet_libraries():
            _warn("torchvision.models._utils")
            _warn("seesr.data.prepare")
        assert [w.filename for w in shown] == ["seesr.data.prepare.py"]
        _warn("torchvision.models._utils")  # the filters are restored after the block
        assert [w.filename for w in shown][-1] == "torchvision.models._utils.py"


def test_records_of_other_libraries_are_dropped_below_error():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        with quiet_libraries():
            logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
            logging.getLogger("accelerate.utils").warning("third-party warning")
            logging.getLogger("accelerate.utils").error("third-party error")
            logging.getLogger("seesr.weights.loading").info("loading SeeSR")
        logging.getLogger("matplotlib.font_manager").info("after the block")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    text = stream.getvalue()
    assert "fontManager" not in text and "third-party warning" not in text
    assert "third-party error" in text and "loading SeeSR" in text and "after the block" in text
    assert not handler.filters


def test_transformers_and_diffusers_are_silenced_and_restored():
    transformers_logging = pytest.importorskip("transformers.utils.logging")
    diffusers_logging = pytest.importorskip("diffusers.utils.logging")
    before = [(m.get_verbosity(), m.is_progress_bar_enabled()) for m in (transformers_logging, diffusers_logging)]
    with quiet_libraries():
        for module in (transformers_logging, diffusers_logging):
            assert module.get_verbosity() == logging.ERROR and not module.is_progress_bar_enabled()
    after = [(m.get_verbosity(), m.is_progress_bar_enabled()) for m in (transformers_logging, diffusers_logging)]
    assert after == before


def test_verbose_changes_nothing():
    transformers_logging = pytest.importorskip("transformers.utils.logging")
    before = (transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled())
    with quiet_libraries(verbose=True):
        assert (transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()) == before
        assert not any(isinstance(finder, seesr_logging._AfterImport) for finder in sys.meta_path)


def test_nested_blocks_keep_the_outer_silencing():
    transformers_logging = pytest.importorskip("transformers.utils.logging")
    enabled = transformers_logging.is_progress_bar_enabled()
    with quiet_libraries():
        with quiet_libraries():
            pass
        assert not transformers_logging.is_progress_bar_enabled()  # the inner block did not restore anything
        silence_libraries()()  # nor does a nested call
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled() == enabled


def test_a_library_imported_inside_the_block_is_silenced_then_restored(tmp_path, monkeypatch):
    (tmp_path / "fakelib_quiet.py").write_text("VERBOSE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def silence(module):
        module.VERBOSE = False
        return lambda: setattr(module, "VERBOSE", True)

    monkeypatch.setitem(seesr_logging._LIBRARIES, "fakelib_quiet", silence)
    monkeypatch.delitem(sys.modules, "fakelib_quiet", raising=False)
    with quiet_libraries():
        import fakelib_quiet

        assert fakelib_quiet.VERBOSE is False
        assert type(fakelib_quiet.__loader__).__name__ == "SourceFileLoader"  # the real loader, not the wrapper
    assert fakelib_quiet.VERBOSE is True
    assert not any(isinstance(finder, seesr_logging._AfterImport) for finder in sys.meta_path)
    del sys.modules["fakelib_quiet"]


def test_transformers_imported_inside_the_block_has_no_loading_bar():
    """In a fresh interpreter (transformers not yet imported): silenced on import, restored on exit."""
    pytest.importorskip("transformers")
    code = textwrap.dedent(
        """
        import sys
        from seesr.utils.logging import quiet_libraries
        assert "transformers" not in sys.modules
        with quiet_libraries():
            import transformers.utils.logging as tl
            inside = (tl.is_progress_bar_enabled(), tl.get_verbosity())
        print(inside, (tl.is_progress_bar_enabled(), tl.get_verbosity()))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(False,", "40)", "(True,", "30)"]  # ERROR inside, WARNING (default) after


def test_inner_bars_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert inner_progress_bars(Terminal()) is True
    assert inner_progress_bars(io.StringIO()) is False
