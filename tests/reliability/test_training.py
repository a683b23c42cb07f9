"""`seesr train --resume` on hostile and half-written checkpoints (issue 13 items 1 and 4), through the CLI.

One real 2-step stage-1 run (tiny RAM) writes checkpoint-1 and checkpoint-2; each case copies that run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from seesr.cli.main import main
from seesr.training.checkpointing import MANIFEST_NAME
from tests.reliability.conftest import PAYLOADS, snapshot
from tests.training.conftest import dape_overrides, make_pairs


def _args(tmp_path: Path, data: Path, run: Path, steps: int, *extra: str) -> list[str]:
    config = tmp_path / "dape.yaml"
    config.write_text("train:\n  mixed_precision: 'no'\n")
    args = ["train", "dape", "--config", str(config), "--output-dir", str(run)]
    for item in dape_overrides(data, run, train__max_train_steps=steps, train__checkpointing_steps=1):
        args += ["--set", item]
    return [*args, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = make_pairs(root / "data", count=2)
    run = root / "run"
    assert main(_args(root, data, run, 2)) == 0
    assert (run / "checkpoint-2" / MANIFEST_NAME).is_file()
    return data, run


def _checkpoint_files() -> list[str]:
    # the names a checkpoint of this version holds (listed here so the cases are known at collection time)
    return ["checkpoint.json", "optimizer.json", "optimizer.safetensors", "rng_0.json", "rng_0.safetensors",
            "scheduler.json", "scheduler.safetensors", "trainable.safetensors"]  # fmt: skip


def test_the_listed_checkpoint_files_are_all_there_are(trained):
    _, run = trained
    assert sorted(p.name for p in (run / "checkpoint-2").iterdir()) == sorted(_checkpoint_files())


@pytest.mark.parametrize("reseal", [False, True], ids=["as-planted", "manifest-updated"])
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("name", _checkpoint_files())
def test_a_payload_in_any_checkpoint_file_never_runs(tmp_path, capsys, trained, name, kind, reseal):
    data, source = trained
    run = shutil.copytree(source, tmp_path / "run")
    marker = tmp_path / "payload-ran"
    planted = run / "checkpoint-2" / name
    planted.unlink()
    planted.write_bytes(PAYLOADS[kind](marker))
    if reseal and name != MANIFEST_NAME:
        manifest_path = run / "checkpoint-2" / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text())
        blob = planted.read_bytes()
        manifest["files"][name] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        manifest_path.unlink()
        manifest_path.write_text(json.dumps(manifest))
    before = snapshot(run)
    code = main(_args(tmp_path, data, run, 3, "--resume", str(run / "checkpoint-2")))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "checkpoint-2" in err and name in err, err
    assert not marker.exists(), f"code from {name} ran"
    assert snapshot(run) == before  # nothing changed, nothing written (not even config.yaml or a checkpoint)


def test_a_checkpoint_left_by_a_kill_is_passed_over_with_a_warning(tmp_path, capsys, caplog, trained):
    """A kill while checkpoint-3 was being written leaves checkpoint-3.partial (this version) or a checkpoint-3
    without its manifest (earlier versions): `--resume latest` warns about it, resumes from checkpoint-2 and
    finishes; the new checkpoint-3 is complete and the leftover is gone."""
    data, source = trained
    for leftover in ("checkpoint-3.partial", "checkpoint-3"):
        run = shutil.copytree(source, tmp_path / leftover / "run")
        (run / leftover).mkdir()
        shutil.copy(run / "checkpoint-2" / "trainable.safetensors", run / leftover)
        before = snapshot(run / "checkpoint-2")
        caplog.clear()
        with caplog.at_level(logging.INFO):  # in a shell, the CLI's logging.basicConfig prints these on stderr
            code = main(_args(tmp_path, data, run, 3, "--resume", "latest"))
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "Traceback" not in captured.err
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(leftover in w and "incomplete" in w for w in warnings), warnings
        assert f"resuming from {run / 'checkpoint-2'}" in caplog.text, caplog.text
        assert snapshot(run / "checkpoint-2") == before  # the checkpoint resumed from is read, never written
        assert (run / "checkpoint-3" / MANIFEST_NAME).is_file() and not (run / "checkpoint-3.partial").exists()
        assert (run / "DAPE.pth").is_file()


@pytest.mark.parametrize("resume", ["latest", "checkpoint-3"])
def test_an_old_pickle_checkpoint_is_refused_unopened(tmp_path, capsys, trained, resume):
    """An accelerate ``save_state`` folder (custom_checkpoint_0.pkl, random_states_0.pkl, optimizer.bin, ...), every
    file a payload, newer than the complete checkpoint-2: refused by name in one line, saying why, never opened."""
    data, source = trained
    run = shutil.copytree(source, tmp_path / "run")
    marker = tmp_path / "payload-ran"
    legacy = run / "checkpoint-3"
    legacy.mkdir()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        (legacy / name).write_bytes(PAYLOADS["pickle"](marker))
    for name in ("optimizer.bin", "scheduler.bin", "model.pth"):
        (legacy / name).write_bytes(PAYLOADS["torch-zip"](marker))
    before = snapshot(run)
    code = main(_args(tmp_path, data, run, 4, "--resume", resume if resume == "latest" else str(legacy)))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "checkpoint-3" in err and "pickle" in err, err
    assert not marker.exists() and snapshot(run) == before
