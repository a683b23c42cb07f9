"""Video building blocks (issue 18): synthetic clips made here with PyAV, reading/writing with the audio copied,
undecodable frames, the shot detector, tag voting and the flicker meter. The end-to-end runs are in
tests/cli/test_upscale_video.py."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av  # the video extra (pip install seesr[video]; in seesr[all])
import numpy as np
import pytest
from PIL import Image

from seesr.pipeline.video import FlickerMeter, colour_histogram, combine_tags, shot_distance
from seesr.utils.video_io import (
    EncodeOptions,
    VideoError,
    encode_video,
    iter_sequence_frames,
    iter_video_frames,
    pick_codec,
    probe,
    sequence_files,
)

SIZE = (16, 12)  # W x H of the synthetic frames
FPS = 8


def frame_array(index: int, cut: int | None = 6, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A smooth frame that drifts slowly; from frame ``cut`` on, a scene of other colours (a planted shot change)."""
    x = np.arange(size[0])[None, :].repeat(size[1], 0)
    y = np.arange(size[1])[:, None].repeat(size[0], 1)
    image = np.zeros((size[1], size[0], 3), np.uint8)
    if cut is None or index < cut:
        image[..., 0] = 60 + 5 * x + index
        image[..., 1] = 50 + 4 * y
        image[..., 2] = 40
    else:
        image[..., 0] = 30
        image[..., 1] = 190 - 3 * x + index
        image[..., 2] = 220 - 2 * y
    return image


def make_clip(
    path: Path, frames: int = 12, cut: int | None = 6, codec: str = "libx264", audio: bool = True, rotation: int = 90
) -> Path:
    """A ``frames``-frame clip at 8 fps with a 440 Hz AAC track as long as the video and a rotation tag."""
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=FPS)
        video.width, video.height = SIZE
        video.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=16000) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_array(index, cut), format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            count = 16000 * frames // FPS
            samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(count) / 16000)).astype(np.float32)[None, :]
            for start in range(0, count, 1024):
                chunk = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path


def corrupt_frame(path: Path, index: int) -> None:
    """Overwrite the middle of frame ``index``'s packet with zeros (PNG-in-MOV: the decoder refuses it)."""
    with av.open(str(path)) as container:
        packets = [(packet.pos, packet.size) for packet in container.demux(video=0) if packet.size]
    position, size = packets[index]
    data = bytearray(path.read_bytes())
    data[position + 40 : position + size - 20] = bytes(size - 60)
    path.write_bytes(bytes(data))


def stream_summary(path: Path) -> dict:
    """Per stream: type, packets, duration in seconds; and the decoded video frame count."""
    with av.open(str(path)) as container:
        streams = [(s.type, s.frames, float(s.duration * s.time_base)) for s in container.streams]
        decoded = sum(1 for _ in container.decode(video=0))
    return {"streams": streams, "decoded": decoded}


def test_reencoding_keeps_timestamps_rotation_duration_and_audio(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    info = probe(clip)
    assert (info.width, info.height, info.fps, info.rotation) == (16, 12, Fraction(8), 90.0)
    assert info.copied_streams == ["audio:aac"]
    items = list(iter_video_frames(clip))
    assert [item.index for item in items] == list(range(12)) and all(item.image is not None for item in items)
    out = tmp_path / "out" / "clip.mp4"
    warnings = encode_video(
        ((item.image.resize((64, 48)), item.pts) for item in items),
        out,
        fps=info.fps,
        time_base=info.time_base,
        rotation=info.rotation,
        copy_from=clip,
    )
    assert warnings == []
    written = probe(out)
    assert (written.width, written.height, written.fps, written.rotation) == (64, 48, Fraction(8), 90.0)
    assert written.duration == pytest.approx(info.duration, abs=1 / FPS)
    before, after = stream_summary(clip), stream_summary(out)
    assert after["decoded"] == 12
    assert after["streams"][1] == before["streams"][1]  # the audio stream, packet for packet
    assert [item.pts for item in iter_video_frames(out)] == [item.pts for item in items]
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no temporary file left


def test_codec_choice_and_bad_codec(tmp_path):
    assert pick_codec(None) == "libx264"
    with pytest.raises(VideoError, match="no-such-codec"):
        pick_codec("no-such-codec")
    frames = [(Image.fromarray(frame_array(i)), None) for i in range(4)]
    out = encode_video(iter(frames), tmp_path / "a.mkv", fps=Fraction(5), options=EncodeOptions(codec="mpeg4"))
    assert out == []
    with av.open(str(tmp_path / "a.mkv")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
        assert sum(1 for _ in container.decode(video=0)) == 4


def test_undecodable_frame_is_an_item_without_image(tmp_path):
    clip = make_clip(tmp_path / "png.mov", codec="png", audio=False, rotation=0)
    corrupt_frame(clip, 5)
    items = list(iter_video_frames(clip))
    assert len(items) == 12
    assert [item.index for item in items if item.image is None] == [5]
    assert "frame 5" in items[5].error


def test_frame_sequence_pattern_and_unreadable_frame(tmp_path):
    for index in range(3):
        Image.fromarray(frame_array(index)).save(tmp_path / f"{index + 1:06d}.png")
    (tmp_path / "000004.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("x")
    files = sequence_files(str(tmp_path / "%06d.png"))
    assert [f.name for f in files] == ["000001.png", "000002.png", "000003.png", "000004.png"]
    items = list(iter_sequence_frames(files))
    assert [item.image is None for item in items] == [False, False, False, True]
    assert "000004.png" in items[3].error


def test_shot_distance_separates_a_cut_from_motion():
    frames = [Image.fromarray(frame_array(i)) for i in range(12)]
    distances = [
        shot_distance(colour_histogram(a), colour_histogram(b)) for a, b in zip(frames[:-1], frames[1:], strict=True)
    ]
    # measured: 0.021 within a shot, 1.0 across the planted cut; default threshold 0.4
    assert max(distances[:5] + distances[6:]) < 0.2
    assert distances[5] > 0.6


def test_combine_tags_keeps_tags_of_half_the_samples():
    samples = [["sky", "tree", "car"], ["tree", "sky"], ["sky", "dog"]]
    assert combine_tags(samples) == ["sky", "tree"]
    assert combine_tags([]) == []
    assert combine_tags([["a", "a", "b"]]) == ["a", "b"]


def test_flicker_meter_ranks_a_flickering_sequence_above_a_steady_one():
    rng = np.random.default_rng(0)
    lr = [Image.fromarray(frame_array(i, cut=None)) for i in range(6)]
    steady, noisy = FlickerMeter(), FlickerMeter()
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for image in lr:
        steady.add(Image.fromarray(base), image)
        noisy.add(Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)), image)
    assert steady.result()["output"] == 0.0 and steady.result()["pairs"] == 5
    assert noisy.result()["output"] > 50  # uniform noise: about 85 levels
    assert noisy.result()["bicubic"] == steady.result()["bicubic"] > 0
    cut = FlickerMeter()
    cut.add(Image.fromarray(base), lr[0])
    cut.add(Image.fromarray(255 - base), lr[1], continuous=False)  # a cut: the pair is not counted
    assert cut.result()["pairs"] == 0


def test_audio_is_interleaved_with_the_video_as_it_is_encoded(tmp_path):
    """Copied audio packets are muxed next to the video packets of the same time, not after the whole video (the
    muxer would otherwise queue every video packet: memory growing with the clip's length)."""
    clip = make_clip(tmp_path / "long.mp4", frames=48)
    info = probe(clip)
    frames = ((item.image, item.pts) for item in iter_video_frames(clip))  # a generator: one frame at a time
    encode_video(frames, tmp_path / "out.mp4", fps=info.fps, time_base=info.time_base, copy_from=clip)
    with av.open(str(tmp_path / "out.mp4")) as container:
        order = "".join(packet.stream.type[0] for packet in container.demux() if packet.size)
    assert order.count("v") == 48 and order.count("a") > 48
    halfway = order.index("v", len(order) // 2)
    assert order[:halfway].count("a") > 20  # measured: audio packets spread over the whole file (2 per frame)


def test_x265_and_crf_and_bitrate_options(tmp_path):
    even = [(Image.fromarray(frame_array(i)).resize((64, 48)), None) for i in range(4)]
    odd = [(image.resize((45, 33)), None) for image, _ in even]  # libx264 in 4:4:4
    for name, frames, options in (
        ("a.mkv", even, EncodeOptions(codec="libx265", crf=30)),
        ("b.mp4", odd, EncodeOptions(bitrate="2M")),
        ("c.mp4", odd, EncodeOptions(crf=30)),
    ):
        encode_video(iter(frames), tmp_path / name, fps=Fraction(5), options=options)
        with av.open(str(tmp_path / name)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 4
    with pytest.raises(VideoError, match="libx265 needs even frame sizes"):  # x265 crashes on those (see video_io)
        encode_video(iter(odd), tmp_path / "d.mkv", fps=Fraction(5), options=EncodeOptions(codec="libx265"))
    with pytest.raises(VideoError, match="--bitrate"):
        encode_video(iter(frames), tmp_path / "e.mp4", fps=Fraction(5), options=EncodeOptions(bitrate="fast"))
    assert not (tmp_path / "e.mp4").exists()


def test_subtitle_stream_is_copied_as_it_is(tmp_path):
    source = tmp_path / "sub.mkv"
    with av.open(str(source), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height = SIZE
        video.pix_fmt = "yuv420p"
        subtitles = container.add_mux_stream("subrip")
        subtitles.time_base = Fraction(1, 1000)
        for index in range(4):
            frame = av.VideoFrame.from_ndarray(frame_array(index), format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        line = av.Packet(b"a line of dialogue")
        line.stream, line.pts, line.dts, line.duration = subtitles, 100, 100, 300
        line.time_base = Fraction(1, 1000)
        container.mux(line)
    info = probe(source)
    assert info.copied_streams == ["subtitle:srt"]
    out = tmp_path / "out.mkv"
    frames = ((item.image, item.pts) for item in iter_video_frames(source))
    assert encode_video(frames, out, fps=info.fps, time_base=info.time_base, copy_from=source) == []
    with av.open(str(out)) as container:
        texts = [(bytes(p), p.pts, p.duration) for p in container.demux(subtitles=0) if p.size]
    assert texts == [(b"a line of dialogue", 100, 300)]


def test_leading_and_all_undecodable_frames(tmp_path):
    from seesr.pipeline.batch import UpscaleSettings
    from seesr.pipeline.video import VideoSettings, open_source, upscale_video
    from tests.pipeline.helpers import tiny_pipeline

    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "000000.png").write_bytes(b"broken")
    for index in (1, 2):
        Image.fromarray(frame_array(index)).save(frames / f"{index:06d}.png")
    settings = UpscaleSettings(steps=1, process_size=32, seed=1)
    result = upscale_video(
        tiny_pipeline(), open_source(str(frames)), tmp_path / "out", settings, VideoSettings(), show_progress=False
    )
    assert result.frames == 3 and result.rendered == 2 and "000000.png" in result.corrupt[0]
    written = [np.asarray(Image.open(tmp_path / "out" / "frames.frames" / f"{i:06d}.png")) for i in range(3)]
    assert np.array_equal(written[0], written[1])  # the first good frame fills in for a broken first frame
    for index in (1, 2):
        (frames / f"{index:06d}.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="no frame could be decoded"):
        upscale_video(tiny_pipeline(), open_source(str(frames)), tmp_path / "o2", settings, VideoSettings())
    assert not (tmp_path / "o2" / "frames.frames").exists()
