"""Reading every kind of file users have, and writing atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from seesr.utils.images import ImageReadError, iter_image_files, load_image, save_image_atomic


def _photo(width: int = 24, height: int = 16) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_rgb_roundtrip(tmp_path):
    path = tmp_path / "a.png"
    _photo().save(path)
    loaded = load_image(path)
    assert loaded.rgb.mode == "RGB" and loaded.size == (24, 16) and loaded.alpha is None
    assert np.array_equal(np.asarray(loaded.rgb), np.asarray(_photo()))


def test_grayscale_cmyk_palette_become_rgb(tmp_path):
    _photo().convert("L").save(tmp_path / "g.png")
    _photo().convert("CMYK").save(tmp_path / "c.jpg")
    _photo().convert("P").save(tmp_path / "p.png")
    for name in ("g.png", "c.jpg", "p.png"):
        loaded = load_image(tmp_path / name)
        assert loaded.rgb.mode == "RGB" and loaded.size == (24, 16)
    assert load_image(tmp_path / "c.jpg").source_mode == "CMYK"


def test_alpha_is_kept_separately(tmp_path):
    rgba = _photo().convert("RGBA")
    alpha = np.full((16, 24), 255, np.uint8)
    alpha[:, :12] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.alpha is not None and np.array_equal(np.asarray(loaded.alpha), alpha)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    data = np.full((8, 8), 65535, np.uint16)
    data[0, 0] = 0
    Image.fromarray(data).save(tmp_path / "g16.png")
    loaded = np.asarray(load_image(tmp_path / "g16.png").rgb)
    assert loaded[1, 1, 0] == 255 and loaded[0, 0, 0] == 0


def test_sixteen_bit_rgb_png(tmp_path):
    cv2 = pytest.importorskip("cv2")
    data = np.zeros((8, 10, 3), np.uint16)
    data[..., 2] = 65535  # BGR order for OpenCV: red channel full
    data[..., 1] = 32896  # ~ 128 in 8 bit
    cv2.imwrite(str(tmp_path / "rgb16.png"), data)
    loaded = np.asarray(load_image(tmp_path / "rgb16.png").rgb)
    assert loaded.shape == (8, 10, 3)
    assert loaded[0, 0, 0] == 255 and loaded[0, 0, 1] == 128 and loaded[0, 0, 2] == 0


def test_exif_orientation_is_honoured(tmp_path):
    image = _photo(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (10, 30)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image at all", "not an image"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=message):
        load_image(tmp_path / name)


def test_truncated_file(tmp_path):
    _photo(64, 64).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_pixel_limit(tmp_path):
    _photo(40, 40).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        load_image(tmp_path / "big.png", max_pixels=1000)


def test_atomic_save_never_overwrites_input_and_leaves_no_partial(tmp_path):
    source = tmp_path / "in.png"
    _photo().save(source)
    before = source.read_bytes()
    with pytest.raises(FileExistsError):
        save_image_atomic(_photo(8, 8), source, protected=[source])
    assert source.read_bytes() == before
    out = save_image_atomic(_photo(), tmp_path / "out" / "x.png", metadata={"prompt": "a, b"})
    assert Image.open(out).text["prompt"] == "a, b"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.png"]


def test_iter_image_files_expands_folders_and_globs(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    files, problems = iter_image_files([tmp_path, str(tmp_path / "*.png"), tmp_path / "missing.png"])
    assert [f.name for f in files] == ["a.jpg", "b.png"]
    assert len(problems) == 1 and "missing.png" in problems[0]


def test_written_files_get_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        out = save_image_atomic(_photo(), tmp_path / "p.png")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
