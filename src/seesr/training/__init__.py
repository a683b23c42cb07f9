"""Training for both SeeSR stages, on accelerate: ``seesr train dape`` (stage 1) and ``seesr train seesr`` (stage 2).

Modules:

* :mod:`seesr.training.config` — typed YAML configs (:class:`~seesr.training.config.TrainDAPEConfig`,
  :class:`~seesr.training.config.TrainSeeSRConfig`) whose defaults are the official hyper-parameters; templates
  ship as ``seesr/configs/train_{dape,seesr}.yaml`` (``seesr train STAGE --print-config``);
* :mod:`seesr.training.train_dape` / :mod:`seesr.training.train_seesr` — ``main(config) -> TrainResult``, each
  readable top to bottom (build -> freeze -> select trainable -> loop -> save);
* :mod:`seesr.training.losses` — Eq. (1) (DAPE) and Eq. (2) (noise prediction);
* :mod:`seesr.training.export` — the written models (``DAPE.pth`` + ``tagger/``; ``official/`` + ``model/``);
* :mod:`seesr.training.checkpointing` — ``checkpoint-<step>/`` folders: safetensors + JSON (nothing is unpickled on
  resume), written under a temporary name and renamed when complete.

Python use::

    from seesr.training.config import load_config
    from seesr.training.train_seesr import main

    result = main(load_config("seesr", "train_seesr.yaml", ["train.max_train_steps=1000"]))
    result.final_model_dir  # a bundle that SeeSRPipeline.from_pretrained and `seesr upscale --model` load

Distributed training runs the same command under ``accelerate launch`` (one process per GPU, any number of
nodes). Tested: one process, DDP with 2 CPU processes over gloo
(``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m seesr train ...``), and the multi-node
launch (``--num_machines 2 --machine_rank 0|1 --main_process_ip ...``) as two one-process machines. Launch configs for
DDP, FSDP and DeepSpeed ZeRO-2 ship next to the training templates (``seesr train seesr
--print-accelerate-config ddp|fsdp|deepspeed``); under FSDP/DeepSpeed checkpoints use accelerate's own format
(resuming from it unpickles, so it needs ``train.allow_pickle_resume: true``), the final export gathers the whole
weights, and the per-step validation should stay off.

Heavy libraries are imported by the stage modules only.
"""

from __future__ import annotations
