"""Generator nodes: load a StyleGAN2 / StyleGAN3 checkpoint, sample W+ latents, render them."""

from __future__ import annotations

from targetclip_core.generators.latents import wplus_from_seeds
from targetclip_core.generators.render import render_latents
from targetclip_core.generators.stylegan3 import transform_for

from .common import (
    CATEGORY,
    Progress,
    WPlus,
    cached_generator,
    file_signature,
    image_from_core,
    list_files,
    managed,
    precision_input,
    validate_model_file,
)


class LoadStyleGAN:
    DESCRIPTION = ("Load a StyleGAN2 or StyleGAN3 generator (rosinality .pt, NVlabs .pkl of every release including the "
                   "TensorFlow-era ones, e4e .pt or .safetensors) safely: no code from the file runs. EG3D: Load EG3D.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("STYLEGAN",)
    RETURN_NAMES = ("generator",)
    OUTPUT_TOOLTIPS = ("The generator, on ComfyUI's compute device.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (list_files("stylegan"), {"tooltip": "A checkpoint in models/stylegan (or the pack's weights/ folder)."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None):
        # replaces ComfyUI's "Value not in list" for ckpt_name by which file to get from where
        return validate_model_file("stylegan", ckpt_name)

    @classmethod
    def IS_CHANGED(cls, ckpt_name):
        return file_signature("stylegan", ckpt_name)

    def load(self, ckpt_name):
        return (cached_generator("stylegan", ckpt_name),)


class SampleLatents:
    DESCRIPTION = "Draw W+ latents from the mapping network: one per seed, seed .. seed+count-1 (z as NVlabs' generate.py draws it)."
    CATEGORY = f"{CATEGORY}/latents"
    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("W+ latents [count, n_latent, w_dim] for this generator.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("STYLEGAN", {"tooltip": "The generator whose mapping network draws the latents."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1, "tooltip": "First seed; the batch uses seed .. seed+count-1."}),
            "count": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "How many latents (batch size)."}),
            "truncation": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 2.0, "step": 0.05,
                                     "tooltip": "Truncation psi toward the average face: lower is more typical, 1.0 is none."}),
        }}

    def sample(self, generator, seed, count, truncation):
        G = managed(generator)
        if G.c_dim and not G.is_3d:  # EG3D's label is a camera: mapping uses the frontal one
            raise ValueError("this generator is class-conditional; conditional sampling is not supported by this node yet")
        wp = wplus_from_seeds(G, range(seed, seed + count), truncation)
        return (WPlus(wp, G.identity),)


class RenderLatents:
    DESCRIPTION = "Render W+ latents to images."
    CATEGORY = f"{CATEGORY}/latents"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The rendered images, one per latent.",)
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("STYLEGAN", {"tooltip": "The generator the latents belong to."}),
            "latents": ("WPLUS", {"tooltip": "W+ latents from Sample Latents, Apply Essence or an inversion."}),
            "noise_mode": (["const", "random", "none"], {"tooltip": "const: the checkpoint's fixed noise (reproducible); random: fresh noise; none: no noise."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images rendered at once (lower it if memory runs out)."}),
        }, "optional": {
            "translate_x": ("FLOAT", {"default": 0.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                      "tooltip": "StyleGAN3 only: move the picture sideways (in half image widths), as gen_images.py --translate."}),
            "translate_y": ("FLOAT", {"default": 0.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                      "tooltip": "StyleGAN3 only: move the picture up or down (in half image heights)."}),
            "rotate": ("FLOAT", {"default": 0.0, "min": -360.0, "max": 360.0, "step": 1.0,
                                 "tooltip": "StyleGAN3 only: rotate the picture (degrees), as gen_images.py --rotate."}),
            **precision_input(),
        }}

    def render(self, generator, latents, noise_mode, batch_size, translate_x=0.0, translate_y=0.0, rotate=0.0,
               precision="fp32"):
        generator = managed(generator)
        wp = latents.check_for(generator)
        transform = transform_for(generator, (translate_x, translate_y), rotate)
        images = render_latents(generator, wp, batch_size=batch_size, noise_mode=noise_mode, transform=transform,
                                precision=precision, on_batch=Progress(len(wp)).on_batch)
        return (image_from_core(images),)


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_LoadStyleGAN": LoadStyleGAN,
    "TargetCLIP_SampleLatents": SampleLatents,
    "TargetCLIP_RenderLatents": RenderLatents,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_LoadStyleGAN": "Load StyleGAN (TargetCLIP)",
    "TargetCLIP_SampleLatents": "Sample Latents (TargetCLIP)",
    "TargetCLIP_RenderLatents": "Render Latents (TargetCLIP)",
}
