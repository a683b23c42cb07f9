"""PairedImageFolder (prepare output), OnlineDegradationDataset + degrade_batch, GT transforms."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from seesr.data import (
    OnlineDegradationDataset,
    PairedImageFolder,
    PrepareOptions,
    degrade_batch,
    prepare_dataset,
    ram_values_from_lr,
    random_crop_gt,
)
from seesr.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pad_reflect101_bottom_right, to_uint8
from seesr.degradations import DegradationConfig


@pytest.fixture(scope="module")
def prepared(hr_folder, tmp_path_factory) -> Path:
    """A prepared set with hand-written tags (tagging itself is tested with the tiny RAM elsewhere)."""
    out = tmp_path_factory.mktemp("paired") / "set"
    prepare_dataset(
        PrepareOptions(
            gt_dirs=[hr_folder],
            out=out,
            size=64,
            min_pixels=0,
            min_file_bytes=0,
            device="cpu",
            tags=False,
            progress=False,
        )
    )
    for index, stem in enumerate(sorted(p.stem for p in (out / "gt").glob("*.png"))):
        (out / "tag").mkdir(exist_ok=True)
        (out / "tag" / f"{stem}.txt").write_text(f"tag{index}, photo,", encoding="utf-8")
    return out


def png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def test_paired_item_keys_ranges_and_pairing(prepared):
    dataset = PairedImageFolder(prepared)
    assert len(dataset) == 3
    item = dataset[1]
    assert set(item) == {"gt", "lr", "ram_values", "tags", "stem"}
    assert item["stem"] == "0000002" and item["tags"] == "tag1, photo,"
    assert item["gt"].shape == (3, 64, 64) and item["gt"].dtype == torch.float32
    assert float(item["gt"].min()) >= -1 and float(item["gt"].max()) <= 1 and float(item["gt"].min()) < 0
    torch.testing.assert_close(item["gt"], png(prepared / "gt" / "0000002.png") * 2 - 1)
    torch.testing.assert_close(item["lr"], png(prepared / "sr_bicubic" / "0000002.png"))
    assert item["ram_values"].shape == (3, 384, 384)
    torch.testing.assert_close(item["ram_values"], ram_values_from_lr(item["lr"]))


def test_paired_pairs_by_stem_not_by_position(prepared, tmp_path):
    root = tmp_path / "shuffled"
    shutil.copytree(prepared, root)
    # an extra LR without GT is ignored; a GT without LR is an error
    shutil.copy(root / "sr_bicubic" / "0000001.png", root / "sr_bicubic" / "0000000.png")
    assert [item["stem"] for item in PairedImageFolder(root).items] == ["0000001", "0000002", "0000003"]
    (root / "sr_bicubic" / "0000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="no LR partner.*0000002"):
        PairedImageFolder(root)


def test_paired_falls_back_to_small_lr_and_optional_tags(prepared, tmp_path):
    root = tmp_path / "small"
    shutil.copytree(prepared / "gt", root / "gt")
    shutil.copytree(prepared / "lr", root / "lr")
    with pytest.raises(FileNotFoundError, match="tag"):
        PairedImageFolder(root)
    item = PairedImageFolder(root, require_tags=False, return_ram_values=False)[0]
    assert item["lr"].shape == (3, 64, 64) and item["tags"] == "" and "ram_values" not in item
    reference = png(prepared / "sr_bicubic" / "0000001.png")
    assert float((item["lr"] - reference).abs().mean()) < 0.01  # re-upscaled from the 8-bit LR


def test_paired_augmentation_is_seeded_per_epoch(prepared):
    dataset = PairedImageFolder(prepared, crop_size=32, hflip=True, null_text_ratio=0.5, seed=1)
    first = [dataset[i] for i in range(3)]
    again = [dataset[i] for i in range(3)]
    assert all(torch.equal(a["gt"], b["gt"]) and a["tags"] == b["tags"] for a, b in zip(first, again, strict=True))
    assert first[0]["gt"].shape == first[0]["lr"].shape == (3, 32, 32)
    crops = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        crops.add(dataset[0]["gt"].sum().item())
    assert len(crops) > 1


def test_gt_crop_flip_pad():
    image = torch.arange(3 * 5 * 6, dtype=torch.float32).view(3, 5, 6)
    padded = pad_reflect101_bottom_right(image, 8, 9)
    assert padded.shape == (3, 8, 9)
    assert torch.equal(padded[:, 5, :6], image[:, 3]) and torch.equal(padded[:, :5, 6], image[:, :, 4])
    assert torch.equal(padded[:, :5, :6], image)
    crop = random_crop_gt(image, 4, torch.Generator().manual_seed(0))
    assert crop.shape == (3, 4, 4)
    assert torch.equal(crop, random_crop_gt(image, 4, torch.Generator().manual_seed(0)))


def test_ram_values_normalisation():
    values = ram_values_from_lr(torch.ones(2, 3, 8, 8))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(values[:, :, 100, 200], expected.expand(2, 3))


def test_to_uint8_rounds_half_to_even_and_saturates():
    values = torch.tensor([-0.1, 0.5 / 255, 1.5 / 255, 254.5 / 255, 1.2]).view(1, 1, 5).expand(3, 1, 5)
    assert to_uint8(values)[0, :, 0].tolist() == [0, 0, 2, 254, 255]


def test_online_dataset_and_degrade_batch(hr_folder):
    dataset = OnlineDegradationDataset(hr_folder, size=48, min_pixels=0, min_file_bytes=0, seed=2)
    item = dataset[0]
    assert set(item) == {"hr", "kernel1", "kernel2", "sinc_kernel", "stem"}
    assert item["hr"].shape == (3, 48, 48) and item["kernel1"].shape == (21, 21)
    assert torch.equal(item["hr"], dataset[0]["hr"])  # per-item seeding
    loader = DataLoader(dataset, batch_size=3, shuffle=False)
    batch = next(iter(loader))
    out = degrade_batch(batch, DegradationConfig.SEESR, torch.Generator().manual_seed(0), return_ram_values=True)
    assert set(out) == {"gt", "lr", "lr_small", "ram_values", "stem"}
    assert out["gt"].shape == out["lr"].shape == (3, 3, 48, 48) and out["lr_small"].shape == (3, 3, 12, 12)
    assert float(out["gt"].min()) >= -1 and float(out["gt"].max()) <= 1
    assert float(out["lr"].min()) >= 0 and float(out["lr"].max()) <= 1
    torch.testing.assert_close(out["lr"] * 255, torch.round(out["lr"] * 255), atol=1e-4, rtol=0)  # quantised
    again = degrade_batch(batch, DegradationConfig.SEESR, torch.Generator().manual_seed(0))
    assert torch.equal(out["lr"], again["lr"])
    other = degrade_batch(batch, DegradationConfig.SEESR, torch.Generator().manual_seed(1))
    assert not torch.equal(out["lr"], other["lr"])


def test_online_resize_mode_and_replacement(hr_folder):
    resized = OnlineDegradationDataset(hr_folder, size=40, mode="resize", min_pixels=0, min_file_bytes=0)
    assert resized[1]["hr"].shape == (3, 40, 40)
    # chelsea (56x76 = 4256 px) is replaced by another image under a 5000-pixel minimum
    files = [p.stem for p in resized.files]
    strict = OnlineDegradationDataset(hr_folder, size=40, min_pixels=5000, min_file_bytes=0, return_kernels=False)
    assert strict[files.index("chelsea")]["stem"] != "chelsea"
    with pytest.raises(ValueError, match="no image meeting"):
        OnlineDegradationDataset(hr_folder, size=40, min_pixels=10**9, min_file_bytes=0, max_replacements=3)[0]
