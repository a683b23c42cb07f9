from __future__ import annotations

from pathlib import Path

import pytest

from seesr.evaluation.pairing import list_images, pair_files, pair_key


@pytest.mark.parametrize(
    ("stem", "key"),
    [
        ("Canon_001_LR4", "Canon_001"),
        ("Canon_001_HR", "Canon_001"),
        ("0801x4", "0801"),
        ("0801", "0801"),
        ("img_lq", "img"),
        ("img-GT", "img"),
        ("photo_LR4_out", "photo"),
        ("box4", "box4"),  # "x4" is only a scale suffix right after a digit
        ("_HR", "_HR"),  # never strip a name down to nothing
        ("sunset", "sunset"),
    ],
)
def test_pair_key(stem, key):
    assert pair_key(stem) == key


def _paths(*names: str) -> list[Path]:
    return [Path("/d") / name for name in names]


def test_pairs_realsr_names_and_reports_leftovers():
    preds = _paths("Canon_001_LR4.png", "Canon_002_LR4.png", "extra.png")
    gts = _paths("Canon_001_HR.png", "Canon_002_HR.png", "Canon_003_HR.png")
    result = pair_files(preds, gts)
    assert [(p.name, g.name) for p, g in result.pairs] == [
        ("Canon_001_LR4.png", "Canon_001_HR.png"),
        ("Canon_002_LR4.png", "Canon_002_HR.png"),
    ]
    assert [p.name for p in result.unpaired_pred] == ["extra.png"]
    assert [g.name for g in result.unpaired_gt] == ["Canon_003_HR.png"]


def test_exact_stem_wins_and_extensions_may_differ():
    result = pair_files(_paths("a.png", "a_out.png"), _paths("a.jpg"))
    assert [(p.name, g.name) for p, g in result.pairs] == [("a.png", "a.jpg")]
    assert [p.name for p in result.unpaired_pred] == ["a_out.png"]


def test_ambiguous_and_duplicate_stems_are_reported_not_guessed():
    result = pair_files(_paths("x_out.png"), _paths("x_HR.png", "x_gt.png"))
    assert result.pairs == []
    assert any("several ground truths match" in problem for problem in result.problems)
    result = pair_files(_paths("y.png", "y.jpg"), _paths("y.png"))
    assert len(result.pairs) == 1
    assert any("share the stem 'y'" in problem for problem in result.problems)


def test_no_reference_mode_pairs_with_none():
    result = pair_files(_paths("a.png", "b.png"), None)
    assert result.pairs == [(Path("/d/a.png"), None), (Path("/d/b.png"), None)]


def test_list_images_skips_hidden_and_other_files(tmp_path):
    for name in ("b.png", "a.JPG", ".a.part.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.JPG", "b.png", "c.png"]
