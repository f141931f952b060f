"""Measuring nodes: CLIP scores of edits, identity scores with ArcFace, essence interpretation, view consistency (EG3D)."""

from __future__ import annotations

import os

from targetclip_core.encoders.arcface import load_arcface
from targetclip_core.generators.cameras import parse_views
from targetclip_core.metrics.evaluation import sources_from_seeds
from targetclip_core.metrics.interpret import (
    interpret_essence,
    load_vocabulary,
    parse_phrases,
)
from targetclip_core.metrics.scores import pair_sources, score_edits, view_consistency

from .common import (
    CATEGORY,
    Progress,
    cached_model,
    check_interrupted,
    compute_device,
    file_signature,
    full_path,
    image_to_core,
    list_files,
    managed,
    validate_model_file,
)

ARCFACE_FOLDER = "e4e"  # model_ir_se50.pth sits beside the e4e/pSp checkpoints it comes with
ARCFACE_KINDS = ("arcface",)  # the manifest's kind for it (not the e4e/pSp encoders of the same folder)


class CLIPScore:
    DESCRIPTION = ("Score edits with CLIP as TargetCLIP's paper does: semantic = cosine of each edit with the target, "
                   "consistency = how much the edits of different sources move CLIP the same way (needs the sources).")
    CATEGORY = f"{CATEGORY}/metrics"
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("semantic", "consistency", "report")
    OUTPUT_TOOLTIPS = (
        "Mean cosine between the target's and each edit's CLIP image code (higher = closer to the target's look).",
        "Mean pairwise cosine of the CLIP deltas edit - source (1 = every face changed the same way); 0 when no sources are connected.",
        "All scores, per edit and as means, as text.",
    )
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("TARGETCLIP_CLIP", {"tooltip": "CLIP model that judges the look (paper: ViT-B-32, openai)."}),
                "images": ("IMAGE", {"tooltip": "The edits to score."}),
                "target": ("IMAGE", {"tooltip": "The target image the edits should look like (first image of the batch)."}),
            },
            "optional": {
                "sources": ("IMAGE", {"tooltip": "The unedited sources, one per edit in the same order: enables consistency and background change."}),
            },
        }

    def score(self, clip, images, target, sources=None):
        clip = managed(clip)
        device = compute_device()
        edits = image_to_core(images, device)
        src = pair_sources(edits, image_to_core(sources, device) if sources is not None else None)
        scores = score_edits(clip, edits, image_to_core(target[:1], device), src)
        consistency = scores.consistency if scores.consistency is not None else 0.0
        return (float(scores.semantic.mean()), float(consistency), scores.report())


class LoadArcFace:
    DESCRIPTION = "Load the ArcFace IR-SE50 identity network (model_ir_se50.pth, as used by pSp/e4e/TargetCLIP) from models/e4e."
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("ARCFACE",)
    RETURN_NAMES = ("arcface",)
    OUTPUT_TOOLTIPS = ("The face-identity network for Identity Score.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arcface_name": (list_files(ARCFACE_FOLDER), {"tooltip": "model_ir_se50.pth in models/e4e (read as a plain state dict: no code runs)."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, arcface_name=None):
        # replaces ComfyUI's "Value not in list" for arcface_name by which file to get from where
        return validate_model_file(ARCFACE_FOLDER, arcface_name, kinds=ARCFACE_KINDS)

    @classmethod
    def IS_CHANGED(cls, arcface_name):
        return file_signature(ARCFACE_FOLDER, arcface_name)

    def load(self, arcface_name):
        path = full_path(ARCFACE_FOLDER, arcface_name, kinds=ARCFACE_KINDS)
        return (cached_model(("arcface", file_signature(ARCFACE_FOLDER, arcface_name), str(compute_device())),
                             lambda device: load_arcface(path, device=device), os.path.getsize(path)),)


class IdentityScore:
    DESCRIPTION = ("Identity kept and taken, with ArcFace as TargetCLIP's paper measures it: ID source = cosine of each edit's face "
                   "embedding with its source's, ID target = with the target's. Faces must be FFHQ-aligned crops.")
    CATEGORY = f"{CATEGORY}/metrics"
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("id_source", "id_target", "report")
    OUTPUT_TOOLTIPS = (
        "Mean identity similarity of the edits with their sources (higher = identity kept); 0 when no sources are connected.",
        "Mean identity similarity of the edits with the target; 0 when no target is connected.",
        "The scores per edit and as means, as text.",
    )
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "arcface": ("ARCFACE", {"tooltip": "From Load ArcFace."}),
                "images": ("IMAGE", {"tooltip": "The edits (FFHQ-aligned faces)."}),
            },
            "optional": {
                "sources": ("IMAGE", {"tooltip": "The unedited sources, one per edit in the same order."}),
                "target": ("IMAGE", {"tooltip": "The target image (FFHQ-aligned face; first image of the batch)."}),
            },
        }

    def score(self, arcface, images, sources=None, target=None):
        from targetclip_core.metrics.scores import arcface_embeddings, identity_scores

        if sources is None and target is None:
            raise ValueError("connect the sources, the target, or both: identity is measured against them")
        arcface = managed(arcface)
        device = compute_device()
        edits = image_to_core(images, device)
        edit_ids = arcface_embeddings(arcface, edits)
        lines, means = [f"{edits.shape[0]} edit(s)"], {}
        for name, ref in (("ID source", sources), ("ID target", target)):
            if ref is None:
                continue
            ref = image_to_core(ref, device)
            ref = pair_sources(edits, ref) if name == "ID source" else ref[:1]
            per_edit = identity_scores(arcface_embeddings(arcface, ref), edit_ids).cpu()
            means[name] = float(per_edit.mean())
            lines.append(f"  {name:<10} {means[name]:.4f}  (per edit: " + ", ".join(f"{float(v):.4f}" for v in per_edit) + ")")
        return (means.get("ID source", 0.0), means.get("ID target", 0.0), "\n".join(lines))


class EssenceInterpret:
    DESCRIPTION = ("Describe an essence in words: applies it to a few sampled faces, takes the mean CLIP direction of the change, "
                   "and ranks vocabulary phrases by how well their text direction ('a face with ...' vs 'a face') matches it.")
    CATEGORY = f"{CATEGORY}/metrics"
    RETURN_TYPES = ("STRING", "FLOAT")
    RETURN_NAMES = ("phrases", "top_score")
    OUTPUT_TOOLTIPS = ("The top phrases with their cosine, best first, one per line.", "The cosine of the best phrase.")
    FUNCTION = "interpret"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "essence": ("ESSENCE", {"tooltip": "The essence to describe."}),
                "generator": ("STYLEGAN", {"tooltip": "The generator the essence belongs to."}),
                "clip": ("TARGETCLIP_CLIP", {"tooltip": "CLIP model for image and text directions."}),
                "top_k": ("INT", {"default": 10, "min": 1, "max": 100, "tooltip": "How many phrases to return."}),
                "n_sources": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Sampled faces the essence is applied to (seeds seed .. seed+n-1)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1, "tooltip": "First seed of the sampled faces."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05, "tooltip": "Strength the essence is applied with."}),
            },
            "optional": {
                "extra_phrases": ("STRING", {"multiline": True, "default": "", "tooltip": "More phrases, one per line ('#' comments), added to the shipped vocabulary."}),
                "only_extra_phrases": ("BOOLEAN", {"default": False, "tooltip": "Rank only the extra phrases, not the shipped vocabulary."}),
            },
        }

    def interpret(self, essence, generator, clip, top_k, n_sources, seed, strength, extra_phrases="", only_extra_phrases=False):
        G, clip = managed(generator, clip)  # one call: loading one must not unload the other
        phrases = load_vocabulary(phrases=parse_phrases(extra_phrases), include_default=not only_extra_phrases)
        check_interrupted()
        sources = sources_from_seeds(G, range(seed, seed + n_sources))
        ranked = interpret_essence(G, clip, essence, sources, vocabulary=phrases, top_k=top_k, strength=strength)
        text = "\n".join(f"{score:+.4f}  {phrase}" for phrase, score in ranked)
        return (text, float(ranked[0][1]))


class ViewConsistency:
    DESCRIPTION = ("View consistency of an essence on a 3D-aware generator (EG3D): does it change a face the same way from "
                   "every camera? For each source and view, the CLIP delta edit - source; the score is the mean cosine between "
                   "the deltas of every pair of views (1 = the same semantic change from everywhere), per source and as a mean.")
    CATEGORY = f"{CATEGORY}/metrics"
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("consistency", "report")
    OUTPUT_TOOLTIPS = ("The mean view consistency over the sources (-1 .. 1, higher = more consistent across views).",
                       "The views and the score per source, as text.")
    FUNCTION = "measure"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generator": ("STYLEGAN", {"tooltip": "A 3D-aware generator from Load EG3D."}),
            "clip": ("TARGETCLIP_CLIP", {"tooltip": "CLIP model that judges the change (its own preprocessing is used)."}),
            "essence": ("ESSENCE", {"tooltip": "The essence to measure (same generator)."}),
            "latents": ("WPLUS", {"tooltip": "The source faces (sampled or inverted latents)."}),
            "views": ("STRING", {"default": "5", "tooltip": "At least two views: a frame count for an orbit (e.g. 5), or yaw[:pitch] "
                                                           "angles in degrees, e.g. -30, 0, 30:10."}),
            "yaw_range": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 90.0, "step": 1.0,
                                    "tooltip": "Orbit: how far the camera swings left and right (degrees)."}),
            "pitch_range": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 60.0, "step": 1.0,
                                      "tooltip": "Orbit: how far the camera swings up and down (degrees)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -3.0, "max": 3.0, "step": 0.05, "tooltip": "Strength the essence is applied with."}),
            "batch_size": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "Images CLIP encodes at once."}),
        }}

    def measure(self, generator, clip, essence, latents, views, yaw_range, pitch_range, strength, batch_size):
        G, clip = managed(generator, clip)
        if not G.is_3d:
            raise ValueError(f"View Consistency needs a 3D-aware generator (Load EG3D); this is a {G.describe()}")
        wp = latents.check_for(G)
        essence.check_compatible(G)
        yaws, pitches = parse_views(views, yaw_range, pitch_range)
        essence = essence.to(G.device)
        bar, scores, result = Progress(len(wp)), [], None
        for i in range(len(wp)):  # one source at a time: the bar moves and Cancel works between sources
            bar.update(i)
            result = view_consistency(clip, G, wp[i : i + 1], essence, yaws, pitches, strength, batch_size)
            scores.append(float(result["per_source"][0]))
        bar.update(len(wp))
        mean = sum(scores) / len(scores)
        angles = ", ".join(f"{y:g}:{p:g}" for y, p in result["views"])
        lines = [(f"view consistency {mean:.4f} (mean of {len(scores)} source(s); {len(yaws)} views, yaw:pitch {angles}; "
                  f"strength {strength:g})")]
        lines += [f"  source {i}: {v:.4f}" for i, v in enumerate(scores)]
        return (mean, "\n".join(lines))


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_CLIPScore": CLIPScore,
    "TargetCLIP_LoadArcFace": LoadArcFace,
    "TargetCLIP_IdentityScore": IdentityScore,
    "TargetCLIP_EssenceInterpret": EssenceInterpret,
    "TargetCLIP_ViewConsistency": ViewConsistency,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_CLIPScore": "CLIP Score (TargetCLIP)",
    "TargetCLIP_LoadArcFace": "Load ArcFace (TargetCLIP)",
    "TargetCLIP_IdentityScore": "Identity Score (TargetCLIP)",
    "TargetCLIP_EssenceInterpret": "Essence Interpret (TargetCLIP)",
    "TargetCLIP_ViewConsistency": "View Consistency (TargetCLIP)",
}
