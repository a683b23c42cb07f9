"""Typed training configurations (YAML -> dataclasses) for both SeeSR training stages.

Resolution order of every value: dataclass default  <-  YAML file (``--config``)  <-  ``--set a.b=c`` overrides.
The dataclass defaults reproduce the official hyper-parameters (REFERENCE.md §4.4 for stage 2, §5.3 for stage 1);
where the official scripts contradict the paper the choice is stated next to the field.

Every run writes its resolved configuration (``config.yaml``) and the package versions (``versions.json``) into its
output folder, next to the checkpoints (:func:`write_run_record`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "DAPELossConfig",
    "DAPEModelConfig",
    "DAPEValidationConfig",
    "LoggingConfig",
    "OptimizerConfig",
    "SeeSRModelConfig",
    "TrainDAPEConfig",
    "TrainLoopConfig",
    "TrainSeeSRConfig",
    "ValidationConfig",
    "apply_overrides",
    "config_to_dict",
    "default_config_path",
    "load_config",
    "write_run_record",
]

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
DATA_MODES = ("prepared", "online")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "multistep")
CAPTION_TAGGERS = ("ram", "dape")


class ConfigError(ValueError):
    """A configuration value or key the user got wrong; the message names the offending key."""


# ----------------------------------------------------------------------------------------------------------------
# Sections shared by both stages
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where training pairs come from.

    ``mode: prepared`` reads ``seesr prepare`` folders (``gt/``, ``lr/`` or ``sr_bicubic/``, ``tag/``), pairing
    files by stem (the official code paired three unsorted globs by position, REFERENCE.md §7 #24).
    ``mode: online`` reads HR images from ``root_folders`` (any image files) and degrades every batch on the fly
    with the second-order Real-ESRGAN pipeline (``degradation`` preset, ×``scale``).
    """

    root_folders: list[str] = field(default_factory=list)
    mode: str = "prepared"
    resolution: int = 512  # GT size in pixels; must be a multiple of 8
    degradation: str = "seesr"  # online mode: name of a DegradationConfig preset (SEESR / REALESRGAN)
    scale: int = 4  # online mode: super-resolution factor
    shuffle: bool = True  # official: shuffle=False (REFERENCE.md §7 #28); we shuffle, set false to reproduce
    num_workers: int = 0  # official default 0
    min_pixels: int = 384 * 384  # online mode: smaller HR images are replaced by another one (official)
    min_file_bytes: int = 100 * 1024  # online mode: so are files under 100 KiB (official)


@dataclass
class OptimizerConfig:
    """AdamW and its learning-rate schedule."""

    learning_rate: float = 5e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit; imported only when true
    max_grad_norm: float = 1.0  # gradient clipping over the trainable parameters; 0 disables
    scale_lr: bool = False  # multiply the learning rate by batch size × accumulation × processes
    lr_scheduler: str = "constant"  # one of LR_SCHEDULERS
    lr_warmup_steps: int = 500  # official value; "constant" ignores it exactly as the official script did
    lr_milestones: list[int] = field(default_factory=list)  # "multistep" only
    lr_gamma: float = 0.5  # "multistep" only


@dataclass
class TrainLoopConfig:
    """Loop, precision, checkpointing and resume."""

    output_dir: str = "seesr-out/train-seesr"
    seed: int = 42
    train_batch_size: int = 2  # per device
    gradient_accumulation_steps: int = 2
    max_train_steps: int | None = None  # optimisation steps; None: num_train_epochs × steps per epoch
    num_train_epochs: int = 1000
    mixed_precision: str = "fp16"  # "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False
    allow_tf32: bool = False
    checkpointing_steps: int = 10000  # official intent (the script's 10000 was lost, §7 #27)
    checkpoints_total_limit: int | None = None  # keep at most this many checkpoint-* folders (None: keep all)
    resume_from_checkpoint: str | None = None  # a checkpoint folder or "latest"
    # FSDP/DeepSpeed checkpoints are accelerate's own files, which load with pickle (a file can run code): resuming
    # from one needs this set to true, for checkpoints you wrote yourself. Other checkpoints never need pickle.
    allow_pickle_resume: bool = False


@dataclass
class LoggingConfig:
    report_to: str = "tensorboard"  # accelerate tracker name ("tensorboard", "wandb", ...) or "none"
    logging_dir: str = "logs"  # relative to output_dir
    log_every: int = 1  # log scalars every N optimisation steps
    progress_bar: bool = True


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: SeeSR (ControlNet + RCA)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SeeSRModelConfig:
    """The models stage 2 starts from (REFERENCE.md §4.1)."""

    pretrained_model_name_or_path: str = ""  # SD-2-base folder: unet/, vae/, text_encoder/, tokenizer/, scheduler/
    ram_model_path: str = ""  # ram_swin_large_14m.pth (or a folder load_tagger accepts)
    dape_model_path: str | None = None  # DAPE.pth from stage 1; plain RAM when omitted (as the official script)
    ram_config_dir: str | None = None  # RAM config folder (configs/swin, q2l, med); None: the full-size defaults
    unet_model_name_or_path: str | None = None  # continue from a trained SeeSR unet/ folder
    controlnet_model_name_or_path: str | None = None  # continue from a trained SeeSR controlnet/ folder
    null_text_ratio: float = 0.5  # probability of replacing the tag prompt by "" (DAPE embeddings are kept)
    keep_frozen_unet_fp32: bool = True  # official: frozen UNet weights stay fp32; false casts them to the AMP dtype
    # data.mode=online: who captions the HR images. "ram": plain RAM in float32, as the official make_tags.py;
    # "dape": the frozen DAPE tagger of the run in the mixed-precision dtype (earlier seesr versions).
    caption_tagger: str = "ram"


@dataclass
class ValidationConfig:
    """Validation during stage 2 (the official validation was disabled; both kinds are off by default).

    * images: ``images`` upscaled through :class:`seesr.pipeline.pipeline_seesr.SeeSRPipeline` every ``steps``;
    * loss: Eq. (2) on the first ``loss_images`` training images at ``loss_timesteps`` evenly spread timesteps with
      fixed noise (seeded by ``seed``), every ``loss_steps``, before the first step and after the last. Unlike the
      training loss, whose value swings with the random timesteps, it is comparable from one step to the next.
    """

    steps: int | None = None  # None or 0: no images
    images: list[str] = field(default_factory=list)  # LR images
    num_inference_steps: int = 50
    guidance_scale: float = 5.5
    process_size: int = 512  # the pipeline's minimum processing size (inference default 512)
    seed: int = 42
    loss_steps: int | None = None  # None or 0: no validation loss
    loss_images: int = 4
    loss_timesteps: int = 10


@dataclass
class TrainSeeSRConfig:
    """``seesr train seesr``: frozen SD-2 UNet/VAE/text encoder/DAPE; trainable ControlNet and RCA layers."""

    model: SeeSRModelConfig = field(default_factory=SeeSRModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> None:
        _validate_common(self.data, self.optim, self.train, self.logging)
        if not self.model.pretrained_model_name_or_path:
            raise ConfigError("model.pretrained_model_name_or_path is required (the SD-2-base folder)")
        if not self.model.ram_model_path:
            raise ConfigError("model.ram_model_path is required (ram_swin_large_14m.pth)")
        _require(
            _finite(self.model.null_text_ratio) and 0.0 <= self.model.null_text_ratio <= 1.0,
            "model.null_text_ratio",
            "in [0, 1]",
            self.model.null_text_ratio,
        )
        if self.model.caption_tagger not in CAPTION_TAGGERS:
            raise ConfigError(
                f"model.caption_tagger must be one of {', '.join(CAPTION_TAGGERS)}, got {self.model.caption_tagger!r}"
            )
        if self.validation.steps and not self.validation.images:
            raise ConfigError("validation.steps is set but validation.images is empty")
        _check_ranges(
            "validation",
            self.validation,
            {
                "steps": _NON_NEGATIVE_INT,
                "loss_steps": _NON_NEGATIVE_INT,
                "loss_images": _POSITIVE_INT,
                "loss_timesteps": _POSITIVE_INT,
                "num_inference_steps": _POSITIVE_INT,
                "guidance_scale": (_finite, "a finite number"),
                "process_size": _POSITIVE_INT,
                "seed": _SEED,
            },
        )


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: DAPE (RAM + LoRA)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DAPEModelConfig:
    ram_model_path: str = ""  # ram_swin_large_14m.pth: both the frozen teacher and the student's base weights
    ram_config_dir: str | None = None  # RAM config folder; None: the full-size defaults
    dape_model_path: str | None = None  # continue from an existing DAPE.pth (LoRA weights)
    student_dropout: bool = True  # official: the student trains with Swin drop-path 0.1 and head dropout 0.1


@dataclass
class DAPEValidationConfig:
    """Eq. (1) without its constant floor (feature term + λ·KL, student in eval mode) on the first ``loss_images``
    training pairs, every ``loss_steps``, before the first step and after the last (off by default)."""

    loss_steps: int | None = None
    loss_images: int = 4


@dataclass
class DAPELossConfig:
    """Eq. (1): ``L = w_fea·MSE(f_lr, f_hr) + λ·BCE(logits_lr, σ(logits_hr))``, λ = 1 (paper §4.1)."""

    feature_weight: float = 1.0
    logits_weight: float = 1.0


def _dape_data() -> DataConfig:
    # The official DAPE data (SimpleDataset) resizes whole images and replaces none.
    return DataConfig(min_pixels=0, min_file_bytes=0)


def _dape_optim() -> OptimizerConfig:
    # basicsr/options/dape.yaml: AdamW lr 1e-4, wd 0; MultiStepLR [20000, 30000] × 0.5 after a 50-iteration warm-up.
    return OptimizerConfig(
        learning_rate=1e-4,
        weight_decay=0.0,
        max_grad_norm=0.0,  # BasicSR does not clip
        lr_scheduler="multistep",
        lr_warmup_steps=50,
        lr_milestones=[20000, 30000],
        lr_gamma=0.5,
    )


def _dape_train() -> TrainLoopConfig:
    # dape.yaml: batch 8 per GPU, seed 10, 300000 iterations (the paper reports 20K at batch 32), checkpoint every 1000,
    # fp32 (BasicSR has no AMP).
    return TrainLoopConfig(
        output_dir="seesr-out/train-dape",
        seed=10,
        train_batch_size=8,
        gradient_accumulation_steps=1,
        max_train_steps=300000,
        mixed_precision="no",
        checkpointing_steps=1000,
    )


@dataclass
class TrainDAPEConfig:
    """``seesr train dape``: frozen RAM teacher on HR, LoRA student on the degraded LR (REFERENCE.md §5)."""

    model: DAPEModelConfig = field(default_factory=DAPEModelConfig)
    loss: DAPELossConfig = field(default_factory=DAPELossConfig)
    data: DataConfig = field(default_factory=_dape_data)
    optim: OptimizerConfig = field(default_factory=_dape_optim)
    train: TrainLoopConfig = field(default_factory=_dape_train)
    validation: DAPEValidationConfig = field(default_factory=DAPEValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> None:
        _validate_common(self.data, self.optim, self.train, self.logging)
        _check_ranges("validation", self.validation, {"loss_steps": _NON_NEGATIVE_INT, "loss_images": _POSITIVE_INT})
        _check_ranges("loss", self.loss, {"feature_weight": _NON_NEGATIVE_FLOAT, "logits_weight": _NON_NEGATIVE_FLOAT})
        if not self.model.ram_model_path:
            raise ConfigError("model.ram_model_path is required (ram_swin_large_14m.pth)")


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _check_ranges(section: str, values: Any, rules: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Raise :class:`ConfigError` naming ``section.key`` for the first value of ``values`` outside its rule
    (``None`` is allowed where the field is optional)."""
    for name, (ok, rule) in rules.items():
        value = getattr(values, name)
        if value is not None:
            _require(ok(value), f"{section}.{name}", rule, value)


_POSITIVE_INT = (lambda v: v >= 1, ">= 1")
_NON_NEGATIVE_INT = (lambda v: v >= 0, ">= 0")
_POSITIVE_FLOAT = (lambda v: _finite(v) and v > 0, "a finite number > 0")
_NON_NEGATIVE_FLOAT = (lambda v: _finite(v) and v >= 0, "a finite number >= 0")
_BETA = (lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)")
_SEED = (lambda v: 0 <= v < 2**32, "in [0, 2**32)")


def _validate_common(data: DataConfig, optim: OptimizerConfig, train: TrainLoopConfig, logging: LoggingConfig) -> None:
    """Ranges of the sections both stages share; every message names the key."""
    if not data.root_folders:
        raise ConfigError("data.root_folders is empty: give at least one folder of training images")
    if data.mode not in DATA_MODES:
        raise ConfigError(f"data.mode must be one of {', '.join(DATA_MODES)}, got {data.mode!r}")
    _require(
        data.resolution > 0 and data.resolution % 8 == 0,
        "data.resolution",
        "a positive multiple of 8",
        data.resolution,
    )
    _check_ranges(
        "data",
        data,
        {
            "scale": _POSITIVE_INT,
            "num_workers": _NON_NEGATIVE_INT,
            "min_pixels": _NON_NEGATIVE_INT,
            "min_file_bytes": _NON_NEGATIVE_INT,
        },
    )
    if train.mixed_precision not in MIXED_PRECISION_CHOICES:
        raise ConfigError(
            f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {train.mixed_precision!r}"
        )
    if optim.lr_scheduler not in LR_SCHEDULERS:
        raise ConfigError(f"optim.lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {optim.lr_scheduler!r}")
    _check_ranges(
        "train",
        train,
        {
            "train_batch_size": _POSITIVE_INT,
            "gradient_accumulation_steps": _POSITIVE_INT,
            "num_train_epochs": _POSITIVE_INT,
            "max_train_steps": _POSITIVE_INT,
            "checkpointing_steps": _POSITIVE_INT,
            "checkpoints_total_limit": _POSITIVE_INT,
            "seed": _SEED,
        },
    )
    _check_ranges(
        "optim",
        optim,
        {
            "learning_rate": _POSITIVE_FLOAT,
            "adam_beta1": _BETA,
            "adam_beta2": _BETA,
            "weight_decay": _NON_NEGATIVE_FLOAT,
            "adam_epsilon": _POSITIVE_FLOAT,
            "max_grad_norm": _NON_NEGATIVE_FLOAT,
            "lr_warmup_steps": _NON_NEGATIVE_INT,
            "lr_gamma": _POSITIVE_FLOAT,
        },
    )
    for index, milestone in enumerate(optim.lr_milestones):
        _require(milestone >= 0, f"optim.lr_milestones[{index}]", ">= 0", milestone)
    _check_ranges("logging", logging, {"log_every": _POSITIVE_INT})


# ----------------------------------------------------------------------------------------------------------------
# Loading, overriding, recording
# ----------------------------------------------------------------------------------------------------------------

ConfigT = TypeVar("ConfigT", TrainDAPEConfig, TrainSeeSRConfig)

STAGE_CONFIGS: dict[str, type] = {"dape": TrainDAPEConfig, "seesr": TrainSeeSRConfig}


def default_config_path(stage: str) -> Path:
    """The YAML template shipped with the package for ``stage`` ("dape" or "seesr")."""
    return Path(__file__).resolve().parent.parent / "configs" / f"train_{stage}.yaml"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert ``value`` (parsed from YAML) against the annotation ``hint``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if isinstance(value, str):  # "--set data.root_folders=a" and a bare string in YAML mean a one-item list
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, item_hint, f"{key}[{index}]") for index, item in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off as booleans
            raise ConfigError(f'{key}: expected a string, got the boolean {value!r}; write it in quotes, e.g. "no"')
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {hint!r}")  # pragma: no cover - programming error


def _merge(instance: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Recursively assign ``values`` onto the dataclass ``instance`` with type checking."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(instance))
    names = {item.name for item in dataclasses.fields(instance)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown key {key!r}; valid keys here: {', '.join(sorted(names))}")
        current = getattr(instance, name)
        if dataclasses.is_dataclass(current):
            _merge(current, value, prefix=f"{key}.")
        else:
            setattr(instance, name, _coerce(value, hints[name], key))


def _is_string_field(config: Any, parts: list[str]) -> bool:
    """Whether the dotted path names a ``str`` (or ``str | None``) field; False for unknown paths."""
    node = config
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            return False
        node = getattr(node, part)
    if not dataclasses.is_dataclass(node) or parts[-1] not in {item.name for item in dataclasses.fields(node)}:
        return False
    hint = typing.get_type_hints(type(node))[parts[-1]]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return str in options


def apply_overrides(config: ConfigT, overrides: list[str] | tuple[str, ...]) -> ConfigT:
    """Apply ``a.b=c`` strings (values parsed as YAML: ``3``, ``1e-4``, ``true``, ``[a, b]``, ``null``) in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        if not dotted:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if _is_string_field(config, dotted.split(".")) and raw.strip() not in ("null", "~"):
            value: Any = raw.strip()  # "no", "on", "1e-4" stay text for string fields
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
        else:
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
        nested: Any = value
        for part in reversed(dotted.split(".")):
            nested = {part: nested}
        _merge(config, nested)
    return config


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line report in one line: where (1-based line and column) and what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def load_config(
    stage: str, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), validate: bool = True
) -> Any:
    """Build the stage's config: dataclass defaults <- YAML ``path`` <- ``overrides``; validate; return it.

    Args:
        stage: "dape" or "seesr".
        path: YAML file; ``None`` uses only the defaults.
        overrides: ``key.sub=value`` strings.
        validate: check required paths and value ranges (off only to print a partial config).
    """
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown training stage {stage!r}; choose one of {', '.join(STAGE_CONFIGS)}")
    config = STAGE_CONFIGS[stage]()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
        _merge(config, values)
    apply_overrides(config, list(overrides))
    if validate:
        config.validate()
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """The resolved configuration as plain Python containers (YAML/JSON serialisable)."""
    return dataclasses.asdict(config)


_VERSIONED_PACKAGES = (
    "seesr",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "accelerate",
    "peft",
    "timm",
    "safetensors",
    "numpy",
    "pillow",
    "bitsandbytes",
    "tensorboard",
)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that determine training numerics (``None`` when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_record(config: Any, output_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``config.yaml`` (resolved config) and ``versions.json`` (package versions + ``extra``) to ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(
        yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False), encoding="utf-8"
    )
    record = {"packages": package_versions(), **(extra or {})}
    (output_dir / "versions.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
