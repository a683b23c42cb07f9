"""The benchmark runner's bookkeeping (no models): option filtering, deadlines, result tables, README update."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_all() -> ModuleType:
    return _load("run_all")


def test_only_declared_options_are_passed(run_all: ModuleType) -> None:
    help_text = "usage: x [--devices DEVICES] [--batch-size N] [--output OUTPUT]"
    arguments = ["--tiny", "--device", "cpu", "--devices", "cpu", "--batch-size", "2"]
    assert run_all._filter_arguments(arguments, help_text) == ["--devices", "cpu", "--batch-size", "2"]


def test_jobs_order_and_tiny_flags(run_all: ModuleType) -> None:
    args = run_all.parse_args(["--tiny", "--device", "cpu"])
    jobs = run_all.jobs_for(args)
    assert [job.name for job in jobs][:3] == ["check", "inference-fast", "train-step"]
    assert all(job.min_seconds == 0 for job in jobs)
    fast_job = jobs[1]
    assert "--tiny" in fast_job.arguments and "x4_1024" in fast_job.arguments[-1]
    full = run_all.jobs_for(run_all.parse_args([]))
    assert all(job.min_seconds > 0 for job in full)


def test_deadline_skips_and_missing_scripts(run_all: ModuleType, tmp_path: Path) -> None:
    args = argparse.Namespace(output_dir=tmp_path)
    job = run_all.Job("x", "bench_inference.py", [], min_seconds=100)
    record = run_all.run_job(job, args, time.time() + 5, tmp_path)
    assert record["status"].startswith("skipped: deadline")
    missing = run_all.Job("y", "bench_does_not_exist.py", [], 0, optional=True)
    assert run_all.run_job(missing, args, time.time() + 5, tmp_path)["status"] == "skipped: script missing"


def test_markdown_and_readme_update(run_all: ModuleType, tmp_path: Path) -> None:
    case = {
        "case": "x4_128",
        "mode": "fast",
        "dtype": "bfloat16",
        "lr_size": [128, 128],
        "output_size": [512, 512],
        "steps": 50,
        "latent_tiles": 1,
        "median_s": 3.21,
        "s_per_step": 0.064,
        "first_run_s": 9.0,
        "peak_allocated_gib": 7.5,
        "peak_reserved_gib": 8.0,
        "status": "ok",
        "device_name": "GPU",
        "torch": "t",
    }
    (tmp_path / "inference_fast_x4_128.json").write_text(json.dumps(case))
    jobs = [{"job": "train-step", "status": "ok", "seconds": 12.0, "result": {"samples_per_s": 4.2, "x": 1}}]
    table = run_all.markdown(run_all.collect(tmp_path, jobs, time.time()))
    assert "| x4_128 | fast (bfloat16) | 128² → 512x512 | 50 | 1 | 3.21 | 0.064 | 9.00 | 7.50 | 8.00 | ok |" in table
    assert "samples_per_s 4.2" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run_all.BEGIN}\nold\n{run_all.END}\noutro\n")
    assert run_all.update_readme(table, readme)
    text = readme.read_text()
    assert "old" not in text and "x4_128" in text and text.startswith("intro") and text.endswith("outro\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not run_all.update_readme(table, plain)


def test_bench_inference_cases_are_consistent() -> None:
    bench = _load("bench_inference")
    assert set(bench.FULL_CASES) == set(bench.TINY_CASES)
    assert bench.FULL_CASES["x4_512"].lr_size * 4 == 2048 and bench.tile_count(bench.FULL_CASES["x4_512"]) == 9
    assert bench.tile_count(bench.FULL_CASES["x4_1024"]) == 36
    turbo = bench.FULL_CASES["turbo_128"]
    assert (turbo.steps, turbo.guidance_scale, turbo.latent_tile_overlap) == (2, 1.0, 32)
    args = bench.parse_args(["--tiny", "--cases", "x4_128"])
    assert args.tiny and args.runs == 3


def test_render_from_fetched_results_and_copy_out(run_all: ModuleType, tmp_path: Path) -> None:
    case = {"case": "x4_512", "mode": "fast", "median_s": 9.5, "status": "ok", "lr_size": [512, 512]}
    results = {"started": "now", "jobs": [{"job": "check", "status": "ok", "seconds": 3.0}], "inference": [case]}
    fetched = tmp_path / "fetched" / "results.json"
    fetched.parent.mkdir()
    fetched.write_text(json.dumps(results))
    assert run_all.main(["--from-results", str(fetched)]) == 0
    assert "| x4_512 | fast |" in (fetched.parent / "RESULTS.md").read_text()
    run_all._copy_out(fetched.parent, tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "RESULTS.md",
        "bench_outputs.tar.gz",
        "results.json",
    ]
