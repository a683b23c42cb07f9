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
    defaults_markdown,
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


def test_defaults_are_those_of_seesr_upscale():
    """Issue 19 item 8: the page starts from the CLI's defaults (it used the demo's wavelet and longer prompts)."""
    from seesr.pipeline.batch import UpscaleSettings

    web, cli = WebSettings(), UpscaleSettings()
    pairs = [
        (web.added_prompt, cli.added_prompt),
        (web.negative_prompt, cli.negative_prompt),
        (web.color_fix, cli.color_fix),
        (web.seed, cli.seed),
        (web.steps, cli.steps),
        (web.guidance_scale, cli.guidance),
        (web.scale, cli.scale),
        (web.latent_tile_size, cli.latent_tile_size),
        (web.process_size, cli.process_size),
        (web.prompt, cli.prompt),
        (web.use_tags, cli.use_tags),
    ]
    assert all(ours == theirs for ours, theirs in pairs), pairs
    assert (web.color_fix, web.added_prompt) == ("adain", "clean, high-resolution, 8k")
    note = defaults_markdown(web)
    assert "defaults of `seesr upscale`" in note and "colour fix adain" in note and "random seed" in note


def test_official_demo_defaults_stay_available():
    settings = WebSettings.official_demo(process_size=64)
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
    assert settings.process_size == 64 and "--demo-defaults" in defaults_markdown(settings)


def test_unedited_detected_tags_are_dape_s():
    """Issue 19 item 8: tags that "Detect tags" filled in and the user left alone are not labelled as the user's."""
    detected = "cat, sofa, window"
    same = make_settings(
        **{**CONTROLS, "tags_text": " cat,sofa , window"}, detected_tags_text=detected, limits=WebLimits()
    )
    edited = make_settings(**{**CONTROLS, "tags_text": "cat, sofa"}, detected_tags_text=detected, limits=WebLimits())
    typed = make_settings(**CONTROLS, limits=WebLimits())
    off = make_settings(**{**CONTROLS, "use_tags": False}, detected_tags_text=detected, limits=WebLimits())
    at_run_time = make_settings(**{**CONTROLS, "tags_text": ""}, limits=WebLimits())
    assert [s.tags_source for s in (same, edited, typed, off, at_run_time)] == ["dape", "user", "user", "none", "dape"]


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
        ({"color_fix": "sepia"}, "colour fix must be one of adain, wavelet, none"),
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
    assert check_output_size(50, 40, 4, limits, 64) == (200, 160)
    with pytest.raises(UserInputError, match=r"60x50 gives a 240x200 output at --scale 4: 48000 pixels exceeds"):
        check_output_size(60, 50, 4, limits, 64)


def test_the_size_check_counts_the_enlargement_to_the_processing_size():
    """Issue 13 item 2: small inputs are worked on at process_size; the web check used to look at the output only."""
    limits = WebLimits(max_output_pixels=2048 * 2048)
    # 20x1000 -> x4 is 80x4000 (0.3 MP), but its short side is enlarged to 512/4 first: 512x25600 (13.1 MP)
    with pytest.raises(
        UserInputError, match=r"processed at 512x25600.*raise it with --max-output-pixels.*seesr serve"
    ):
        check_output_size(20, 1000, 4, limits, 512)
    with pytest.raises(UserInputError, match="aspect ratio"):
        check_output_size(3, 100_000, 4, limits, 512)  # the 0.3 MP strip that made the server grow to 4.5 GB
    assert check_output_size(20, 1000, 4, limits, 16) == (80, 4000)


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
