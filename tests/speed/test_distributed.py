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
    launch_local_workers,
    shard,
)

# --- worker targets (module level: spawned processes import them by name) ------------------------------------


def _fail_on_rank_one() -> int:
    return 3 if os.environ["RANK"] == "1" else 0


def _crash_on_rank_one() -> int:
    if os.environ["RANK"] == "1":
        raise RuntimeError("boom")
    time.sleep(60)  # rank 0 would wait for rank 1 in a collective
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


def test_launched_workers_get_ranks(tmp_path: Path) -> None:
    assert launch_local_workers(2, _report_environment, (str(tmp_path),)) == 0
    records = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert [record["RANK"] for record in records] == ["0", "1"]
    assert all(record["WORLD_SIZE"] == "2" and record["is_worker"] for record in records)
    assert records[0]["MASTER_ADDR"] == records[1]["MASTER_ADDR"]


def test_returned_code_is_reported_without_stopping_the_others() -> None:
    assert launch_local_workers(2, _fail_on_rank_one) == 3


def test_crash_stops_the_others() -> None:
    started = time.monotonic()
    assert launch_local_workers(2, _crash_on_rank_one) == 1
    assert time.monotonic() - started < 40  # rank 0 would sleep 60 s; measured ~3 s


def test_the_home_made_process_manager_is_gone() -> None:
    import seesr.utils.distributed as distributed

    assert not hasattr(distributed, "spawn_workers")
    assert "multiprocessing.get_context" not in Path(distributed.__file__).read_text()
