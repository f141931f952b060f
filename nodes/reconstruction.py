"""Reconstruction nodes: after Invert Photo (e4e), Refine Inversion (W+ toward the photo) and Pivotal Tuning
(PTI: a tuned copy of the generator), so an edited photo keeps its identity."""

from __future__ import annotations

import os
import warnings

import folder_paths

from targetclip_core.encoders.perceptual import BACKBONES, load_lpips
from targetclip_core.errors import WeightsUnavailableError
from targetclip_core.methods.reconstruction import Locality, ReconstructionTerms, pivotal_tuning, refine_inversion
from targetclip_core.methods.reconstruction.pivotal import PTI_LPIPS_STOP, PTI_LR, PTI_STEPS
from targetclip_core.methods.reconstruction.refine import REFINE_LR, REFINE_STEPS

from .common import CATEGORY, Progress, WPlus, cached, image_from_core, image_to_core, managed, precision_input

PERCEPTUAL = ["alex", "vgg", "off"]
PERCEPTUAL_TIP = ("LPIPS network of the perceptual term (alex: PTI's choice). Its torchvision ImageNet weights are "
                  f"found in models/e4e ({', '.join(b[0] for b in BACKBONES.values())}), torch's hub cache or the "
                  "weights store; without them the term is off with a warning.")


def _perceptual(net: str):
    """The LPIPS network (cached), or None when off or unavailable (the engine then warns once)."""
    if net == "off":
        return None
    filename = BACKBONES[net][0]
    local = [os.path.join(p, filename) for p in folder_paths.get_folder_paths("e4e")]
    backbone = next((p for p in local if os.path.isfile(p)), None)
    try:  # a failure is not cached: the file may be there on the next run
        return cached(("lpips", net, backbone), lambda: load_lpips(net=net, backbone=backbone, device="cpu"))
    except WeightsUnavailableError as e:
        warnings.warn(f"the perceptual term is off: {str(e).splitlines()[0]}", stacklevel=2)
        return None


def _camera(G, yaw: float, pitch: float):
    return G.camera(yaw=yaw, pitch=pitch) if G.is_3d else None


def _common_inputs(steps: int, lr: float, lr_step: float) -> dict:
    return {
        "generator": ("STYLEGAN", {"tooltip": "The generator the latents belong to (StyleGAN2/3 or EG3D)."}),
        "latents": ("WPLUS", {"tooltip": "The encoder's latents (Invert Photo), one per image."}),
        "images": ("IMAGE", {"tooltip": "The aligned photos the latents were inverted from (Align Face)."}),
        "steps": ("INT", {"default": steps, "min": 0, "max": 5000, "tooltip": f"Optimisation steps (default {steps})."}),
        "lr": ("FLOAT", {"default": lr, "min": 0.0, "max": 1.0, "step": lr_step, "tooltip": f"Adam learning rate (default {lr:g})."}),
        "perceptual": (PERCEPTUAL, {"tooltip": PERCEPTUAL_TIP}),
    }


_CAMERA_INPUTS = {
    "yaw": ("FLOAT", {"default": 0.0, "min": -90.0, "max": 90.0, "step": 1.0,
                      "tooltip": "EG3D only: the camera the photo was taken from (degrees; 0 = frontal)."}),
    "pitch": ("FLOAT", {"default": 0.0, "min": -60.0, "max": 60.0, "step": 1.0, "tooltip": "EG3D only: camera pitch (degrees)."}),
}


class RefineInversion:
    DESCRIPTION = ("Optimise the encoder's W+ latents toward the photos (pixel L2 + LPIPS, optional ArcFace identity), "
                   "as NVlabs' projector does from e4e's start: closer reconstructions, same generator.")
    CATEGORY = f"{CATEGORY}/photo"
    RETURN_TYPES = ("WPLUS", "IMAGE")
    RETURN_NAMES = ("latents", "reconstruction")
    OUTPUT_TOOLTIPS = ("The refined latents.", "What the generator renders from them.")
    FUNCTION = "refine"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _common_inputs(REFINE_STEPS, REFINE_LR, 0.001), "optional": {
            "arcface": ("ARCFACE", {"tooltip": "Add ArcFace's identity term (Load ArcFace)."}),
            "identity_weight": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.05,
                                          "tooltip": "Weight of the identity term (with an ArcFace input)."}),
            **_CAMERA_INPUTS,
            **precision_input(),
        }}

    def refine(self, generator, latents, images, steps, lr, perceptual, arcface=None, identity_weight=0.1, yaw=0.0,
               pitch=0.0, precision="fp32"):
        lpips = _perceptual(perceptual)
        models = [m for m in (generator, lpips, arcface) if m is not None]
        G = managed(*models)[0] if len(models) > 1 else managed(generator)  # one call: all on the compute device
        wp = latents.check_for(G)
        terms = ReconstructionTerms(l2=1.0, lpips=1.0 if lpips is not None else 0.0,
                                    identity=identity_weight if arcface is not None else 0.0)
        progress = Progress(max(steps, 1))
        fit = refine_inversion(G, image_to_core(images, G.device), wp, steps=steps, lr=lr, terms=terms, lpips=lpips,
                               arcface=arcface, camera=_camera(G, yaw, pitch), precision=precision,
                               callback=lambda info: progress.update(info.step + 1, info.images))
        with_camera = {"c": _camera(G, yaw, pitch)} if G.is_3d else {}
        images_out = G.synthesis(fit.wplus, **with_camera).detach()
        return (WPlus(fit.wplus, G.identity), image_from_core(images_out))


class PivotalTuning:
    DESCRIPTION = ("Pivotal tuning (PTI): tune a copy of the generator around the latents until it renders the photos, "
                   "with PTI's locality regulariser so essences and SAT3D edits keep working. The original generator "
                   "is untouched; the tuned one works everywhere a generator does.")
    CATEGORY = f"{CATEGORY}/photo"
    RETURN_TYPES = ("STYLEGAN", "IMAGE")
    RETURN_NAMES = ("generator", "reconstruction")
    OUTPUT_TOOLTIPS = ("The tuned generator: use it with the same latents (and essences, SAT3D) downstream.",
                       "What the tuned generator renders from the latents.")
    FUNCTION = "tune"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_common_inputs(PTI_STEPS, PTI_LR, 0.0001),
            "locality_every": ("INT", {"default": 10, "min": 0, "max": 1000,
                                       "tooltip": "Locality regulariser every N steps (0: off; PTI's released config: 1)."}),
            "stop_below_lpips": ("FLOAT", {"default": PTI_LPIPS_STOP, "min": 0.0, "max": 1.0, "step": 0.01,
                                           "tooltip": "Stop once LPIPS to the photo is below this (PTI: 0.07; 0: never)."}),
        }, "optional": {**_CAMERA_INPUTS, **precision_input()}}

    def tune(self, generator, latents, images, steps, lr, perceptual, locality_every, stop_below_lpips, yaw=0.0, pitch=0.0,
             precision="fp32"):
        lpips = _perceptual(perceptual)
        G = managed(generator, lpips)[0] if lpips is not None else managed(generator)
        wp = latents.check_for(G)
        terms = ReconstructionTerms(l2=1.0, lpips=1.0 if lpips is not None else 0.0)
        progress = Progress(max(steps, 1))
        camera = _camera(G, yaw, pitch)
        result = pivotal_tuning(G, image_to_core(images, G.device), wp, steps=steps, lr=lr, terms=terms, lpips=lpips,
                                locality=Locality(every=locality_every), stop_below_lpips=stop_below_lpips or None,
                                camera=camera, precision=precision,
                                callback=lambda info: progress.update(info.step + 1, info.images))
        tuned = result.generator
        with_camera = {"c": camera} if G.is_3d else {}
        return (tuned, image_from_core(tuned.synthesis(wp, **with_camera).detach()))


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_RefineInversion": RefineInversion,
    "TargetCLIP_PivotalTuning": PivotalTuning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_RefineInversion": "Refine Inversion (TargetCLIP)",
    "TargetCLIP_PivotalTuning": "Pivotal Tuning (TargetCLIP)",
}
