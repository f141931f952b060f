"""Essence nodes: CLIP, optimisation with live preview, application, files, mixing, comparison grids."""

from __future__ import annotations

import copy
import os

import comfy.model_management as mm
import folder_paths
import torch

from targetclip_core.encoders.clip import load_clip
from targetclip_core.generators.render import render_latents
from targetclip_core.methods.targetclip.essence import (
    edit_latents,
    essence_grid_latents,
    essence_grid_sheet,
    essence_sheet,
    load_essence,
    mix_essences,
    save_essence,
)
from targetclip_core.methods.targetclip.optimize import optimize_essence, sample_sources

from .common import (
    CATEGORY,
    LAYER_CHOICES,
    Progress,
    WPlus,
    cached_model,
    check_interrupted,
    compute_device,
    file_signature,
    full_path,
    image_from_core,
    image_to_core,
    list_files,
    managed,
    numbered_path,
    precision_input,
    validate_model_file,
)

GRID_ESSENCES = 8  # essence_1 .. essence_8 inputs of Essence Grid


class LoadCLIP:
    DESCRIPTION = "Load a frozen CLIP model through open_clip (name + pretrained tag), or a checkpoint file from models/clip."
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("TARGETCLIP_CLIP",)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("The semantic encoder used by essence nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": ("STRING", {"default": "ViT-B-32", "tooltip": "open_clip architecture, 'local-dir:/folder' or 'hf-hub:org/repo'."}),
            "pretrained": ("STRING", {"default": "openai", "tooltip": "open_clip tag (downloads once), a file name in models/clip, a path, or 'none'."}),
            "preprocess": (["default", "paper"], {"tooltip": "default: CLIP's own preprocessing; paper: the official TargetCLIP input (for reproduction)."}),
        }}

    def load(self, model_name, pretrained, preprocess):
        pretrained = pretrained.strip()
        if pretrained.lower() in ("", "none"):
            pretrained = None
        elif folder_paths.get_full_path("clip", pretrained):
            pretrained = folder_paths.get_full_path("clip", pretrained)
        # loaded on ComfyUI's offload device, cached, managed (600 MiB: ViT-B-32 in fp32, the usual choice); the
        # view is made after managed so it shares the cached model's patcher
        where = (f"in {folder_paths.get_folder_paths('clip')[0]} (ComfyUI's models/clip folder), then enter its file "
                 "name as `pretrained`")
        C = cached_model(("clip", model_name, pretrained, str(compute_device())),
                         lambda device: load_clip(model_name, pretrained, device=device, where=where), 600 * 2**20)
        return (with_preprocess(C, preprocess),)


def with_preprocess(C, preprocess: str):
    """This node's CLIP: the cached encoder's model, weights and buffers, with its own `preprocess`.

    The cache holds one encoder per model; a shallow copy with its own attribute and module tables
    lets two Load CLIP nodes choose different preprocessing without one overwriting the other's.
    """
    view = copy.copy(C)
    for table in ("_parameters", "_buffers", "_modules"):  # own tables, the same tensors and submodules
        object.__setattr__(view, table, type(getattr(C, table))(getattr(C, table)))
    view.preprocess = preprocess
    return view


class OptimizeEssence:
    DESCRIPTION = ("Find the essence of a target image (TargetCLIP): a W+ offset that gives any face the target's look. "
                   "A batch of targets gives one essence each, optimised together on the same faces: 'essences' is their "
                   "list, which ComfyUI maps over the next node (Apply Essence, Save Essence ... run once per essence). "
                   "Shows a live preview of the edits and can be cancelled at any step.")
    CATEGORY = f"{CATEGORY}/essence"
    RETURN_TYPES = ("ESSENCE", "IMAGE", "ESSENCE")
    RETURN_NAMES = ("essence", "preview", "essences")
    OUTPUT_IS_LIST = (False, False, True)
    OUTPUT_TOOLTIPS = ("The essence of the first target (best step).",
                       "Per target: the target, sources and their edits with its essence, as a grid (a batch, one per target).",
                       "Every target's essence, in batch order, as a list: a node connected here runs once per essence.")
    FUNCTION = "optimize"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("STYLEGAN", {"tooltip": "The generator the essence is for."}),
                "clip": ("TARGETCLIP_CLIP", {"tooltip": "CLIP model that judges the look (paper: ViT-B-32, openai)."}),
                "target": ("IMAGE", {"tooltip": "Target image(s); each image of a batch gets its own essence ('essence': the first; 'essences': all)."}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": 10000, "tooltip": "Optimisation steps (paper: 1000)."}),
                "lr": ("FLOAT", {"default": 0.2, "min": 0.0001, "max": 2.0, "step": 0.01, "tooltip": "Adam learning rate (paper: 0.2)."}),
                "n_sources": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": "Faces the essence must work on at once (paper: 4)."}),
                "lambda_consistency": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": "Weight of the consistency loss (paper: 0.5)."}),
                "lambda_l2": ("FLOAT", {"default": 0.003, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": "Weight of ||b|| (paper: 0.003)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1, "tooltip": "Seed for sources and initialisation."}),
                "preview_every": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "Send a preview image every N steps."}),
            },
            "optional": {
                "sources": ("WPLUS", {"tooltip": "Train on these W+ latents instead of sampled faces."}),
                "init": ("ESSENCE", {"tooltip": "Start from this essence instead of a random sample."}),
                **precision_input("auto"),
            },
        }

    def optimize(self, generator, clip, target, steps, lr, n_sources, lambda_consistency, lambda_l2, seed, preview_every,
                 sources=None, init=None, precision="auto"):
        G, clip = managed(generator, clip)  # one call: loading one must not unload the other
        progress = Progress(steps)

        def on_step(info):
            check_interrupted()
            image = info.images[0, 0] if (info.step + 1) % preview_every == 0 or info.step + 1 == info.steps else None
            progress.update(info.step + 1, None if image is None else image[None])

        src = sources.check_for(G) if sources is not None else None
        result = optimize_essence(
            G, clip, image_to_core(target, G.device), steps=steps, lr=lr, n_sources=n_sources, sources=src, seed=seed,
            lambda_consistency=lambda_consistency, lambda_l2=lambda_l2, init=init if init is not None else "random",
            callback=on_step, name="essence", precision=precision,
        )
        essences = result if isinstance(result, list) else [result]
        mm.soft_empty_cache()  # the optimisation's activations are gone: give the memory back
        show = src if src is not None else sample_sources(G, n_sources, 0.7, seed)
        targets = image_to_core(target, G.device)
        with torch.no_grad():
            shown = G.synthesis(show)  # rendered once for every target's sheet
        sheets = torch.cat([essence_sheet(G, e, show, targets[t : t + 1], source_images=shown) for t, e in enumerate(essences)])
        return (essences[0], image_from_core(sheets), essences)


class ApplyEssence:
    DESCRIPTION = "Apply an essence to latents: G(w + strength * b), optionally on a layer range only."
    CATEGORY = f"{CATEGORY}/essence"
    RETURN_TYPES = ("IMAGE", "WPLUS")
    RETURN_NAMES = ("images", "latents")
    OUTPUT_TOOLTIPS = ("The edited images.", "The edited latents, to chain further edits.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("STYLEGAN", {"tooltip": "The generator the latents and essence belong to."}),
            "latents": ("WPLUS", {"tooltip": "Source latents (sampled or inverted)."}),
            "essence": ("ESSENCE", {"tooltip": "An optimised, loaded or mixed essence."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05,
                                   "tooltip": "How much of the essence: official advice 0.5-1 (Joker 0.9-1.3); the paper's evaluation used 1.2."}),
            "layers": (LAYER_CHOICES, {"tooltip": "W+ entries to edit: coarse 0-3 (pose, shape), middle 4-7 (features, hair), fine 8+ (colour, texture)."}),
        }}

    def apply(self, generator, latents, essence, strength, layers):
        G = managed(generator)
        wp = latents.check_for(G)
        essence.check_compatible(G)
        edited = edit_latents(wp, essence.to(G.device), strength, layers)
        images = render_latents(G, edited, on_batch=Progress(len(edited)).on_batch)
        return (image_from_core(images), WPlus(edited, G.identity))


class LoadEssence:
    DESCRIPTION = "Load an essence from models/targetclip: our .safetensors or an official TargetCLIP .npy direction."
    CATEGORY = f"{CATEGORY}/essence"
    RETURN_TYPES = ("ESSENCE",)
    RETURN_NAMES = ("essence",)
    OUTPUT_TOOLTIPS = ("The essence.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"essence_name": (list_files("targetclip"), {"tooltip": "A file in models/targetclip."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, essence_name=None):
        # replaces ComfyUI's "Value not in list" for essence_name by what the folder holds and how essences are made
        return validate_model_file("targetclip", essence_name)

    @classmethod
    def IS_CHANGED(cls, essence_name):
        return file_signature("targetclip", essence_name)

    def load(self, essence_name):
        return (load_essence(full_path("targetclip", essence_name)),)


class SaveEssence:
    DESCRIPTION = "Save an essence as .safetensors into models/targetclip (so Load Essence lists it)."
    CATEGORY = f"{CATEGORY}/essence"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "essence": ("ESSENCE", {"tooltip": "The essence to save."}),
            "filename_prefix": ("STRING", {"default": "essence", "tooltip": "File name prefix, as ComfyUI's Save Image: a counter is "
                                                                            "appended (essence_00001_.safetensors); 'folder/name' saves "
                                                                            "into a subfolder; %year%, %month%, %day% ... are replaced."}),
        }}

    def save(self, essence, filename_prefix):
        path, listed = numbered_path(folder_paths.get_folder_paths("targetclip")[0], filename_prefix, "essence")
        if essence.name in ("", "essence"):
            essence.name = os.path.basename(path).rsplit("_", 2)[0]  # the prefix, tokens replaced
        save_essence(path, essence)
        return {"ui": {"text": [listed]}}


class MixEssences:
    DESCRIPTION = "Weighted sum of two essences (a negative weight subtracts one)."
    CATEGORY = f"{CATEGORY}/essence"
    RETURN_TYPES = ("ESSENCE",)
    RETURN_NAMES = ("essence",)
    OUTPUT_TOOLTIPS = ("weight_a * a + weight_b * b.",)
    FUNCTION = "mix"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "essence_a": ("ESSENCE", {"tooltip": "First essence."}),
                "weight_a": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05, "tooltip": "Its weight (-1 negates it)."}),
            },
            "optional": {
                "essence_b": ("ESSENCE", {"tooltip": "Second essence (same generator)."}),
                "weight_b": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05, "tooltip": "Its weight."}),
            },
        }

    def mix(self, essence_a, weight_a, essence_b=None, weight_b=1.0):
        if essence_b is None:
            return (mix_essences([essence_a], [weight_a]),)
        return (mix_essences([essence_a, essence_b], [weight_a, weight_b]),)


class EssenceGrid:
    DESCRIPTION = ("Compare essences on the same faces: each source unedited, then edited with every connected essence "
                   f"(essence_1 .. essence_{GRID_ESSENCES}), as an image batch and as one captioned grid with a row per source.")
    CATEGORY = f"{CATEGORY}/essence"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("images", "grid")
    OUTPUT_TOOLTIPS = ("Per source: the unedited source, then its edit with each connected essence in input order.",
                       "The same as one image: a row per source, a column per essence, captioned with the essence names, "
                       "under a row of the essences' target thumbnails when they carry one.")
    FUNCTION = "grid"

    @classmethod
    def INPUT_TYPES(cls):
        optional = {f"essence_{k}": ("ESSENCE", {"tooltip": f"Essence number {k} (same generator); unconnected inputs are skipped."})
                    for k in range(2, GRID_ESSENCES + 1)}
        return {
            "required": {
                "generator": ("STYLEGAN", {"tooltip": "The generator the latents and essences belong to."}),
                "latents": ("WPLUS", {"tooltip": "Source latents (sampled or inverted)."}),
                "sources": (["first", "all"], {"tooltip": "first: one row, for the first latent; all: a row per latent."}),
                "essence_1": ("ESSENCE", {"tooltip": "The first essence (connect more below)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05,
                                       "tooltip": "Strength every essence is applied with (official advice 0.5-1; the paper's evaluation 1.2)."}),
                "layers": (LAYER_CHOICES, {"tooltip": "W+ entries to edit: coarse 0-3, middle 4-7, fine 8+."}),
                "captions": ("BOOLEAN", {"default": True, "tooltip": "Write the essence names above the grid's columns."}),
            },
            "optional": optional,
        }

    def grid(self, generator, latents, sources, essence_1, strength, layers, captions, **more):
        G = managed(generator)
        wp = latents.check_for(G)
        if sources == "first":
            wp = wp[:1]
        essences = [essence_1] + [more[f"essence_{k}"] for k in range(2, GRID_ESSENCES + 1) if more.get(f"essence_{k}") is not None]
        for e in essences:
            e.check_compatible(G)
        grid_latents = essence_grid_latents(wp, [e.to(G.device) for e in essences], strength, layers)
        images = render_latents(G, grid_latents, on_batch=Progress(len(grid_latents)).on_batch)
        return (image_from_core(images), image_from_core(essence_grid_sheet(images, essences, captions)))


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_LoadCLIP": LoadCLIP,
    "TargetCLIP_OptimizeEssence": OptimizeEssence,
    "TargetCLIP_ApplyEssence": ApplyEssence,
    "TargetCLIP_LoadEssence": LoadEssence,
    "TargetCLIP_SaveEssence": SaveEssence,
    "TargetCLIP_MixEssences": MixEssences,
    "TargetCLIP_EssenceGrid": EssenceGrid,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_LoadCLIP": "Load CLIP (TargetCLIP)",
    "TargetCLIP_OptimizeEssence": "Optimize Essence (TargetCLIP)",
    "TargetCLIP_ApplyEssence": "Apply Essence (TargetCLIP)",
    "TargetCLIP_LoadEssence": "Load Essence (TargetCLIP)",
    "TargetCLIP_SaveEssence": "Save Essence (TargetCLIP)",
    "TargetCLIP_MixEssences": "Mix Essences (TargetCLIP)",
    "TargetCLIP_EssenceGrid": "Essence Grid (TargetCLIP)",
}
