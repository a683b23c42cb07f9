"""Training configs: YAML templates, typed overrides, validation, run record."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from seesr.training.config import (
    ConfigError,
    TrainDAPEConfig,
    TrainSeeSRConfig,
    apply_overrides,
    config_to_dict,
    default_config_path,
    load_config,
    write_run_record,
)


@pytest.mark.parametrize("stage", ["dape", "seesr"])
def test_shipped_template_matches_dataclass_defaults(stage):
    """The YAML template lists every default (the official hyper-parameters) and nothing the dataclass lacks."""
    config = load_config(stage, default_config_path(stage), validate=False)
    defaults = {"dape": TrainDAPEConfig, "seesr": TrainSeeSRConfig}[stage]()
    shipped = config_to_dict(config)
    expected = config_to_dict(defaults)
    for section, values in expected.items():
        for key, value in values.items():
            if key in ("root_folders", "pretrained_model_name_or_path", "ram_model_path", "dape_model_path"):
                continue  # placeholders for the user's paths
            assert shipped[section][key] == value, f"{stage}: {section}.{key}"


def test_official_hyper_parameters():
    seesr = TrainSeeSRConfig()
    assert seesr.optim.learning_rate == 5e-5 and seesr.optim.weight_decay == 1e-2
    assert (seesr.optim.adam_beta1, seesr.optim.adam_beta2, seesr.optim.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert seesr.optim.lr_scheduler == "constant" and seesr.optim.max_grad_norm == 1.0
    assert seesr.model.null_text_ratio == 0.5 and seesr.train.mixed_precision == "fp16"
    assert seesr.train.train_batch_size * seesr.train.gradient_accumulation_steps * 8 == 32
    dape = TrainDAPEConfig()
    assert dape.optim.learning_rate == 1e-4 and dape.optim.weight_decay == 0.0
    assert (
        dape.optim.lr_milestones == [20000, 30000] and dape.optim.lr_gamma == 0.5 and dape.optim.lr_warmup_steps == 50
    )
    assert dape.train.train_batch_size == 8 and dape.train.seed == 10 and dape.train.checkpointing_steps == 1000
    assert dape.loss.logits_weight == 1.0 and dape.loss.feature_weight == 1.0


def test_overrides_are_typed():
    config = TrainSeeSRConfig()
    apply_overrides(
        config,
        [
            "train.max_train_steps=30",
            "optim.learning_rate=1e-4",  # YAML reads this as a string; the float field converts it
            "data.root_folders=[a, b]",
            "data.shuffle=false",
            "train.resume_from_checkpoint=latest",
            "validation.steps=null",
            "model.dape_model_path=x/DAPE.pth",
        ],
    )
    assert config.train.max_train_steps == 30
    assert config.optim.learning_rate == pytest.approx(1e-4) and isinstance(config.optim.learning_rate, float)
    assert config.data.root_folders == ["a", "b"] and config.data.shuffle is False
    assert config.train.resume_from_checkpoint == "latest" and config.validation.steps is None
    apply_overrides(config, ["data.root_folders=single"])
    assert config.data.root_folders == ["single"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_steps=3", "unknown key 'train.max_steps'"),
        ("train.train_batch_size=two", "train.train_batch_size: expected an integer"),
        ("train.train_batch_size=1.5", "expected an integer"),
        ("data.shuffle=maybe", "data.shuffle: expected true or false"),
        ("train=3", "train: expected a mapping"),
        ("novalue", "expects key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainSeeSRConfig(), [override])


def test_yaml_and_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"ram_model_path": "ram.pth"}, "data": {"root_folders": ["d"]}}))
    config = load_config("dape", path, ["train.mixed_precision=bf16"])
    assert config.train.mixed_precision == "bf16" and config.model.ram_model_path == "ram.pth"
    with pytest.raises(ConfigError, match="train.mixed_precision must be one of"):
        load_config("dape", path, ["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="data.resolution must be a positive multiple of 8"):
        load_config("dape", path, ["data.resolution=500"])
    with pytest.raises(ConfigError, match="model.pretrained_model_name_or_path is required"):
        load_config("seesr", path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("seesr", tmp_path / "missing.yaml")
    path.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML: line 2, column 1: ") as raised:
        load_config("seesr", path)
    assert "\n" not in str(raised.value)  # one line, where and what


def test_run_record(tmp_path):
    config = TrainSeeSRConfig()
    write_run_record(config, tmp_path, extra={"stage": "seesr"})
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config_to_dict(config)
    record = json.loads((tmp_path / "versions.json").read_text())
    assert record["stage"] == "seesr"
    assert record["packages"]["torch"] and record["packages"]["diffusers"] and record["packages"]["accelerate"]


def test_string_fields_keep_yaml_keywords_as_text(tmp_path):
    config = apply_overrides(
        TrainSeeSRConfig(), ["train.mixed_precision=no", "logging.report_to=none", "train.output_dir='o n'"]
    )
    assert config.train.mixed_precision == "no" and config.logging.report_to == "none"
    assert config.train.output_dir == "o n"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    with pytest.raises(ConfigError, match="write it in quotes"):
        load_config("seesr", path, validate=False)


@pytest.mark.parametrize(
    ("stage", "override", "key"),
    [
        ("seesr", "train.train_batch_size=-3", "train.train_batch_size"),
        ("seesr", "optim.learning_rate=nan", "optim.learning_rate"),
        ("seesr", "optim.learning_rate=-1e-4", "optim.learning_rate"),
        ("seesr", "optim.learning_rate=.inf", "optim.learning_rate"),
        ("seesr", "train.max_train_steps=0", "train.max_train_steps"),
        ("seesr", "train.max_train_steps=-5", "train.max_train_steps"),
        ("seesr", "train.num_train_epochs=0", "train.num_train_epochs"),
        ("seesr", "train.checkpointing_steps=0", "train.checkpointing_steps"),
        ("seesr", "train.checkpoints_total_limit=0", "train.checkpoints_total_limit"),
        ("seesr", "train.seed=-1", "train.seed"),
        ("seesr", "optim.adam_beta2=1.5", "optim.adam_beta2"),
        ("seesr", "optim.adam_epsilon=0", "optim.adam_epsilon"),
        ("seesr", "optim.weight_decay=nan", "optim.weight_decay"),
        ("seesr", "optim.max_grad_norm=-1", "optim.max_grad_norm"),
        ("seesr", "optim.lr_warmup_steps=-1", "optim.lr_warmup_steps"),
        ("seesr", "optim.lr_milestones=[100, -3]", "optim.lr_milestones[1]"),
        ("seesr", "data.num_workers=-1", "data.num_workers"),
        ("seesr", "model.null_text_ratio=nan", "model.null_text_ratio"),
        ("seesr", "model.caption_tagger=blip", "model.caption_tagger"),
        ("seesr", "validation.num_inference_steps=0", "validation.num_inference_steps"),
        ("seesr", "validation.guidance_scale=nan", "validation.guidance_scale"),
        ("seesr", "validation.loss_steps=-2", "validation.loss_steps"),
        ("dape", "loss.logits_weight=nan", "loss.logits_weight"),
        ("dape", "optim.lr_gamma=0", "optim.lr_gamma"),
        ("dape", "logging.log_every=0", "logging.log_every"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(tmp_path, stage, override, key):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "ram_model_path": "ram.pth",
                    **({"pretrained_model_name_or_path": "sd2"} if stage == "seesr" else {}),
                },
                "data": {"root_folders": ["d"]},
            }
        )
    )
    load_config(stage, path)  # the file itself is valid
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must be .*, got "):
        load_config(stage, path, [override])
