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


def _dape_args(tmp_path, pairs_dir, run, *extra):
    path = tmp_path / "dape.yaml"
    path.write_text("train:\n  mixed_precision: 'no'\n")
    args = ["train", "dape", "--config", str(path), "--output-dir", str(run)]
    for item in dape_overrides(pairs_dir, run, train__max_train_steps=1):
        args += ["--set", item]
    return [*args, *extra]  # after the defaults: a later --set wins


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_pickled_checkpoints_in_one_line_without_running_them(capsys, tmp_path, pairs_dir):
    """An old accelerate checkpoint (a payload optimizer.bin, as a downloaded checkpoint could hold) is refused by
    `seesr train --resume`: exit 1, one line naming the file and why, the payload never runs, the run folder is left
    exactly as it was (not even config.yaml is written)."""
    from tests.training.test_checkpointing import legacy_checkpoint, payload_bytes

    run = tmp_path / "run"
    marker = tmp_path / "marker"
    (run / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoint-5" / "optimizer.bin").write_bytes(payload_bytes(marker, torch_format=True))
    legacy_checkpoint(run / "checkpoint-2", marker)
    before = _files(run)
    for resume in ("latest", str(run / "checkpoint-5")):
        assert cli(_dape_args(tmp_path, pairs_dir, run, "--resume", resume)) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "checkpoint-5" in err and "optimizer.bin" in err and "pickle" in err
    assert not marker.exists() and _files(run) == before


def test_resume_from_a_truncated_checkpoint_is_one_line_naming_the_file(capsys, tmp_path, pairs_dir):
    from tests.training.test_checkpointing import saved_run

    run = tmp_path / "run"
    saved_run(run, steps=(1,))
    trainable = run / "checkpoint-1" / "trainable.safetensors"
    trainable.write_bytes(trainable.read_bytes()[:-100])
    assert cli(_dape_args(tmp_path, pairs_dir, run, "--resume", "latest")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(trainable) in err and "truncated" in err


def test_out_of_range_config_values_are_usage_errors(capsys, tmp_path, pairs_dir):
    assert cli(_dape_args(tmp_path, pairs_dir, tmp_path / "run", "--set", "train.train_batch_size=-3")) == 2
    err = capsys.readouterr().err
    assert "train.train_batch_size must be >= 1, got -3" in err and "Traceback" not in err
    assert cli(_dape_args(tmp_path, pairs_dir, tmp_path / "run", "--set", "optim.learning_rate=nan")) == 2
    assert "optim.learning_rate must be a finite number > 0, got nan" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
