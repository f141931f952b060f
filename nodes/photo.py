"""Photo nodes: e4e/pSp inversion of real faces, the one-pass essence encoder, FFHQ alignment and paste-back."""

from __future__ import annotations

import os

import torch

from targetclip_core.encoders.inversion import load_inverter
from targetclip_core.methods.targetclip.essence_encoder import EssenceEncoder

from .common import (
    CATEGORY,
    WPlus,
    cached,
    check_interrupted,
    compute_device,
    file_signature,
    full_path,
    image_from_core,
    image_to_core,
    list_files,
    make_room,
    managed,
    offload_device,
    precision_input,
    validate_model_file,
)

ROLES = ["inverter", "essence encoder"]
ENCODER_KINDS = ("e4e", "psp", "essence-encoder")  # the manifest's kinds a user loads here (not arcface)


def encoder_files() -> list[str]:
    return [n for n in list_files("e4e") if not n.endswith(".dat")]  # .dat: dlib landmarks, for Align Face


class LoadE4E:
    DESCRIPTION = ("Load an e4e / pSp checkpoint (e4e_ffhq_encode.pt, psp_ffhq_encode.pt) or a TargetCLIP essence encoder "
                   "from models/e4e. Read as data: no code from the file runs.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("E4E", "STYLEGAN")
    RETURN_NAMES = ("encoder", "generator")
    OUTPUT_TOOLTIPS = ("The encoder, for Invert Photo (inverter) or Encode Essence (essence encoder).",
                       "The StyleGAN2 generator stored in the same checkpoint (None if the file has none).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (encoder_files(), {"tooltip": "A checkpoint in models/e4e."}),
            "role": (ROLES, {"tooltip": "inverter: image -> W+ latents (adds latent_avg as e4e does); "
                                        "essence encoder: target -> essence b (TargetCLIP Sec. 4)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None):
        # replaces ComfyUI's "Value not in list" for ckpt_name by which file to get from where (role is still checked)
        return validate_model_file("e4e", ckpt_name, kinds=ENCODER_KINDS, choices=encoder_files())

    @classmethod
    def IS_CHANGED(cls, ckpt_name, role):
        return file_signature("e4e", ckpt_name) + role

    def load(self, ckpt_name, role):
        path = full_path("e4e", ckpt_name, kinds=ENCODER_KINDS)
        device = offload_device()  # loaded there, then handed to ComfyUI's model management (managed)

        def load():
            make_room(device, os.path.getsize(path))
            if role == "inverter":
                return load_inverter(path, device=device)
            from targetclip_core.methods.targetclip.essence_encoder import load_essence_encoder

            return load_essence_encoder(path, device=device)

        key = file_signature("e4e", ckpt_name), str(compute_device())
        encoder = cached(("e4e", key[0], role, key[1]), load)
        inner = encoder if role == "inverter" else encoder.net
        G = cached(("e4e-decoder", *key), lambda: inner.generator) if inner.has_generator else None
        if G is None:
            return (managed(encoder), None)
        return managed(encoder, G)  # one call: loading one must not unload the other


class InvertE4E:
    DESCRIPTION = "Invert aligned face photos to W+ latents with e4e / pSp (one forward pass per image)."
    CATEGORY = f"{CATEGORY}/photo"
    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("W+ latents [B, n_latent, w_dim], ready for Apply Essence or Render Latents.",)
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "encoder": ("E4E", {"tooltip": "An e4e / pSp encoder loaded with role 'inverter'."}),
            "images": ("IMAGE", {"tooltip": "FFHQ-aligned faces (use Align Face on photos); any size, resized to 256."}),
        }, "optional": precision_input()}

    def invert(self, encoder, images, precision="fp32"):
        if isinstance(encoder, EssenceEncoder):
            raise ValueError("this encoder was loaded as an essence encoder; load it with role 'inverter' to invert photos")
        encoder = managed(encoder)
        x = image_to_core(images, encoder.device)
        latents = []
        for i in range(x.shape[0]):  # one image at a time keeps memory flat and Cancel responsive
            check_interrupted()
            latents.append(encoder.invert(x[i : i + 1], precision=precision))
        return (WPlus(torch.cat(latents), encoder.generator_identity),)


class EncodeEssence:
    DESCRIPTION = "The essence of a target image in one forward pass (TargetCLIP's essence encoder), instead of optimising it."
    CATEGORY = f"{CATEGORY}/essence"
    RETURN_TYPES = ("ESSENCE",)
    RETURN_NAMES = ("essence",)
    OUTPUT_TOOLTIPS = ("The essence b of the first target image.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "encoder": ("E4E", {"tooltip": "A TargetCLIP essence encoder (Load E4E with role 'essence encoder')."}),
            "target": ("IMAGE", {"tooltip": "The target image (aligned like FFHQ for faces); the first of a batch is used."}),
            "name": ("STRING", {"default": "target", "tooltip": "Name stored with the essence."}),
        }, "optional": precision_input()}

    def encode(self, encoder, target, name, precision="fp32"):
        if not isinstance(encoder, EssenceEncoder):
            raise ValueError("this encoder was loaded as an inverter; load the essence encoder with role 'essence encoder'")
        encoder = managed(encoder)
        return (encoder.encode(image_to_core(target[:1], encoder.net.device), name=name, precision=precision),)


class AlignFace:
    DESCRIPTION = ("Find the face in each photo and crop it the way FFHQ was aligned (eyes level, same position and scale), "
                   "for e4e inversion. Keeps the transform so Paste Back can put the edit into the photo.")
    CATEGORY = f"{CATEGORY}/photo"
    RETURN_TYPES = ("IMAGE", "FACE_ALIGNMENT")
    RETURN_NAMES = ("aligned", "alignment")
    OUTPUT_TOOLTIPS = ("FFHQ-aligned face crops, one per photo.", "The crop geometry, for Paste Back.")
    FUNCTION = "align"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "photos": ("IMAGE", {"tooltip": "Photos with a face each (the largest face is used)."}),
            "detector": (["mtcnn"] + [f"dlib:{n}" for n in list_files("e4e") if n.endswith(".dat")],
                         {"tooltip": "mtcnn: built in (facenet-pytorch weights). dlib: a shape_predictor_68_face_landmarks.dat "
                                     "in models/e4e (needs the dlib package)."}),
            "output_size": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 64,
                                    "tooltip": "Side of the crop: 1024 for FFHQ generators (e4e resizes to 256 itself)."}),
        }}

    def align(self, photos, detector, output_size):
        from targetclip_core.faces.alignment import align_face

        if detector.startswith("dlib:"):
            detector = "dlib:" + full_path("e4e", detector[len("dlib:"):])
        x = image_to_core(photos, torch.device("cpu"))
        faces = []
        for i in range(x.shape[0]):
            check_interrupted()
            faces.append(align_face(x[i : i + 1], detector=detector, output_size=output_size, name=f"photo {i + 1}"))
        return (image_from_core(torch.cat([f.image for f in faces])), faces)


class PasteBack:
    DESCRIPTION = "Warp edited aligned faces back into their photos with a feathered mask; pixels outside the mask stay the photo's."
    CATEGORY = f"{CATEGORY}/photo"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = ("The photos with the edited faces.", "Where the edit was pasted (1 = edited face).")
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "photos": ("IMAGE", {"tooltip": "The original photos (the same ones given to Align Face)."}),
            "edited": ("IMAGE", {"tooltip": "Edited faces in the aligned frame (any square size): one per photo, "
                                            "or any number for a single photo."}),
            "alignment": ("FACE_ALIGNMENT", {"tooltip": "From Align Face."}),
            "feather": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.5, "step": 0.01,
                                  "tooltip": "Softness of the mask edge, as a fraction of the crop size."}),
        }}

    def paste(self, photos, edited, alignment, feather):
        from targetclip_core.faces.alignment import paste_back

        x = image_to_core(photos, torch.device("cpu"))
        e = image_to_core(edited, torch.device("cpu"))
        if len(alignment) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} photos but {len(alignment)} alignments: connect the photos given to Align Face")
        if x.shape[0] == 1:
            pairs = [(x, e, alignment[0])]
        elif e.shape[0] == x.shape[0]:
            pairs = [(x[i : i + 1], e[i : i + 1], alignment[i]) for i in range(x.shape[0])]
        else:
            raise ValueError(f"{e.shape[0]} edited faces for {x.shape[0]} photos: give one edit per photo, or a single photo")
        results = [paste_back(p, f, a, feather=feather) for p, f, a in pairs]
        images = torch.cat([r.image for r in results])
        masks = torch.cat([r.mask.expand(r.image.shape[0], -1, -1) for r in results])
        return (image_from_core(images), masks.to(images.device).float().cpu())


class InvertPhoto(InvertE4E):
    """The node's first id, TargetCLIP_InvertPhoto: kept so saved workflows load and run (the same node);
    DEPRECATED (ComfyUI 0.8 server.py object_info) hides it from the node search: new graphs use Invert Photo (e4e)."""

    DEPRECATED = True
    DESCRIPTION = "Deprecated: use Invert Photo (e4e) (TargetCLIP_InvertE4E), the same node. " + InvertE4E.DESCRIPTION


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_LoadE4E": LoadE4E,
    "TargetCLIP_InvertE4E": InvertE4E,
    "TargetCLIP_InvertPhoto": InvertPhoto,  # the node's first id, for saved workflows (deprecated, the same node)
    "TargetCLIP_EncodeEssence": EncodeEssence,
    "TargetCLIP_AlignFace": AlignFace,
    "TargetCLIP_PasteBack": PasteBack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_LoadE4E": "Load e4e Encoder (TargetCLIP)",
    "TargetCLIP_InvertE4E": "Invert Photo (e4e)",
    "TargetCLIP_InvertPhoto": "Invert Photo, e4e (TargetCLIP, deprecated: use Invert Photo (e4e))",
    "TargetCLIP_EncodeEssence": "Encode Essence, one pass (TargetCLIP)",
    "TargetCLIP_AlignFace": "Align Face, FFHQ (TargetCLIP)",
    "TargetCLIP_PasteBack": "Paste Back into Photo (TargetCLIP)",
}
