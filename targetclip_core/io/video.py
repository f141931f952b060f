"""Video files in and out: `read_clip`, `write_clip`, `probe_clip` (PyAV, imported only when used).

Reading (`read_clip`) decodes every frame of the first video stream as RGB, turned upright as the
stream's display matrix (rotation) says, into one uint8 tensor [T, H, W, 3]. Before a frame is decoded
the declared size is checked: a frame may hold at most `max_pixels` pixels (io.images' limit) and the
whole clip at most `MAX_CLIP_BYTES` of uint8 frames (checked again while decoding, as headers can lie
or be missing). `max_frames` reads only the first frames, which is also how a long clip fits the bound.

A truncated or corrupt file raises TargetCLIPError naming the file and how many frames could be decoded
(a user who asked for the clip expects the whole clip, not a silently shorter one); pass
`allow_truncated=True` to get the frames decodable before the damage instead, with a warning saying
how many. Not a video, no video stream, zero frames: TargetCLIPError naming the file.

Writing (`write_clip`) picks the container and codec by suffix: .mp4 / .mov -> H.264 (libx264, yuv420p),
.webm -> VP9 (libvpx-vp9, yuv420p), .gif -> GIF (one adaptive 256-colour palette per frame). It writes
through io.files.atomic_path (nothing half-written at the target) with one encoder thread and bit-exact
muxing, so the same inputs give the same bytes. `audio_from` copies another file's first audio stream
packet by packet where the container takes its codec, else re-encodes it (AAC in mp4/mov, Opus in webm);
a GIF has no audio, so it is dropped with a warning. The audio goes in whole, timestamps kept (the same
samples over the same span), even where it outlasts the frames.

Tested with PyAV 18.1 (FFmpeg 7/8 wheels); H.264 and VP9 bytes are the same for the same inputs on one
build of FFmpeg, not across encoder versions.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import atomic_path, check_output_path
from targetclip_core.io.images import DEFAULT_MAX_PIXELS, to_uint8

# 2 GiB of uint8 RGB frames: about 45 s of 1080p, or 12 min at 512 x 512 and 24 fps
MAX_CLIP_BYTES = 2 << 30
INSTALL_HINT = "reading and writing video needs PyAV: pip install av (or pip install 'comfyui-targetclip[video]')"

# suffix -> (muxer, video encoder, pixel format)
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264", "yuv420p"),
    ".mov": ("mov", "libx264", "yuv420p"),
    ".webm": ("webm", "libvpx-vp9", "yuv420p"),
    ".gif": ("gif", "gif", "pal8"),
}
# audio codecs each muxer takes as they are (copied packet by packet), and the encoder used otherwise
AUDIO_COPY = {
    "mp4": {"aac", "mp3", "opus", "alac", "flac", "ac3", "eac3"},
    "mov": {"aac", "mp3", "opus", "alac", "flac", "ac3", "eac3", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
    "webm": {"opus", "vorbis"},
    "gif": set(),
}
AUDIO_ENCODER = {"mp4": "aac", "mov": "aac", "webm": "libopus"}
DEFAULT_CRF = {"libx264": 18, "libvpx-vp9": 30}
# a decoded count this far below the declared one means the file was cut short, not a rounded duration
_TRUNCATION_SLACK = 1


@dataclass
class Clip:
    """A decoded clip: frames uint8 [T, H, W, 3] (upright RGB), its frame rate, and where it came from."""

    frames: torch.Tensor
    fps: Fraction
    source: Path | None = None
    has_audio: bool = False
    rotation: int = 0  # degrees counter-clockwise the stored frames were turned to be upright

    @property
    def duration(self) -> float:
        """Seconds the frames last at `fps`."""
        return float(self.frames.shape[0] / self.fps) if self.fps else 0.0


def _av():
    """PyAV, or our error saying how to install it."""
    try:
        import av
    except ImportError:
        raise TargetCLIPError(INSTALL_HINT) from None
    return av


def _open_input(path: Path):
    """Open `path` for reading with PyAV; everything that is not a readable media file becomes our error."""
    av = _av()
    if not path.exists():
        raise TargetCLIPError(f"{path}: no such video file")
    if not path.is_file():
        raise TargetCLIPError(f"{path}: not a regular file; pass a video file")
    if path.stat().st_size == 0:
        raise TargetCLIPError(f"{path}: the file is empty, not a video")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise TargetCLIPError(f"{path}: not a video file, or a truncated or corrupt one ({_detail(e)})") from None
    kind = container.format.name
    if kind in _NOT_VIDEO_DEMUXERS or kind.endswith("_pipe"):
        container.close()  # FFmpeg reads a still image or a text file as a one-stream "video"; a user never means that
        what = "a text file" if kind == "tty" else f"a still image ({kind.removesuffix('_pipe')})"
        raise TargetCLIPError(f"{path}: {what}, not a video; pass a video file (images go through load_image)")
    return container


_NOT_VIDEO_DEMUXERS = frozenset({"image2", "tty", "txt", "srt", "webvtt", "ass"})


def _detail(e: BaseException) -> str:
    """The first line of an FFmpeg error without the file name it repeats (our messages name it first)."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(text).splitlines()[0][:200]


def _ends_cut(container, path: Path) -> str | None:
    """Why a GIF is cut short (it declares no frame count, but always ends in its trailer byte 0x3B), else None."""
    if container.format.name != "gif":
        return None
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return None if f.read(1) == b";" else "the file ends before the GIF trailer"


def _video_stream(container, path: Path):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["nothing"]
        raise TargetCLIPError(f"{path}: no video stream in the file (it holds {', '.join(kinds)})")
    return container.streams.video[0]


def _stream_fps(stream) -> Fraction | None:
    """The stream's frame rate as an exact Fraction: the average rate, else the guessed/base rate."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate.numerator, rate.denominator)
    return None


def _declared_frames(container, stream, fps: Fraction | None) -> int | None:
    """The frame count the header declares (the stream's count, else duration x fps), or None when unknown."""
    if stream.frames:
        return int(stream.frames)
    seconds = _stream_seconds(stream) or (container.duration / 1_000_000 if container.duration else None)
    if seconds and fps:
        return max(1, round(seconds * fps))
    return None


def _stream_seconds(stream) -> float | None:
    """The video stream's own declared duration (not the container's, which may be the audio's), or None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", str(stream.metadata.get("DURATION", "")).strip())
    if tag:  # Matroska / WebM: FFmpeg's muxer tags each track with its duration
        return int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3])
    return None


def _cut_short(container, stream, fps: Fraction | None, decoded: int, content_end: float | None) -> str | None:
    """Why a fully read file looks cut short, or None.

    The video's own count or duration, where the header gives one, must match the frames decoded (one
    frame of slack for rounding). Where only the container's duration is known (WebM cut before its
    closing tags), the packets of every stream must reach it: an audio track outlasting the video is fine.
    """
    if stream.frames or _stream_seconds(stream):
        declared = _declared_frames(container, stream, fps)
        if declared is not None and decoded < declared - _TRUNCATION_SLACK:
            return f"only {decoded} of the {declared} declared frames could be decoded"
        return None
    if container.duration and content_end is not None and fps:
        seconds = container.duration / 1_000_000
        if content_end < seconds - 1.5 / float(fps):
            return f"the data ends at {content_end:.2f} s of the {seconds:.2f} s declared ({decoded} frames decoded)"
    return None


def _check_size(path: Path, width: int, height: int, frames: int | None, max_pixels: int,
                max_bytes: int, fps: Fraction | None) -> None:
    """Refuse a frame above max_pixels or a clip above max_bytes of uint8 frames, saying how to cut it."""
    if width <= 0 or height <= 0:
        raise TargetCLIPError(f"{path}: the video stream declares no frame size ({width} x {height})")
    if width * height > max_pixels:
        raise TargetCLIPError(f"{path}: frames of {width} x {height} = {width * height} pixels are more than "
                              f"the {max_pixels} allowed; scale the video down first")
    if frames is None:
        return
    frame_bytes = width * height * 3
    if frames * frame_bytes > max_bytes:
        fit = max(1, max_bytes // frame_bytes)
        seconds = f" (about {float(fit / fps):.1f} s)" if fps else ""
        raise TargetCLIPError(
            f"{path}: {frames} frames of {width} x {height} need {frames * frame_bytes / 2**30:.2f} GiB decoded, "
            f"more than the {max_bytes / 2**30:.2f} GiB allowed; pass max_frames={fit} to read the first "
            f"{fit} frames{seconds}, or cut or scale the clip first (e.g. ffmpeg -i in -t SECONDS -vf scale=W:-2 out)")


def probe_clip(path: str | os.PathLike) -> tuple[int | None, Fraction | None, int, int, bool]:
    """(frames, fps, width, height, has_audio) from the header only; frames None when the header has no count.

    frames is the stream's count where the container keeps one (mp4, mov), else duration x fps (WebM, GIF).

    Width and height are the stored frame size (read_clip turns rotated clips upright, swapping them).
    """
    p = Path(path)
    container = _open_input(p)
    try:
        stream = _video_stream(container, p)
        fps = _stream_fps(stream)
        cc = stream.codec_context
        return (_declared_frames(container, stream, fps), fps, cc.width, cc.height, bool(container.streams.audio))
    finally:
        container.close()


def read_clip(path: str | os.PathLike, max_frames: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, *,
              allow_truncated: bool = False) -> Clip:
    """Decode the first video stream of `path` into a Clip (see the module docstring for the checks).

    max_frames: read only the first max_frames frames. allow_truncated: return what decodes before the
    damage of a truncated / corrupt file (with a warning) instead of raising.
    """
    if max_frames is not None and max_frames < 1:
        raise TargetCLIPError(f"max_frames must be at least 1, got {max_frames}")
    p = Path(path)
    av = _av()
    container = _open_input(p)
    try:
        stream = _video_stream(container, p)
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream)
        if fps is None:
            raise TargetCLIPError(f"{p}: the video stream declares no frame rate")
        declared = _declared_frames(container, stream, fps)
        wanted = declared if max_frames is None else min(declared or max_frames, max_frames)
        cc = stream.codec_context
        _check_size(p, cc.width, cc.height, wanted, max_pixels, MAX_CLIP_BYTES, fps)
        frames, rotation, error, content_end = _decode(container, stream, p, max_frames, max_pixels, fps, wanted, av)
        if error is None and (max_frames is None or len(frames) < max_frames):  # read to the end: check it
            error = _cut_short(container, stream, fps, len(frames), content_end) or _ends_cut(container, p)
        has_audio = bool(container.streams.audio)
    finally:
        container.close()
    if not len(frames):
        why = f" ({error})" if error else ""
        raise TargetCLIPError(f"{p}: no frame could be decoded: the video is empty, truncated or corrupt{why}")
    if error:
        if not allow_truncated:
            raise TargetCLIPError(f"{p}: the video is truncated or corrupt: {error}; "
                                  f"pass allow_truncated=True to use the {len(frames)} frames decodable before it")
        warnings.warn(f"{p}: truncated or corrupt video ({error}): using the {len(frames)} frames decodable "
                      f"before the damage", stacklevel=2)
    return Clip(frames=torch.from_numpy(frames), fps=fps, source=p, has_audio=has_audio, rotation=rotation)


def _decode(container, stream, path: Path, max_frames: int | None, max_pixels: int, fps, wanted: int | None, av):
    """Decode frames (upright RGB) until the end, max_frames or an error.

    Returns (uint8 [T, H, W, 3], rotation, error text or None, the end in seconds of the last packet of
    any stream). The total is bounded as frames arrive, since a header may understate (or not state) the
    count; the buffer is sized from the header and grows only if it lied. A size change mid-stream is
    scaled to the first size. Other streams' packets are read (not decoded) to see where the data ends.
    """
    buffer = None
    count, rotation, end = 0, 0, None
    size = None
    try:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base:
                stop = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                end = stop if end is None else max(end, stop)
            if packet.stream.index != stream.index:
                continue
            for frame in packet.decode():
                if size is None:
                    size, rotation = (frame.width, frame.height), _rotation(frame)
                if frame.is_corrupt:  # the decoder concealed damaged data in this frame
                    return _trim(buffer, count), rotation, f"frame {count} is corrupt", end
                if (frame.width, frame.height) != size:
                    frame = frame.reformat(width=size[0], height=size[1])
                _check_size(path, *size, count + 1, max_pixels, MAX_CLIP_BYTES, fps)
                rgb = _upright(frame.to_ndarray(format="rgb24"), rotation)
                buffer = _room_for(buffer, count, rgb.shape, wanted)
                buffer[count] = rgb
                count += 1
                if max_frames is not None and count >= max_frames:
                    return _trim(buffer, count), rotation, None, end
    except av.FFmpegError as e:
        return _trim(buffer, count), rotation, _detail(e), end
    return _trim(buffer, count), rotation, None, end


def _room_for(buffer: np.ndarray | None, count: int, shape: tuple, wanted: int | None) -> np.ndarray:
    """`buffer` with room for frame `count` (first sized `wanted`, then doubled)."""
    if buffer is None:
        return np.empty((max(1, wanted or 16), *shape), np.uint8)
    if count < buffer.shape[0]:
        return buffer
    grown = np.empty((2 * buffer.shape[0], *shape), np.uint8)
    grown[:count] = buffer[:count]
    return grown


def _trim(buffer: np.ndarray | None, count: int) -> np.ndarray:
    if buffer is None:
        return np.empty((0, 0, 0, 3), np.uint8)
    return buffer[:count] if count < buffer.shape[0] else buffer


def _rotation(frame) -> int:
    """The frame's display rotation in degrees counter-clockwise, snapped to a multiple of 90 (0 if none)."""
    try:
        degrees = frame.rotation or 0
    except (AttributeError, ValueError):  # PyAV without display-matrix support
        return 0
    return int(round(degrees / 90.0)) * 90 % 360


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90, axes=(0, 1)))


# --------------------------------------------------------------------------- writing


def _as_uint8_frames(frames) -> np.ndarray:
    """uint8 [T, H, W, 3] as given, or float [T, 3, H, W] in [-1, 1] -> uint8 (rounded, clamped)."""
    x = torch.as_tensor(frames).detach().cpu()
    if x.dim() != 4:
        raise TargetCLIPError(f"expected frames of shape [T, H, W, 3] (uint8) or [T, 3, H, W] (float), got {list(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise TargetCLIPError(f"uint8 frames must be [T, H, W, 3], got {list(x.shape)}")
        return x.contiguous().numpy()
    if not x.is_floating_point() or x.shape[1] != 3:
        raise TargetCLIPError(f"float frames must be [T, 3, H, W] in [-1, 1], got {list(x.shape)} {x.dtype}")
    return np.ascontiguousarray(to_uint8(x))


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad an odd width / height by one pixel, repeating the last column / row (yuv420p needs even sizes)."""
    h, w = frames.shape[1:3]
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    return np.pad(frames, pad, mode="edge") if (h % 2 or w % 2) else frames


def _video_format(path: Path):
    try:
        return VIDEO_FORMATS[path.suffix.lower()]
    except KeyError:
        names = ", ".join(VIDEO_FORMATS)
        raise TargetCLIPError(f"{path}: cannot write a video as '{path.suffix or '(no suffix)'}': "
                              f"use one of {names}") from None


def write_clip(path: str | os.PathLike, frames, fps, audio_from: str | os.PathLike | None = None, *,
               crf: int | None = None) -> Path:
    """Write frames as a video at `path` (format by suffix), atomically; return the path.

    frames: uint8 [T, H, W, 3], or float [T, 3, H, W] in [-1, 1] (converted as (x + 1) * 127.5, rounded,
    clamped). fps: a Fraction, int or float (a float is turned into a Fraction with denominator <= 1001).
    .mp4 / .mov (H.264) need an even width and height: an odd one is padded by one pixel repeating the
    last column / row, so no pixel is lost and the file is one pixel wider / taller. WebM and GIF keep the
    size. A GIF's frame delays are whole 1/100 s: its rate is `gif_rate(fps)` (exact for 10, 12.5, 20, 25,
    50 fps; 24 fps becomes 25, with a warning). crf: quality (lower is better; H.264 default 18, VP9
    default 30); ignored for GIF.
    audio_from: a video or audio file whose first audio stream goes along (see the module docstring).
    """
    av = _av()
    p = Path(path)
    muxer, codec, pix_fmt = _video_format(p)
    check_output_path(p, "video")
    data = _as_uint8_frames(frames)
    if data.shape[0] == 0:
        raise TargetCLIPError(f"{p}: no frames to write")
    rate = _as_fraction(fps)
    if pix_fmt == "yuv420p" and codec == "libx264":
        data = _even(data)
    if muxer == "gif" and gif_rate(rate) != rate:
        warnings.warn(f"{p}: a GIF stores frame delays in 1/100 s, so {rate} fps is written as "
                      f"{gif_rate(rate)} fps", stacklevel=2)
    source = None
    if audio_from is not None:
        source = _open_input(Path(audio_from))
    try:
        with atomic_path(p) as tmp:
            output = av.open(str(tmp), mode="w", format=muxer)
            try:
                output.flags |= av.container.Flags.bitexact.value  # no random ids / encoder versions in the file
                stream = _add_video_stream(output, codec, pix_fmt, rate, data.shape[2], data.shape[1], crf)
                audio = _audio_plan(output, source, muxer, Path(audio_from) if audio_from else None)
                _encode_video(output, stream, data, pix_fmt)
                if audio is not None:
                    audio()
            finally:
                output.close()
    except av.FFmpegError as e:
        raise TargetCLIPError(f"{p}: could not write the video ({_detail(e)})") from None
    finally:
        if source is not None:
            source.close()
    return p


def gif_rate(fps: Fraction) -> Fraction:
    """The frame rate a GIF keeps of `fps`: its delays are whole hundredths of a second (at least one)."""
    return Fraction(100, max(1, int(100 / Fraction(fps))))


def _as_fraction(fps) -> Fraction:
    if isinstance(fps, float) and not math.isfinite(fps):
        raise TargetCLIPError(f"fps must be positive and finite, got {fps}")
    rate = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
    if rate <= 0:
        raise TargetCLIPError(f"fps must be positive, got {fps}")
    return rate


def _add_video_stream(output, codec: str, pix_fmt: str, rate: Fraction, width: int, height: int, crf):
    options = {}
    if codec == "libx264":
        # macroblock-tree rate control gave run-to-run different bytes on small frames (64 x 48, seen with
        # x264 core 165 and one thread): it is off, so the same frames give the same file
        options = {"crf": str(DEFAULT_CRF[codec] if crf is None else crf), "preset": "medium",
                   "x264-params": "mbtree=0"}
    elif codec == "libvpx-vp9":
        options = {"crf": str(DEFAULT_CRF[codec] if crf is None else crf), "b": "0", "row-mt": "0",
                   "deadline": "good", "cpu-used": "4"}
    stream = output.add_stream(codec, rate=rate, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.codec_context.thread_count = 1  # one thread: the same frames give the same bytes
    stream.codec_context.flags |= _av().codec.context.Flags.bitexact
    if codec != "gif":
        stream.time_base = 1 / rate
    return stream


def _encode_video(output, stream, data: np.ndarray, pix_fmt: str) -> None:
    av = _av()
    for i, rgb in enumerate(data):
        frame = _gif_frame(rgb, av) if pix_fmt == "pal8" else av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = i
        frame.time_base = 1 / Fraction(stream.codec_context.framerate)
        output.mux(stream.encode(frame))
    output.mux(stream.encode(None))


def _gif_frame(rgb: np.ndarray, av):
    """One pal8 frame with its own 256-colour palette (median cut, no dithering: deterministic)."""
    from PIL import Image

    img = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal = np.zeros((256, 4), dtype=np.uint8)
    rgb_pal = np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]
    pal[: len(rgb_pal), 0] = 255
    pal[: len(rgb_pal), 1:] = rgb_pal
    return av.VideoFrame.from_ndarray((np.asarray(img, dtype=np.uint8), pal), format="pal8")


def _audio_plan(output, source, muxer: str, source_path: Path | None):
    """Add the audio stream to `output` now (before the header is written); return a callable writing it."""
    if source is None:
        return None
    if not source.streams.audio:
        warnings.warn(f"{source_path}: has no audio stream; the video is written without sound", stacklevel=3)
        return None
    if muxer == "gif":
        warnings.warn(f"{source_path}: a GIF holds no sound; its audio is dropped", stacklevel=3)
        return None
    src = source.streams.audio[0]
    if src.codec_context.name in AUDIO_COPY[muxer]:
        dst = output.add_stream_from_template(src)

        def copy() -> None:
            for packet in source.demux(src):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.stream = dst
                output.mux(packet)
        return copy
    return _audio_reencode(output, source, src, AUDIO_ENCODER[muxer])


def _named_layout(layout) -> str:
    """A layout encoders take: an unnamed one ("1 channels", as WAV files often declare) by its channel count."""
    if "channels" not in layout.name:
        return layout.name
    return {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 6: "5.1", 8: "7.1"}.get(layout.nb_channels, "stereo")


def _audio_reencode(output, source, src, encoder: str):
    av = _av()
    rate = src.codec_context.sample_rate
    if encoder == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
        rate = 48000
    dst = output.add_stream(encoder, rate=rate)
    dst.codec_context.layout = _named_layout(src.codec_context.layout)
    fmt = dst.codec_context.codec.audio_formats[0].name
    dst.codec_context.format = fmt
    dst.codec_context.open()  # now its frame size is known: AAC and Opus take frames of exactly that many samples
    resampler = av.AudioResampler(format=fmt, layout=dst.codec_context.layout.name, rate=rate,
                                  frame_size=dst.codec_context.frame_size or None)

    def reencode() -> None:
        for frame in source.decode(src):
            for out in resampler.resample(frame):
                output.mux(dst.encode(out))
        for out in resampler.resample(None):
            output.mux(dst.encode(out))
        output.mux(dst.encode(None))
    return reencode
