"""Video files in and out (io.video): round trips, audio carried along, bad files refused naming the file.

Every clip is made here with PyAV: coloured squares moving over a dark background, 12 frames of 64 x 48
at 12.5 or 24 fps, one with a 440 Hz tone. Expectations come from what the test made (frames, rate,
sample rate, the source's own packets), never from read_clip's output.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from targetclip_core.errors import TargetCLIPError

av = pytest.importorskip("av")
video = pytest.importorskip("targetclip_core.io.video")

T, H, W = 12, 48, 64
SAMPLE_RATE = 44100


def moving_squares(t: int = T, h: int = H, w: int = W) -> np.ndarray:
    """uint8 [t, h, w, 3]: a red square moving right and a green one moving left over dark blue-grey."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[:] = (20, 30, 40)
    for i in range(t):
        frames[i, 8:24, 3 * i:3 * i + 16] = (230, 40, 30)
        frames[i, 28:40, w - 14 - 3 * i:w - 2 - 3 * i] = (30, 200, 90)
    return frames


def encode_source(path: Path, fps: Fraction, frames: np.ndarray, *, audio: str | None = None,
                  rate: int = SAMPLE_RATE, fmt: str = "mp4", rotation: int | None = None,
                  options: dict | None = None) -> None:
    """Write a test clip with PyAV directly (not through write_clip), optionally with a sine tone."""
    out = av.open(str(path), "w", format=fmt, options=options or {})
    v = out.add_stream("libvpx-vp9" if fmt == "webm" else "libx264", rate=fps)
    v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    if rotation is not None:
        v.set_display_rotation(rotation)
    a = None
    if audio:
        a = out.add_stream(audio, rate=rate)
        a.layout = "mono"
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = i, 1 / fps
        out.mux(v.encode(frame))
    out.mux(v.encode(None))
    if a is not None:
        n = int(rate * len(frames) / fps)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        resampler = av.AudioResampler(format=a.codec_context.codec.audio_formats[0].name, layout="mono", rate=rate)
        for chunk in resampler.resample(frame):
            out.mux(a.encode(chunk))
        out.mux(a.encode(None))
    out.close()


def audio_facts(path: Path):
    """(codec, sample rate, seconds of decoded audio, the packets' bytes) of the first audio stream."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        packets = [bytes(p) for p in c.demux(s) if p.size]
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(s))
        return s.codec_context.name, s.codec_context.sample_rate, samples / s.codec_context.sample_rate, packets


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.fixture(scope="module")
def toned_mp4(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "toned.mp4"
    encode_source(path, Fraction(25, 2), moving_squares(), audio="aac")
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix, fps, max_error", [
    (".mp4", Fraction(25, 2), 6.0), (".mp4", Fraction(24), 6.0), (".webm", Fraction(24), 6.0),
    (".webm", Fraction(25, 2), 6.0), (".mov", Fraction(24), 6.0), (".gif", Fraction(25, 2), 1.0),
])
def test_round_trip_keeps_count_rate_size_and_pixels(tmp_path, suffix, fps, max_error):
    frames = moving_squares()
    path = video.write_clip(tmp_path / f"clip{suffix}", torch.from_numpy(frames), fps)
    clip = video.read_clip(path)
    assert clip.frames.dtype == torch.uint8 and tuple(clip.frames.shape) == (T, H, W, 3)
    assert clip.fps == fps and isinstance(clip.fps, Fraction)
    assert clip.source == path and clip.has_audio is False
    error = (clip.frames.float() - torch.from_numpy(frames).float()).abs().mean().item()
    assert error < max_error, f"{suffix}: mean abs error {error:.2f}"
    assert video.probe_clip(path) == (T, fps, W, H, False)
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif"])
def test_same_inputs_give_the_same_bytes(tmp_path, suffix):
    frames = torch.from_numpy(moving_squares())
    floats = frames.permute(0, 3, 1, 2).float() / 127.5 - 1  # converts back to exactly `frames`
    rate = Fraction(25, 2) if suffix != ".gif" else Fraction(10)
    written = {video.write_clip(tmp_path / f"{i}{suffix}", frames if i % 2 else floats, rate).read_bytes()
               for i in range(6)}
    assert len(written) == 1


def test_float_frames_in_minus_one_one_are_converted(tmp_path):
    frames = moving_squares()
    floats = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    floats[0, :, 0, 0] = 5.0  # out of range: clamped to 255, not wrapped
    path = video.write_clip(tmp_path / "f.gif", floats, 10)
    clip = video.read_clip(path)
    expected = frames.copy()
    expected[0, 0, 0] = 255
    assert np.array_equal(clip.frames.numpy(), expected)  # GIF of few colours: lossless
    assert clip.fps == 10


def test_gif_keeps_the_rate_its_hundredths_allow_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match="24 fps is written as 25 fps"):
        path = video.write_clip(tmp_path / "c.gif", torch.from_numpy(moving_squares()), 24)
    assert video.read_clip(path).fps == 25  # delay int(100 / 24) = 4 hundredths
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = video.write_clip(tmp_path / "d.gif", torch.from_numpy(moving_squares()), Fraction(50))
    assert video.read_clip(path).fps == 50


def test_odd_size_pads_h264_by_one_pixel_and_webm_keeps_it(tmp_path):
    frames = moving_squares(h=H + 1, w=W + 1)
    mp4 = video.read_clip(video.write_clip(tmp_path / "odd.mp4", torch.from_numpy(frames), 24))
    assert tuple(mp4.frames.shape) == (T, H + 2, W + 2, 3)
    # the padding repeats the last row / column, so the added pixels match their neighbours
    assert (mp4.frames[:, -1].float() - mp4.frames[:, -2].float()).abs().mean() < 4
    assert (mp4.frames[:, : H + 1, : W + 1].float() - torch.from_numpy(frames).float()).abs().mean() < 6
    webm = video.read_clip(video.write_clip(tmp_path / "odd.webm", torch.from_numpy(frames), 24))
    assert tuple(webm.frames.shape) == (T, H + 1, W + 1, 3)


@pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
                    reason="this PyAV cannot write a display matrix to make the test clip")
def test_rotation_metadata_is_applied(tmp_path):
    frames = moving_squares(t=4)
    frames[:, :6, :6] = (255, 255, 255)  # a white mark in the top-left corner
    path = tmp_path / "rotated.mp4"
    encode_source(path, Fraction(24), frames, rotation=90)
    clip = video.read_clip(path)
    assert clip.rotation == 90
    # shown turned 90 degrees counter-clockwise: portrait, the top-left corner now at the bottom-left
    assert tuple(clip.frames.shape) == (4, W, H, 3)
    expected = np.rot90(frames, k=1, axes=(1, 2))
    assert (clip.frames.float() - torch.from_numpy(expected.copy()).float()).abs().mean() < 6
    assert clip.frames[0, -3, 2].min() > 200


# --------------------------------------------------------------------------- audio


def test_audio_is_copied_packet_by_packet(tmp_path, toned_mp4):
    out = video.write_clip(tmp_path / "with_sound.mp4", torch.from_numpy(moving_squares()), Fraction(25, 2),
                           audio_from=toned_mp4)
    codec, rate, seconds, packets = audio_facts(out)
    src_codec, src_rate, src_seconds, src_packets = audio_facts(toned_mp4)
    assert (codec, rate) == ("aac", SAMPLE_RATE) == (src_codec, src_rate)
    assert packets == src_packets  # copied, not re-encoded: the same samples
    assert abs(seconds - T / 12.5) < 1 / 12.5 and abs(seconds - src_seconds) < 1e-9
    assert video.read_clip(out).has_audio and video.probe_clip(out)[4] is True


def test_audio_in_a_codec_webm_refuses_is_reencoded_to_opus(tmp_path, toned_mp4):
    out = video.write_clip(tmp_path / "with_sound.webm", torch.from_numpy(moving_squares()), Fraction(25, 2),
                           audio_from=toned_mp4)
    codec, rate, seconds, _ = audio_facts(out)
    assert codec == "opus" and rate == 48000  # Opus runs at 48 kHz
    assert abs(seconds - T / 12.5) < 1 / 12.5


def test_pcm_audio_is_reencoded_to_aac_in_mp4(tmp_path):
    wav = tmp_path / "tone.wav"
    with av.open(str(wav), "w", format="wav") as out:
        a = out.add_stream("pcm_s16le", rate=22050)
        a.layout = "mono"
        tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 22050, 0
        out.mux(a.encode(frame))
        out.mux(a.encode(None))
    out_path = video.write_clip(tmp_path / "pcm.mp4", torch.from_numpy(moving_squares()), 12, audio_from=wav)
    codec, rate, seconds, _ = audio_facts(out_path)
    assert (codec, rate) == ("aac", 22050) and abs(seconds - 1.0) < 1 / 12
    with pytest.raises(TargetCLIPError, match=r"tone\.wav.*no video stream"):
        video.read_clip(wav)


def test_gif_drops_audio_with_a_warning(tmp_path, toned_mp4):
    with pytest.warns(UserWarning, match="GIF"):
        out = video.write_clip(tmp_path / "mute.gif", torch.from_numpy(moving_squares()), 10, audio_from=toned_mp4)
    assert video.probe_clip(out)[4] is False


# --------------------------------------------------------------------------- bad files


def test_truncated_files_raise_naming_the_file(tmp_path):
    whole = {}
    for suffix in (".mp4", ".webm", ".gif"):
        whole[suffix] = video.write_clip(tmp_path / f"whole{suffix}", torch.from_numpy(moving_squares()), 10)
    faststart = tmp_path / "whole_faststart.mp4"
    encode_source(faststart, Fraction(12), moving_squares(), options={"movflags": "faststart"})
    whole["faststart"] = faststart
    for name, path in whole.items():
        data = path.read_bytes()
        half = tmp_path / f"half_{path.name}"
        half.write_bytes(data[: len(data) // 2])
        with pytest.raises(TargetCLIPError, match=rf"{half.name}.*(truncated|corrupt)"):
            video.read_clip(half)
        with pytest.raises(TargetCLIPError, match=rf"{half.name}.*(truncated|corrupt)"):
            video.read_clip(half, max_frames=T)  # asked for no more than the clip holds: still the whole clip


def test_truncated_file_can_be_read_partly_on_request(tmp_path, monkeypatch):
    path = video.write_clip(tmp_path / "whole.webm", torch.from_numpy(moving_squares()), 12)
    data = path.read_bytes()
    half = tmp_path / "half.webm"
    half.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"half\.webm: truncated or corrupt.*using the \d+ frames"):
        clip = video.read_clip(half, allow_truncated=True)
    assert 0 < clip.frames.shape[0] < T
    monkeypatch.setattr(video, "_stream_seconds", lambda stream: None)  # no DURATION tag: the container's span
    with pytest.raises(TargetCLIPError, match=r"half\.webm.*data ends at"):
        video.read_clip(half)
    assert (clip.frames.float() - torch.from_numpy(moving_squares()[: clip.frames.shape[0]]).float()).abs().mean() < 6


def test_audio_outlasting_the_video_is_not_taken_for_truncation(tmp_path, monkeypatch):
    """A WebM's container duration is its longest stream's: a tone longer than the frames is no damage."""
    path = tmp_path / "long_tone.webm"
    frames = moving_squares()
    encode_source(path, Fraction(25, 2), frames[:6], audio="libopus", rate=48000, fmt="webm")
    # the tone was made for the 6 frames; make one twice as long with 6 frames of video
    long_path = tmp_path / "longer_tone.webm"
    with av.open(str(path)) as src, av.open(str(long_path), "w", format="webm") as out:
        v_in, a_in = src.streams.video[0], src.streams.audio[0]
        v_out, a_out = out.add_stream_from_template(v_in), out.add_stream_from_template(a_in)
        packets = [p for p in src.demux() if p.dts is not None]
        last_audio = max(p.pts + p.duration for p in packets if p.stream.index == a_in.index)
        for packet in packets:
            packet.stream = v_out if packet.stream.index == v_in.index else a_out
            out.mux(packet)
        for packet in [p for p in packets if p.stream is a_out]:  # the tone again, after the first
            packet.pts += last_audio
            packet.dts += last_audio
            out.mux(packet)
    clip = video.read_clip(long_path)
    assert clip.frames.shape[0] == 6 and clip.has_audio
    # without the track's DURATION tag only the container's 0.97 s is known: the tone's packets reach it
    monkeypatch.setattr(video, "_stream_seconds", lambda stream: None)
    assert video.read_clip(long_path).frames.shape[0] == 6


def test_files_that_are_not_videos_are_refused(tmp_path):
    from PIL import Image

    cases = {"notes.mp4": b"hello, this is not a video\n" * 20, "notes.txt": b"plain text\n" * 50, "empty.mp4": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    Image.fromarray(moving_squares()[0]).save(tmp_path / "photo.mp4", format="PNG")
    for name in [*cases, "photo.mp4", "missing.mp4"]:
        with pytest.raises(TargetCLIPError, match=name.replace(".", r"\.")):
            video.read_clip(tmp_path / name)
    with pytest.raises(TargetCLIPError, match=r"photo\.mp4.*still image"):
        video.read_clip(tmp_path / "photo.mp4")


def test_unknown_suffix_and_bad_frames_are_refused_before_writing(tmp_path):
    frames = torch.from_numpy(moving_squares())
    with pytest.raises(TargetCLIPError, match=r"clip\.avi.*\.mp4"):
        video.write_clip(tmp_path / "clip.avi", frames, 24)
    with pytest.raises(TargetCLIPError, match="shape"):
        video.write_clip(tmp_path / "clip.mp4", frames[0], 24)
    with pytest.raises(TargetCLIPError, match="fps"):
        video.write_clip(tmp_path / "clip.mp4", frames, 0)
    assert list(tmp_path.iterdir()) == []


def test_nothing_half_written_when_encoding_fails(tmp_path, monkeypatch):
    target = tmp_path / "broken.mp4"
    target_before = tmp_path / "kept.mp4"
    video.write_clip(target_before, torch.from_numpy(moving_squares()), 24)
    before = target_before.read_bytes()
    real = av.VideoFrame.from_ndarray
    calls = []

    def fail_later(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_later)
    for path in (target, target_before):
        calls.clear()
        with pytest.raises(RuntimeError, match="disk gone"):
            video.write_clip(path, torch.from_numpy(moving_squares()), 24)
    assert not target.exists() and target_before.read_bytes() == before
    assert no_temp_files(tmp_path)


# --------------------------------------------------------------------------- bounds


def test_bounds_refuse_before_decoding(tmp_path, monkeypatch):
    path = video.write_clip(tmp_path / "clip.mp4", torch.from_numpy(moving_squares()), 24)
    decoded = []
    real_decode = video._decode
    monkeypatch.setattr(video, "_decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    with pytest.raises(TargetCLIPError, match=r"clip\.mp4.*64 x 48.*pixels"):
        video.read_clip(path, max_pixels=W * H - 1)
    frame_bytes = W * H * 3
    monkeypatch.setattr(video, "MAX_CLIP_BYTES", 5 * frame_bytes)
    with pytest.raises(TargetCLIPError, match=r"clip\.mp4.*12 frames.*max_frames=5"):
        video.read_clip(path)
    assert decoded == []  # both refused from the header alone
    clip = video.read_clip(path, max_frames=5)  # the way out the message names
    assert clip.frames.shape[0] == 5
    assert (clip.frames.float() - torch.from_numpy(moving_squares()[:5]).float()).abs().mean() < 6


def test_bound_holds_when_the_header_states_no_count(tmp_path, monkeypatch):
    path = video.write_clip(tmp_path / "clip.gif", torch.from_numpy(moving_squares()), 10)
    monkeypatch.setattr(video, "MAX_CLIP_BYTES", 5 * W * H * 3)
    monkeypatch.setattr(video, "_declared_frames", lambda *a: None)
    with pytest.raises(TargetCLIPError, match=r"clip\.gif.*max_frames=5"):
        video.read_clip(path)


def test_missing_pyav_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av" or name.startswith("av."):
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(TargetCLIPError, match="pip install av"):
        video.probe_clip(os.devnull)
