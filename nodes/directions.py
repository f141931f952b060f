"""Direction nodes: edit directions without a target photo (GANSpace, SeFa, StyleCLIP global directions).

Every W+ direction leaves as an ESSENCE scaled so that strength 1 in Apply Essence is the edit asked for,
so it mixes with optimised or loaded essences in Mix Essences. The text node's exact edit lives in
StyleSpace and leaves as STYLESPACE (for the nodes that take style codes: Render Views, SAT3D Transfer).

The engine is targetclip_core.methods.directions (its pipelines module runs each method in one call); the
channel statistics of the text node are kept per generator / CLIP pair in models/targetclip_directions.
"""

from __future__ import annotations

from collections import OrderedDict

import comfy.model_management as mm
import folder_paths

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.latents import wplus_from_seeds
from targetclip_core.methods.directions.ganspace import DEFAULT_SAMPLES
from targetclip_core.methods.directions.global_directions import ALPHA, BETA
from targetclip_core.methods.directions.global_statistics import MAX_RESOLUTION, N_IMAGES
from targetclip_core.methods.directions.pipelines import (
    METHODS,
    describe_direction,
    folder_statistics,
    latent_direction,
    sweep_sheet,
    text_edit,
    text_edit_sheet,
)
from targetclip_core.methods.directions.prompts import DEFAULT_NEUTRAL
from targetclip_core.methods.targetclip.essence import parse_layer_range

from .common import CATEGORY, Progress, StyleCodes, image_from_core

FOLDER = "targetclip_directions"  # StyleCLIP channel statistics, one file per generator / CLIP pair
PREVIEW_TRUNCATION = 0.7  # the preview faces: seeds 0.. as Sample Latents draws them
MAX_PREVIEW_FACES = 4  # rows of the text node's preview when latents are connected
MAX_BASES = 8  # PCAs / SeFa factorisations kept in this process (each a few MB at most)

# (generator weights, method, ...) -> WPCA or SeFa directions, shared by every direction node of the process
_BASES: OrderedDict = OrderedDict()


def statistics_folder() -> str:
    return folder_paths.get_folder_paths(FOLDER)[0]


def _trim_bases() -> None:
    while len(_BASES) > MAX_BASES:
        _BASES.popitem(last=False)


def preview_latents(G, n: int):
    return wplus_from_seeds(G, range(n), PREVIEW_TRUNCATION)


class LatentDirection:
    DESCRIPTION = ("An edit direction found from the generator alone, as an essence: GANSpace (principal components "
                   "of sampled W, Härkönen et al. 2020) or SeFa (eigenvectors of the modulation weights, Shen & Zhou "
                   "2021), on a range of W+ entries. The factorisation is computed once per generator and settings "
                   "and shared by every such node, so browsing components is instant.")
    CATEGORY = f"{CATEGORY}/directions"
    RETURN_TYPES = ("ESSENCE", "IMAGE", "STRING")
    RETURN_NAMES = ("essence", "preview", "info")
    OUTPUT_TOOLTIPS = (("The direction times strength (strength 1 in Apply Essence applies it as set here); mixes "
                        "with other essences in Mix Essences."),
                       ("The preview faces (seeds 0..) moved by -strength, 0 and +strength standard deviations "
                        "along the component."),
                       "The component's method, W+ entries and share of the variance (GANSpace) or eigenvalue (SeFa).")
    FUNCTION = "direction"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("STYLEGAN", {"tooltip": "The generator to find directions in (the essence only fits it)."}),
            "method": (list(METHODS), {"tooltip": "ganspace: principal components of sampled W (by explained "
                                                  "variance); sefa: closed-form factorisation of the chosen layers' "
                                                  "modulation weights (only its scale samples W)."}),
            "component": ("INT", {"default": 0, "min": 0, "max": 4095,
                                  "tooltip": "Which direction, 0-based: 0 is the strongest (below the generator's W "
                                             "size, 512 for FFHQ)."}),
            "layers": ("STRING", {"default": "all",
                                  "tooltip": "W+ entries the direction acts on: all, coarse (0-3: pose, shape), middle "
                                             "(4-7), fine (8+: colour), names comma separated, or indices like 0-5 or "
                                             "0-3,8 (GANSpace's layerwise edits). SeFa also factorises only these."}),
            "n_samples": ("INT", {"default": DEFAULT_SAMPLES, "min": 2, "max": 10_000_000, "step": 1000,
                                  "tooltip": "GANSpace: W samples of the PCA (the engine's default; the paper used "
                                             "10^6). SeFa ignores it (its scale uses the engine's own count)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1,
                             "tooltip": "Seed of the W samples (GANSpace's PCA, SeFa's scale). Keep it fixed: "
                                        "each new seed is a new factorisation."}),
            "strength": ("FLOAT", {"default": 2.0, "min": -10.0, "max": 10.0, "step": 0.1,
                                   "tooltip": "How far along the direction, in standard deviations of sampled W "
                                              "(negative: the other way); GANSpace edits are usually within +-3."}),
            "preview_faces": ("INT", {"default": 3, "min": 1, "max": 16,
                                      "tooltip": "Rows of the preview: seeds 0.. at truncation 0.7."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, layers):
        try:
            parse_layer_range(layers)
        except TargetCLIPError as e:
            return str(e)
        return True

    def direction(self, generator, method, component, layers, n_samples, seed, strength, preview_faces):
        G = generator
        found = latent_direction(G, method, component, parse_layer_range(layers), n_samples=n_samples, seed=seed,
                                 strength=strength, cache=_BASES)
        _trim_bases()
        s = float(strength)  # columns in standard deviations along the component, whatever the sign of strength
        sheet = sweep_sheet(G, preview_latents(G, preview_faces), found.essence, (-1.0, 0.0, 1.0),
                            [f"{-s:+g} sd", "0", f"{s:+g} sd"], on_batch=Progress(3 * preview_faces).on_batch)
        return (found.essence, image_from_core(sheet), describe_direction(found, G.n_latent))


class TextDirection:
    DESCRIPTION = ("An edit from a text (StyleCLIP global directions, Patashnik et al. 2021): the StyleSpace channels "
                   "whose CLIP direction matches target minus neutral text are moved. Needs each channel's CLIP "
                   "direction, measured once per generator / CLIP pair into models/targetclip_directions: a long "
                   "first run (2 x n_images renders per channel: about a million at 1024 px with the paper's 100), "
                   "with progress, cancellable and resumed where it stopped; later runs with any text are instant.")
    CATEGORY = f"{CATEGORY}/directions"
    RETURN_TYPES = ("ESSENCE", "STYLESPACE", "IMAGE", "STRING")
    RETURN_NAMES = ("essence", "styles", "preview", "info")
    OUTPUT_TOOLTIPS = (("The least-squares W+ essence of the edit, scaled so strength 1 in Apply Essence "
                        "approximates it at alpha; mixes with other essences."),
                       ("The exact StyleSpace edit of the connected latents (for Render Views or SAT3D Transfer's "
                        "source_styles); None when no latents are connected."),
                       "Per face (the first 4 latents, else seeds 0..2): source, exact StyleSpace edit, W+ essence.",
                       "Channels moved, the essence's fit and the statistics file used.")
    FUNCTION = "direction"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("STYLEGAN", {"tooltip": "The generator to edit (2D or EG3D)."}),
                "clip": ("TARGETCLIP_CLIP", {"tooltip": "CLIP model that reads the text and the channels (StyleCLIP: "
                                                        "ViT-B-32, openai); its statistics are its own."}),
                "target": ("STRING", {"default": "smiling face", "tooltip": "What the edit moves towards, e.g. "
                                                                           "'smiling face', 'face with glasses'."}),
                "neutral": ("STRING", {"default": DEFAULT_NEUTRAL,
                                       "tooltip": "The same without the attribute (StyleCLIP: 'face'): the edit is "
                                                  "target minus neutral."}),
                "alpha": ("FLOAT", {"default": ALPHA, "min": -20.0, "max": 20.0, "step": 0.1,
                                    "tooltip": "Manipulation strength (StyleCLIP demo: 4.1); negative moves away from "
                                               "the text."}),
                "beta": ("FLOAT", {"default": BETA, "min": 0.0, "max": 0.99, "step": 0.01,
                                   "tooltip": "Disentanglement threshold: channels less relevant than this stay put "
                                              "(StyleCLIP: 0.15, range 0.08-0.3); higher edits fewer channels."}),
                "n_images": ("INT", {"default": N_IMAGES, "min": 1, "max": 10000,
                                     "tooltip": "Images per channel for the statistics (the paper: 100). Another "
                                                "value measures another statistics file."}),
            },
            "optional": {
                "latents": ("WPLUS", {"tooltip": "Faces to edit exactly in StyleSpace (the styles output); without "
                                                 "them styles is None."}),
                "max_resolution": ("INT", {"default": MAX_RESOLUTION, "min": 0, "max": 1024,
                                           "tooltip": "Channels of layers up to this feature-map size are measured "
                                                      "(StyleCLIP: 128); 0 measures every layer (slower)."}),
                "batch_size": ("INT", {"default": 32, "min": 1, "max": 1024,
                                       "tooltip": "Images rendered and CLIP-encoded at once while measuring "
                                                  "(lower it if memory runs out); does not change the file."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, target, neutral):
        if not str(target).strip() or not str(neutral).strip():
            return "target and neutral must be non-empty texts"
        return True

    def direction(self, generator, clip, target, neutral, alpha, beta, n_images, latents=None,
                  max_resolution=MAX_RESOLUTION, batch_size=32):
        G, C = generator, clip
        wp = latents.check_for(G) if latents is not None else None
        measuring = Progress(1)  # the engine reports the real total with its first group of channels
        stats, path = folder_statistics(G, C, statistics_folder(), n_images=n_images,
                                        max_resolution=max_resolution or None, batch_size=batch_size,
                                        on_progress=measuring.on_batch)
        edit = text_edit(G, C, stats, target, neutral, alpha, beta, wp)
        mm.soft_empty_cache()  # the measurement's renders are gone
        faces = wp[:MAX_PREVIEW_FACES] if wp is not None else preview_latents(G, 3)
        sheet = text_edit_sheet(G, faces, edit, on_batch=Progress(len(faces)).on_batch)
        styles = StyleCodes(edit.styles, dict(G.identity)) if edit.styles is not None else None
        info = f"{edit.describe(G.n_latent)}; statistics: {path.name}"
        return (edit.essence.essence, styles, image_from_core(sheet), info)


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_LatentDirection": LatentDirection,
    "TargetCLIP_TextDirection": TextDirection,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_LatentDirection": "GANSpace / SeFa Direction (TargetCLIP)",
    "TargetCLIP_TextDirection": "Directions from Text (TargetCLIP)",
}
