"""The metrics of SeeSR's Table 2, where their weights live, and how to build them.

PSNR and SSIM are computed by :mod:`seesr.evaluation.metrics`. Every learned metric (LPIPS, DISTS, FID, MANIQA,
MUSIQ, CLIP-IQA) and NIQE's feature extraction come from **pyiqa 0.1.16** (pinned; install it with
``pip install --no-deps pyiqa==0.1.16``: its own dependency list drags in packages that break this environment),
with pyiqa's default options for each metric name, as papers in this field report them.

Weights are fetched on first use into the usual caches (``torch.hub.get_dir()``, i.e. ``$TORCH_HOME/hub``):

* ``checkpoints/`` for torchvision's ImageNet backbones (AlexNet for LPIPS, VGG16 for DISTS),
* ``pyiqa/`` for pyiqa's own files (from the ``chaofengc/IQA-PyTorch-Weights`` Hub repository),
* ``clip/`` for OpenAI's CLIP ResNet-50 (CLIP-IQA).

Before building anything, :func:`check_weights` lists what is missing; offline (``HF_HUB_OFFLINE=1`` or
``--offline``) that list is the error message, so nothing waits on a network that is not there. Files are read in torch's
weights-only mode (forced through ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` while pyiqa builds a metric);
``trust_weights=True`` lifts that for files that hold more than tensors.

Deviation from pyiqa, with no effect on scores: pyiqa's MANIQA builds its ViT-B/8 with ``pretrained=True`` (an
ImageNet download from the Hugging Face Hub) and then overwrites every one of its weights with the MANIQA checkpoint,
loaded strictly. We build that ViT with ``pretrained=False``, so MANIQA needs only its own checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FR_METRICS",
    "DEFAULT_NR_METRICS",
    "METRICS",
    "PYIQA_VERSION",
    "TAG_METRICS",
    "MetricInfo",
    "MetricUnavailableError",
    "Scorer",
    "WeightFile",
    "build_scorer",
    "check_weights",
    "format_missing_weights",
    "is_offline",
    "metric_package_versions",
    "parse_metric_list",
]

PYIQA_VERSION = "0.1.16"
PYIQA_WEIGHTS_REPO = "chaofengc/IQA-PyTorch-Weights"
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0
# pyiqa's InferenceModel carries seed=123 but never uses it; MANIQA scores 20 random 224x224 crops, so we seed
# NumPy/torch with this value around every MANIQA call (and restore the global state afterwards).
MANIQA_SEED = 123

MetricKind = Literal["full-reference", "no-reference", "distribution"]
WeightLocation = Literal["checkpoints", "pyiqa", "clip"]


class MetricUnavailableError(RuntimeError):
    """A metric cannot be built (missing weights offline, failed download, missing package); message for users."""


@dataclass(frozen=True)
class WeightFile:
    """One file a metric loads, and where its loader looks for it."""

    filename: str
    location: WeightLocation
    url: str
    description: str

    @property
    def path(self) -> Path:
        """Resolved now (``$TORCH_HOME`` may change), the same way torchvision, pyiqa and CLIP resolve it."""
        import torch

        return Path(torch.hub.get_dir()) / self.location / self.filename

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0


def _pyiqa_file(filename: str, description: str) -> WeightFile:
    url = f"https://huggingface.co/{PYIQA_WEIGHTS_REPO}/resolve/main/{filename}"
    return WeightFile(filename, "pyiqa", url, description)


ALEXNET = WeightFile(
    "alexnet-owt-7be5be79.pth",
    "checkpoints",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "torchvision AlexNet (ImageNet) backbone",
)
VGG16 = WeightFile(
    "vgg16-397923af.pth",
    "checkpoints",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    "torchvision VGG16 (ImageNet) backbone",
)
CLIP_RN50 = WeightFile(
    "RN50.pt",
    "clip",
    "https://openaipublic.azureedge.net/clip/models/"
    "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "OpenAI CLIP ResNet-50",
)


@dataclass(frozen=True)
class MetricInfo:
    """A metric of the paper's Table 2 and how this package computes it."""

    name: str
    label: str
    kind: MetricKind
    lower_better: bool
    implementation: str
    weights: tuple[WeightFile, ...] = ()
    modules: tuple[str, ...] = field(default=())  # importable modules it needs besides pyiqa/torch
    default: bool = True  # part of Table 2 (what an empty --metrics selects)

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_better else "↑"

    @property
    def needs_gt(self) -> bool:
        return self.kind != "no-reference"


METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo("psnr", "PSNR", "full-reference", False, "seesr (BT.601 Y, peak 255, crop_border)"),
        MetricInfo("ssim", "SSIM", "full-reference", False, "seesr (BT.601 Y, 11x11 Gaussian sigma 1.5, crop_border)"),
        MetricInfo(
            "lpips",
            "LPIPS",
            "full-reference",
            True,
            f"pyiqa {PYIQA_VERSION} 'lpips' (AlexNet, v0.1)",
            (ALEXNET, _pyiqa_file("LPIPS_v0.1_alex-df73285e.pth", "LPIPS v0.1 linear heads (AlexNet)")),
        ),
        MetricInfo(
            "dists",
            "DISTS",
            "full-reference",
            True,
            f"pyiqa {PYIQA_VERSION} 'dists'",
            (VGG16, _pyiqa_file("DISTS_weights-f5e65c96.pth", "DISTS alpha/beta weights")),
        ),
        MetricInfo(
            "fid",
            "FID",
            "distribution",
            True,
            f"pyiqa {PYIQA_VERSION} 'fid' (clean-fid 'clean' mode, InceptionV3 pool3, prediction set vs GT set)",
            (_pyiqa_file("pt_inception-2015-12-05-6726825d.pth", "FID InceptionV3 (TF 2015-12-05 port)"),),
        ),
        MetricInfo(
            "niqe",
            "NIQE",
            "no-reference",
            True,
            f"pyiqa {PYIQA_VERSION} NIQE features + BasicSR 1.4.2 pristine parameters (shipped)",
        ),
        MetricInfo(
            "maniqa",
            "MANIQA",
            "no-reference",
            False,
            f"pyiqa {PYIQA_VERSION} 'maniqa' (KonIQ-10k checkpoint, 20 random crops, seed {MANIQA_SEED})",
            (_pyiqa_file("ckpt_koniq10k.pt", "MANIQA KonIQ-10k checkpoint"),),
            ("einops",),
        ),
        MetricInfo(
            "musiq",
            "MUSIQ",
            "no-reference",
            False,
            f"pyiqa {PYIQA_VERSION} 'musiq' (KonIQ-10k checkpoint)",
            (_pyiqa_file("musiq_koniq_ckpt-e95806b9.pth", "MUSIQ KonIQ-10k checkpoint"),),
        ),
        MetricInfo(
            "clipiqa",
            "CLIPIQA",
            "no-reference",
            False,
            f"pyiqa {PYIQA_VERSION} 'clipiqa' (CLIP RN50, 5 antonym prompt pairs)",
            (CLIP_RN50,),
            ("clip",),
        ),
        *(
            MetricInfo(
                name,
                label,
                "full-reference",
                False,
                "plain RAM (the teacher, no DAPE) tags of the prediction vs tags of the GT (seesr.evaluation.semantic.tags)",
                default=False,
            )
            for name, label in (("tag_f1", "Tag F1"), ("tag_precision", "Tag P"), ("tag_recall", "Tag R"))
        ),
    )
}

DEFAULT_FR_METRICS: tuple[str, ...] = tuple(name for name, info in METRICS.items() if info.default)  # Table 2
DEFAULT_NR_METRICS: tuple[str, ...] = tuple(name for name in DEFAULT_FR_METRICS if not METRICS[name].needs_gt)
#: tag agreement comes as three numbers from one tagging pass: asking for tag_f1 reports all three
TAG_METRICS: tuple[str, ...] = ("tag_f1", "tag_precision", "tag_recall")

_ALIASES = {"clip-iqa": "clipiqa", "clipqa": "clipiqa", "lpips-alex": "lpips"}


def parse_metric_list(text: str | Sequence[str] | None, has_gt: bool) -> list[str]:
    """Turn ``"psnr,ssim,niqe"`` (or a list) into known metric names, in Table 2 order; ``None`` = defaults.

    Raises:
        ValueError: unknown names, or full-reference metrics requested without ground truth.
    """
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "all")):
        return list(DEFAULT_FR_METRICS if has_gt else DEFAULT_NR_METRICS)
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [_ALIASES.get(item.strip().lower(), item.strip().lower()) for item in items if item.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if "tag_f1" in names:
        names += list(TAG_METRICS)
    if not has_gt:
        needs_gt = [name for name in names if METRICS[name].needs_gt]
        if needs_gt:
            raise ValueError(
                f"{', '.join(needs_gt)} compare against ground truth; pass --gt DIR or choose no-reference metrics "
                f"({', '.join(DEFAULT_NR_METRICS)})"
            )
    return [name for name in METRICS if name in names]


def is_offline(explicit: bool = False) -> bool:
    """True when downloads must not be attempted: ``explicit`` or ``HF_HUB_OFFLINE``/``SEESR_OFFLINE`` set."""
    if explicit:
        return True
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "SEESR_OFFLINE")
    )


def check_weights(names: Iterable[str]) -> dict[str, list[WeightFile]]:
    """Weight files the given metrics need that are not in the caches yet: ``{metric: [missing files]}``."""
    missing: dict[str, list[WeightFile]] = {}
    for name in names:
        absent = [weight for weight in METRICS[name].weights if not weight.exists()]
        if absent:
            missing[name] = absent
    return missing


def format_missing_weights(missing: dict[str, list[WeightFile]]) -> str:
    """A multi-line list of missing files: metric, local path the loader reads, and the URL to fetch it from."""
    lines = []
    for name, files in missing.items():
        for weight in files:
            lines.append(f"  {METRICS[name].label}: {weight.path}  ({weight.description})\n      from {weight.url}")
    return "\n".join(lines)


def metric_package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that compute the metrics (``None`` = not installed)."""
    versions: dict[str, str | None] = {}
    for package in ("pyiqa", "torch", "torchvision", "timm", "numpy", "scipy", "openai-clip", "einops", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


# ---------------------------------------------------------------------------------------------------------------
# Building scorers
# ---------------------------------------------------------------------------------------------------------------

Scorer = Callable[[np.ndarray, "np.ndarray | None"], float]
"""``scorer(pred, gt) -> float``: ``(H, W, 3)`` uint8 RGB arrays; ``gt`` is None for no-reference metrics."""


def _import_pyiqa() -> Any:
    try:
        import pyiqa
    except ImportError as error:
        raise MetricUnavailableError(
            f"learned metrics need pyiqa {PYIQA_VERSION}: pip install --no-deps pyiqa=={PYIQA_VERSION} "
            f"(import failed: {error})"
        ) from None
    version = getattr(pyiqa, "__version__", None)
    if version != PYIQA_VERSION:
        logger.warning("seesr's metrics are pinned to pyiqa %s; found %s, scores may differ", PYIQA_VERSION, version)
    # pyiqa fixes its cache folder when it is imported; follow $TORCH_HOME as it is now, like torchvision does.
    from pyiqa.utils import download_util

    download_util.DEFAULT_CACHE_DIR = str(Path(_hub_dir()) / "pyiqa")
    return pyiqa


def _hub_dir() -> str:
    import torch

    return torch.hub.get_dir()


@contextlib.contextmanager
def _building(trust_weights: bool) -> Iterator[io.StringIO]:
    """Weights-only unpickling, a socket timeout for downloads, pyiqa's prints captured for the log."""
    previous_env = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    previous_timeout = socket.getdefaulttimeout()
    if not trust_weights:
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield captured
    finally:
        socket.setdefaulttimeout(previous_timeout)
        if not trust_weights:
            if previous_env is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous_env
        for line in captured.getvalue().splitlines():
            if line.strip():
                logger.debug("pyiqa: %s", line.strip())


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's and torch's global generators, restoring their previous states on exit."""
    import torch

    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def _timm_without_pretrained() -> Iterator[None]:
    """Make ``timm.create_model(..., pretrained=True)`` build a random model (see the module docstring)."""
    import timm

    original = timm.create_model

    def create_model(*args: Any, **kwargs: Any) -> Any:
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


def _to_tensor(image: np.ndarray, device: Any) -> Any:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, H, W)`` float32 in [0, 1] on ``device``."""
    import torch

    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255.0)
    return tensor.unsqueeze(0).to(device)


def _download_failure(name: str, error: BaseException) -> MetricUnavailableError:
    missing = check_weights([name])
    detail = format_missing_weights(missing) if missing else "  (all files are present; see the error)"
    return MetricUnavailableError(
        f"{METRICS[name].label}: could not fetch its weights ({type(error).__name__}: {error}).\n"
        f"Missing:\n{detail}\nDownload them to those paths, or rerun with network access."
    )


def build_scorer(
    name: str,
    device: Any = "cpu",
    allow_download: bool = True,
    trust_weights: bool = False,
    crop_border: int = 0,
    tagger: Path | None = None,
) -> Scorer:
    """Build the per-image scorer of metric ``name`` (not ``fid``, which scores sets: see :func:`compute_fid`).

    Args:
        name: a key of :data:`METRICS`.
        device: torch device for learned metrics.
        crop_border: pixels removed from each edge (PSNR and SSIM only).
        allow_download: fetch missing weights; when False, missing files raise at once.
        trust_weights: load weight files with full unpickling instead of ``weights_only=True``.
        tagger: RAM checkpoint (or folder) of the tag metrics; None = the official file in the HF cache.

    Raises:
        MetricUnavailableError: with a message naming what is missing.
    """
    from seesr.evaluation import metrics as fidelity

    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}")
    if name in ("psnr", "ssim"):
        function = fidelity.calculate_psnr if name == "psnr" else fidelity.calculate_ssim

        def fidelity_score(pred: np.ndarray, gt: np.ndarray | None) -> float:
            if gt is None:
                raise ValueError(f"{METRICS[name].label} needs a ground-truth image")
            return function(pred, gt, crop_border, test_y_channel=True)

        return fidelity_score
    if name == "fid":
        raise ValueError("FID scores a set of images, not one: use compute_fid()")
    if name in TAG_METRICS:
        from seesr.evaluation.semantic.tags import build_tag_scorers

        return build_tag_scorers([name], device, tagger, allow_download)[name]
    if name == "niqe":
        _import_pyiqa()
        return lambda pred, gt=None: fidelity.calculate_niqe(pred)
    return _build_pyiqa_scorer(name, device, allow_download, trust_weights)


def _check_modules(name: str) -> None:
    import importlib.util

    for module in METRICS[name].modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            package = {"clip": "openai-clip (and setuptools<81)"}.get(module, module)
            raise MetricUnavailableError(f"{METRICS[name].label} needs the Python package {package}: pip install it")


def _ensure_weights(name: str, allow_download: bool) -> None:
    missing = check_weights([name])
    if not missing:
        return
    if not allow_download:
        raise MetricUnavailableError(
            f"{METRICS[name].label}: weights missing and downloads are off (offline):\n{format_missing_weights(missing)}"
        )
    logger.info("%s: downloading %s", METRICS[name].label, ", ".join(w.filename for w in missing[name]))


def _build_pyiqa_module(name: str, device: Any, allow_download: bool, trust_weights: bool) -> Any:
    """``pyiqa.create_metric(name)`` with the safeguards above; returns the pyiqa InferenceModel."""
    _check_modules(name)
    _ensure_weights(name, allow_download)
    pyiqa = _import_pyiqa()
    try:
        with _building(trust_weights), _timm_without_pretrained() if name == "maniqa" else contextlib.nullcontext():
            model = pyiqa.create_metric(name, device=device, as_loss=False)
    except pickle.UnpicklingError as error:
        raise MetricUnavailableError(
            f"{METRICS[name].label}: a weight file holds Python objects besides tensors, and seesr loads weights in "
            f"torch's weights-only mode. If you trust the file, rerun with --trust-metric-weights.\n({error})"
        ) from None
    except ImportError as error:
        raise MetricUnavailableError(f"{METRICS[name].label}: a required package is missing ({error})") from None
    except (OSError, ConnectionError, TimeoutError) as error:  # URLError, socket errors, hub errors
        raise _download_failure(name, error) from None
    except RuntimeError as error:
        if check_weights([name]):
            raise _download_failure(name, error) from None
        raise
    model.eval()
    return model


def _build_pyiqa_scorer(name: str, device: Any, allow_download: bool, trust_weights: bool) -> Scorer:
    import torch

    model = _build_pyiqa_module(name, device, allow_download, trust_weights)
    info = METRICS[name]

    def score(pred: np.ndarray, gt: np.ndarray | None = None) -> float:
        target = _to_tensor(pred, device)
        with torch.no_grad(), _seeded(MANIQA_SEED) if name == "maniqa" else contextlib.nullcontext():
            if info.kind == "full-reference":
                if gt is None:
                    raise ValueError(f"{info.label} needs a ground-truth image")
                output = model(target, _to_tensor(gt, device))
            else:
                output = model(target)
        return float(torch.as_tensor(output).reshape(-1)[0])

    return score


def compute_fid(
    pred_files: Sequence[Path],
    gt_files: Sequence[Path],
    device: Any = "cpu",
    allow_download: bool = True,
    trust_weights: bool = False,
    batch_size: int = 8,
) -> float:
    """FID between two sets of image files, exactly as pyiqa 0.1.16's ``fid`` does it for two folders.

    pyiqa's folder mode ("clean" resizing to 299x299 with PIL bicubic per channel, InceptionV3 pool3 features,
    Frechet distance) is applied to the given file lists, so unreadable or unpaired files can be left out.
    Needs at least two images per set.
    """
    import torch

    if len(pred_files) < 2 or len(gt_files) < 2:
        raise ValueError(f"FID needs at least 2 images per set (got {len(pred_files)} and {len(gt_files)})")
    model = _build_pyiqa_module("fid", device, allow_download, trust_weights)
    from pyiqa.archs.fid_arch import ResizeDataset, frechet_distance

    def features(files: Sequence[Path]) -> np.ndarray:
        dataset = ResizeDataset([str(f) for f in files], mode="clean", size=model.net.test_img_size)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        chunks = []
        with torch.no_grad():
            for batch in loader:
                batch = (batch - 128) / 128  # pyiqa's "clean" mode normalisation
                output = model.net.model(batch.to(device), False, False)[0]
                chunks.append(output.reshape(output.shape[0], -1).cpu().numpy())
        return np.concatenate(chunks)

    pred_features, gt_features = features(pred_files), features(gt_files)
    mu1, sigma1 = pred_features.mean(axis=0), np.cov(pred_features, rowvar=False)
    mu2, sigma2 = gt_features.mean(axis=0), np.cov(gt_features, rowvar=False)
    return float(frechet_distance(mu1, sigma1, mu2, sigma2))
