"""Sharded multi-process helpers: rendezvous from the environment, sharding, spawning, failure handling."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from seesr.utils.distributed import (
    DistributedContext,
    init_distributed,
    is_worker,
    shard,
    spawn_workers,
    worker_environment,
)

# --- worker targets (module level: spawned processes import them by name) ------------------------------------


def _fail_on_rank_one() -> int:
    return 3 if os.environ["RANK"] == "1" else 0


def _crash_on_rank_one() -> int:
    if os.environ["RANK"] == "1":
        raise RuntimeError("boom")
    time.sleep(60)  # rank 0 would wait for rank 1 in a collective
    return 0


def _sleep() -> int:
    time.sleep(60)
    return 0


def _report_environment(folder: str) -> int:
    record = {name: os.environ[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    record["is_worker"] = is_worker()
    Path(folder, f"{os.environ['RANK']}.json").write_text(json.dumps(record))
    return 0


# --- tests -----------------------------------------------------------------------------------------------------


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
    assert context.device("cpu").type == "cpu"
    assert DistributedContext().world_size == 1


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


def test_spawned_workers_get_ranks(tmp_path: Path) -> None:
    assert spawn_workers(2, _report_environment, (str(tmp_path),), timeout=60) == 0
    records = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert [record["RANK"] for record in records] == ["0", "1"]
    assert all(record["WORLD_SIZE"] == "2" and record["is_worker"] for record in records)


def test_returned_code_is_reported_without_stopping_the_others() -> None:
    assert spawn_workers(2, _fail_on_rank_one, timeout=60) == 3


def test_crash_stops_the_others() -> None:
    started = time.monotonic()
    assert spawn_workers(2, _crash_on_rank_one, timeout=50) == 1
    assert time.monotonic() - started < 40


def test_timeout_kills_workers() -> None:
    assert spawn_workers(2, _sleep, timeout=2) == 124
