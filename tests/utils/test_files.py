"""``atomic_path``: the one way files are written in place (images, text, videos, weights, plots)."""

from __future__ import annotations

import os
import stat

import pytest

from seesr.utils.files import atomic_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        with open(temporary, "w") as stream:
            stream.write("half of the new one")
        raise RuntimeError("the writer crashed")
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"]


def test_a_complete_write_replaces_the_file_with_normal_permissions(tmp_path):
    target = write_text_atomic("new", tmp_path / "sub" / "notes.txt")  # the folder is made
    (tmp_path / "plain.txt").write_text("x")  # what an ordinary open() makes under this process's umask
    assert target.read_text(encoding="utf-8") == "new"
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)  # not 0600
    assert sorted(path.name for path in target.parent.iterdir()) == ["notes.txt"]


def test_the_suffix_is_kept_for_writers_that_read_the_format_from_the_name(tmp_path):
    with atomic_path(tmp_path / "clip.mp4", suffix=".mp4") as temporary:
        assert temporary.endswith(".mp4") and os.path.dirname(temporary) == str(tmp_path)
        open(temporary, "wb").close()
    assert (tmp_path / "clip.mp4").is_file()
