"""Training checkpoints without pickle, written atomically.

A checkpoint ``<output_dir>/checkpoint-<step>/`` holds

* ``trainable.safetensors``: the parameters with ``requires_grad`` of the trained module, keyed by their name in the
  unwrapped module (for stage 2 not the 865M-parameter frozen SD-2 UNet);
* ``optimizer``, ``scheduler``, ``scaler`` (fp16 on GPUs) and ``rng_<process>`` states, each as ``NAME.json`` (the
  structure: numbers, strings, lists) plus ``NAME.safetensors`` (its tensors), see :func:`encode_state`;
* ``checkpoint.json``, written last: the format, the step, the sampler position (epoch, batches into it) and the
  size and sha256 of every other file. It is the completion marker.

The folder is written as ``checkpoint-<step>.partial`` and renamed when complete, so a run killed while saving leaves
no ``checkpoint-<step>`` behind, and ``--resume latest`` takes the newest folder with a valid ``checkpoint.json``
(warning about the others). Loading reads only JSON and safetensors (through :mod:`seesr.weights.reader`): nothing is
unpickled, so a downloaded checkpoint cannot run code. Checkpoints of earlier seesr versions (accelerate's
``save_state``: ``custom_checkpoint_*.pkl``, ``random_states_*.pkl``, ``optimizer.bin``) need pickle and are refused.

FSDP and DeepSpeed shard or own the model and optimizer state, so under them the folder holds accelerate's own format
(same ``.partial`` + marker protocol); resuming from it needs pickle and therefore ``train.allow_pickle_resume: true``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from seesr.training.common import TrainingError

__all__ = [
    "CHECKPOINT_PREFIX",
    "MANIFEST_NAME",
    "TRAINABLE_STATE_NAME",
    "Checkpointer",
    "ResumePoint",
    "checkpoint_status",
    "decode_state",
    "encode_state",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_trainable_state_dict",
    "trainable_state_dict",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
MANIFEST_NAME = "checkpoint.json"
TRAINABLE_STATE_NAME = "trainable.safetensors"
FORMAT = "seesr-training-checkpoint"
FORMAT_VERSION = 1
NATIVE_LAYOUT = "accelerate"  # FSDP / DeepSpeed: accelerate's own files (pickle)
SAFE_LAYOUT = "safetensors+json"
MAX_JSON_BYTES = 64 << 20
#: Integer dtypes the weight reader does not accept, stored widened to int32 (8-bit optimizer states).
NARROW_INTEGER_DTYPES = ("uint8", "int8", "int16", "uint16")
#: Files accelerate's ``save_state`` writes (earlier seesr versions); they load with pickle.
LEGACY_PATTERNS = (
    "custom_checkpoint_*.pkl",
    "random_states_*.pkl",
    "optimizer*.bin",
    "scheduler*.bin",
    "sampler*.bin",
    "scaler.pt",
    "pytorch_model*.bin",
    "model*.safetensors",
)


# ----------------------------------------------------------------------------------------------------------------
# Trainable tensors
# ----------------------------------------------------------------------------------------------------------------


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the parameters of ``module`` that require grad (detached, contiguous, on CPU)."""
    return {
        name: param.detach().to("cpu").contiguous() for name, param in module.named_parameters() if param.requires_grad
    }


def load_trainable_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Copy ``state`` into the trainable parameters of ``module``; keys and shapes must match exactly."""
    from seesr.weights.reader import WeightReadError, check_tensors

    params = {name: param for name, param in module.named_parameters() if param.requires_grad}
    try:
        check_tensors(state, params, source=source)
    except WeightReadError as error:
        raise TrainingError(f"{error} (was the checkpoint written with a different configuration?)") from None
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(device=param.device, dtype=param.dtype))


# ----------------------------------------------------------------------------------------------------------------
# State trees as JSON + safetensors
# ----------------------------------------------------------------------------------------------------------------


def encode_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-serialisable copy of ``value`` (dicts, lists, tuples, numbers, strings, None, tensors); every tensor is
    moved into ``tensors`` under a fresh key and replaced by ``{"__tensor__": key}`` (small integer types, such as the
    uint8 states of 8-bit Adam, are stored as int32: ``{"__narrow__": [key, "uint8"]}``). Dicts become
    ``{"__dict__": [[key, value], ...]}`` (keys may be ints, as in optimizer states), tuples ``{"__tuple__": [...]}``.
    Anything else raises :class:`TypeError` (it could only be saved with pickle)."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensor = value.detach().to("cpu").contiguous()
        narrow = str(tensor.dtype).removeprefix("torch.")
        if narrow in NARROW_INTEGER_DTYPES:
            tensors[key] = tensor.to(torch.int32)
            return {"__narrow__": [key, narrow]}
        tensors[key] = tensor
        return {"__tensor__": key}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise TypeError(f"state dict key {key!r} of type {type(key).__name__} cannot be saved")
        return {"__dict__": [[key, encode_state(item, tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_state(item, tensors) for item in value]}
    if isinstance(value, list):
        return [encode_state(item, tensors) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a {type(value).__name__} in a training state cannot be saved without pickle")


def decode_state(value: Any, tensors: dict[str, torch.Tensor], used: set[str] | None = None) -> Any:
    """The inverse of :func:`encode_state`; raises :class:`ValueError` on any other structure."""
    used = set() if used is None else used
    if isinstance(value, list):
        return [decode_state(item, tensors, used) for item in value]
    if not isinstance(value, dict):
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise ValueError(f"unexpected value {value!r}")
    if len(value) != 1:
        raise ValueError(f"unexpected mapping with keys {sorted(value)[:5]}")
    ((kind, body),) = value.items()
    if kind == "__tensor__" and isinstance(body, str):
        if body not in tensors:
            raise ValueError(f"tensor {body!r} is missing")
        used.add(body)
        return tensors[body]
    if kind == "__narrow__" and isinstance(body, list) and len(body) == 2 and body[1] in NARROW_INTEGER_DTYPES:
        return decode_state({"__tensor__": body[0]}, tensors, used).to(getattr(torch, body[1]))
    if kind == "__tuple__" and isinstance(body, list):
        return tuple(decode_state(item, tensors, used) for item in body)
    if kind == "__dict__" and isinstance(body, list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in body):
            raise ValueError("a __dict__ entry is not a [key, value] pair")
        return {decode_state(key, tensors, used): decode_state(item, tensors, used) for key, item in body}
    raise ValueError(f"unexpected mapping {kind!r}")


def _write_state(folder: Path, name: str, state: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_state(state, tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"), metadata={"format": "pt"})
    (folder / f"{name}.json").write_text(json.dumps(tree), encoding="utf-8")


def _read_json(path: Path) -> Any:
    """A JSON file of the checkpoint (size-limited); :class:`TrainingError` naming it when it is not valid JSON."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise TrainingError(f"{path}: {path.stat().st_size} bytes is too large for a checkpoint's JSON file")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"{path} is missing: the checkpoint is incomplete") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise TrainingError(f"{path}: not valid JSON, the checkpoint is corrupt ({error})") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every raw tensor read of a checkpoint goes through here (safetensors, via the project's weight reader)."""
    from seesr.weights.reader import WeightReadError, read_state_dict

    if path.suffix != ".safetensors":
        raise TrainingError(f"{path}: checkpoint tensors must be safetensors")
    try:
        return read_state_dict(path)
    except (WeightReadError, FileNotFoundError) as error:
        raise TrainingError(f"checkpoint: {error}") from None


def _read_state(folder: Path, name: str) -> Any:
    tree = _read_json(folder / f"{name}.json")
    tensors = _read_tensors(folder / f"{name}.safetensors")
    used: set[str] = set()
    try:
        state = decode_state(tree, tensors, used)
    except (ValueError, TypeError, RecursionError) as error:
        raise TrainingError(f"{folder / (name + '.json')}: not a training state written by seesr ({error})") from None
    if used != set(tensors):
        raise TrainingError(f"{folder / (name + '.safetensors')}: holds tensors its .json does not refer to")
    return state


# ----------------------------------------------------------------------------------------------------------------
# Random number generators (as tensors: nothing needs pickle)
# ----------------------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().to(torch.int32),  # uint8 bytes, stored widened (safetensors readers' dtypes)
    }
    if torch.cuda.is_available():
        state["cuda"] = [item.to(torch.int32) for item in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any], source: Path) -> None:
    try:
        version, internal, gauss = state["python"]
        kind, keys, pos, has_gauss, cached = state["numpy"]
        random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"].to(torch.uint8))
        if "cuda" in state and torch.cuda.is_available():
            cuda = state["cuda"]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([item.to(torch.uint8) for item in cuda])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise TrainingError(f"{source}: not a random-number state written by seesr ({error})") from None


# ----------------------------------------------------------------------------------------------------------------
# Finding checkpoints
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, or None for any other name."""
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX) or not name[len(CHECKPOINT_PREFIX) :].isdigit():
        return None
    return int(name[len(CHECKPOINT_PREFIX) :])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-<step>`` folders of a run (complete or not), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(step, p) for p in output_dir.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None]
    return [path for _, path in sorted(found)]


def _legacy_files(path: Path) -> list[str]:
    return sorted({item.name for pattern in LEGACY_PATTERNS for item in path.glob(pattern)})


def checkpoint_status(path: Path) -> str:
    """The state of a checkpoint folder, from its marker only: "complete" (a ``checkpoint.json`` of this format),
    "corrupt" (a marker that is not one), "legacy" (no marker, accelerate's pickle files of an earlier seesr) or
    "incomplete" (no marker: the save was interrupted)."""
    marker = path / MANIFEST_NAME
    if marker.is_file():
        try:
            manifest = _read_json(marker)
        except TrainingError:
            return "corrupt"
        if isinstance(manifest, dict) and manifest.get("format") == FORMAT and manifest.get("complete") is True:
            return "complete"
        return "corrupt"
    return "legacy" if _legacy_files(path) else "incomplete"


def _legacy_message(path: Path) -> str:
    files = _legacy_files(path)
    return (
        f"{path} is an old checkpoint in accelerate's pickle format ({', '.join(files[:3])}); it is not loaded "
        "because unpickling a file can run any code it contains. Resume is possible from checkpoints written by "
        "this version; move the folder away to start a new run"
    )


def _verify(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """The checked manifest of ``path``: format, step, and every listed file's size and sha256 (nothing else read)."""
    from seesr.weights.reader import file_sha256

    if not (path / MANIFEST_NAME).is_file():
        if _legacy_files(path):
            raise TrainingError(_legacy_message(path))
        raise TrainingError(
            f"{path} is incomplete (no {MANIFEST_NAME}: its save was interrupted); resume from another"
        )
    manifest = _read_json(path / MANIFEST_NAME)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("complete") is not True:
        raise TrainingError(f"{path / MANIFEST_NAME}: not a seesr training checkpoint marker")
    if manifest.get("version") != FORMAT_VERSION:
        raise TrainingError(f"{path}: checkpoint format version {manifest.get('version')!r} is not {FORMAT_VERSION}")
    if manifest.get("step") != checkpoint_step(path):
        raise TrainingError(f"{path}: {MANIFEST_NAME} records step {manifest.get('step')!r}, the folder name differs")
    if manifest.get("layout") == NATIVE_LAYOUT and not allow_pickle:
        raise TrainingError(
            f"{path} was written under FSDP/DeepSpeed in accelerate's format, which loads with pickle (it can run "
            "code); set train.allow_pickle_resume=true to resume from a checkpoint you wrote yourself"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise TrainingError(f"{path / MANIFEST_NAME}: no file list")
    for name, entry in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in (".", "..") or not isinstance(entry, dict):
            raise TrainingError(f"{path / MANIFEST_NAME}: bad file entry {name!r}")
        file = path / name
        if not file.is_file():
            raise TrainingError(f"{file} is missing: the checkpoint is incomplete")
        if file.stat().st_size != entry.get("bytes"):
            raise TrainingError(
                f"{file}: {file.stat().st_size} bytes, {MANIFEST_NAME} says {entry.get('bytes')}: truncated or changed"
            )
        if file_sha256(file) != entry.get("sha256"):
            raise TrainingError(
                f"{file}: its sha256 does not match {MANIFEST_NAME}: the file is corrupt or was changed"
            )
    return manifest


def find_resume_checkpoint(
    output_dir: str | Path, resume: str | None, allow_pickle: bool = False, announce: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """The verified checkpoint to resume from, with its manifest, or None (no ``resume``, or "latest" in a run
    without a complete checkpoint). Runs before anything is written, so a refused checkpoint changes nothing.

    ``"latest"`` takes the newest *complete* ``checkpoint-<step>`` and warns about incomplete ones (left by a kill
    while saving); old pickle-format checkpoints are refused when no newer complete one exists.
    """
    from seesr.training.config import ConfigError

    if not resume:
        return None
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            path = Path(output_dir) / resume
        if not path.is_dir() or checkpoint_step(path) is None:
            raise ConfigError(
                f"train.resume_from_checkpoint: {resume} is not a {CHECKPOINT_PREFIX}<step> folder (or 'latest')"
            )
        return path, _verify(path, allow_pickle)
    folders = list_checkpoints(output_dir)
    statuses = {path: checkpoint_status(path) for path in folders}
    complete = [path for path in folders if statuses[path] == "complete"]
    legacy = [path for path in folders if statuses[path] == "legacy"]
    chosen = complete[-1] if complete else None
    newer = [p for p in folders if chosen is None or checkpoint_step(p) > checkpoint_step(chosen)]
    blocking = [p for p in newer if statuses[p] in ("legacy", "corrupt")]
    if blocking:  # going back to an older checkpoint (or to none) would silently lose work: say why instead
        if statuses[blocking[-1]] == "legacy":
            raise TrainingError(_legacy_message(blocking[-1]))
        _verify(blocking[-1], allow_pickle)
    partial = sorted(Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*{PARTIAL_SUFFIX}"))
    if announce:
        for path in [*(p for p in folders if statuses[p] == "incomplete"), *partial]:
            logger.warning(
                "ignoring incomplete checkpoint %s (no %s: its save was interrupted); delete it", path, MANIFEST_NAME
            )
        for path in legacy:
            logger.warning("ignoring %s: an old pickle-format checkpoint, never loaded", path)
        for path in (p for p in folders if statuses[p] == "corrupt"):
            logger.warning("ignoring %s: its %s is not valid", path, MANIFEST_NAME)
    if chosen is None:
        if announce:
            logger.info("no complete checkpoint in %s yet: starting a new run", output_dir)
        return None
    return chosen, _verify(chosen, allow_pickle)


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ResumePoint:
    """Where a (possibly resumed) run starts: optimiser step, epoch, and batches to skip inside that epoch."""

    global_step: int
    first_epoch: int
    skip_batches: int


def _uses_native_format(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (
        DistributedType.FSDP,
        DistributedType.DEEPSPEED,
        DistributedType.MEGATRON_LM,
    )


def _fsync_and_hash(folder: Path) -> dict[str, dict[str, Any]]:
    from seesr.weights.reader import file_sha256

    entries = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
        name = str(file.relative_to(folder))
        if Path(name).name == name:  # native (FSDP) layouts may have sub-folders: only top-level files are listed
            entries[name] = {"bytes": file.stat().st_size, "sha256": file_sha256(file)}
    return entries


def _publish(partial: Path, final: Path) -> None:
    """Rename the finished ``partial`` folder to ``final`` (replacing an earlier folder of that name)."""
    previous = final.with_name(final.name + ".replaced")
    if final.exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(final, previous)
    os.replace(partial, final)
    if previous.exists():
        shutil.rmtree(previous, ignore_errors=True)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class Checkpointer:
    """Saves and restores one run's state: the trainable tensors of ``module``, ``optimizer``, ``lr_scheduler``, the
    gradient scaler, every process's RNG states and the sampler position.

    Attributes:
        accelerator: the run's accelerator (after ``prepare``).
        module: the prepared module whose trainable parameters are saved.
        optimizer: the prepared optimizer.
        lr_scheduler: the learning-rate schedule (not prepared).
        output_dir: the run folder.
        batches_per_epoch: per-process batches per epoch (``len(loader)``).
        accumulation: gradient accumulation steps.
        keep: keep at most this many complete checkpoints (None: all).
    """

    accelerator: Any
    module: torch.nn.Module
    optimizer: Any
    lr_scheduler: Any
    output_dir: Path
    batches_per_epoch: int
    accumulation: int
    keep: int | None = None

    def __post_init__(self) -> None:
        self.steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / self.accumulation))
        self._counter = _StepCounter()
        if _uses_native_format(self.accelerator):
            self.accelerator.register_for_checkpointing(self._counter, self.lr_scheduler)

    def position(self, step: int) -> ResumePoint:
        """Epoch and batches into it after ``step`` optimisation steps."""
        epoch = step // self.steps_per_epoch
        return ResumePoint(step, epoch, (step - epoch * self.steps_per_epoch) * self.accumulation)

    def save(self, step: int) -> Path:
        """Write ``checkpoint-<step>`` (collective: every process calls it); returns its path."""
        accelerator = self.accelerator
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if accelerator.is_main_process:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        native = _uses_native_format(accelerator)
        if native:
            self._counter.step = step
            accelerator.save_state(str(partial))
        else:
            if accelerator.is_main_process:
                state = trainable_state_dict(accelerator.unwrap_model(self.module))
                save_file(state, str(partial / TRAINABLE_STATE_NAME), metadata={"format": "pt"})
                _write_state(partial, "optimizer", self.optimizer.state_dict())
                _write_state(partial, "scheduler", self.lr_scheduler.state_dict())
                if accelerator.scaler is not None:
                    _write_state(partial, "scaler", accelerator.scaler.state_dict())
            _write_state(partial, f"rng_{accelerator.process_index}", _rng_state())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            point = self.position(step)
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "layout": NATIVE_LAYOUT if native else SAFE_LAYOUT,
                "step": step,
                "epoch": point.first_epoch,
                "batches_into_epoch": point.skip_batches,
                "batches_per_epoch": self.batches_per_epoch,
                "num_processes": accelerator.num_processes,
                "files": _fsync_and_hash(partial),
                "complete": True,
            }
            marker = partial / MANIFEST_NAME
            with open(marker, "w", encoding="utf-8") as handle:
                json.dump(manifest, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            _publish(partial, final)
            logger.info("saved %s", final)
            self.prune()
        accelerator.wait_for_everyone()
        return final

    def prune(self) -> None:
        """Delete the oldest complete checkpoints so that at most ``keep`` remain (others are never touched)."""
        if self.keep is None:
            return
        complete = [path for path in list_checkpoints(self.output_dir) if checkpoint_status(path) == "complete"]
        for path in complete[: max(0, len(complete) - self.keep)]:
            logger.info("removing old checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)

    def load(self, found: tuple[Path, dict[str, Any]] | None, allow_pickle: bool = False) -> ResumePoint:
        """Restore the state saved in ``found`` (from :func:`find_resume_checkpoint`); the start of this run."""
        if found is None:
            return self.position(0)
        path, manifest = found
        step = int(manifest["step"])
        logger.info("resuming from %s", path)
        if manifest.get("layout") == NATIVE_LAYOUT:
            if not (allow_pickle and _uses_native_format(self.accelerator)):
                raise TrainingError(f"{path} was written under FSDP/DeepSpeed; resume it under the same launcher")
            self.accelerator.load_state(str(path))  # the user opted in: train.allow_pickle_resume
        else:
            if _uses_native_format(self.accelerator):
                raise TrainingError(f"{path} was not written under FSDP/DeepSpeed; resume it without them")
            self._load_safe(path)
        self.accelerator.step = step * self.accumulation
        point = self.position(step)
        if manifest.get("batches_per_epoch") != self.batches_per_epoch:
            logger.warning(
                "%s was written with %s batches per epoch, this run has %d (data or batch size changed): the resumed "
                "run will not repeat the interrupted one exactly",
                path,
                manifest.get("batches_per_epoch"),
                self.batches_per_epoch,
            )
        return point

    def _load_safe(self, path: Path) -> None:
        """Read every file first (JSON and safetensors only), then restore: a bad file changes nothing."""
        accelerator = self.accelerator
        trainable = _read_tensors(path / TRAINABLE_STATE_NAME)
        states = {name: _read_state(path, name) for name in ("optimizer", "scheduler")}
        scaler = _read_state(path, "scaler") if (path / "scaler.json").is_file() else None
        rng_name = f"rng_{accelerator.process_index}"
        rng = _read_state(path, rng_name) if (path / f"{rng_name}.json").is_file() else None

        module = accelerator.unwrap_model(self.module)
        load_trainable_state_dict(module, trainable, str(path / TRAINABLE_STATE_NAME))
        for name, target in (("optimizer", self.optimizer), ("scheduler", self.lr_scheduler)):
            try:
                target.load_state_dict(states[name])
            except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as error:
                raise TrainingError(
                    f"{path / (name + '.json')} does not fit this run's {name} ({error}); was it written with a "
                    "different configuration?"
                ) from None
        if accelerator.scaler is not None and scaler is not None:
            accelerator.scaler.load_state_dict(scaler)
        if rng is not None:
            _set_rng_state(rng, path / f"{rng_name}.json")
        else:
            logger.warning("%s has no random state for process %d", path, accelerator.process_index)


class _StepCounter:
    """The global step, registered for accelerate's own checkpoints (FSDP / DeepSpeed only)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
