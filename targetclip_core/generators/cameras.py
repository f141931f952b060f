"""Cameras for EG3D: look-at poses, field of view to intrinsics, 25-dim camera labels.

Conventions are EG3D's (NVlabs/eg3d camera_utils.py), so labels made here condition and
render an official network exactly as its own scripts do:
  * world y is up; a camera sits on a sphere of `radius` around the world origin and
    looks at `pivot` (FFHQ: radius 2.7, pivot (0, 0, 0.2)); cam2world is OpenCV style
    (columns right, up, forward; the camera looks along +z);
  * angles follow LookAtPoseSampler: horizontal angle pi/2 + yaw, vertical angle
    pi/2 + pitch, and the polar angle is phi = arccos(1 - 2 v / pi) of the vertical one;
  * intrinsics are normalised by the image size (principal point 0.5, 0.5); the focal
    length uses EG3D's own constants (3.14159, 1.414) so fov 18.837 gives exactly the
    focal length its FFHQ labels carry;
  * a camera label is [cam2world flattened (16), intrinsics flattened (9)].

Users give yaw and pitch in degrees (positive yaw turns the camera to the subject's left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from targetclip_core.errors import LatentError

DEFAULT_FOV_DEGREES = 18.837  # EG3D's FFHQ/AFHQ cameras (gen_samples.py, gen_videos.py)


@dataclass(frozen=True)
class CameraRig:
    """Where the cameras of a generator sit: its training distribution's radius and pivot."""

    radius: float = 2.7
    pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)
    fov_degrees: float = DEFAULT_FOV_DEGREES


def fov_to_intrinsics(fov_degrees: float, device=None) -> torch.Tensor:
    """Normalised 3x3 intrinsics for a vertical field of view (principal point at the centre)."""
    if not 0.0 < float(fov_degrees) < 180.0:
        raise ValueError(f"field of view must be between 0 and 180 degrees, got {fov_degrees}")
    focal = float(1.0 / (math.tan(fov_degrees * 3.14159 / 360.0) * 1.414))
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=device)


def look_at(horizontal: torch.Tensor, vertical: torch.Tensor, pivot, radius: float) -> torch.Tensor:
    """cam2world [B, 4, 4] for EG3D's spherical angles (radians), looking at `pivot`."""
    horizontal, vertical = torch.broadcast_tensors(horizontal.float().reshape(-1, 1), vertical.float().reshape(-1, 1))
    v = vertical.clamp(1e-5, math.pi - 1e-5) / math.pi
    phi = torch.arccos(1 - 2 * v)
    theta = horizontal
    origin = torch.cat([
        radius * torch.sin(phi) * torch.cos(math.pi - theta),
        radius * torch.cos(phi),
        radius * torch.sin(phi) * torch.sin(math.pi - theta),
    ], dim=1)
    pivot = torch.as_tensor(pivot, dtype=origin.dtype, device=origin.device).reshape(1, 3)
    return cam2world_from_forward(pivot - origin, origin)


def cam2world_from_forward(forward: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """cam2world [B, 4, 4] of a camera at `origin` looking along `forward`, y up, no roll."""
    forward = _normalize(forward)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    up = _normalize(torch.cross(forward, right, dim=-1))
    pose = torch.eye(4, dtype=forward.dtype, device=forward.device).repeat(forward.shape[0], 1, 1)
    pose[:, :3, :3] = torch.stack((right, up, forward), dim=-1)
    pose[:, :3, 3] = origin
    return pose


def camera_labels(yaw_degrees, pitch_degrees=0.0, rig: CameraRig | None = None, device=None) -> torch.Tensor:
    """EG3D camera labels [B, 25] for yaw/pitch in degrees (scalars or sequences, broadcast)."""
    rig = rig or CameraRig()
    yaw = torch.as_tensor(yaw_degrees, dtype=torch.float32).reshape(-1)
    pitch = torch.as_tensor(pitch_degrees, dtype=torch.float32).reshape(-1)
    if not (torch.isfinite(yaw).all() and torch.isfinite(pitch).all()):
        raise LatentError("camera yaw and pitch must be finite numbers")
    yaw, pitch = torch.broadcast_tensors(yaw, pitch)
    pose = look_at(math.pi / 2 + torch.deg2rad(yaw), math.pi / 2 + torch.deg2rad(pitch), rig.pivot, rig.radius)
    intrinsics = fov_to_intrinsics(rig.fov_degrees).expand(len(yaw), 3, 3)
    return torch.cat([pose.reshape(-1, 16), intrinsics.reshape(-1, 9)], dim=1).to(device)


def orbit(frames: int, yaw_range: float = 30.0, pitch_range: float = 10.0, pitch: float = 0.0) -> tuple[list, list]:
    """Yaw/pitch (degrees) of `frames` views on a closed ellipse, as EG3D's gen_videos orbit.

    Frame t of K: yaw = yaw_range * sin(2 pi t/K), pitch = pitch + pitch_range * cos(2 pi t/K),
    so the last frame leads smoothly back into the first (a loopable video).
    """
    if frames < 1:
        raise ValueError(f"an orbit needs at least one frame, got {frames}")
    ts = [2 * math.pi * k / frames for k in range(frames)]
    return [yaw_range * math.sin(t) for t in ts], [pitch + pitch_range * math.cos(t) for t in ts]


def parse_views(text: str, yaw_range: float = 30.0, pitch_range: float = 10.0) -> tuple[list, list]:
    """'8' -> an orbit of 8 frames; '-30:0,0,30:5' -> yaw[:pitch] pairs in degrees.

    A bare positive integer is a frame count, so one yaw alone is written with its pitch
    ('30:0'); '0' alone is the frontal view.
    """
    text = str(text).strip()
    if text.isdigit() and int(text) > 0:
        return orbit(int(text), yaw_range, pitch_range)
    yaws, pitches = [], []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            yaw, _, pitch = part.partition(":")
            yaws.append(float(yaw))
            pitches.append(float(pitch) if pitch else 0.0)
    except ValueError:
        raise ValueError(f"cannot read views {text!r}: give a frame count (8) or yaw[:pitch] in degrees (-30:0,0,30:5)") from None
    if not yaws:
        raise ValueError("no views given")
    return yaws, pitches


def split_label(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 25] camera labels -> (cam2world [B, 4, 4], intrinsics [B, 3, 3]), with shape checks."""
    if not torch.is_tensor(c) or c.dim() != 2 or c.shape[1] != 25:
        shape = list(c.shape) if torch.is_tensor(c) else type(c).__name__
        raise LatentError(f"camera labels must be [B, 25] (16 cam2world + 9 intrinsics), got {shape}")
    if not torch.isfinite(c).all():
        raise LatentError("camera labels contain NaN or infinite values")
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.norm(v, dim=-1, keepdim=True)
