"""Hostile images in one `seesr upscale` batch beside good ones (issue 13 items 2, 5, 8), run as a user runs it.

One subprocess upscales the whole folder once (1 step, tiny bundle); each case then checks its own file: a one-line
error naming it (or a written, correct output), no traceback, no partial output, the inputs untouched and the good
files of the batch still written.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY
from tests.pipeline.helpers import small_lr
from tests.reliability.conftest import run_seesr, snapshot

GOOD = ["good.png", "redo.png", "exif16.png", "cmyk.jpg", "gray.png", "alpha.png", "anim.gif"]
REFUSED = {  # input -> words its one error line must hold
    "strip.png": "3x100000 has an aspect ratio over 64:1",
    "big.png": "7900x7900 gives a 31600x31600 output",
    "cut.png": "",
    "truncated.jpg": "",
    "notes.png": "",
    "empty.png": "empty file",
    "loop.png": "symlink loop",
}


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _corpus(folder: Path) -> None:
    folder.mkdir()
    base = small_lr(0, (12, 10))
    base.save(folder / "good.png")
    small_lr(1, (12, 10)).save(folder / "redo.png")
    Image.new("L", (3, 100_000)).save(folder / "strip.png")  # 0.3 Mpx, worked on at 512 x 17 million before
    Image.new("1", (7900, 7900), 1).save(folder / "big.png")  # solid, 62 Mpx < the input guard, 31600² out
    (folder / "cut.png").write_bytes(_encoded(small_lr(2, (64, 48)), "PNG")[:-300])
    (folder / "truncated.jpg").write_bytes(_encoded(small_lr(3, (64, 48)), "JPEG")[:400])
    (folder / "notes.png").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    ramp = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 500).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "exif16.png", exif=exif.tobytes())  # 16-bit, 12 wide x 10 high
    base.convert("CMYK").save(folder / "cmyk.jpg")
    base.convert("L").save(folder / "gray.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 12, dtype=np.uint8), (10, 1))))
    rgba.save(folder / "alpha.png")
    frames = [small_lr(seed, (12, 10)) for seed in (4, 5)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=40)
    (folder / "loop.png").symlink_to(folder / "loop.png")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    folder, out = root / "in", root / "out"
    _corpus(folder)
    out.mkdir()
    (out / "redo.png").write_bytes(b"")  # a 0-byte result left by an earlier crash: must be redone
    before = snapshot(folder)
    start = time.monotonic()
    result = run_seesr(
        "upscale", str(folder), "-o", str(out), "--model", str(TINY), "--steps", "1", "--process-size", "32",
        "--device", "cpu", "--seed", "3", "--skip-existing", "--color-fix", "wavelet",
    )  # fmt: skip
    return dict(folder=folder, out=out, before=before, result=result, seconds=time.monotonic() - start)


def test_the_batch_reports_every_file_and_goes_on(batch):
    result = batch["result"]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{len(GOOD)} written, 0 skipped, {len(REFUSED)} failed" in result.stdout, result.stdout
    assert snapshot(batch["folder"]) == batch["before"]  # no input changed, none written beside the inputs
    names = sorted(p.name for p in batch["out"].iterdir())  # no temporary or partial file left
    assert names == sorted(Path(name).with_suffix(".png").name for name in GOOD), names


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_hostile_image_is_one_line_and_no_output(batch, name):
    err = batch["result"].stderr
    assert err.count(str(batch["folder"] / name)) == 1, err  # named once (the progress bar shares stderr)
    line = err[err.index(f"error: {batch['folder'] / name}: ") :].splitlines()[0]
    assert REFUSED[name] in line, line
    assert not (batch["out"] / Path(name).with_suffix(".png").name).exists()


def test_the_size_guard_refuses_before_any_work(batch):
    """The 7900² and 3x100000 files are refused from their headers: the whole batch of 14 images takes seconds,
    and the line names the flag that raises the limit."""
    line = next(line for line in batch["result"].stderr.splitlines() if "big.png" in line)
    assert "--max-output-pixels" in line
    assert batch["seconds"] < 60, batch["seconds"]


@pytest.mark.parametrize(
    ("name", "size", "mode"),
    [
        ("good.png", (48, 40), "RGB"),
        ("redo.png", (48, 40), "RGB"),
        ("exif16.png", (40, 48), "RGB"),  # EXIF orientation 6 applied on the 16-bit path: rotated
        ("cmyk.png", (48, 40), "RGB"),
        ("gray.png", (48, 40), "RGB"),
        ("alpha.png", (48, 40), "RGBA"),
        ("anim.png", (48, 40), "RGB"),
    ],
)
def test_a_readable_image_is_written_whole(batch, name, size, mode):
    written = Image.open(batch["out"] / name)
    written.load()
    assert written.size == size and written.mode == mode


def test_the_16_bit_exif_image_is_rotated_not_only_resized(batch):
    """The 16-bit ramp brightens mostly downwards (12 per row, 1 per column). Displayed with orientation 6 (a
    clockwise quarter turn) its bright bottom rows become the left columns; --color-fix wavelet keeps that low
    frequency in the output. Measured: left 8 columns ~176, right 8 ~42 (unrotated or turned the other way, the
    left would be the darker side)."""
    gray = np.asarray(Image.open(batch["out"] / "exif16.png").convert("L"), dtype=float)
    left, right = gray[:, :8].mean(), gray[:, -8:].mean()
    assert left > right + 60, (left, right)
    assert gray[-8:, :8].mean() > gray[:8, :8].mean()  # the source's columns run top to bottom after the turn


def test_the_animated_gif_is_its_first_frame_and_says_so(batch):
    err = batch["result"].stderr
    assert f"warning: {batch['folder'] / 'anim.gif'}: 2 frames; only the first is used" in err, err
