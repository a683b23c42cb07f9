"""Run every SeeSR benchmark against one deadline and collect the results (JSON + a Markdown table).

Jobs, most important first; each is a subprocess (a crash or a hang cannot take the others down), started only if
the time left is at least its minimum, and killed at the deadline. Every job writes its JSON as soon as it has it,
and the merged ``results.json`` / ``RESULTS.md`` are rewritten after every job, so a run cut short keeps what it
measured:

1. ``check``              bench_inference ``check_tiny``: the fast path against the exact fp32 path on the device;
2. ``inference-fast``     bench_inference fast mode: 128²->512² (50 steps), turbo, 512²->2048², 1024²->4096²,
                          turbo 512²->2048²;
3. ``train-step``         bench_train_step.py: one stage-2 training step (batch 4, 512², bf16);
4. ``degradation``        bench_degradation.py: Real-ESRGAN degradation throughput (when present);
5. ``inference-offload``  bench_inference with model CPU offload (the <= 8 GB card setting) on 128² and 512²,
   then ``inference-offload-seq`` with sequential offload on 128²;
6. ``inference-baseline`` bench_inference baseline mode (fp16, official per-tile loop) on 128² and 512² inputs;
7. ``inference-compile``  bench_inference fast mode with ``--compile`` on 128² and 512² inputs.

    python benchmarks/run_all.py --deadline 540 --output-dir $OUT/bench --update-readme   # GPU session
    python benchmarks/run_all.py --tiny --device cpu --output-dir /tmp/bench                 # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


@dataclass
class Job:
    """One benchmark subprocess: ``command`` (without the output option), minimum seconds worth starting it."""

    name: str
    script: str
    arguments: list[str]
    min_seconds: float
    output_option: str = "--output-dir"
    output_is_file: bool = False
    passes_deadline: bool = False
    optional: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run of every script)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds for the whole run (default 540)")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results", help="where results go")
    parser.add_argument("--only", default=None, help="comma-separated job names to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated job names to leave out")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per inference case (default 3; tiny 1)")
    parser.add_argument("--update-readme", action="store_true", help="write the results table into README.md")
    parser.add_argument(
        "--copy-to",
        type=Path,
        default=None,
        help="after every job, copy results.json, RESULTS.md and a .tar.gz of all outputs and logs here "
        "(e.g. $OUT on a lent GPU machine, which returns at most 8 files)",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        default=None,
        help="run nothing: render RESULTS.md (and README.md with --update-readme) from a results.json fetched back",
    )
    return parser.parse_args(argv)


def jobs_for(args: argparse.Namespace) -> list[Job]:
    tiny = ["--tiny"] if args.tiny else []
    device = ["--device", args.device] if args.device else []
    runs = ["--runs", str(args.runs or (1 if args.tiny else 3))]
    warm = ["--warmup", "1"]
    scale = 0.0 if args.tiny else 1.0
    inference = [*tiny, *device, *runs, *warm]
    return [
        Job(
            "check",
            "bench_inference.py",
            [*inference, "--cases", "check_tiny", "--mode", "fast"],
            40 * scale,
            passes_deadline=True,
        ),
        Job(
            "inference-fast",
            "bench_inference.py",
            [*inference, "--mode", "fast", "--cases", "x4_128,turbo_128,x4_512,x4_1024,turbo_512"],
            60 * scale,
            passes_deadline=True,
        ),
        Job(
            "train-step",
            "bench_train_step.py",
            [*tiny, *device, "--steps", "3" if args.tiny else "10", "--warmup", "1" if args.tiny else "3"],
            90 * scale,
            output_option="--output",
            output_is_file=True,
        ),
        Job(
            "degradation",
            "bench_degradation.py",
            ["--devices", args.device or "auto", *(["--batch-size", "2", "--iters", "1"] if args.tiny else [])],
            40 * scale,
            output_option="--output",
            output_is_file=True,
            optional=True,
        ),
        Job(
            "inference-offload",
            "bench_inference.py",
            [*inference, "--mode", "fast", "--cases", "offload_128,offload_512"],
            90 * scale,
            passes_deadline=True,
        ),
        Job(
            "inference-offload-seq",
            "bench_inference.py",
            [*inference, "--mode", "fast", "--cases", "offload_seq_128"],
            90 * scale,
            passes_deadline=True,
        ),
        Job(
            "inference-baseline",
            "bench_inference.py",
            [*inference, "--mode", "baseline", "--cases", "x4_128,x4_512"],
            60 * scale,
            passes_deadline=True,
        ),
        Job(
            "inference-compile",
            "bench_inference.py",
            [*inference, "--mode", "fast", "--compile", "--cases", "x4_128,x4_512"],
            150 * scale,
            passes_deadline=True,
        ),
    ]


def _supported_options(script: Path, timeout: float) -> str:
    """The script's ``--help`` text (to pass only options it knows); empty if it cannot be read."""
    try:
        result = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"--[A-Za-z0-9][\w-]*", help_text))


def _filter_arguments(arguments: list[str], help_text: str) -> list[str]:
    """Drop options (and their values) that the script's --help does not declare (exact names)."""
    declared = _options(help_text)
    kept: list[str] = []
    index = 0
    while index < len(arguments):
        option = arguments[index]
        has_value = index + 1 < len(arguments) and not arguments[index + 1].startswith("--")
        if not option.startswith("--") or option in declared:
            kept.append(option)
            if has_value:
                kept.append(arguments[index + 1])
        index += 2 if has_value else 1
    return kept


def run_job(job: Job, args: argparse.Namespace, deadline: float, log_dir: Path) -> dict[str, Any]:
    """Run one job; returns its status record."""
    script = HERE / job.script
    record: dict[str, Any] = {"job": job.name, "script": job.script}
    remaining = deadline - time.time()
    if not script.is_file():
        record["status"] = "skipped: script missing" if job.optional else "error: script missing"
        return record
    if remaining < job.min_seconds:
        record["status"] = f"skipped: deadline ({remaining:.0f} s left, needs {job.min_seconds:.0f} s)"
        return record
    arguments = list(job.arguments)
    if job.script != "bench_inference.py":  # third-party CLIs: pass only the options they declare
        help_text = _supported_options(script, timeout=min(60.0, remaining))
        declared = _options(help_text)
        if job.output_option not in declared:
            for alternative in ("--output", "--out", "--json", "--output-dir"):
                if alternative in declared:
                    job.output_option = alternative
                    job.output_is_file = alternative != "--output-dir"
                    break
        arguments = _filter_arguments(arguments, help_text)
    output = args.output_dir / f"{job.name}.json" if job.output_is_file else args.output_dir
    command = [sys.executable, str(script), *arguments, job.output_option, str(output)]
    if job.passes_deadline:
        command += ["--deadline-at", f"{deadline:.1f}"]
    record["command"] = " ".join(command[1:])
    log_path = log_dir / f"{job.name}.log"
    started = time.time()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with log_path.open("w") as log:
        try:
            process = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=max(1.0, deadline - time.time()),
                env=env,
                check=False,
                cwd=HERE.parent,
            )
            record["status"] = "ok" if process.returncode == 0 else f"error: exit code {process.returncode}"
        except subprocess.TimeoutExpired:
            record["status"] = "timeout (partial results kept)"
    record["seconds"] = round(time.time() - started, 1)
    record["log"] = str(log_path)
    if job.output_is_file and output.is_file():
        try:
            record["result"] = json.loads(output.read_text())
        except (OSError, ValueError):
            record["result"] = None
    return record


def collect(output_dir: Path, jobs: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """Merge the per-case inference JSON files and the job records."""
    cases = []
    for path in sorted(output_dir.glob("inference_*.json")):
        try:
            cases.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "jobs": jobs, "inference": cases}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _highlights(result: Any, prefix: str = "") -> list[str]:
    """``key value`` strings for the throughput / time / memory numbers of a job's JSON (one level of nesting)."""
    words = ("per_s", "per_second", "time_s", "seconds_median", "peak", "throughput")
    found: list[str] = []
    if isinstance(result, dict):
        label = f"{result.get('device')} " if prefix and result.get("device") else ""
        for key, value in result.items():
            if isinstance(value, (int, float)) and any(word in key for word in words):
                found.append(f"{label}{key} {value}")
            elif isinstance(value, list) and not prefix:
                for item in value:
                    found += _highlights(item, prefix="-")
    return found


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (inference cases, then the other jobs)."""
    lines = [f"Run started {results['started']}.", ""]
    order = {"fast": 0, "baseline": 1, "parity": 2}
    cases = [case for case in results["inference"] if case.get("case") != "check_tiny"]
    cases.sort(
        key=lambda case: (
            order.get(case.get("mode"), 3),
            bool(case.get("compile")),
            "offload" in str(case.get("case")),
        )
    )
    if cases:
        first = cases[0]
        lines += [
            f"Device: {first.get('device_name')} ({first.get('gpu_memory_gib', '-')} GiB); torch {first.get('torch')}, "
            f"diffusers {first.get('diffusers')}, transformers {first.get('transformers')}; models: {first.get('models')}.",
            "",
            "| case | mode | in → out | steps | tiles | median s | s/step | first run s | peak alloc GiB | peak reserved GiB | status |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for case in cases:
            lr, out = case.get("lr_size"), case.get("output_size")
            sizes = f"{lr[0]}² → {out[0]}x{out[1]}" if lr and out else "-"
            mode = case.get("mode", "?") + (" +compile" if case.get("compile") else "")
            mode += f" ({case['dtype']})" if case.get("dtype") else ""
            lines.append(
                f"| {case.get('case')} | {mode} | {sizes} | {_fmt(case.get('steps'))} | "
                f"{_fmt(case.get('latent_tiles'))} | {_fmt(case.get('median_s'))} | {_fmt(case.get('s_per_step'), 3)} | "
                f"{_fmt(case.get('first_run_s'))} | {_fmt(case.get('peak_allocated_gib'))} | "
                f"{_fmt(case.get('peak_reserved_gib'))} | {str(case.get('status', '-'))[:60]} |"
            )
        lines.append("")
    checks = [case for case in results["inference"] if case.get("case") == "check_tiny"]
    for check in checks:
        lines.append(f"Fast-path check on {check.get('device_name')}: {check.get('status')}")
        for name in ("case1", "case2"):
            if isinstance(check.get(name), dict):
                details = ", ".join(f"{key} {value}" for key, value in check[name].items())
                lines.append(f"- {name}: {details}")
        lines.append("")
    lines += ["| job | status | seconds | result |", "| --- | --- | --- | --- |"]
    for job in results["jobs"]:
        summary = ", ".join(_highlights(job.get("result"))[:6])
        lines.append(f"| {job['job']} | {job['status']} | {_fmt(job.get('seconds'), 1)} | {summary} |")
    return "\n".join(lines) + "\n"


def update_readme(table: str, readme: Path = README) -> bool:
    """Replace the text between the results markers of ``readme``; False if the markers are missing."""
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")
    return True


def _copy_out(output_dir: Path, destination: Path) -> None:
    """results.json, RESULTS.md and an archive of everything else (logs, per-case JSON) into ``destination``."""
    import shutil
    import tarfile

    destination.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "RESULTS.md"):
        if (output_dir / name).is_file():
            shutil.copy2(output_dir / name, destination / name)
    with tarfile.open(destination / "bench_outputs.tar.gz", "w:gz") as archive:
        archive.add(output_dir, arcname="bench")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_results is not None:
        table = markdown(json.loads(args.from_results.read_text()))
        (args.from_results.parent / "RESULTS.md").write_text(table)
        if args.update_readme and not update_readme(table):
            print("README.md has no results markers; table not inserted", file=sys.stderr)  # noqa: T201
        print(table)  # noqa: T201
        return 0
    started = time.time()
    deadline = started + args.deadline
    args.output_dir.mkdir(parents=True, exist_ok=True)
    log_dir = args.output_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    selected = set(filter(None, (args.only or "").split(",")))
    skipped = set(filter(None, args.skip.split(",")))
    records: list[dict[str, Any]] = []
    for job in jobs_for(args):
        if (selected and job.name not in selected) or job.name in skipped:
            continue
        print(f"[{time.time() - started:6.0f} s] {job.name} ...", flush=True)  # noqa: T201
        record = run_job(job, args, deadline, log_dir)
        records.append(record)
        print(f"[{time.time() - started:6.0f} s] {job.name}: {record['status']}", flush=True)  # noqa: T201
        results = collect(args.output_dir, records, started)
        (args.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.output_dir / "RESULTS.md").write_text(markdown(results))
        if args.copy_to is not None:
            _copy_out(args.output_dir, args.copy_to)
    table = markdown(collect(args.output_dir, records, started))
    if args.update_readme and not update_readme(table):
        print("README.md has no results markers; table not inserted", file=sys.stderr)  # noqa: T201
    print(table)  # noqa: T201
    return 0 if all(not record["status"].startswith("error") for record in records) else 1


if __name__ == "__main__":
    sys.exit(main())
