"""`seesr convert` onto its own source or a file, and hostile web requests (issue 13 items 2 and 3)."""

from __future__ import annotations

import shutil
import time

import pytest
from PIL import Image

from seesr.cli.main import main
from seesr.web.app import WebController
from seesr.web.inputs import InputImage, InvalidUpload, read_payload
from seesr.web.settings import UserInputError, WebLimits
from tests.conftest import TINY
from tests.reliability.conftest import snapshot
from tests.web.fakes import FakeRunner
from tests.web.test_app import CONTROLS


# ------------------------------------------------------------------------------------------------------ convert
@pytest.mark.parametrize("where", ["same", "inside", "containing", "a-file"])
def test_convert_never_replaces_its_source_or_a_file(tmp_path, capsys, where):
    release = shutil.copytree(TINY, tmp_path / "release")
    (tmp_path / "notes.txt").write_text("mine")
    out = {
        "same": release,
        "inside": release / "converted",
        "containing": tmp_path,
        "a-file": tmp_path / "notes.txt",
    }[where]
    before = snapshot(tmp_path)
    code = main(["convert", str(release), str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(out) in err, err
    assert snapshot(tmp_path) == before  # the release's .pth files and the user's file untouched, nothing added


# ---------------------------------------------------------------------------------------------------------- web
def _upload(folder, name: str, image: Image.Image) -> dict:
    path = folder / "job" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return {"path": str(path), "orig_name": name}


ODD_SHAPES = {  # size, words of the refusal, the server's limits
    "strip": ((3, 100_000), "aspect ratio", WebLimits()),  # 0.3 Mpx
    # 80x4000 out, but worked on at 512x25600 (short side enlarged first); refused by a server at 2048² output
    "tall": ((20, 1000), "processed at 512x25600", WebLimits(max_output_pixels=2048 * 2048)),
    "big": ((7900, 7900), "7900×7900", WebLimits()),  # 62 Mpx, 31600² out
}


@pytest.mark.parametrize("shape", sorted(ODD_SHAPES))
def test_an_odd_shaped_upload_is_refused_before_any_work(tmp_path, shape):
    size, words, limits = ODD_SHAPES[shape]
    uploads, results = tmp_path / "uploads", tmp_path / "results"
    results.mkdir()
    payload = _upload(uploads, f"{shape}.png", Image.new("1", size, 1))
    runner = FakeRunner()
    controller = WebController(runner, limits, output_dir=results)
    before = snapshot(uploads)
    start = time.monotonic()
    upload = read_payload(payload, limits, [uploads])
    if isinstance(upload, InvalidUpload):
        message = upload.message
    else:
        assert isinstance(upload, InputImage)
        with pytest.raises(UserInputError) as refused:
            controller.run(upload, session="s", **CONTROLS)
        message = str(refused.value)
    assert words in message and "\n" not in message, message
    assert time.monotonic() - start < 10  # from the header: the 62 Mpx image is never converted or enlarged
    assert runner.calls == []
    assert snapshot(uploads) == before and list(results.iterdir()) == []


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink", "url", "bare-string"])
def test_a_path_outside_the_upload_folder_is_refused(tmp_path, how):
    uploads, results = tmp_path / "uploads", tmp_path / "results"
    (uploads / "job").mkdir(parents=True)
    results.mkdir()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(secret)
    (uploads / "job" / "link.png").symlink_to(secret)
    payload = {
        "absolute": {"path": str(secret), "orig_name": "cat.png"},
        "dot-dot": {"path": str(uploads / "job" / ".." / ".." / "secret.png")},
        "symlink": {"path": str(uploads / "job" / "link.png")},
        "url": {"url": f"file://{secret}"},
        "bare-string": str(secret),
    }[how]
    before = snapshot(tmp_path)
    upload = read_payload(payload, WebLimits(), [uploads])
    assert isinstance(upload, InvalidUpload) and "must be uploaded" in upload.message, upload
    runner = FakeRunner()
    with pytest.raises(UserInputError, match="must be uploaded"):
        WebController(runner, WebLimits(), output_dir=results).run(upload, session="s", **CONTROLS)
    assert runner.calls == [] and snapshot(tmp_path) == before
