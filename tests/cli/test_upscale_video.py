"""`seesr upscale clip.mp4` and frame sequences end to end on the tiny bundle (issue 18): frame count, fps, duration,
rotation and audio kept; interruption and resume; an undecodable frame; the planted cut found by --video-tags shot;
shared noise flickers less than per-frame noise; --frames-only and --assemble."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

import seesr.pipeline.video as video_module
from seesr.cli.main import main
from seesr.pipeline.pipeline_seesr import SeeSRPipeline
from seesr.utils.video_io import iter_video_frames, probe
from tests.conftest import TINY
from tests.pipeline.test_video import corrupt_frame, frame_array, make_clip, stream_summary

FAST = ["--steps", "1", "--process-size", "32", "--device", "cpu", "--seed", "7", "--quiet"]


def upscale(*argv: str) -> int:
    return main(["upscale", *argv, "--model", str(TINY), *FAST])


def report(outdir, name="clip") -> dict:
    return json.loads((outdir / f"{name}.video.json").read_text())


def test_clip_keeps_frames_fps_duration_rotation_and_audio(tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "clip.mp4")
    before = clip.read_bytes()
    out = tmp_path / "out"
    assert upscale(str(clip), "-o", str(out)) == 0
    result = out / "clip.mp4"
    info, written = probe(clip), probe(result)
    assert (written.width, written.height) == (64, 48)
    assert (written.fps, written.rotation) == (Fraction(8), 90.0)
    assert written.duration == pytest.approx(info.duration, abs=1 / 8)
    source, output = stream_summary(clip), stream_summary(result)
    assert output["decoded"] == 12
    assert output["streams"][1] == source["streams"][1]  # audio: same codec stream, packets and duration
    assert [item.pts for item in iter_video_frames(result)] == [item.pts for item in iter_video_frames(clip)]
    assert written.copied_streams == ["audio:aac"]
    assert clip.read_bytes() == before  # the input is untouched
    data = report(out)
    assert data["frames"] == 12 and data["rendered"] == 12 and data["copied_streams"] == ["audio:aac"]
    assert data["flicker"]["output"] > 0 and data["flicker"]["bicubic"] > 0 and data["flicker"]["pairs"] == 10
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "clip.video.json"]  # working folder removed
    # nothing left to do: --skip-existing recognises the finished clip without upscaling a frame
    monkeypatch.setattr(SeeSRPipeline, "from_pretrained", lambda *a, **k: pytest.fail("model loaded again"))
    assert upscale(str(clip), "-o", str(out), "--skip-existing") == 0


def test_interrupted_run_resumes_from_the_last_finished_frame(tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    calls: list[int] = []
    original = video_module._upscale_with_retries

    def counting(pipe, image, settings, seed, tags):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(seed)
        return original(pipe, image, settings, seed, tags)

    monkeypatch.setattr(video_module, "_upscale_with_retries", counting)
    assert upscale(str(clip), "-o", str(out)) == 130
    work = out / "clip.frames"
    assert sorted(p.name for p in work.glob("*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert not (out / "clip.mp4").exists()  # no half-written video
    resumed: list[int] = []

    def recording(pipe, image, settings, seed, tags):
        resumed.append(seed)
        return original(pipe, image, settings, seed, tags)

    monkeypatch.setattr(video_module, "_upscale_with_retries", recording)
    assert upscale(str(clip), "-o", str(out), "--skip-existing") == 0
    assert resumed == [7] * 7  # frames 5..11 only, with the seed of the interrupted run
    data = report(out)
    assert (data["rendered"], data["resumed"]) == (7, 5)
    assert stream_summary(out / "clip.mp4")["decoded"] == 12
    assert not work.exists()  # removed once the video is written


def test_undecodable_frame_is_reported_and_replaced_by_the_previous_one(tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.mov", codec="png", audio=False, rotation=0)
    corrupt_frame(clip, 5)
    out = tmp_path / "out"
    assert upscale(str(clip), "-o", str(out), "--keep-frames") == 0
    err = capsys.readouterr().err
    assert "frame 5" in err and "previous good frame" in err
    data = report(out)
    assert len(data["corrupt_frames"]) == 1 and "frame 5" in data["corrupt_frames"][0]
    frames = out / "clip.frames"
    five, four = (np.asarray(Image.open(frames / f"00000{i}.png").convert("RGB")) for i in (5, 4))
    assert np.array_equal(five, four)  # a copy of the same pixels, not a second computation
    assert stream_summary(out / "clip.mov")["decoded"] == 12


def test_shot_tags_find_the_planted_cut_and_apply_tag_edits_to_every_frame(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", audio=False)
    out = tmp_path / "out"
    argv = [str(clip), "-o", str(out), "--keep-frames", "--extra-tags", "film grain", "--tag-every", "2"]
    assert upscale(*argv) == 0
    data = report(out)
    assert data["shots"] == [[0, 6], [6, 12]]
    frames = out / "clip.frames"
    tags = [Image.open(frames / f"{i:06d}.png").text["tags"] for i in range(12)]
    assert len(set(tags[:6])) == 1 and len(set(tags[6:])) == 1  # one tag set per shot
    assert all("film grain" in text for text in tags)
    assert {json.loads(Image.open(frames / f"{i:06d}.png").text["seesr"])["seed"] for i in range(12)} == {7}
    assert upscale(str(clip), "-o", str(tmp_path / "clip_mode"), "--video-tags", "clip") == 0
    assert report(tmp_path / "clip_mode")["shots"] == [[0, 12]]


def test_shared_noise_flickers_less_than_per_frame_noise(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", cut=None, audio=False)
    flicker = {}
    for noise in ("shared", "per-frame"):
        assert upscale(str(clip), "-o", str(tmp_path / noise), "--frame-noise", noise) == 0
        flicker[noise] = report(tmp_path / noise)["flicker"]
    # measured on the tiny bundle (1 step, seeds 7, 1, 2): shared 0.54, per-frame 13.1, bicubic 0.58 levels
    assert flicker["per-frame"]["output"] > 5 * flicker["shared"]["output"]
    assert flicker["shared"]["ratio"] < 2  # shared noise: about as steady as the bicubic upscale (measured 0.93)
    assert flicker["shared"]["bicubic"] == flicker["per-frame"]["bicubic"]


def test_frame_folder_with_a_bad_frame_frames_only_and_assemble(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(6):
        Image.fromarray(frame_array(index)).save(frames / f"{index:06d}.png")
    (frames / "000003.png").write_bytes(b"broken")
    out = tmp_path / "out"
    video = tmp_path / "seq.mp4"
    assert upscale(str(frames / "%06d.png"), "-o", str(out), "--assemble", str(video), "--fps", "12") == 0
    assert "000003.png" in capsys.readouterr().err
    info = probe(video)
    assert (info.fps, info.width, info.height) == (Fraction(12), 64, 48)
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
    assert report(out, "frames")["corrupt_frames"]
    assert upscale(str(frames), "-o", str(tmp_path / "only"), "--frames-only") == 0
    written = sorted(p.name for p in (tmp_path / "only" / "frames.frames").glob("*.png"))
    assert written == [f"{i:06d}.png" for i in range(6)]
    assert not any(p.suffix == ".mp4" for p in (tmp_path / "only").iterdir())


def test_video_usage_errors(tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.mp4", frames=2, audio=False)
    image = tmp_path / "a.png"
    Image.fromarray(frame_array(0)).save(image)
    assert upscale(str(clip), str(image), "-o", str(tmp_path / "o")) == 2
    assert "separate calls" in capsys.readouterr().err
    assert upscale(str(clip), "-o", str(tmp_path / "o"), "--codec", "no-such-codec") == 2
    assert "no-such-codec" in capsys.readouterr().err
    assert not (tmp_path / "o" / "clip.frames").exists()  # refused before the first frame
    assert upscale(str(clip), "-o", str(tmp_path / "o"), "--max-output-pixels", "1000") == 1
    assert "clip.mp4" in capsys.readouterr().err  # the photo size guard, once per clip, before any frame
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "clip.mp4").write_bytes(b"someone's video")
    assert upscale(str(clip), "-o", str(tmp_path / "mine")) == 1
    assert "not written by seesr upscale" in capsys.readouterr().err
    assert (tmp_path / "mine" / "clip.mp4").read_bytes() == b"someone's video"


def test_a_clip_out_of_memory_or_with_a_taken_name_is_reported_and_the_next_goes_on(tmp_path, monkeypatch, capsys):
    for folder in "abc":
        (tmp_path / folder).mkdir()
    first = make_clip(tmp_path / "a" / "clip.mp4", frames=2, audio=False)
    same_name = make_clip(tmp_path / "b" / "clip.mp4", frames=2, audio=False)
    other = make_clip(tmp_path / "c" / "other.mp4", frames=2, audio=False)
    same_before = same_name.read_bytes()
    original = video_module._upscale_with_retries
    calls = []

    def first_call_runs_out_of_memory(pipe, image, settings, seed, tags):
        calls.append(seed)
        if len(calls) == 1:  # what PyTorch's CPU allocator raises
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return original(pipe, image, settings, seed, tags)

    monkeypatch.setattr(video_module, "_upscale_with_retries", first_call_runs_out_of_memory)
    out = tmp_path / "out"
    assert upscale(str(first), str(same_name), str(other), "-o", str(out)) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"error: {first}: out of memory") and "--skip-existing" in errors[0]
    # two clips named clip would share OUTDIR/clip.frames/ and OUTDIR/clip.mp4: the second is refused
    assert errors[1].startswith(f"error: {same_name}: same output name as {first}")
    assert stream_summary(out / "other.mp4")["decoded"] == 2
    assert not (out / "clip.mp4").exists() and same_name.read_bytes() == same_before


def test_help_documents_the_video_flags(capsys):
    assert main(["upscale", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--video-tags", "--shot-threshold", "--frame-noise", "--codec", "--crf", "--bitrate"):
        assert flag in text, flag
    for flag in ("--frames-only", "--keep-frames", "--assemble", "--fps", "'frames/%06d.png'"):
        assert flag in text, flag
