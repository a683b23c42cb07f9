"""``seesr train dape|seesr``: the two SeeSR training stages.

Stage 1 (``dape``) fine-tunes RAM with LoRA into the degradation-aware prompt extractor; stage 2 (``seesr``) trains
the ControlNet and the RCA layers on top of a frozen Stable Diffusion 2 base. Both read a YAML config (the templates
ship with the package: ``seesr train dape --print-config``) and run unchanged under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import sys

from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError

ACCELERATE_CONFIGS = {
    "ddp": "accelerate_ddp.yaml",
    "fsdp": "accelerate_fsdp.yaml",
    "deepspeed": "accelerate_deepspeed_zero2.yaml",
}

STAGES = {
    "dape": "stage 1: train DAPE (RAM + LoRA) to extract prompts from degraded images",
    "seesr": "stage 2: train the ControlNet and the RCA layers on a frozen SD-2 base",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train DAPE (stage 1) or SeeSR (stage 2)",
        description=(
            "Train one of the two SeeSR stages from a YAML config. Values resolve as: built-in defaults (the "
            "official hyper-parameters) <- --config FILE <- --set overrides. Every run writes config.yaml and "
            "versions.json into its output folder, checkpoints to checkpoint-<step>/ (written atomically; resume with "
            "--resume latest) "
            "and TensorBoard logs to logs/. For several GPUs or nodes run the same command under `accelerate "
            "launch`, e.g. `accelerate launch --config_file ddp.yaml -m seesr train seesr --config c.yaml`; "
            "`--print-accelerate-config ddp|fsdp|deepspeed` prints a DDP, FSDP or DeepSpeed ZeRO-2 launch config "
            "to start from."
        ),
    )
    stages = parser.add_subparsers(dest="stage", metavar="STAGE")
    for stage, help_text in STAGES.items():
        stage_parser = stages.add_parser(stage, help=help_text, description=help_text)
        stage_parser.add_argument(
            "--config",
            metavar="FILE",
            help=f"YAML config (template: `seesr train {stage} --print-config > train_{stage}.yaml`)",
        )
        stage_parser.add_argument(
            "--set",
            dest="overrides",
            metavar="KEY=VALUE",
            action="append",
            default=[],
            help="override one config value, e.g. --set train.max_train_steps=1000 --set optim.learning_rate=1e-5 "
            "(values are parsed as YAML; repeat for several)",
        )
        stage_parser.add_argument(
            "--resume",
            metavar="CHECKPOINT",
            help='resume from a checkpoint-<step> folder, or "latest": the newest complete checkpoint of the run '
            "(same as --set train.resume_from_checkpoint=...). Checkpoints are safetensors + JSON and nothing is "
            "unpickled; checkpoints of earlier seesr versions (accelerate's .pkl/.bin files) are refused",
        )
        stage_parser.add_argument(
            "--output-dir", metavar="DIR", help="run folder (same as --set train.output_dir=DIR)"
        )
        stage_parser.add_argument(
            "--print-accelerate-config",
            choices=tuple(ACCELERATE_CONFIGS),
            metavar="KIND",
            help="print a launch config for `accelerate launch --config_file` (ddp, fsdp or deepspeed) and exit",
        )
        stage_parser.add_argument(
            "--print-config",
            action="store_true",
            help="print the resolved config as YAML and exit (without --config: the shipped template)",
        )
        stage_parser.set_defaults(func=run)
    parser.set_defaults(func=_missing_stage)
    return parser


def _missing_stage(args: argparse.Namespace) -> int:
    raise CLIError("choose a stage: `seesr train dape` or `seesr train seesr` (see `seesr train --help`)", EXIT_USAGE)


def run(args: argparse.Namespace) -> int:
    import yaml

    from seesr.training.common import TrainingError
    from seesr.training.config import ConfigError, config_to_dict, default_config_path, load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.resume:
        overrides.append(f"train.resume_from_checkpoint={args.resume}")

    if args.print_accelerate_config:
        folder = default_config_path(args.stage).parent
        sys.stdout.write((folder / ACCELERATE_CONFIGS[args.print_accelerate_config]).read_text(encoding="utf-8"))
        return EXIT_OK
    if args.print_config and not args.config and not overrides:
        sys.stdout.write(default_config_path(args.stage).read_text(encoding="utf-8"))
        return EXIT_OK
    if not args.config and not args.print_config:
        raise CLIError(
            f"--config FILE is required (start from the template: seesr train {args.stage} --print-config)",
            EXIT_USAGE,
        )
    try:
        config = load_config(args.stage, args.config, overrides, validate=not args.print_config)
    except (ConfigError, OSError) as error:
        raise CLIError(f"config: {error}", EXIT_USAGE) from None
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        return EXIT_OK

    try:
        if args.stage == "dape":
            from seesr.training.train_dape import main as train_main
        else:
            from seesr.training.train_seesr import main as train_main
        result = train_main(config)
    except (ConfigError, TrainingError) as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    if result.final_model_dir is not None:
        print(f"trained model written to {result.final_model_dir}")  # noqa: T201
    return EXIT_OK
