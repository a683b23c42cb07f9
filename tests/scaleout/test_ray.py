"""``--ray`` on a local Ray cluster started by the tests (2 CPUs, the tiny bundle): the same files as a local run,
bad files reported while the others are written, a killed actor replaced, resume with --skip-existing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seesr.cli.main import main
from tests.conftest import TINY
from tests.net import free_port

ray = pytest.importorskip("ray", reason="Ray is part of seesr[all]; CI installs it")  # a bare install has no Ray

FAST = ["--model", str(TINY), "--steps", "2", "--seed", "7", "--device", "cpu", "--process-size", "32"]
ACTOR_TITLE = "ray::MapWorker(MapBatches(_ItemMapper))"


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (a start costs ~4 s); the commands find it connected and reuse it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _inputs(folder: Path, count: int, corrupt: bool = False) -> Path:
    folder.mkdir()
    sources = [TINY / "pipeline_case1_lr.png", TINY / "pipeline_case2_lr.png"]
    for index in range(count):
        shutil.copy(sources[index % 2], folder / f"img{index}.png")
    if corrupt:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _record(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.info["seesr"])


def test_a_folder_through_ray_gives_the_local_files_and_reports_the_bad_one(cluster, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in", 3, corrupt=True)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["upscale", str(inputs), "-o", str(local), *FAST]) == 1
    capsys.readouterr()
    assert main(["upscale", str(inputs), "-o", str(remote), *FAST, "--ray", "--ray-actors", "2"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.replace("\r", "\n").splitlines()  # the progress bar redraws with carriage returns
    reported = [line for line in lines if "broken.jpg" in line]
    assert len(reported) == 1 and reported[0].startswith(f"error: {inputs / 'broken.jpg'}: cannot read image")
    assert "3 written, 0 skipped, 1 failed" in captured.out
    names = sorted(path.name for path in local.iterdir())
    assert names == sorted(path.name for path in remote.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    for name in names:
        # different thread counts take different kernels: measured max 1 grey level, the parity bound is 2
        assert np.abs(_pixels(local / name) - _pixels(remote / name)).max() <= 2
        assert _record(local / name) == _record(remote / name)  # settings, seed, input sha256, model, device


def test_inputs_given_as_a_filesystem_uri_are_fetched_by_the_actors(cluster, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in", 2, corrupt=True)
    out = tmp_path / "out"
    # file:// goes through the same pyarrow filesystem code as s3:// or gs:// (listing, copy into the actor)
    assert main(["upscale", inputs.resolve().as_uri() + "/", "-o", str(out), *FAST, "--ray"]) == 1
    captured = capsys.readouterr()
    assert "2 written, 0 skipped, 1 failed" in captured.out
    assert f"{inputs.resolve().as_uri()}/broken.jpg" in captured.err  # named by its URI, not the actor's copy
    assert sorted(path.name for path in out.iterdir()) == ["img0.png", "img1.png"]
    assert _record(out / "img0.png")["input"] == "img0.png"


def test_skip_existing_through_ray_reuses_a_local_run(cluster, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "img0.png"), "-o", str(out), *FAST]) == 0
    before = (out / "img0.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["upscale", str(inputs), "-o", str(out), *FAST, "--ray", "--skip-existing"]) == 0
    assert "1 written, 1 skipped, 0 failed" in capsys.readouterr().out
    assert (out / "img0.png").stat().st_mtime_ns == before


def _model_with_a_truncated_unet(folder: Path) -> Path:
    folder.mkdir()
    for part in TINY.iterdir():
        if part.name != "unet":
            (folder / part.name).symlink_to(part)
    (folder / "unet").mkdir()
    shutil.copy(TINY / "unet" / "config.json", folder / "unet" / "config.json")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 1000)
    return folder


def test_workers_that_cannot_load_the_model_stop_the_run_in_one_line(cluster, tmp_path, monkeypatch, capsys):
    _inputs(tmp_path / "in", 2)
    _model_with_a_truncated_unet(tmp_path / "model")
    monkeypatch.chdir(tmp_path)  # a relative --model: the actors (started elsewhere) get it made absolute
    fast = [*FAST[2:], "--model", "model"]
    assert main(["upscale", "in", "-o", "out", *fast, "--ray"]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "error" in line]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("seesr upscale: error: the Ray workers could not start: cannot load the UNet from ")
    assert f"{tmp_path / 'model' / 'unet'}" in lines[0] and "corrupt or truncated" in lines[0]
    assert "Traceback" not in captured.err + captured.out and "(raylet)" not in captured.out
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(ACTOR_TITLE):
                pids.append(int(entry.name))
    return pids


def _kill_an_actor_after_the_first_result(out: Path, killed: list[int]) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(out.glob("*.png")):
            time.sleep(0.05)
        time.sleep(0.3)  # the actor that wrote it has taken its next image by now
        pids = _actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)  # what a lost node or the kernel's OOM killer does to a worker
            killed.append(pids[0])

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the actor processes through /proc")
@pytest.mark.parametrize("retries", [3, 0])
def test_a_killed_actor_leaves_no_partial_file_and_skip_existing_completes_the_set(cluster, tmp_path, capsys, retries):
    inputs = _inputs(tmp_path / "in", 6)
    out = tmp_path / "out"
    killed: list[int] = []
    argv = ["upscale", str(inputs), "-o", str(out), *FAST, "--ray", "--ray-actors", "2"]
    watcher = _kill_an_actor_after_the_first_result(out, killed)
    code = main([*argv, "--ray-retries", str(retries)])
    watcher.join(5)
    assert killed, "no actor process was found to kill"
    leftovers = [path.name for path in out.iterdir() if path.suffix != ".png"]
    assert leftovers == []  # atomic writes: no temporary or partial file
    written = sorted(path.name for path in out.glob("*.png"))
    for name in written:
        assert _record(out / name)["input"] == name  # every file there is complete and readable
    first = capsys.readouterr()
    assert "Traceback" not in first.err + first.out and "(raylet)" not in first.out
    if retries:
        # the actor is replaced and the item it held is retried: the whole set, first time
        assert code == 0 and len(written) == 6
    else:  # no retries: the image it held is reported (once, by name) and the others are written; an actor
        # killed between two images (rare: it is idle for milliseconds) held none, and the set is complete
        failed = [line for line in first.err.splitlines() if "the Ray worker processing it died once" in line]
        assert len(failed) == 6 - len(written) <= 1 and code == (1 if failed else 0), first.err
        assert f"{len(written)} written, 0 skipped, {len(failed)} failed" in first.out
    assert main([*argv, "--skip-existing"]) == 0
    counts = re.search(r"(\d+) written, (\d+) skipped, 0 failed", capsys.readouterr().out)
    assert counts and (int(counts[1]), int(counts[2])) == (6 - len(written), len(written))
    assert len(list(out.glob("*.png"))) == 6


class _CrashesOn:
    """A worker whose process dies on one item, as a segfault in a decoder or the kernel's OOM killer would."""

    def __init__(self, poison: str) -> None:
        self.poison = poison

    def process(self, item: dict) -> dict:
        if item["key"] == self.poison:
            os._exit(1)
        return {"status": "ok", "message": item["key"]}


def test_an_item_that_kills_its_worker_is_given_up_and_the_others_are_done(cluster):
    from seesr.utils.ray_jobs import RayOptions, run_items

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import the tests
    items = [{"key": f"item{index}"} for index in range(6)]
    results = run_items(items, _CrashesOn, ("item2",), RayOptions(actors=2, retries=1), show_progress=False)
    assert [result["status"] for result in results] == ["ok", "ok", "failed", "ok", "ok", "ok"]
    assert results[2]["message"].startswith("item2: the Ray worker processing it died 2 times")


def test_prepare_through_ray_writes_the_local_files(cluster, tmp_path):
    gt = TINY.parent / "blocks"
    common = ["--gt", str(gt), "--tagger", str(TINY), "--size", "64", "--min-pixels", "0", "--min-file-kib", "0"]
    assert main(["prepare", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["prepare", *common, "--out", str(tmp_path / "ray"), "--ray", "--ray-actors", "2"]) == 0
    for sub in ("gt", "lr", "sr_bicubic", "tag"):
        local = sorted((tmp_path / "local" / sub).iterdir())
        assert local and [path.name for path in local] == sorted(
            path.name for path in (tmp_path / "ray" / sub).iterdir()
        )
        for path in local:  # each item has its own generator: the same bytes whichever process made it
            assert path.read_bytes() == (tmp_path / "ray" / sub / path.name).read_bytes()


def test_tag_through_ray_prints_the_local_lines_in_order(cluster, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in", 3, corrupt=True)
    assert main(["tag", str(inputs), "--model", str(TINY), "--device", "cpu"]) == 1
    local = capsys.readouterr()
    assert main(["tag", str(inputs), "--model", str(TINY), "--device", "cpu", "--ray", "--ray-actors", "2"]) == 1
    remote = capsys.readouterr()
    assert remote.out == local.out and local.out.count("\n") == 3
    assert "broken.jpg" in remote.err


def test_ray_flags_without_ray_and_clips_with_ray_are_usage_errors(tmp_path, capsys):
    image = TINY / "pipeline_case1_lr.png"
    assert main(["upscale", str(image), "-o", str(tmp_path), "--ray-actors", "2"]) == 2
    assert "--ray-actors needs --ray" in capsys.readouterr().err
    assert main(["upscale", "s3://bucket/scans/", "-o", str(tmp_path)]) == 2
    assert "add --ray" in capsys.readouterr().err
    assert main(["upscale", str(image), "-o", str(tmp_path), "--ray", "--num-gpus", "2"]) == 2
    assert "--num-gpus and --ray contradict each other" in capsys.readouterr().err
    for command in (["tag", "file:///data/scans"], ["prepare", "--gt", "s3://bucket/hr", "--out", str(tmp_path)]):
        assert main([*command, "--ray"]) == 2
        assert "filesystem URIs are read by `seesr upscale --ray` only" in capsys.readouterr().err


def test_an_address_where_no_cluster_answers_fails_in_one_line_within_seconds(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there (Ray alone would keep trying for minutes)
    command = [sys.executable, "-m", "seesr", "upscale", str(TINY / "pipeline_case1_lr.png"), "-o", str(tmp_path)]
    started = time.monotonic()
    done = subprocess.run([*command, *FAST, "--ray", address], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and time.monotonic() - started < 60
    assert done.stderr.strip().splitlines() == [
        f"seesr upscale: error: cannot reach Ray at {address}: Connection refused (is the cluster started, e.g. "
        "`ray start --head`, and the address its head's?)"
    ]
