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


# --- EXIF orientation on every reader path (issue 13 item 5) --------------------------------------------------------

ROTATE_CW = 6  # EXIF orientation 6: shown rotated 90 degrees clockwise


def _exif_bytes(orientation: int = ROTATE_CW) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _png_with_exif_chunk(png: bytes, orientation: int = ROTATE_CW) -> bytes:
    """Insert an ``eXIf`` chunk after IHDR (how cameras and editors store EXIF in a PNG; OpenCV cannot write it)."""
    import struct
    import zlib

    payload = _exif_bytes(orientation).removeprefix(b"Exif\x00\x00")
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def _upright(array: np.ndarray) -> np.ndarray:
    """What a viewer shows for orientation 6: the stored pixels rotated 90 degrees clockwise."""
    return np.rot90(array, k=-1).copy()


def _pattern(height: int = 6, width: int = 10, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(7)
    high = 65535 if dtype == np.uint16 else 255
    return rng.integers(0, high + 1, (height, width, channels), dtype=np.int64).astype(dtype)


def _as_8bit(array16: np.ndarray) -> np.ndarray:
    return (array16.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)


def test_exif_orientation_8bit_rgb_and_rgba_png(tmp_path):
    colour = _pattern()
    Image.fromarray(colour).save(tmp_path / "rgb.png", exif=_exif_bytes())
    loaded = load_image(tmp_path / "rgb.png")
    assert loaded.size == (6, 10) and np.array_equal(np.asarray(loaded.rgb), _upright(colour))
    rgba = _pattern(channels=4)
    rgba[..., 3] = np.arange(10, dtype=np.uint8)[None, :] * 20  # alpha ramp along the long side
    Image.fromarray(rgba).save(tmp_path / "rgba.png", exif=_exif_bytes())
    loaded = load_image(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(loaded.rgb), _upright(rgba[..., :3]))
    assert np.array_equal(np.asarray(loaded.alpha), _upright(rgba[..., 3]))


def test_exif_orientation_16bit_rgb_png(tmp_path):
    """Failed before: the exact 16-bit re-read (OpenCV) replaced the rotated colour with the unrotated one."""
    cv2 = pytest.importorskip("cv2")
    colour = _pattern(dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", colour[..., ::-1])
    assert ok
    (tmp_path / "rgb16.png").write_bytes(_png_with_exif_chunk(encoded.tobytes()))
    loaded = load_image(tmp_path / "rgb16.png")
    assert loaded.size == (6, 10)
    assert np.array_equal(np.asarray(loaded.rgb), _upright(_as_8bit(colour)))


def test_exif_orientation_16bit_rgba_png_turns_colour_and_alpha_together(tmp_path):
    """Failed before: the alpha was rotated, the colour was not, and the two were stitched together."""
    cv2 = pytest.importorskip("cv2")
    rgba = _pattern(channels=4, dtype=np.uint16)
    rgba[..., 3] = np.arange(10, dtype=np.uint16)[None, :] * 7000
    ok, encoded = cv2.imencode(".png", rgba[..., [2, 1, 0, 3]])
    assert ok
    (tmp_path / "rgba16.png").write_bytes(_png_with_exif_chunk(encoded.tobytes()))
    loaded = load_image(tmp_path / "rgba16.png")
    assert np.array_equal(np.asarray(loaded.rgb), _upright(_as_8bit(rgba[..., :3])))
    alpha = np.asarray(loaded.alpha).astype(int)
    assert np.abs(alpha - _upright(_as_8bit(rgba[..., 3])).astype(int)).max() <= 1  # Pillow's own 16->8 rounding


def test_exif_orientation_palette_with_transparency(tmp_path):
    palette_image = Image.fromarray(_pattern()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_image.info["transparency"] = 0
    palette_image.save(tmp_path / "p.png", exif=_exif_bytes(), transparency=0)
    stored = Image.open(tmp_path / "p.png").convert("RGBA")
    loaded = load_image(tmp_path / "p.png")
    assert loaded.size == (6, 10) and loaded.alpha is not None
    assert np.array_equal(np.asarray(loaded.rgb), _upright(np.asarray(stored)[..., :3]))
    assert np.array_equal(np.asarray(loaded.alpha), _upright(np.asarray(stored)[..., 3]))


def test_exif_orientation_grayscale_8_and_16bit(tmp_path):
    gray = _pattern(channels=1)[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png", exif=_exif_bytes())
    assert np.array_equal(np.asarray(load_image(tmp_path / "g.png").rgb)[..., 0], _upright(gray))
    gray16 = _pattern(channels=1, dtype=np.uint16)[..., 0]
    Image.fromarray(gray16).save(tmp_path / "g16.png", exif=_exif_bytes())
    loaded = load_image(tmp_path / "g16.png")
    assert loaded.size == (6, 10)
    assert np.array_equal(np.asarray(loaded.rgb)[..., 0], _upright(_as_8bit(gray16)))


def test_exif_orientation_cmyk_jpeg(tmp_path):
    Image.fromarray(_pattern(60, 100)).convert("CMYK").save(tmp_path / "c.jpg", exif=_exif_bytes(), quality=95)
    stored = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))
    loaded = load_image(tmp_path / "c.jpg")
    assert loaded.source_mode == "CMYK" and loaded.size == (60, 100)
    assert np.array_equal(np.asarray(loaded.rgb), _upright(stored))


# --- GIF / multi-page files and symbolic links in folders (issue 13 item 8) -----------------------------------------


def test_animated_gif_and_multipage_tiff_use_the_first_frame_and_say_so(tmp_path):
    frames = [Image.new("RGB", (8, 6), (value, 0, 0)) for value in (250, 10, 100)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    files, problems = iter_image_files([tmp_path])
    assert [f.name for f in files] == ["anim.gif", "pages.tif"] and problems == []  # .gif was skipped silently
    for name in ("anim.gif", "pages.tif"):
        loaded = load_image(tmp_path / name)
        assert loaded.frames == 3 and "3 frames; only the first is used" in loaded.note and name in loaded.note
        assert np.asarray(loaded.rgb)[0, 0, 0] > 200  # frame 1, not a later one
    assert load_image(tmp_path / "pages.tif").rgb.size == (8, 6)


def test_symlink_loops_and_broken_links_are_reported(tmp_path):
    _photo().save(tmp_path / "good.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    files, problems = iter_image_files([tmp_path])
    assert [f.name for f in files] == ["good.png"]
    assert any("loop.png: symlink loop" in problem for problem in problems), problems
    assert any("gone.jpg: broken symlink" in problem for problem in problems), problems
    files, problems = iter_image_files([tmp_path / "loop.png"])
    assert files == [] and problems == [f"{tmp_path / 'loop.png'}: symlink loop"]
