"""Video nodes: a face edited through a clip's frames, an essence's strength ramped over a clip, an EG3D
turntable. Frames travel as IMAGE batches; ComfyUI's own Load Video / Get Video Components give them (with the
clip's audio and frame rate, which go straight on to Create Video / Save Video)."""

from __future__ import annotations

import torch

from targetclip_core.io.images import to_uint8
from targetclip_core.methods.targetclip.essence import parse_layer_range
from targetclip_core.methods.video import edit_clip, essence_edit, essence_ramp, ramp, turntable
from targetclip_core.methods.video.edit import LANDMARK_SIGMA, LATENT_SIGMA

from .common import CATEGORY, LAYER_CHOICES, Progress, check_interrupted, image_from_core, image_to_core, managed

RAMP_SHAPES = ["cosine", "linear"]


def _frames_from_images(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [T, H, W, 3] in [0, 1] -> uint8 frames [T, H, W, 3] (checked as every IMAGE input)."""
    return torch.from_numpy(to_uint8(image_to_core(images, "cpu")))


class EditClip:
    DESCRIPTION = ("Edit the face through every frame of a clip: track it (landmarks smoothed over time, so the crop does "
                   "not jitter), invert with e4e, smooth the latents, apply an essence and paste the face back. Frames "
                   "without a face pass through. Connect Get Video Components' images; its audio and fps go on to "
                   "Create Video unchanged.")
    CATEGORY = f"{CATEGORY}/video"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("frames", "report")
    OUTPUT_TOOLTIPS = ("The edited frames, same count and size as the input.",
                       "How many frames had a face, and the crop jitter with and without smoothing.")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "The clip's frames (Get Video Components, or any IMAGE batch)."}),
            "encoder": ("E4E", {"tooltip": "An e4e / pSp inverter (Load e4e Encoder, role inverter)."}),
            "generator": ("STYLEGAN", {"tooltip": "The generator of the encoder's latents."}),
            "essence": ("ESSENCE", {"tooltip": "The edit."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05, "tooltip": "Essence strength."}),
            "layers": (LAYER_CHOICES, {"tooltip": "W+ entries the essence edits."}),
            "landmark_smoothing": ("FLOAT", {"default": LANDMARK_SIGMA, "min": 0.0, "max": 20.0, "step": 0.5,
                                             "tooltip": "Temporal smoothing of the face landmarks, in frames (0: off)."}),
            "latent_smoothing": ("FLOAT", {"default": LATENT_SIGMA, "min": 0.0, "max": 20.0, "step": 0.5,
                                           "tooltip": "Temporal smoothing of the inverted latents, in frames (0: off)."}),
        }}

    def edit(self, frames, encoder, generator, essence, strength, layers, landmark_smoothing, latent_smoothing):
        inverter, G = managed(encoder, generator)
        progress = {}

        def on_frame(stage, done, total):
            bar = progress.get(stage) or progress.setdefault(stage, Progress(total))
            bar.update(done)

        result = edit_clip(_frames_from_images(frames), inverter, essence_edit(G, essence, strength, parse_layer_range(layers)),
                           resolution=G.resolution, landmark_sigma=landmark_smoothing, latent_sigma=latent_smoothing,
                           device=inverter.device, on_frame=on_frame)
        return (image_from_core(result.frames.permute(0, 3, 1, 2).float() / 127.5 - 1), result.report())


class EssenceRamp:
    DESCRIPTION = "An essence's strength ramped 0 -> strength -> 0 over a clip (loopable), for the first latent."
    CATEGORY = f"{CATEGORY}/video"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The frames; connect Create Video (with a frame rate) and Save Video.",)
    FUNCTION = "animate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("STYLEGAN", {"tooltip": "The generator."}),
            "latents": ("WPLUS", {"tooltip": "The face (the first latent is used)."}),
            "essence": ("ESSENCE", {"tooltip": "The edit to ramp."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05, "tooltip": "Peak strength."}),
            "frames": ("INT", {"default": 48, "min": 2, "max": 1000, "tooltip": "Frames of the clip."}),
            "shape": (RAMP_SHAPES, {"tooltip": "cosine eases in and out; linear is a triangle."}),
            "layers": (LAYER_CHOICES, {"tooltip": "W+ entries the essence edits."}),
        }}

    def animate(self, generator, latents, essence, strength, frames, shape, layers):
        G = managed(generator)
        wp = latents.check_for(G)
        progress = Progress(frames)
        out = essence_ramp(G, wp[:1], essence, ramp(frames, strength, shape), parse_layer_range(layers),
                           on_frame=progress.on_batch)
        return (image_from_core(out),)


class Turntable:
    DESCRIPTION = ("An EG3D orbit of the first latent (loopable), optionally with an essence's strength ramping "
                   "0 -> strength -> 0 while the camera turns.")
    CATEGORY = f"{CATEGORY}/video"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The frames; connect Create Video (with a frame rate) and Save Video.",)
    FUNCTION = "animate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("STYLEGAN", {"tooltip": "An EG3D generator (Load EG3D)."}),
            "latents": ("WPLUS", {"tooltip": "The face (the first latent is used)."}),
            "frames": ("INT", {"default": 60, "min": 2, "max": 1000, "tooltip": "Frames of the orbit."}),
            "yaw_range": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 90.0, "step": 1.0, "tooltip": "Yaw amplitude (degrees)."}),
            "pitch_range": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 45.0, "step": 1.0, "tooltip": "Pitch amplitude (degrees)."}),
        }, "optional": {
            "essence": ("ESSENCE", {"tooltip": "An edit that ramps in and out while the camera turns."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05, "tooltip": "Peak strength."}),
        }}

    def animate(self, generator, latents, frames, yaw_range, pitch_range, essence=None, strength=1.0):
        G = managed(generator)
        wp = latents.check_for(G)
        progress = Progress(frames)
        strengths = ramp(frames, strength) if essence is not None else None
        out = turntable(G, wp[:1], frames, yaw_range=yaw_range, pitch_range=pitch_range, essence=essence,
                        strengths=strengths, on_frame=progress.on_batch)
        check_interrupted()
        return (image_from_core(out),)


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_EditClip": EditClip,
    "TargetCLIP_EssenceRamp": EssenceRamp,
    "TargetCLIP_Turntable": Turntable,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_EditClip": "Edit Clip with Essence (TargetCLIP)",
    "TargetCLIP_EssenceRamp": "Essence Strength Ramp (TargetCLIP)",
    "TargetCLIP_Turntable": "3D Turntable (TargetCLIP)",
}
