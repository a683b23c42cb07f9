"""Web UI settings, limits and upload checks, without a browser, Gradio or a model."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from seesr.web.inputs import InputImage, InvalidUpload, read_upload
from seesr.web.settings import (
    DEFAULT_ADDED_PROMPT,
    DEFAULT_NEGATIVE_PROMPT,
    MAX_SEED,
    UserInputError,
    WebLimits,
    WebSettings,
    check_input_size,
    check_output_size,
    format_tags,
    make_settings,
    parse_tags,
    safe_stem,
)

CONTROLS = dict(
    tags_text="cat, sofa",
    use_tags=True,
    prompt="  a photo ",
    added_prompt=DEFAULT_ADDED_PROMPT,
    negative_prompt=DEFAULT_NEGATIVE_PROMPT,
    steps=5.0,
    guidance_scale=5.5,
    seed=7.0,
    random_seed=False,
    color_fix="wavelet",
    scale=4.0,
    latent_tile_size=96.0,
)


def test_defaults_follow_the_official_gradio_demo():
    settings = WebSettings()
    assert settings.added_prompt == "clean, high-resolution, 8k, best quality, masterpiece"
    assert settings.negative_prompt.startswith("dotted, noise, blur, lowres, oversmooth, longbody")
    assert settings.negative_prompt.endswith("cropped, worst quality, low quality")
    assert (settings.steps, settings.guidance_scale, settings.seed, settings.scale, settings.color_fix) == (
        50,
        5.5,
        231,
        4,
        "wavelet",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat, sofa,  window ", ("cat", "sofa", "window")),
        ("cat,\nsofa\n\n,cat", ("cat", "sofa")),
        ("  night   view , ", ("night view",)),
        ("", None),
        (" , ,\n", None),
        (None, None),
    ],
)
def test_parse_tags(text, expected):
    assert parse_tags(text) == expected


def test_format_tags_round_trips():
    tags = ("app icon", "night view")
    assert parse_tags(format_tags(tags)) == tags
    assert format_tags(None) == ""


def test_make_settings_converts_and_trims():
    settings = make_settings(limits=WebLimits(), **CONTROLS)
    assert settings.tags == ("cat", "sofa")
    assert settings.prompt == "a photo"
    assert (settings.steps, settings.seed, settings.scale, settings.latent_tile_size) == (5, 7, 4, 96)
    assert isinstance(settings.steps, int) and isinstance(settings.scale, int)


def test_tags_off_ignores_the_tag_box():
    settings = make_settings(limits=WebLimits(), **{**CONTROLS, "use_tags": False})
    assert settings.tags is None and settings.use_tags is False


def test_random_seed_is_drawn_once_and_in_range():
    settings = make_settings(limits=WebLimits(), **{**CONTROLS, "random_seed": True, "seed": "ignored"})
    assert settings.seed is None
    resolved = settings.resolved()
    assert isinstance(resolved.seed, int) and 0 <= resolved.seed <= MAX_SEED
    assert resolved.resolved() is resolved
    seeds = {settings.resolved().seed for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps must be between 1 and 10"),
        ({"steps": 11}, "steps must be between 1 and 10"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": "many"}, "steps must be a number"),
        ({"scale": 9}, "scale must be between 1 and 8"),
        ({"seed": -1}, "seed must be between 0"),
        ({"seed": float("nan")}, "seed must be a finite number"),
        ({"guidance_scale": 31}, "guidance must be between 0 and 30"),
        ({"color_fix": "sepia"}, "colour fix must be one of wavelet, adain, none"),
        ({"latent_tile_size": 8}, "tile size must be between 16 and 1024"),
        ({"prompt": "x" * 2001}, "prompt is too long"),
    ],
)
def test_make_settings_rejects_forged_values(change, message):
    with pytest.raises(UserInputError, match=message):
        make_settings(limits=WebLimits(max_steps=10), **{**CONTROLS, **change})


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_input_pixels"):
        WebLimits(max_input_pixels=0)


def test_input_and_output_size_checks():
    limits = WebLimits(max_input_pixels=100 * 100, max_output_pixels=200 * 200)
    check_input_size(100, 100, limits)
    with pytest.raises(UserInputError, match=r"101×100 .* accepts images up to 10000 pixels"):
        check_input_size(101, 100, limits)
    assert check_output_size(50, 40, 4, limits) == (200, 160)
    with pytest.raises(UserInputError, match=r"At ×4 the result would be 240×200"):
        check_output_size(60, 50, 4, limits)


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("photo.jpg", "photo"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\My Photo (1).png", "My_Photo_1"),
        ("..", "image"),
        (None, "image"),
        ("ünïcode.png", "n_code"),
    ],
)
def test_safe_stem_never_keeps_path_parts(name, stem):
    assert safe_stem(name) == stem


# ------------------------------------------------------------------------------------------------ uploads


def _png(path, size=(40, 30), mode="RGB"):
    Image.new(mode, size, (200, 100, 50) if mode == "RGB" else (200, 100, 50, 128)).save(path)
    return path


def test_read_upload_accepts_a_photo(tmp_path):
    upload = read_upload(_png(tmp_path / "x.png"), "holiday.png", WebLimits())
    assert isinstance(upload, InputImage)
    assert upload.size == (40, 30) and upload.rgb.mode == "RGB" and upload.alpha is None
    assert upload.stem == "holiday"


def test_read_upload_keeps_alpha(tmp_path):
    upload = read_upload(_png(tmp_path / "x.png", mode="RGBA"), "logo.png", WebLimits())
    assert isinstance(upload, InputImage) and upload.alpha is not None and upload.alpha.size == (40, 30)


def test_read_upload_refuses_too_many_pixels_before_decoding(tmp_path):
    path = _png(tmp_path / "big.png", size=(3000, 2000))
    upload = read_upload(path, "big.png", WebLimits(max_input_pixels=1_000_000))
    assert isinstance(upload, InvalidUpload)
    assert "3000×2000 (6.0 MP)" in upload.message and "up to 1.0 MP" in upload.message


def test_read_upload_explains_a_non_image_without_leaking_the_path(tmp_path):
    path = tmp_path / "secret_dir" / "notes.png"
    path.parent.mkdir()
    path.write_text("this is not an image")
    upload = read_upload(path, "notes.png", WebLimits())
    assert isinstance(upload, InvalidUpload)
    assert upload.message == "notes.png: not an image file (or a format Pillow cannot read)"
    assert "secret_dir" not in upload.message


def test_read_upload_empty_and_oversized_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert read_upload(empty, "empty.png", WebLimits()) == InvalidUpload("empty.png: the file is empty")
    path = _png(tmp_path / "x.png", size=(64, 64))
    upload = read_upload(path, "x.png", WebLimits(max_upload_bytes=10))
    assert isinstance(upload, InvalidUpload) and "larger than this server's upload limit of 10 bytes" in upload.message


def test_read_upload_truncated_file(tmp_path):
    path = _png(tmp_path / "x.png", size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    upload = read_upload(path, "x.png", WebLimits())
    assert isinstance(upload, InvalidUpload) and upload.message.startswith("x.png: cannot read image")


def test_read_upload_data_url():
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (1, 2, 3)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    upload = read_upload(None, None, WebLimits(), data_url=url)
    assert isinstance(upload, InputImage) and upload.size == (12, 10)
    bad = read_upload(None, "p.png", WebLimits(), data_url="data:image/png;base64,@@@")
    assert bad == InvalidUpload("p.png: the image data is corrupt")
    assert isinstance(read_upload(None, None, WebLimits(max_upload_bytes=10), data_url=url), InvalidUpload)
