"""Find the files of a SeeSR model: ``--model FOLDER`` or the default download location.

Three forms are understood:

(a) **release layout** — the official parts put together in one folder (what ``seesr download --dest`` writes; the
    test fixture ``tiny/`` is exactly this)::

        FOLDER/scheduler/  text_encoder/  tokenizer/  vae/     (stable-diffusion-2-base parts)
        FOLDER/unet/  controlnet/                              (seesr/ of CSWRY/SeeSR)
        FOLDER/ram/ram_swin_large_14m.pth  ram/DAPE.pth        (RAM Swin-L + DAPE LoRA)

    The official ``preset/models`` arrangement is accepted too: ``stable-diffusion-2-base/``, ``seesr/`` and the two
    ``.pth`` files side by side.
(b) **converted bundle** (``seesr convert``): ``model_index.json`` naming ``SeeSRPipeline``, safetensors only, our
    UNet/ControlNet layout and a ``tagger/`` folder; nothing is unpickled when loading it.
(c) **nothing** — a converted bundle in ``$SEESR_HOME/bundle`` (default ``~/.cache/seesr/bundle``) if there is one,
    else the files of :mod:`seesr.weights.catalog` in the Hugging Face cache (``seesr download``). The cache is only
    *read* here; no network is ever touched while resolving.

Anything missing raises :class:`MissingWeightsError` whose message lists exactly which files are missing and how to
provide them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from seesr.weights.catalog import CATALOG, WeightFile, pinned_revisions

BUNDLE_CLASS_NAME = "SeeSRPipeline"
RAM_CHECKPOINT = "ram_swin_large_14m.pth"
DAPE_CHECKPOINT = "DAPE.pth"
SD_SUBFOLDERS = ("stable-diffusion-2-base", "stable-diffusion-2-1-base")


class MissingWeightsError(RuntimeError):
    """Model files are missing or the folder is not a SeeSR model; the message is meant for the user."""


@dataclass
class ModelLocation:
    """Where each component of a SeeSR model lives (all paths local).

    Attributes:
        kind: ``"release"``, ``"bundle"`` or ``"cache"``.
        description: human-readable origin (for logs and PNG metadata).
        scheduler, text_encoder, tokenizer, vae, unet, controlnet: component folders.
        tagger: converted ``tagger/`` folder (bundle) or None.
        ram_checkpoint, dape_checkpoint: RAM / DAPE ``.pth`` files (release and cache forms) or None.
        ram_config_dir: folder with RAM config JSONs next to the checkpoint (e.g. a tiny test model) or None.
    """

    kind: str
    description: str
    scheduler: Path
    text_encoder: Path
    tokenizer: Path
    vae: Path
    unet: Path
    controlnet: Path
    tagger: Path | None = None
    ram_checkpoint: Path | None = None
    dape_checkpoint: Path | None = None
    ram_config_dir: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _has_any(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in names) or any(folder.glob("diffusion_pytorch_model*.safetensors"))


def _model_files_missing(folder: Path, label: str, weights: tuple[str, ...]) -> list[str]:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append(f"{label}/config.json")
    if not (folder.is_dir() and _has_any(folder, weights)):
        missing.append(f"{label}/{weights[0]}")
    return missing


DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def tokenizer_files_missing(folder: Path) -> list[str]:
    """Names missing from a CLIP tokenizer folder: ``tokenizer_config.json`` plus ``vocab.json`` + ``merges.txt``
    (slow format, as in SD-2) or a ``tokenizer.json`` (fast format, what transformers 5 saves)."""
    missing = [] if (folder / "tokenizer_config.json").is_file() else ["tokenizer_config.json"]
    if not (folder / "tokenizer.json").is_file():
        missing += [name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
    return missing


def _sd_missing(root: Path, prefix: str) -> list[str]:
    missing = []
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        missing.append(f"{prefix}scheduler/scheduler_config.json")
    missing += _model_files_missing(root / "text_encoder", f"{prefix}text_encoder", TRANSFORMERS_WEIGHTS)
    missing += [f"{prefix}tokenizer/{name}" for name in tokenizer_files_missing(root / "tokenizer")]
    missing += _model_files_missing(root / "vae", f"{prefix}vae", DIFFUSERS_WEIGHTS)
    return missing


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _release_layout_help(entries: list[WeightFile] | tuple[WeightFile, ...] = CATALOG) -> str:
    return "\n".join("  FOLDER/" + entry.target + "   <- " + f"{entry.repo_id}: {entry.filename}" for entry in entries)


# ---------------------------------------------------------------------------------------------------------------
# (b) converted bundle


def is_bundle(folder: Path) -> bool:
    """True when ``folder/model_index.json`` names :data:`BUNDLE_CLASS_NAME`."""
    index = folder / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text(encoding="utf-8")).get("_class_name") == BUNDLE_CLASS_NAME
    except (OSError, ValueError, AttributeError):
        return False


def resolve_bundle(folder: Path, verify: bool = True) -> ModelLocation:
    """Check a converted bundle (its files against its manifest: sha256 unless ``verify=False``, sizes always) and
    return its component folders."""
    from seesr.weights.manifest import verify_manifest

    missing = _sd_missing(folder, "")
    for name in ("unet", "controlnet"):
        missing += _model_files_missing(folder / name, name, ("diffusion_pytorch_model.safetensors",))
        if not (folder / name / "seesr_config.json").is_file():
            missing.append(f"{name}/seesr_config.json")
    tagger = folder / "tagger"
    if not (tagger / "config.json").is_file():
        missing.append("tagger/config.json")
    if not (tagger.is_dir() and any(tagger.glob("*.safetensors"))):
        missing.append("tagger/diffusion_pytorch_model.safetensors")
    if missing:
        raise MissingWeightsError(
            f"{folder} is an incomplete converted SeeSR bundle; missing: {', '.join(missing)}. "
            "Re-create it with `seesr convert SRC OUT`."
        )
    verify_manifest(folder, hashes=verify)
    return ModelLocation(
        kind="bundle",
        description=f"converted bundle {folder}",
        scheduler=folder / "scheduler",
        text_encoder=folder / "text_encoder",
        tokenizer=folder / "tokenizer",
        vae=folder / "vae",
        unet=folder / "unet",
        controlnet=folder / "controlnet",
        tagger=tagger,
    )


# ---------------------------------------------------------------------------------------------------------------
# (a) release layout


def _where_missing(folder: Path, missing: list[str]) -> str:
    """One line per missing file of a release folder: where it goes, and which repository file it is."""
    lines = []
    for name in missing:
        entry = next(
            (e for e in CATALOG if name == e.target or name.endswith("/" + e.target) or e.target.endswith("/" + name)),
            None,
        )
        lines.append(f"  {folder / name}" + (f"   <- {entry.repo_id}: {entry.filename}" if entry else ""))
    return "\n".join(lines)


def resolve_release(folder: Path) -> ModelLocation:
    """Check a release-layout folder (or the official ``preset/models`` arrangement) and return its parts."""
    sd_root = folder
    if not (folder / "scheduler").is_dir():
        for name in SD_SUBFOLDERS:
            if (folder / name / "scheduler").is_dir():
                sd_root = folder / name
                break
    seesr_root = folder if (folder / "unet").is_dir() or not (folder / "seesr" / "unet").is_dir() else folder / "seesr"
    ram_root = folder / "ram" if (folder / "ram").is_dir() else folder
    prefix = "" if sd_root == folder else f"{sd_root.name}/"
    missing = _sd_missing(sd_root, prefix)
    seesr_prefix = "" if seesr_root == folder else "seesr/"
    for name in ("unet", "controlnet"):
        missing += _model_files_missing(seesr_root / name, f"{seesr_prefix}{name}", DIFFUSERS_WEIGHTS)
    ram_prefix = "" if ram_root == folder else "ram/"
    for name in (RAM_CHECKPOINT, DAPE_CHECKPOINT):
        if not (ram_root / name).is_file():
            missing.append(f"{ram_prefix}{name}")
    if missing:
        looks_like_model = any(
            (folder / name).exists() for name in ("unet", "scheduler", "ram", "seesr", "model_index.json")
        )
        intro = (
            f"{folder} is an incomplete SeeSR model folder"
            if looks_like_model
            else f"{folder} is not a SeeSR model folder"
        )
        raise MissingWeightsError(
            f"{intro}; missing: {', '.join(missing)}.\n"
            "Put each missing file here (repository: file on the Hugging Face Hub):\n"
            f"{_where_missing(folder, missing)}\n"
            "Expected a converted bundle (`seesr convert`) or the release layout:\n"
            f"{_release_layout_help()}\n"
            "(`seesr download --dest FOLDER` writes exactly this.)"
        )
    config_dir = ram_root / "configs"
    return ModelLocation(
        kind="release",
        description=f"release folder {folder}",
        scheduler=sd_root / "scheduler",
        text_encoder=sd_root / "text_encoder",
        tokenizer=sd_root / "tokenizer",
        vae=sd_root / "vae",
        unet=seesr_root / "unet",
        controlnet=seesr_root / "controlnet",
        ram_checkpoint=ram_root / RAM_CHECKPOINT,
        dape_checkpoint=ram_root / DAPE_CHECKPOINT,
        ram_config_dir=config_dir if config_dir.is_dir() else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# (c) default location


def seesr_home() -> Path:
    """``$SEESR_HOME`` (default ``~/.cache/seesr``)."""
    return Path(os.environ.get("SEESR_HOME") or Path.home() / ".cache" / "seesr").expanduser()


def default_bundle_dir() -> Path:
    return seesr_home() / "bundle"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (``HF_HUB_CACHE`` or ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_file(entry: WeightFile, revision: str | None = None, cache_dir: Path | None = None) -> Path | None:
    """The local path of ``entry`` in the Hugging Face cache, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        entry.repo_id, entry.filename, cache_dir=str(cache_dir or hf_cache_dir()), revision=revision
    )
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def model_folder_route(entries: list[WeightFile] | tuple[WeightFile, ...] = CATALOG) -> str:
    """How to run without downloading: ``--model FOLDER`` with ``entries`` laid out in it."""
    return (
        "or place the files by hand in a folder laid out like this and pass `--model FOLDER`:\n"
        + _release_layout_help(entries)
    )


def missing_files_message(
    missing: list[WeightFile], cache_dir: Path, reason: str = "", route: str | None = None
) -> str:
    """User-facing explanation of which catalog files are missing and how to provide them.

    ``route``: the offline alternative (default: ``--model FOLDER`` with the whole release layout).
    """
    lines = [f"SeeSR weights not found: {len(missing)} file(s) missing from the Hugging Face cache ({cache_dir}):"]
    lines += [f"  {entry.repo_id}: {entry.filename}" for entry in missing]
    if reason:
        lines.append(reason)
    lines.append(
        "Get them with `seesr download` (needs network access)"
        + (" - HF_HUB_OFFLINE=1 is set, so nothing was downloaded" if is_offline() else "")
        + ", "
        + (route or model_folder_route())
    )
    return "\n".join(lines)


def find_cached(
    entries: list[WeightFile] | tuple[WeightFile, ...],
    revisions: dict[str, str] | None = None,
    cache_dir: Path | None = None,
    verify: bool = True,
) -> tuple[dict[WeightFile, Path], list[WeightFile]]:
    """The catalogue files ``entries`` in the Hugging Face cache: ``(found, missing)``; no network access.

    Each repository is read at its pinned revision (``revisions``, ``SEESR_*_REVISION``), else at the commit of the
    weights lock (:mod:`seesr.weights.lock`), else at ``main``. With ``verify``, found files are checked against the
    lock (their first check locks them) and :class:`~seesr.weights.lock.WeightsChangedError` names every changed one.
    """
    from seesr.weights import lock as weights_lock

    cache_dir = cache_dir or hf_cache_dir()
    pins = pinned_revisions(revisions)
    locked = weights_lock.read_lock()
    found: dict[WeightFile, Path] = {}
    missing: list[WeightFile] = []
    for entry in entries:
        revision = pins.get(entry.repo_id) or weights_lock.locked_commit(entry.repo_id, locked)
        path = cached_file(entry, revision, cache_dir)
        if path is None:
            missing.append(entry)
        else:
            found[entry] = path
    if verify:
        records, problems = [], []
        for entry, path in found.items():
            record, problem, kind = weights_lock.check_cached(entry, path, locked, pins.get(entry.repo_id), True)
            if record is not None:
                records.append(record)
            if problem is not None:
                problems.append((entry, path, kind, problem))
        weights_lock.write_lock(records)
        if problems:
            raise weights_lock.WeightsChangedError(
                "SeeSR weights changed since they were locked:\n  " + "\n  ".join(line for *_, line in problems),
                [(entry, path, kind) for entry, path, kind, _ in problems],
            )
    return found, missing


def resolve_default(revisions: dict[str, str] | None = None, verify: bool = True) -> ModelLocation:
    """(c): ``$SEESR_HOME/bundle`` if it is a converted bundle, else the catalog files in the Hugging Face cache."""
    bundle = default_bundle_dir()
    if is_bundle(bundle):
        return resolve_bundle(bundle, verify)
    cache_dir = hf_cache_dir()
    pins = pinned_revisions(revisions)
    cached, missing = find_cached(CATALOG, revisions, cache_dir)
    if missing:
        raise MissingWeightsError(missing_files_message(missing, cache_dir))
    found = {entry.target: path for entry, path in cached.items()}

    def folder_of(target: str) -> Path:
        return found[target].parent

    return ModelLocation(
        kind="cache",
        description=f"Hugging Face cache {cache_dir}",
        scheduler=folder_of("scheduler/scheduler_config.json"),
        text_encoder=folder_of("text_encoder/config.json"),
        tokenizer=folder_of("tokenizer/vocab.json"),
        vae=folder_of("vae/config.json"),
        unet=folder_of("unet/config.json"),
        controlnet=folder_of("controlnet/config.json"),
        ram_checkpoint=found["ram/ram_swin_large_14m.pth"],
        dape_checkpoint=found["ram/DAPE.pth"],
        extra={repo: rev for repo, rev in pins.items() if rev},
    )


# ---------------------------------------------------------------------------------------------------------------


def resolve_model(
    model: str | os.PathLike | None = None, revisions: dict[str, str] | None = None, verify: bool = True
) -> ModelLocation:
    """Locate every component of a SeeSR model (see the module docstring for the three forms).

    ``verify=False`` (``--no-verify``) skips hashing a converted bundle's files against its manifest.

    Raises:
        MissingWeightsError: the folder does not exist, is not a SeeSR model, or files are missing (listed).
    """
    if model is None or str(model) == "":
        return resolve_default(revisions, verify)
    folder = Path(model).expanduser()
    if not folder.exists():
        raise MissingWeightsError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise MissingWeightsError(f"--model expects a folder, {folder} is a file")
    if is_bundle(folder):
        return resolve_bundle(folder, verify)
    return resolve_release(folder)
