"""3D-aware nodes: load an EG3D generator, render latents or style codes from many cameras.

An EG3D generator travels as STYLEGAN: it offers the same API (mapping, W+, StyleSpace,
synthesis from the frontal camera), so Sample Latents, Apply Essence, Optimize Essence and
the SAT3D nodes work on it unchanged; Render Views adds the camera.
"""

from __future__ import annotations

import comfy.model_management as mm

from targetclip_core.generators.cameras import DEFAULT_FOV_DEGREES, parse_views
from targetclip_core.generators.eg3d import depth_to_image
from targetclip_core.generators.render import render_latent_views

from .common import (
    CATEGORY,
    Progress,
    cached_generator,
    file_signature,
    image_from_core,
    list_files,
    managed,
    validate_model_file,
)


class LoadEG3D:
    DESCRIPTION = ("Load an EG3D 3D-aware generator (official network pickle such as ffhq512-128.pkl, or .safetensors) "
                   "safely: no code from the file runs. It plugs into every node that takes a generator.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("STYLEGAN",)
    RETURN_NAMES = ("generator",)
    OUTPUT_TOOLTIPS = ("The EG3D generator (renders from its frontal camera unless a node sets one).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (list_files("eg3d"), {"tooltip": "An EG3D checkpoint in models/eg3d."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None):
        # replaces ComfyUI's "Value not in list" for ckpt_name by which file to get from where
        return validate_model_file("eg3d", ckpt_name)

    @classmethod
    def IS_CHANGED(cls, ckpt_name):
        return file_signature("eg3d", ckpt_name)

    def load(self, ckpt_name):
        def check(G):
            if not G.is_3d:
                raise ValueError(f"{ckpt_name} is a 2D {G.describe()}, not EG3D: load it with Load StyleGAN")

        return (cached_generator("eg3d", ckpt_name, check),)


class RenderViews:
    DESCRIPTION = ("Render W+ latents or SAT3D style codes from several cameras: an orbit of N frames or a list of "
                   "yaw[:pitch] angles. Images come latent by latent (all views of the first, then the next), "
                   "ready for a video node; the tri-planes are computed once per latent.")
    CATEGORY = f"{CATEGORY}/3d"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("images", "depth", "depth_image")
    OUTPUT_TOOLTIPS = (
        "One image per latent and view, latent-major.",
        "Depth per image (near = 1, far = 0, per image), scaled up to the image size.",
        "The same depth as a grey IMAGE (for depth ControlNets and previews).",
    )
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("STYLEGAN", {"tooltip": "A 3D-aware generator from Load EG3D."}),
                "views": ("STRING", {"default": "8", "tooltip": "A frame count for an orbit (e.g. 8), or yaw[:pitch] "
                                                                "angles in degrees, e.g. -30, 0, 30:10."}),
                "yaw_range": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 90.0, "step": 1.0,
                                        "tooltip": "Orbit: how far the camera swings left and right (degrees)."}),
                "pitch_range": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 60.0, "step": 1.0,
                                          "tooltip": "Orbit: how far the camera swings up and down (degrees)."}),
                "fov": ("FLOAT", {"default": DEFAULT_FOV_DEGREES, "min": 1.0, "max": 90.0, "step": 0.1,
                                  "tooltip": "Field of view in degrees (18.837 is EG3D's FFHQ/AFHQ camera)."}),
                "neural_rendering_resolution": ("INT", {"default": 0, "min": 0, "max": 512, "step": 16,
                                                        "tooltip": "Rays per side; 0 = the checkpoint's (128 for the official 512px models)."}),
                "sampling_multiplier": ("FLOAT", {"default": 1.0, "min": 0.25, "max": 4.0, "step": 0.25,
                                                  "tooltip": "Samples per ray x this: higher is sharper and slower."}),
                "deterministic": ("BOOLEAN", {"default": True, "tooltip": "Fixed ray samples: frames do not flicker and "
                                                                          "a camera renders the same image twice. Off: training's jitter."}),
            },
            "optional": {
                "latents": ("WPLUS", {"tooltip": "W+ latents (Sample Latents, Apply Essence)."}),
                "styles": ("STYLESPACE", {"tooltip": "Style codes from SAT3D Attribute Transfer (instead of latents)."}),
            },
        }

    def render(self, generator, views, yaw_range, pitch_range, fov, neural_rendering_resolution, sampling_multiplier,
               deterministic, latents=None, styles=None):
        G = generator
        if not G.is_3d:
            raise ValueError(f"Render Views needs a 3D-aware generator (Load EG3D); this is a {G.describe()}")
        if (latents is None) == (styles is None):
            raise ValueError("connect either latents (WPLUS) or styles (STYLESPACE), exactly one")
        G = managed(G)
        codes = latents.check_for(G) if latents is not None else styles.check_for(G)
        yaws, pitches = parse_views(views, yaw_range, pitch_range)
        cams = G.camera(yaws, pitches, fov_degrees=fov)
        n = len(codes) if latents is not None else len(styles)
        images, depth = render_latent_views(
            G, codes, cams, neural_rendering_resolution=neural_rendering_resolution or None, deterministic=deterministic,
            sampling_multiplier=sampling_multiplier, on_batch=Progress(n * len(yaws)).on_batch)
        depth_img = depth_to_image(depth)
        mask = ((depth_img[:, 0] + 1) / 2).to(mm.intermediate_device())
        return image_from_core(images), mask, image_from_core(depth_img)


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_LoadEG3D": LoadEG3D,
    "TargetCLIP_RenderViews": RenderViews,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_LoadEG3D": "Load EG3D (TargetCLIP)",
    "TargetCLIP_RenderViews": "Render Views (TargetCLIP)",
}
