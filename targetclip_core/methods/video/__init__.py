"""Video: edit a clip's face through every frame (`edit_clip`), and make clips from latents (strength ramps,
essence interpolation, EG3D turntables)."""

from targetclip_core.methods.video.animate import essence_interpolation, essence_ramp, ramp, sat3d_ramp, turntable
from targetclip_core.methods.video.edit import EditedClip, edit_clip, essence_edit, sat3d_edit

__all__ = [
    "EditedClip",
    "edit_clip",
    "essence_edit",
    "essence_interpolation",
    "essence_ramp",
    "ramp",
    "sat3d_edit",
    "sat3d_ramp",
    "turntable",
]
