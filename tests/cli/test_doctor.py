"""``seesr doctor``: the environment report, cached-weight checksums and the fast-path check (CPU, tiny models)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from seesr.cli import doctor
from seesr.cli.main import main
from seesr.weights.catalog import CATALOG

ROOT = Path(__file__).resolve().parents[2]


def _run_json(argv: list[str]) -> tuple[int, dict]:
    stream = io.StringIO()
    with contextlib.redirect_stdout(stream):
        code = main(["doctor", "--json", *argv])
    return code, json.loads(stream.getvalue())


@pytest.fixture(scope="module")
def healthy_check() -> tuple[int, dict]:
    """One ``seesr doctor --check --json --device cpu`` run, shared by the tests that read its result."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    code, report = _run_json(["--check", "--device", "cpu"])
    after = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    assert after == flags  # the check restores the global backend switches it touches
    return code, report


# ---------------------------------------------------------------------------------------------------------------
# report


def test_report_names_versions_device_and_backends(fresh_hf_cache, no_network):
    code, report = _run_json(["--device", "cpu"])
    assert code == 0
    versions = report["versions"]
    assert versions["torch"] == torch.__version__
    for name in ("seesr", "diffusers", "transformers", "timm", "python", "torch_cuda", "cudnn"):
        assert name in versions
    assert report["device"]["type"] == "cpu" and report["device"]["threads"] >= 1
    assert report["sdpa_backends"]["math"].startswith("ok")  # the reference kernel runs everywhere
    assert set(report["sdpa_backends"]) == {"flash_attention", "efficient_attention", "cudnn_attention", "math"}
    weights = report["weights"]
    assert Path(weights["cache_dir"]) == fresh_hf_cache
    assert {record["status"] for record in weights["files"]} == {"missing"}  # an empty cache
    assert weights["bundle_files"] == []


def test_text_report_lists_each_repository(fresh_hf_cache, no_network, capsys):
    assert main(["doctor", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "attention (SDPA) backends" in out
    assert "CSWRY/SeeSR: 0 of 5 files" in out and "stabilityai/sd-turbo (optional, --turbo)" in out


def _hub_cache(cache_dir: Path, entry, content: bytes, blob_name: str) -> Path:
    """huggingface_hub's real layout: snapshots/<commit>/<file> is a link to blobs/<hash the Hub recorded>."""
    repo = cache_dir / f"models--{entry.repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "blobs" / blob_name).write_bytes(content)
    link = repo / "snapshots" / commit / entry.filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../" * (len(Path(entry.filename).parts) + 1)) / "blobs" / blob_name)
    return link


@pytest.mark.skipif(sys.platform == "win32", reason="the Hugging Face cache uses symbolic links only on POSIX")
def test_cached_files_are_verified_against_the_hub_hashes(fresh_hf_cache, no_network):
    by_name = {entry.filename: entry for entry in CATALOG}
    config = b'{"_class_name": "PNDMScheduler"}\n'
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()
    _hub_cache(fresh_hf_cache, by_name["scheduler/scheduler_config.json"], config, git_sha1)  # a git file, intact
    weights = b"\x00" * 1000
    wrong_sha256 = hashlib.sha256(b"what the Hub served").hexdigest()
    _hub_cache(fresh_hf_cache, by_name["vae/diffusion_pytorch_model.safetensors"], weights, wrong_sha256)  # corrupt
    _hub_cache(fresh_hf_cache, by_name["ram_swin_large_14m.pth"], weights, hashlib.sha256(weights).hexdigest())

    def by_file(argv: list[str]) -> dict[str, dict]:  # SeeSR's own files (the turbo files share their names)
        files = _run_json(["--device", "cpu", *argv])[1]["weights"]["files"]
        return {record["file"]: record for record in files if record["component"] != "turbo"}

    statuses = {name: record for name, record in by_file([]).items() if "size" in record}
    assert statuses["scheduler/scheduler_config.json"]["status"].startswith("not verified")
    assert statuses["vae/diffusion_pytorch_model.safetensors"]["size"] == 1000
    assert statuses["ram_swin_large_14m.pth"]["status"].startswith("size mismatch")  # the catalogue knows its size

    verified = {name: record["status"] for name, record in by_file(["--verify"]).items()}
    assert verified["scheduler/scheduler_config.json"] == "verified (Hub hash)"
    assert verified["vae/diffusion_pytorch_model.safetensors"].startswith("MISMATCH")
    assert verified["text_encoder/config.json"] == "missing"


@pytest.mark.skipif(sys.platform == "win32", reason="the Hugging Face cache uses symbolic links only on POSIX")
def test_files_hashed_at_download_count_as_verified_until_touched(fresh_hf_cache, no_network):
    from seesr.weights.lock import new_record, write_lock

    entry = next(entry for entry in CATALOG if entry.filename == "vae/config.json")
    content = b'{"_class_name": "AutoencoderKL"}\n'
    link = _hub_cache(fresh_hf_cache, entry, content, hashlib.sha1(b"x").hexdigest())  # a blob name that lies
    write_lock([new_record(entry, "0" * 40, hashlib.sha256(content).hexdigest(), link.resolve())])

    def status() -> str:
        files = _run_json(["--device", "cpu"])[1]["weights"]["files"]
        return next(record["status"] for record in files if record["file"] == "vae/config.json")

    assert status().startswith("verified at download")  # the lock's sha256 and stat, no hashing
    link.resolve().write_bytes(content.replace(b"KL", b"XX"))  # same size, new content and mtime
    assert status().startswith("not verified (changed since it was verified")
    verified = _run_json(["--device", "cpu", "--verify"])[1]["weights"]["files"]
    assert next(r["status"] for r in verified if r["file"] == "vae/config.json").startswith("MISMATCH")


def test_tiny_configs_are_package_data():
    """Every file of seesr/configs/tiny is matched by a package-data pattern of pyproject.toml (so wheels ship it)."""
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["seesr"]
    package = ROOT / "src" / "seesr"
    shipped = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    tiny = {path for path in (package / "configs" / "tiny").rglob("*") if path.is_file()}
    assert len(tiny) >= 10 and tiny <= shipped, sorted(str(path) for path in tiny - shipped)


def test_tiny_pipeline_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    first = doctor.build_tiny_pipeline(torch.device("cpu"), seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    second = doctor.build_tiny_pipeline(torch.device("cpu"), seed=3)
    other = doctor.build_tiny_pipeline(torch.device("cpu"), seed=4)
    for name in ("unet", "controlnet", "vae", "text_encoder", "tagger"):
        a, b, c = (dict(getattr(pipe, name).state_dict()) for pipe in (first, second, other))
        assert all(torch.equal(a[key], b[key]) for key in a), name  # same seed: the same weights (no kernels run)
        assert any(not torch.equal(a[key], c[key]) for key in a), name
    # no layer is left at zero: ControlNet's zero convolutions are redrawn, so a fault in them would show
    for name, parameter in first.controlnet.named_parameters():
        assert parameter.any(), name


# ---------------------------------------------------------------------------------------------------------------
# --check


def test_check_passes_on_cpu(healthy_check):
    code, report = healthy_check
    check = report["check"]
    assert code == 0 and check["ok"]
    assert check["fast"]["dtype"] == "bfloat16" and not check["fast"]["cuda_graphs"]
    # measured 45.7-49.5 dB over seeds 0-9 (47.6 dB for the default seed 0); the bound is 35 dB
    assert check["fast"]["psnr_db"] >= doctor.CHECK_MIN_PSNR_DB
    assert check["fast"]["psnr_db"] < 80  # bf16 really ran: not the exact path twice
    assert check["fast"]["max_abs_diff"] > 0 and check["exact"]["repeat_max_abs_diff"] == 0
    for path in ("exact", "fast"):  # per step from the step callbacks, below the whole call (DAPE, VAE, 4 steps)
        assert 0 < check[path]["s_per_step"] < check[path]["call_s"]
    assert check["exact"]["shape"] == [64, 96, 3]  # 24x16 LR, x4


def test_check_text_lines(healthy_check):
    lines = "\n".join(doctor._check_lines(healthy_check[1]["check"]))
    assert "exact (float32)" in lines and "fast (bfloat16, CUDA graphs off)" in lines
    assert "dB vs exact" in lines and "ms/step" in lines and "result: ok" in lines


def _break_fast_path(monkeypatch, perturb) -> list[torch.dtype]:
    """Wrap the UNet of the check's pipeline: its bf16 calls (the fast path only) go through ``perturb``."""
    seen: list[torch.dtype] = []
    build = doctor.build_tiny_pipeline

    def broken_build(device, seed=doctor.CHECK_SEED):
        pipe = build(device, seed)

        def hook(module, args, output):
            seen.append(output[0].dtype)
            if output[0].dtype == torch.bfloat16:
                return (perturb(output[0]), *output[1:])
            return None

        pipe.unet.register_forward_hook(hook)
        return pipe

    monkeypatch.setattr(doctor, "build_tiny_pipeline", broken_build)
    return seen


def test_check_fails_when_the_fast_path_is_wrong(monkeypatch, capsys):
    generator = torch.Generator().manual_seed(0)

    def noisy(prediction):  # a 30 % error in the fast path's noise prediction: measured 20.3 dB
        noise = torch.randn(prediction.shape, generator=generator).to(prediction.dtype)
        return prediction + 0.3 * prediction.float().std().to(prediction.dtype) * noise

    seen = _break_fast_path(monkeypatch, noisy)
    assert main(["doctor", "--check", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "result: FAILED" in out
    assert torch.float32 in seen and torch.bfloat16 in seen  # both paths ran, only the fast one was broken


def test_check_reports_a_crashing_fast_path(monkeypatch):
    def crash(prediction):
        raise RuntimeError("kernel exploded")

    _break_fast_path(monkeypatch, crash)
    code, report = _run_json(["--check", "--device", "cpu"])
    assert code == 1 and not report["check"]["ok"]
    assert "kernel exploded" in report["check"]["error"]
    assert "exact" in report["check"]  # the exact half still reported
