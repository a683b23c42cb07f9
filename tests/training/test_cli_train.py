"""``seesr train``: argument handling, config errors as exit codes, --print-config, and one real (1-step) run."""

from __future__ import annotations

import yaml

from seesr.cli.main import main as cli
from seesr.training.config import TrainDAPEConfig, config_to_dict
from tests.training.conftest import dape_overrides


def test_train_needs_a_stage_and_a_config(capsys):
    assert cli(["train"]) == 2
    assert "choose a stage" in capsys.readouterr().err
    assert cli(["train", "seesr"]) == 2
    assert "--config FILE is required" in capsys.readouterr().err


def test_print_config_shows_the_template_and_resolved_values(capsys, tmp_path):
    assert cli(["train", "dape", "--print-config"]) == 0
    template = yaml.safe_load(capsys.readouterr().out)
    assert template["optim"]["lr_milestones"] == [20000, 30000] and template["loss"]["logits_weight"] == 1.0
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(template))
    assert cli(["train", "dape", "--config", str(path), "--set", "train.seed=3", "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    expected = config_to_dict(TrainDAPEConfig())
    expected["train"]["seed"] = 3
    for section in ("optim", "loss", "train"):
        assert resolved[section] == expected[section]


def test_config_errors_are_usage_errors_without_traceback(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  ram_model_path: x.pth\ndata:\n  root_folders: [d]\n")
    assert cli(["train", "dape", "--config", str(path), "--set", "train.nonsense=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.nonsense'" in err and "Traceback" not in err
    assert cli(["train", "dape", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a config that parses but points at missing files fails cleanly at start-up (exit 1)
    assert cli(["train", "dape", "--config", str(path), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "x.pth does not exist" in err and "Traceback" not in err


def test_one_step_of_stage_one_through_the_cli(capsys, tmp_path, pairs_dir):
    path = tmp_path / "dape.yaml"
    path.write_text("train:\n  mixed_precision: 'no'\n")
    overrides = dape_overrides(pairs_dir, tmp_path / "unused", train__max_train_steps=1)
    args = ["train", "dape", "--config", str(path), "--output-dir", str(tmp_path / "run")]
    for item in overrides:
        args += ["--set", item]
    assert cli(args) == 0
    assert "trained model written to" in capsys.readouterr().out
    assert (tmp_path / "run" / "DAPE.pth").is_file() and (tmp_path / "run" / "config.yaml").is_file()


def test_shipped_accelerate_configs_parse():
    """The DDP / FSDP / DeepSpeed launch configs shipped next to the training configs are valid accelerate files."""
    from accelerate.commands.config.config_args import load_config_from_file

    from seesr.training.config import default_config_path

    folder = default_config_path("seesr").parent
    kinds = {}
    for name in ("accelerate_ddp.yaml", "accelerate_fsdp.yaml", "accelerate_deepspeed_zero2.yaml"):
        config = load_config_from_file(str(folder / name))
        kinds[name] = str(config.distributed_type)
    assert kinds == {
        "accelerate_ddp.yaml": "DistributedType.MULTI_GPU",
        "accelerate_fsdp.yaml": "DistributedType.FSDP",
        "accelerate_deepspeed_zero2.yaml": "DistributedType.DEEPSPEED",
    }
    fsdp = load_config_from_file(str(folder / "accelerate_fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is True  # frozen and trainable tensors share wrapped modules


def test_print_accelerate_config(capsys):
    assert cli(["train", "seesr", "--print-accelerate-config", "fsdp"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["distributed_type"] == "FSDP"
