"""benchmarks/gpu_check.sh, run on the CPU (``GPU_CHECK_DEVICE=cpu``): its phases, files and exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(tmp_path: Path, budget: int, python: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_BUDGET": str(budget),
        "RESULTS_DIR": str(tmp_path / "results"),
        "PYTHON": python,
        "TMPDIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600, check=False)
    summary = (tmp_path / "results" / "summary.tsv").read_text().splitlines()
    return done, [line.split("\t") for line in summary[1:]]


def test_without_a_usable_python_the_setup_fails_clearly(tmp_path):
    done, phases = _run(tmp_path, 60, "/bin/false")
    assert done.returncode == 2
    assert phases[0][:2] == ["setup", "failed"] and "PYTHON=" in phases[0][3]
    assert len(phases) == 1  # nothing ran after a failed set-up


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_phase(tmp_path):
    """A 60 s budget: set-up, environment, pytest -m gpu (all skipped on the CPU), doctor --check; no time is left
    for the benchmarks, which are then skipped (measured about 45 s on 2 shared cores)."""
    built_before = (ROOT / "build").exists()
    done, phases = _run(tmp_path, 60, sys.executable)
    statuses = {phase[0]: phase[1] for phase in phases}
    assert statuses == {
        "setup": "ok",
        "environment": "ok",
        "pytest-gpu": "ok",
        "doctor-check": "ok",
        "benchmarks": "skipped",
    }, done.stdout[-3000:]
    assert done.returncode == 1  # a skipped phase is not a pass
    results = tmp_path / "results"
    for name in ("gpu_check.log", "summary.tsv", "doctor.json", "pytest_gpu.xml", "doctor_check.json"):
        assert (results / name).is_file(), name
    assert "PSNR" in next(phase[3] for phase in phases if phase[0] == "doctor-check")
    assert "seesr installed from" in (results / "gpu_check.log").read_text()
    if not built_before:  # the in-tree build's folder is cleaned up
        assert not (ROOT / "build").exists()
