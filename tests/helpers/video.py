"""Short H.264 clips of a face photo drifting across the frames, with a 440 Hz AAC tone (the audio an edit must
keep), written with PyAV: for the video tests and docs/run_workflows.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_face_clip(photo: Path, path: Path, frames: int = 8, fps: int = 12, size: tuple[int, int] | None = None,
                    fit: int = 150, blank: tuple[int, ...] = (), audio: bool = True) -> Path:
    """`frames` frames at `fps`: the photo (fitted in `fit` px) pasted 2 px right and 1 px down a frame on a grey
    canvas of `size` (default: the fitted photo's, rounded to even), grey only at the `blank` frames."""
    import av
    from PIL import Image

    img = Image.open(photo).convert("RGB")
    img.thumbnail((fit, fit))
    w, h = size or ((img.width // 2) * 2 + 2 * frames, (img.height // 2) * 2 + frames)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        sound = out.add_stream("aac", rate=44100) if audio else None
        for k in range(frames):
            canvas = Image.new("RGB", (w, h), (30, 30, 30))
            if k not in blank:
                canvas.paste(img, (2 * k, k))
            for packet in video.encode(av.VideoFrame.from_image(canvas)):
                out.mux(packet)
        if sound is not None:
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(44100 * frames // fps) / 44100)).astype(np.float32)
            for start in range(0, len(tone) - 1023, 1024):
                frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
                frame.sample_rate = 44100
                for packet in sound.encode(frame):
                    out.mux(packet)
        for stream in (video, sound) if sound is not None else (video,):
            for packet in stream.encode(None):
                out.mux(packet)
    return path
