"""Scale-out: images per second of ``seesr upscale`` locally and through ``--ray`` with 1 and 2 actors.

The same N inputs go through three runs, each into a fresh folder, end to end as a user types them (model loading
included: each Ray actor loads its own copy): the local run, ``--ray --ray-actors 1`` and ``--ray --ray-actors 2``.
The Ray cluster is started once before the timings (its start-up is reported apart). Printed: images/s of each
run, the 2-actor/1-actor ratio (the scaling) and the 1-actor/local ratio (Ray's overhead).

    python benchmarks/bench_scaleout.py --tiny --images 8                      # CPU smoke run, the tiny bundle
    python benchmarks/bench_scaleout.py --model /path/to/seesr --images 32     # a 2-GPU machine, real weights

On one machine two actors share its CPUs or need two GPUs (``--ray-gpus-per-actor 0.5`` puts both on one GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "fixtures" / "reference" / "tiny"


def _inputs(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    sources = [TINY / "pipeline_case1_lr.png", TINY / "pipeline_case2_lr.png"]
    for index in range(count):
        shutil.copy(sources[index % 2], folder / f"img{index:04d}.png")
    return folder


def _timed_upscale(argv: list[str]) -> float:
    from seesr.cli.main import main

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["upscale", *argv, "--quiet"])
    if code != 0:
        raise SystemExit(f"seesr upscale {' '.join(argv)} failed ({code}): {out.getvalue()}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny random-weight bundle (CPU smoke run)")
    parser.add_argument("--model", default=None, help="model folder (default: the tiny bundle with --tiny)")
    parser.add_argument("--images", type=int, default=8, help="number of inputs (default: 8)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: 4 with --tiny, else 50)")
    parser.add_argument("--device", default="auto", help="device of the local run and of each actor")
    parser.add_argument("--ray-gpus-per-actor", default=None, help="passed to seesr upscale")
    parser.add_argument("--output", default=None, metavar="JSON", help="also write the figures here")
    args = parser.parse_args()
    model = args.model or (str(TINY) if args.tiny else None)
    steps = args.steps or (4 if args.tiny else 50)
    common = ["--steps", str(steps), "--seed", "1", "--device", args.device]
    common += ["--model", model] if model else []

    import ray

    with tempfile.TemporaryDirectory(prefix="seesr-bench-scaleout-") as tmp:
        inputs = _inputs(Path(tmp) / "in", args.images)
        started = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        cluster_start = time.perf_counter() - started
        try:
            seconds = {"local": _timed_upscale([str(inputs), "-o", f"{tmp}/local", *common])}
            for actors in (1, 2):
                extra = ["--ray-gpus-per-actor", args.ray_gpus_per_actor] if args.ray_gpus_per_actor else []
                argv = [str(inputs), "-o", f"{tmp}/ray{actors}", *common, "--ray", "--ray-actors", str(actors)]
                seconds[f"ray_{actors}_actors"] = _timed_upscale([*argv, *extra])
        finally:
            ray.shutdown()
    rates = {name: args.images / value for name, value in seconds.items()}
    figures = {
        "images": args.images,
        "steps": steps,
        "model": model or "default",
        "ray_cluster_start_s": round(cluster_start, 2),
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
        "images_per_s": {name: round(value, 3) for name, value in rates.items()},
        "scaling_2_vs_1_actor": round(rates["ray_2_actors"] / rates["ray_1_actors"], 2),
        "ray_1_actor_vs_local": round(rates["ray_1_actors"] / rates["local"], 2),
    }
    print(json.dumps(figures, indent=1))  # noqa: T201
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
