"""Training checkpoints: nothing is unpickled on resume, writes are atomic, ``latest`` takes the newest complete one.

A toy model (two Linear layers, the first frozen) with the real optimiser, schedule, accelerator and
:class:`~seesr.training.checkpointing.Checkpointer` keeps these tests at a fraction of a second each.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from seesr.training import checkpointing
from seesr.training.checkpointing import (
    MANIFEST_NAME,
    Checkpointer,
    checkpoint_status,
    decode_state,
    encode_state,
    find_resume_checkpoint,
    list_checkpoints,
)
from seesr.training.common import TrainingError, build_lr_scheduler, build_optimizer
from seesr.training.config import OptimizerConfig

BATCHES_PER_EPOCH = 4


class Payload:
    """Unpickling this object creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_bytes(marker: Path, torch_format: bool) -> bytes:
    if not torch_format:
        return pickle.dumps(Payload(marker))
    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)  # the zip format accelerate's .bin files use
    return buffer.getvalue()


class Toy:
    """A prepared toy model, optimiser and schedule with their Checkpointer."""

    def __init__(self, output_dir: Path, init_seed: int = 0, keep: int | None = None) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(mixed_precision="no")
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the frozen layer is the same in every run, as a frozen base model
            frozen = torch.nn.Linear(4, 8)
            torch.manual_seed(init_seed)
            model = torch.nn.Sequential(frozen, torch.nn.Tanh(), torch.nn.Linear(8, 1))
        model[0].requires_grad_(False)
        optim = OptimizerConfig(learning_rate=1e-2, lr_scheduler="multistep", lr_warmup_steps=3, lr_milestones=[4])
        optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], optim, optim.learning_rate)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = build_lr_scheduler(self.optimizer, optim, 10)
        self.checkpointer = Checkpointer(
            self.accelerator, self.model, self.optimizer, self.scheduler, output_dir, BATCHES_PER_EPOCH, 1, keep
        )

    def step(self, index: int) -> None:
        inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(index))
        self.accelerator.backward(self.model(inputs).pow(2).mean())
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()

    def state(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().clone() for name, value in self.model.state_dict().items()}


def saved_run(output_dir: Path, steps: tuple[int, ...] = (3,), keep: int | None = None) -> Toy:
    toy = Toy(output_dir, keep=keep)
    for index in range(1, max(steps) + 1):
        toy.step(index)
        if index in steps:
            toy.checkpointer.save(index)
    return toy


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_state_trees_round_trip_without_pickle(tmp_path):
    state = {"state": {0: {"step": torch.tensor(3.0), "exp": torch.ones(2)}}, "groups": [{"betas": (0.9, 0.999)}]}
    state["nan"] = math.nan
    tensors: dict[str, torch.Tensor] = {}
    tree = json.loads(json.dumps(encode_state(state, tensors)))
    back = decode_state(tree, tensors)
    assert back["groups"][0]["betas"] == (0.9, 0.999) and list(back["state"]) == [0] and math.isnan(back["nan"])
    torch.testing.assert_close(back["state"][0]["exp"], torch.ones(2), rtol=0, atol=0)
    quantised = {"state1": torch.arange(250, 256, dtype=torch.uint8), "absmax": torch.ones(2)}  # 8-bit Adam
    checkpointing._write_state(tmp_path, "quantised", quantised)  # through the weight reader, which refuses uint8
    back = checkpointing._read_state(tmp_path, "quantised")
    assert back["state1"].dtype == torch.uint8 and back["state1"].tolist() == list(range(250, 256))
    with pytest.raises(TypeError, match="without pickle"):
        encode_state({"fn": print}, {})
    with pytest.raises(ValueError):
        decode_state({"__reduce__": ["os.system", "true"]}, {})


def test_checkpoint_layout_and_exact_resume(tmp_path):
    """The folder holds only JSON + safetensors and a marker; a fresh model resumed from it continues exactly as
    the run that never stopped (parameters, optimiser moments, schedule, RNG)."""
    full = saved_run(tmp_path / "run")
    folder = tmp_path / "run" / "checkpoint-3"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        MANIFEST_NAME,
        "optimizer.json",
        "optimizer.safetensors",
        "rng_0.json",
        "rng_0.safetensors",
        "scheduler.json",
        "scheduler.safetensors",
        "trainable.safetensors",
    ]
    assert not list((tmp_path / "run").glob("*.partial"))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert (manifest["step"], manifest["epoch"], manifest["batches_into_epoch"]) == (3, 0, 3)
    after_save = torch.rand(3)
    for index in (4, 5, 6):
        full.step(index)

    resumed = Toy(tmp_path / "run", init_seed=1)  # different initial weights: the checkpoint must overwrite them
    point = resumed.checkpointer.load(find_resume_checkpoint(tmp_path / "run", "latest"))
    assert (point.global_step, point.first_epoch, point.skip_batches) == (3, 0, 3)
    torch.testing.assert_close(torch.rand(3), after_save, rtol=0, atol=0)  # the global RNG continues where it was
    for index in (4, 5, 6):
        resumed.step(index)
    assert resumed.scheduler.get_last_lr() == full.scheduler.get_last_lr()
    for key, value in full.state().items():
        torch.testing.assert_close(resumed.state()[key], value, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("consistent_manifest", [False, True], ids=["as-planted", "manifest-updated"])
def test_a_payload_in_any_checkpoint_file_is_refused_without_running(tmp_path, consistent_manifest):
    """Each file of a checkpoint replaced by a pickle whose unpickling creates a marker (raw pickle or torch zip),
    with or without the manifest's size/sha256 updated to match: a one-line error naming that file, no marker,
    no file changed, the model untouched."""
    source = tmp_path / "source"
    saved_run(source)
    names = sorted(p.name for p in (source / "checkpoint-3").iterdir())
    for name in names:
        for torch_format in (False, True):
            run = tmp_path / f"run-{name}-{torch_format}"
            shutil.copytree(source / "checkpoint-3", run / "checkpoint-3")
            marker = tmp_path / f"marker-{name}-{torch_format}"
            planted = run / "checkpoint-3" / name
            planted.write_bytes(payload_bytes(marker, torch_format))
            if consistent_manifest and name != MANIFEST_NAME:
                manifest_path = run / "checkpoint-3" / MANIFEST_NAME
                manifest = json.loads(manifest_path.read_text())
                data = planted.read_bytes()
                manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                manifest_path.write_text(json.dumps(manifest))
            before = snapshot(run)
            toy = Toy(run, init_seed=1)
            weights = toy.state()
            with pytest.raises(TrainingError) as caught:
                toy.checkpointer.load(find_resume_checkpoint(run, "latest"))
            message = str(caught.value)
            assert "\n" not in message and name in message, message
            assert not marker.exists(), f"{name}: code from the file ran"
            assert snapshot(run) == before
            for key, value in weights.items():
                torch.testing.assert_close(toy.state()[key], value, rtol=0, atol=0)


def legacy_checkpoint(folder: Path, marker: Path) -> Path:
    """An accelerate ``save_state`` folder of an earlier seesr, every file a payload."""
    folder.mkdir(parents=True)
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl"):
        (folder / name).write_bytes(payload_bytes(marker, torch_format=False))
    for name in ("optimizer.bin", "scheduler.bin", "sampler.bin", "scaler.pt", "trainable.safetensors"):
        (folder / name).write_bytes(payload_bytes(marker, torch_format=True))
    return folder


@pytest.mark.parametrize("resume", ["latest", "checkpoint-3"])
def test_old_pickle_checkpoints_are_refused(tmp_path, resume):
    marker = tmp_path / "marker"
    legacy_checkpoint(tmp_path / "run" / "checkpoint-3", marker)
    before = snapshot(tmp_path / "run")
    with pytest.raises(TrainingError, match="pickle format .* not loaded because unpickling a file can run") as caught:
        find_resume_checkpoint(tmp_path / "run", resume)
    assert "checkpoint-3" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists() and snapshot(tmp_path / "run") == before


def test_latest_takes_the_newest_complete_checkpoint_and_warns_about_the_rest(tmp_path, caplog):
    run = tmp_path / "run"
    saved_run(run, steps=(2, 5))
    (run / "checkpoint-7").mkdir()  # an earlier version killed while saving: only its first file written
    shutil.copy(run / "checkpoint-5" / "trainable.safetensors", run / "checkpoint-7")
    (run / "checkpoint-9.partial").mkdir()  # this version killed while saving
    legacy_checkpoint(run / "checkpoint-1", tmp_path / "marker")
    assert [checkpoint_status(p) for p in list_checkpoints(run)] == ["legacy", "complete", "complete", "incomplete"]
    with caplog.at_level(logging.WARNING, logger="seesr.training.checkpointing"):
        path, manifest = find_resume_checkpoint(run, "latest")
    assert path.name == "checkpoint-5" and manifest["step"] == 5
    warned = caplog.text
    assert "checkpoint-7" in warned and "checkpoint-9.partial" in warned and "checkpoint-1" in warned
    # an explicit incomplete folder is refused by name; a newer legacy folder is not silently skipped
    with pytest.raises(TrainingError, match="checkpoint-7 is incomplete"):
        find_resume_checkpoint(run, str(run / "checkpoint-7"))
    legacy_checkpoint(run / "checkpoint-8", tmp_path / "marker")
    with pytest.raises(TrainingError, match="checkpoint-8 is an old checkpoint"):
        find_resume_checkpoint(run, "latest")
    assert not (tmp_path / "marker").exists()


def test_only_incomplete_checkpoints_start_a_new_run_with_a_warning(tmp_path, caplog):
    (tmp_path / "checkpoint-4").mkdir()
    with caplog.at_level(logging.WARNING, logger="seesr.training.checkpointing"):
        assert find_resume_checkpoint(tmp_path, "latest") is None
    assert "incomplete checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    assert find_resume_checkpoint(tmp_path / "nothing", "latest") is None
    assert find_resume_checkpoint(tmp_path, None) is None


def test_a_save_killed_midway_leaves_no_checkpoint(tmp_path, monkeypatch, caplog):
    """A kill before the marker is written leaves ``checkpoint-6.partial`` only; ``latest`` resumes from the
    previous checkpoint, and saving step 6 again replaces the leftover."""
    run = tmp_path / "run"
    toy = saved_run(run, steps=(5,))

    def killed(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing, "_fsync_and_hash", killed)
    with pytest.raises(KeyboardInterrupt):
        toy.checkpointer.save(6)
    monkeypatch.undo()
    assert not (run / "checkpoint-6").exists() and (run / "checkpoint-6.partial" / "trainable.safetensors").is_file()
    with caplog.at_level(logging.WARNING, logger="seesr.training.checkpointing"):
        assert find_resume_checkpoint(run, "latest")[0].name == "checkpoint-5"
    assert "checkpoint-6.partial" in caplog.text
    toy.checkpointer.save(6)
    assert checkpoint_status(run / "checkpoint-6") == "complete" and not (run / "checkpoint-6.partial").exists()


def test_pruning_keeps_the_newest_complete_checkpoints_only(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-0").mkdir(parents=True)  # incomplete: never counted, never deleted by pruning
    saved_run(run, steps=(1, 2, 3, 4), keep=2)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0", "checkpoint-3", "checkpoint-4"]


def test_truncated_or_mismatched_trainable_tensors_give_one_line_errors(tmp_path):
    source = tmp_path / "source"
    saved_run(source)
    run = tmp_path / "run"
    shutil.copytree(source, run)
    trainable = run / "checkpoint-3" / "trainable.safetensors"
    trainable.write_bytes(trainable.read_bytes()[:-10])
    with pytest.raises(TrainingError, match=r"trainable\.safetensors: .* bytes, checkpoint\.json says"):
        find_resume_checkpoint(run, "latest")
    # the manifest updated too: the safetensors reader refuses the file by name
    manifest_path = run / "checkpoint-3" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    data = trainable.read_bytes()
    manifest["files"]["trainable.safetensors"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(TrainingError, match=r"trainable\.safetensors: not a readable safetensors file") as caught:
        Toy(run).checkpointer.load(find_resume_checkpoint(run, "latest"))
    assert "\n" not in str(caught.value)


def test_grad_scaler_state_round_trips(tmp_path):
    """fp16 runs on GPUs checkpoint the gradient scaler; its state survives the JSON + safetensors round trip."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler._lazy_init_scale_growth_tracker("cpu")
    scaler.update(512.0)
    checkpointing._write_state(tmp_path, "scaler", scaler.state_dict())
    fresh = torch.amp.GradScaler("cpu")
    fresh.load_state_dict(checkpointing._read_state(tmp_path, "scaler"))
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 512.0


def test_fsdp_checkpoints_need_the_pickle_opt_in_and_hostile_json_is_refused(tmp_path):
    """A checkpoint marked as accelerate's own format (FSDP/DeepSpeed) is refused unless
    train.allow_pickle_resume; a deeply nested JSON file is a one-line error, not a RecursionError."""
    from seesr.training.config import ConfigError

    run = tmp_path / "run"
    saved_run(run)
    folder = run / "checkpoint-3"
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    (folder / MANIFEST_NAME).write_text(json.dumps({**manifest, "layout": "accelerate"}))
    with pytest.raises(TrainingError, match="allow_pickle_resume=true"):
        find_resume_checkpoint(run, "latest")
    assert find_resume_checkpoint(run, "latest", allow_pickle=True)[0] == folder
    with pytest.raises(TrainingError, match="was written under FSDP/DeepSpeed"):
        Toy(run).checkpointer.load(find_resume_checkpoint(run, "latest", allow_pickle=True), allow_pickle=True)

    (folder / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TrainingError, match=r"checkpoint\.json: not valid JSON"):
        find_resume_checkpoint(run, "latest")
    with pytest.raises(ConfigError, match="not a checkpoint-<step> folder"):
        find_resume_checkpoint(run, str(tmp_path))
