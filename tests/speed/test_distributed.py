"""Sharded multi-process inference helpers: 2 CPU processes (gloo) started by ``launch_workers``."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from seesr.utils.distributed import DistributedContext, init_distributed, launch_workers, shard, worker_environment

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from seesr.utils.distributed import init_distributed

    out = Path(sys.argv[1])
    items = [f"image_{index:02d}" for index in range(int(sys.argv[2]))]
    with init_distributed() as context:
        done = []
        for name in context.shard(items):
            # O_EXCL: writing the same output twice would raise
            with open(out / f"{name}.txt", "x") as handle:
                handle.write(str(context.rank))
            done.append(name)
        results = context.gather({"rank": context.rank, "done": done})
        if context.is_main:
            summary = {"world_size": context.world_size, "results": results}
            (out / "summary.json").write_text(json.dumps(summary))
    """
)


def test_shard_covers_every_item_once() -> None:
    items = list(range(11))
    parts = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parts[0] == [0, 3, 6, 9]
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_single_process_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    context = init_distributed()
    assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (0, 1, True, False)
    assert context.shard([1, 2, 3]) == [1, 2, 3]
    assert context.gather("x") == ["x"]


def test_missing_rendezvous_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed()


def test_worker_environment() -> None:
    env = worker_environment(1, 2, 29555, base={"PATH": "/bin"})
    assert env["RANK"] == env["LOCAL_RANK"] == "1"
    assert (env["WORLD_SIZE"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("2", "127.0.0.1", "29555")
    assert env["PATH"] == "/bin"


def test_two_processes_write_each_output_once(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    code = launch_workers(2, [str(out), "5"], executable=[sys.executable, str(script)], timeout=120)
    assert code == 0
    written = sorted(path.stem for path in out.glob("*.txt"))
    assert written == [f"image_{index:02d}" for index in range(5)]
    ranks = {path.stem: path.read_text() for path in out.glob("*.txt")}
    assert {ranks[f"image_{index:02d}"] for index in (0, 2, 4)} == {"0"}
    assert {ranks[f"image_{index:02d}"] for index in (1, 3)} == {"1"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert [result["rank"] for result in summary["results"]] == [0, 1]
    assert sorted(sum((result["done"] for result in summary["results"]), [])) == written


def test_failing_worker_stops_the_others() -> None:
    program = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(3)\ntime.sleep(60)"
    started = time.monotonic()
    assert launch_workers(2, [], executable=[sys.executable, "-c", program], timeout=50) == 3
    assert time.monotonic() - started < 40


def test_timeout_kills_workers() -> None:
    program = "import time\ntime.sleep(60)"
    assert launch_workers(2, [], executable=[sys.executable, "-c", program], timeout=1) == 124


def test_context_device_on_cpu() -> None:
    context = DistributedContext()
    assert context.device("cpu").type == "cpu"
