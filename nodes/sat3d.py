"""SAT3D nodes: load, train and save the attribute x channel mask matrix; transfer attributes between faces.

SAT3D edits in StyleSpace (per-channel mixes of two faces' style codes), which in general
has no W+ equivalent: a transfer's result travels on as STYLESPACE (style codes tagged with
their generator), which a further SAT3D Transfer takes as its source.

The generator is used only through the StyleGAN2 API (identity, device, z_dim, mapping,
to_wplus, styles, synthesis_from_styles, state_dict): any generator offering it works
(no check on its class).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict

import comfy.model_management as mm
import folder_paths
import torch

from targetclip_core.generators.latents import wplus_from_seeds
from targetclip_core.generators.stylespace import StyleLayout, edit_styles
from targetclip_core.io.images import captioned_grid, grid
from targetclip_core.methods.sat3d import (
    BUILTIN_DESCRIPTORS,
    DELTA_RANGE,
    LOSS_TERMS,
    PAIRINGS,
    QMM,
    attribute_mask,
    check_attributes,
    check_matrix,
    compare_instant_with_trained,
    describe_matrix,
    instant_transfer,
    load_descriptors,
    load_sat3d_matrix,
    pair_sources_with_references,
    render_resolution,
    render_styles,
    save_sat3d_matrix,
    select_styles,
    style_batch_size,
    train_sat3d,
    transfer_styles,
)

from .common import (
    CATEGORY,
    Progress,
    StyleCodes,
    cached,
    cached_model,
    compute_device,
    file_signature,
    full_path,
    image_from_core,
    list_files,
    managed,
    numbered_path,
    precision_input,
    validate_model_file,
)

FOLDER = "sat3d"
PARSER_FOLDER = "facedetection"
PARSER_KINDS = ("face-parsing",)  # the manifest's kind of the BiSeNet parser (weights/manifest.json)
SAVE_TO = ["models/sat3d", "output/sat3d"]


def builtin_attributes() -> list[str]:
    """The attribute names of the shipped descriptor sets (faces, cats, cars), in file order."""
    names: list[str] = []
    for domain in BUILTIN_DESCRIPTORS:
        for name in load_descriptors(domain).names:
            if name not in names:
                names.append(name)
    return names


ATTRIBUTES = builtin_attributes()


def chosen_attributes(attribute: str, attributes_text: str) -> list[str]:
    """The attribute list: the names typed in `attributes_text` (comma or newline separated), else `attribute`."""
    names = [a.strip() for a in re.split(r"[,\n]", attributes_text or "") if a.strip()]
    return names or [attribute]


ATTRIBUTE_HINT = "choose one of these, or type several in 'attributes'"  # what an unknown name's error suggests


def render_with_progress(G, styles, batch_size: int = 4, precision: str = "fp32") -> torch.Tensor:
    """render_styles with ComfyUI's progress bar, a live preview and a cancel point per batch: [B, 3, H, W]."""
    bar = Progress(style_batch_size(styles))
    return render_styles(G, styles, batch_size, on_batch=lambda done, total, images: bar.update(done, images),
                         precision=precision)


def managed_with_parser(G, clip, face_parser=None):
    """`managed` on the generator, CLIP and (when connected) the face parser's network, in one call
    (loading one must not unload another); returns (G, clip), the parser moved in place."""
    net = getattr(face_parser, "net", None)
    if not isinstance(net, torch.nn.Module):  # none connected (or a parser that is not a network)
        return managed(G, clip)
    G, clip, _ = managed(G, clip, net)
    return G, clip


class LoadSAT3DMatrix:
    DESCRIPTION = ("Load a SAT3D attribute x channel mask matrix (.safetensors from SAT3D Train or `targetclip sat3d-train`) "
                   "from models/sat3d. A matrix belongs to the generator it was trained on.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("SAT3D", "STRING")
    RETURN_NAMES = ("sat3d", "info")
    OUTPUT_TOOLTIPS = ("The mask matrix with its attribute list, for SAT3D Transfer.",
                       "Its attributes, generator, training and strongest channels per attribute, as text.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"matrix_name": (list_files(FOLDER), {"tooltip": "A matrix file in models/sat3d."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, matrix_name=None):
        # replaces ComfyUI's "Value not in list" for matrix_name by what the folder holds and how matrices are made
        return validate_model_file(FOLDER, matrix_name)

    @classmethod
    def IS_CHANGED(cls, matrix_name):
        return file_signature(FOLDER, matrix_name)

    def load(self, matrix_name):
        path = full_path(FOLDER, matrix_name)
        matrix = cached(("sat3d", file_signature(FOLDER, matrix_name)), lambda: load_sat3d_matrix(path))
        return (matrix, describe_matrix(matrix, matrix_name))


class LoadFaceParser:
    DESCRIPTION = ("Load the BiSeNet face parser (face-parsing.PyTorch 79999_iter.pth, the same file as facexlib's "
                   "parsing_bisenet.pth) from models/facedetection, read as data. SAT3D Train uses it for the background "
                   "loss and channel pre-selection.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("FACE_PARSER",)
    RETURN_NAMES = ("face_parser",)
    OUTPUT_TOOLTIPS = ("Soft face-region masks (hair, eyes, glasses, mouth ...) for SAT3D Train.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "parser_name": (list_files(PARSER_FOLDER), {"tooltip": "79999_iter.pth or parsing_bisenet.pth in models/facedetection."}),
            "input_size": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 32,
                                   "tooltip": "Side the network sees (512 as trained; smaller is faster and coarser)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, parser_name=None):
        # replaces ComfyUI's "Value not in list" for parser_name by which file to get from where (input_size still checked)
        return validate_model_file(PARSER_FOLDER, parser_name, kinds=PARSER_KINDS)

    @classmethod
    def IS_CHANGED(cls, parser_name, input_size):
        return f"{file_signature(PARSER_FOLDER, parser_name)}:{input_size}"

    def load(self, parser_name, input_size):
        from targetclip_core.faces.parsing import FaceParser, load_face_parser

        path = full_path(PARSER_FOLDER, parser_name, kinds=PARSER_KINDS)
        # the network is the model ComfyUI manages (the FaceParser around it is plain Python)
        net = cached_model(("face-parser", file_signature(PARSER_FOLDER, parser_name), str(compute_device())),
                           lambda device: load_face_parser(path, device=device).net, os.path.getsize(path))
        return (FaceParser(net, input_size=input_size),)  # shares the weights; its own input size


class SAT3DTransfer:
    DESCRIPTION = ("SAT3D attribute transfer: move named attributes (hairstyle, hair colour, eyeglasses, beard, expression ...) "
                   "of a reference face onto source faces, in StyleSpace, through a trained mask matrix: "
                   "s_edit = s_src + delta * mask * (s_ref - s_src). Several attributes go in sequence, or as one mask (combine).")
    CATEGORY = f"{CATEGORY}/sat3d"
    RETURN_TYPES = ("IMAGE", "STYLESPACE")
    RETURN_NAMES = ("images", "styles")
    OUTPUT_TOOLTIPS = ("The edited images, one per source (per source x reference with 'every pair').",
                       "The edited StyleSpace codes: connect to another SAT3D Transfer's source_styles to chain edits "
                       "(a StyleSpace edit has no W+ latent).")
    FUNCTION = "transfer"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("STYLEGAN", {"tooltip": "The generator the matrix was trained on."}),
                "sat3d": ("SAT3D", {"tooltip": "A mask matrix from Load SAT3D Matrix or SAT3D Train."}),
                "reference": ("WPLUS", {"tooltip": "The face whose attributes are taken (its first latent, unless pairing says otherwise)."}),
                "attribute": (ATTRIBUTES, {"tooltip": "The attribute to transfer (names of the shipped faces, cats and cars "
                                                      "descriptor sets; the matrix must know it)."}),
                "delta": ("FLOAT", {"default": 1.0, "min": DELTA_RANGE[0], "max": DELTA_RANGE[1], "step": 0.05,
                                    "tooltip": "Editing intensity: 0 keeps the source, 1 takes the reference's channels, "
                                               "above 1 exaggerates (paper range 0-3)."}),
                "combine": ("BOOLEAN", {"default": False, "tooltip": "With several attributes: one summed mask (the paper's multi-attribute "
                                                                     "edit) instead of one edit after the other."}),
                "pairing": (PAIRINGS, {"tooltip": "first reference: the first reference for every source; pairwise: source i with "
                                                  "reference i (or a single reference); every pair: each source with each reference, "
                                                  "source by source."}),
            },
            "optional": {
                "source": ("WPLUS", {"tooltip": "The faces to edit (sampled or inverted latents). Connect this or source_styles."}),
                "source_styles": ("STYLESPACE", {"tooltip": "Style codes from a previous SAT3D Transfer, to edit further "
                                                            "(instead of source)."}),
                "attributes": ("STRING", {"default": "", "tooltip": "When not empty: attribute names, comma separated, applied in this "
                                                                    "order instead of 'attribute' (for several, or a custom descriptor set's names)."}),
                "allow_other_weights": ("BOOLEAN", {"default": False, "tooltip": "Accept a matrix trained on another network of the same "
                                                                                 "layout (only for a fine-tuned relative of its generator)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images rendered at once (lower it if memory runs out)."}),
                **precision_input(),
            },
        }

    def transfer(self, generator, sat3d, reference, attribute, delta, combine, pairing, source=None, source_styles=None,
                 attributes="", allow_other_weights=False, batch_size=4, precision="fp32"):
        G = managed(generator)
        if (source is None) == (source_styles is None):
            raise ValueError("connect either source (W+ latents) or source_styles (a previous transfer's styles), not both")
        names = chosen_attributes(attribute, attributes)
        check_attributes(sat3d, names, ATTRIBUTE_HINT)
        check_matrix(sat3d, G, allow_other_weights)
        with torch.no_grad():
            src = source_styles.check_for(G) if source_styles is not None else G.styles(source.check_for(G))
            ref = G.styles(reference.check_for(G))
            source_index, reference_index = pair_sources_with_references(style_batch_size(src), style_batch_size(ref), pairing)
            src, ref = select_styles(src, source_index), select_styles(ref, reference_index)
            styles = transfer_styles(G, src, ref, sat3d, names, delta=delta, combine=combine, check=False)
            styles = OrderedDict((k, v.detach()) for k, v in styles.items())
        images = render_with_progress(G, styles, batch_size, precision)
        return (image_from_core(images), StyleCodes(styles, dict(G.identity)))


class SAT3DInstantTransfer:
    DESCRIPTION = ("Instant SAT3D transfer (beyond the paper): no trained matrix. For each source/reference pair a mask is "
                   "optimised alone with the SAT3D losses (CLIP descriptor groups, Ranger), then the attributes move with it as one "
                   "summed mask, as `targetclip sat3d-transfer --instant`. With compare_with, that trained matrix is scored "
                   "on the same pairs with the same losses and the report compares both (as --compare's compare.md). "
                   "Shows a live preview of the edit and can be cancelled at any step.")
    CATEGORY = f"{CATEGORY}/sat3d"
    RETURN_TYPES = ("IMAGE", "STYLESPACE", "STRING")
    RETURN_NAMES = ("images", "styles", "report")
    OUTPUT_TOOLTIPS = ("The instant transfers, one per pair.",
                       "Their StyleSpace codes, for another SAT3D Transfer's source_styles or Render Views.",
                       "The loss terms of each pair's instant mask; with compare_with, both matrices' terms side by side.")
    FUNCTION = "transfer"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("STYLEGAN", {"tooltip": "The generator to edit with."}),
                "clip": ("TARGETCLIP_CLIP", {"tooltip": "CLIP model that measures the attributes (paper: ViT-B-32, openai)."}),
                "source": ("WPLUS", {"tooltip": "The faces to edit (sampled or inverted latents)."}),
                "reference": ("WPLUS", {"tooltip": "The face(s) whose attributes are taken."}),
                "attribute": (ATTRIBUTES, {"tooltip": "The attribute to transfer (a name of the chosen descriptor set)."}),
                "delta": ("FLOAT", {"default": 1.0, "min": DELTA_RANGE[0], "max": DELTA_RANGE[1], "step": 0.05,
                                    "tooltip": "Editing intensity the mask is optimised for and applied with (0-3)."}),
                "steps": ("INT", {"default": 300, "min": 1, "max": 100000, "tooltip": "Optimisation steps per pair."}),
                "lr": ("FLOAT", {"default": 0.01, "min": 0.0001, "max": 1.0, "step": 0.001, "tooltip": "Ranger learning rate (default 0.01)."}),
                "descriptors": (list(BUILTIN_DESCRIPTORS), {"tooltip": "Shipped descriptor groups: faces, cats, cars (a connected "
                                                                       "matrix must have been trained with the same set)."}),
                "pairing": (PAIRINGS, {"tooltip": "first reference: the first reference for every source; pairwise: source i with "
                                                  "reference i (or a single reference); every pair: each source with each reference."}),
                "preview_every": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Send a preview image every N steps."}),
            },
            "optional": {
                "attributes": ("STRING", {"default": "", "tooltip": "When not empty: attribute names, comma separated, transferred "
                                                                    "together (one summed mask) instead of 'attribute'."}),
                "init": ("SAT3D", {"tooltip": "Start every pair's mask from this trained matrix instead of the usual initialisation."}),
                "compare_with": ("SAT3D", {"tooltip": "A trained matrix to compare with: the report gives both matrices' SAT3D loss "
                                                      "terms on the same pairs (connect the same matrix to init to start from it)."}),
                "face_parser": ("FACE_PARSER", {"tooltip": "A face parser (Load Face Parser): turns on the background loss L_bg."}),
                "lambda_attr": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Weight of L_attr (paper: 3.5)."}),
                "lambda_prob": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "Weight of L_prob (paper: 0.1)."}),
                "lambda_bg": ("FLOAT", {"default": 40.0, "min": 0.0, "max": 1000.0, "step": 1.0,
                                        "tooltip": "Weight of L_bg (paper: 40); used only with a face parser."}),
                "descriptor_file": ("STRING", {"default": "", "tooltip": "A descriptor JSON (path, or a file name in models/sat3d) "
                                                                         "instead of the shipped set."}),
                "allow_other_weights": ("BOOLEAN", {"default": False, "tooltip": "Accept matrices trained on another network of the "
                                                                                 "same layout (only for a fine-tuned relative)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images rendered at once for the output."}),
                **precision_input(),
            },
        }

    def transfer(self, generator, clip, source, reference, attribute, delta, steps, lr, descriptors, pairing, preview_every,
                 attributes="", init=None, compare_with=None, face_parser=None, lambda_attr=3.5, lambda_prob=0.1, lambda_bg=40.0,
                 descriptor_file="", allow_other_weights=False, batch_size=4, precision="fp32"):
        G, clip = managed_with_parser(generator, clip, face_parser)
        names = chosen_attributes(attribute, attributes)
        descriptor_set = load_descriptors(_descriptor_path(descriptor_file) or descriptors)
        for name in names:
            descriptor_set[name]  # an unknown name fails here, listing the set's
        if init is not None and compare_with is not None and init is not compare_with:
            raise ValueError("init and compare_with are different matrices: the comparison starts the instant masks from the "
                             "compared matrix only (connect it to both, or leave init empty)")
        for matrix in (init, compare_with):
            if matrix is not None:
                check_matrix(matrix, G, allow_other_weights)
                if list(matrix.attributes) != descriptor_set.names:
                    raise ValueError(f"the connected matrix has attributes {', '.join(matrix.attributes)}, the descriptor set "
                                     f"{descriptor_set.source} has {', '.join(descriptor_set.names)}: choose the set it was trained with")
        measure = QMM(clip, descriptor_set)
        src, ref = source.check_for(G), reference.check_for(G)
        source_index, reference_index = pair_sources_with_references(len(src), len(ref), pairing)
        src, ref = src[source_index], ref[reference_index]  # pair i = (src[i], ref[i])
        on_step = _instant_progress(G, measure, src, ref, delta, steps, preview_every)
        settings = {"steps": steps, "lr": lr, "delta": delta, "parser": face_parser, "descriptors": descriptor_set,
                    "lambdas": {"attr": lambda_attr, "prob": lambda_prob, "bg": lambda_bg if face_parser is not None else 0.0},
                    "precision": precision}
        if compare_with is not None:
            result = compare_instant_with_trained(G, measure, compare_with, src, ref, names, init_from_trained=init is not None,
                                                  callback=on_step, **settings)
            edits, report = [p["styles_instant"] for p in result.pairs], _comparison_report(result)
        else:
            matrices = [instant_transfer(G, measure, src[i : i + 1], ref[i : i + 1], names, init=init,
                                         callback=lambda info, i=i: on_step(i, info), **settings) for i in range(len(src))]
            with torch.no_grad():
                edits = [transfer_styles(G, src[i : i + 1], ref[i : i + 1], m, names, delta, combine=True)
                         for i, m in enumerate(matrices)]
            report = _instant_report(matrices, names)
        mm.soft_empty_cache()
        styles = OrderedDict((k, torch.cat([e[k] for e in edits]).detach()) for k in edits[0])
        images = render_with_progress(G, styles, batch_size, precision)
        return (image_from_core(images), StyleCodes(styles, dict(G.identity)), report)


def _instant_progress(G, measure, src, ref, delta, steps, preview_every):
    """instant_transfer's callback(pair, step): the bar over every pair's steps, a cancel point, and every
    preview_every steps the pair's source, reference and current edit."""
    bar, layout, pair = Progress(steps * len(src)), StyleLayout.from_generator(G), {}

    def on_step(i, info):
        image = None
        if info.step % preview_every == 0 or info.step == info.steps:
            with torch.no_grad():
                if pair.get("index") != i:
                    st_src, st_ref = G.styles(src[i : i + 1]), G.styles(ref[i : i + 1])
                    pair.update(index=i, styles=st_src, flat=(layout.flatten(st_src), layout.flatten(st_ref)),
                                images=torch.cat([G.synthesis_from_styles(st_src), G.synthesis_from_styles(st_ref)]))
                mask = attribute_mask(info.logits, measure.attributes, info.attributes)
                edit = G.synthesis_from_styles(layout.unflatten(edit_styles(*pair["flat"], mask, delta), pair["styles"]))
                image = grid(torch.cat([pair["images"], edit]), 3)
        bar.update(i * steps + info.step, image)  # raises on Cancel

    return on_step


def _terms(terms: dict) -> str:
    return "  ".join(f"{k} {terms[k]:.6g}" for k in LOSS_TERMS)


def _instant_report(matrices, names) -> str:
    lines = [f"SAT3D instant transfer of {', '.join(names)}: {len(matrices)} pair(s)"]
    for i, m in enumerate(matrices):
        best = min(range(len(m.losses["total"])), key=m.losses["total"].__getitem__)  # the step the mask kept
        lines.append(f"  pair {i}: {_terms({k: m.losses[k][best] for k in LOSS_TERMS})}  (best of {m.steps} steps: step {best})")
    return "\n".join(lines)


def _comparison_report(result) -> str:
    """compare_instant_with_trained's result as the CLI's compare.md tells it: mean terms of both, who wins."""
    s = result.summary
    start = "the trained matrix" if s["init_from_trained"] else "the usual initialisation"
    lines = [f"SAT3D: trained matrix vs instant per-pair masks ({', '.join(s['attributes'])})",
             f"{s['pairs']} pair(s); instant masks: {s['steps']} steps at lr {s['lr']:g} from {start}; delta {s['delta']:g}", "",
             *result.mean_terms_table()]
    lines += ["", f"Lower total loss: instant on {s['instant_wins']} pair(s), trained on {s['trained_wins']}, ties {s['ties']}."]
    lines += [f"  pair {p['pair']}: trained {p['trained']['total']:.6g}, instant {p['instant']['total']:.6g} ({p['winner']})"
              for p in result.pairs]
    return "\n".join(lines)


class SAT3DTrain:
    DESCRIPTION = ("Learn a SAT3D mask matrix for a generator: which StyleSpace channels carry each attribute, judged by CLIP "
                   "on descriptor groups (SAT3D's QMM losses, Ranger); with a face parser also the background loss and channel "
                   "pre-selection. Shows a live transfer preview and can be cancelled at any step; with a checkpoint name, a "
                   "cancelled run resumes where it stopped.")
    CATEGORY = f"{CATEGORY}/sat3d"
    RETURN_TYPES = ("SAT3D", "IMAGE", "STRING")
    RETURN_NAMES = ("sat3d", "preview", "report")
    OUTPUT_TOOLTIPS = ("The trained matrix (save it with Save SAT3D Matrix).",
                       "A source, a reference and the transfer of every attribute, captioned.",
                       "Losses and the strongest channels per attribute, as text.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generator": ("STYLEGAN", {"tooltip": "The generator the matrix is for (it only fits this one)."}),
                "clip": ("TARGETCLIP_CLIP", {"tooltip": "CLIP model that measures the attributes (paper: ViT-B-32, openai)."}),
                "descriptors": (list(BUILTIN_DESCRIPTORS), {"tooltip": "Shipped descriptor groups: faces (7 attributes), cats, cars."}),
                "steps": ("INT", {"default": 10000, "min": 1, "max": 1000000, "tooltip": "Training steps (one attribute and a batch of pairs each)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Source/reference pairs per step."}),
                "lr": ("FLOAT", {"default": 0.01, "min": 0.0001, "max": 1.0, "step": 0.001, "tooltip": "Ranger learning rate (paper: 0.01)."}),
                "n_codes": ("INT", {"default": 6000, "min": 2, "max": 100000, "tooltip": "Pre-sampled latents the pairs are drawn from (paper: 6000)."}),
                "truncation": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Truncation of the sampled latents (1.0: none)."}),
                "lambda_attr": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1,
                                          "tooltip": "Weight of L_attr = L_ref + L_src: the edit takes the reference's target "
                                                     "attribute and keeps the source's others (paper: 3.5)."}),
                "lambda_prob": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01,
                                          "tooltip": "Weight of L_prob: each channel should belong to one attribute (paper: 0.1)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1, "tooltip": "Seed of the latent bank, the pairs and the preview faces."}),
                "preview_every": ("INT", {"default": 50, "min": 1, "max": 10000, "tooltip": "Send a preview image every N steps."}),
            },
            "optional": {
                "face_parser": ("FACE_PARSER", {"tooltip": "A face parser (Load Face Parser): turns on the background loss L_bg and "
                                                           "channel pre-selection for the attributes marked complex (as the paper)."}),
                "lambda_bg": ("FLOAT", {"default": 40.0, "min": 0.0, "max": 1000.0, "step": 1.0,
                                        "tooltip": "Weight of the background loss (paper: 40); used only with a face parser."}),
                "descriptor_file": ("STRING", {"default": "", "tooltip": "A descriptor JSON (path, or a file name in models/sat3d) instead of "
                                                                         "the shipped set; may 'extend' one."}),
                "checkpoint_name": ("STRING", {"default": "", "tooltip": "When set: a training checkpoint in output/sat3d_checkpoints, written "
                                                                         "every 500 steps and on Cancel (and after every image of the "
                                                                         "pre-selection pass); the same settings resume from it."}),
                "filter_training_set": ("BOOLEAN", {"default": True, "tooltip": "Filter the sampled latents as the paper, with CLIP "
                                                                                "zero-shot checks from the descriptor set (faces: no hats, at "
                                                                                "least 40% with glasses); off: draw them unfiltered."}),
                **precision_input(),
            },
        }

    def train(self, generator, clip, descriptors, steps, batch_size, lr, n_codes, truncation, lambda_attr, lambda_prob, seed,
              preview_every, face_parser=None, lambda_bg=40.0, descriptor_file="", checkpoint_name="", filter_training_set=True,
              precision="fp32"):
        G, clip = managed_with_parser(generator, clip, face_parser)
        descriptor_set = load_descriptors(_descriptor_path(descriptor_file) or descriptors)
        measure = QMM(clip, descriptor_set)
        layout = StyleLayout.from_generator(G)
        res = render_resolution(G, measure)
        with torch.no_grad():  # the preview pair: two typical faces
            wp = wplus_from_seeds(G, [seed, seed + 1], truncation=0.7)
            st_src, st_ref = G.styles(wp[:1]), G.styles(wp[1:])
            flat_src, flat_ref = layout.flatten(st_src), layout.flatten(st_ref)
            pair = torch.cat([G.synthesis_from_styles(st_src, out_resolution=res), G.synthesis_from_styles(st_ref, out_resolution=res)])
        progress = Progress(steps)
        stopped = []

        def on_step(info):
            if mm.processing_interrupted():
                stopped.append(info.step)
                return True  # stop: train_sat3d writes the checkpoint, then we raise
            image = None
            if info.step % preview_every == 0 or info.step == info.steps:
                with torch.no_grad():
                    mask = attribute_mask(info.logits, measure.attributes, info.attributes)
                    edit = G.synthesis_from_styles(layout.unflatten(edit_styles(flat_src, flat_ref, mask), st_src), out_resolution=res)
                    image = grid(torch.cat([pair, edit]), 3)
            try:
                progress.update(info.step, image)
            except mm.InterruptProcessingException:  # the server's progress hook saw Cancel
                stopped.append(info.step)
                return True
            return False

        preselection = {}

        # channel pre-selection's gradient statistics pass (with a parser): the bar per image and a cancel point; the
        # engine writes the checkpoint (when named) before each call, so a cancelled pass resumes on the next run
        def on_preselect(done, total):
            if "bar" not in preselection:
                preselection["bar"] = Progress(total)
            preselection["bar"].update(done)

        filtering = {}

        def on_filter(done, total):  # the training-set filter renders and checks candidates first: show it, allow cancel
            if "bar" not in filtering:
                filtering["bar"] = Progress(total)
            filtering["bar"].update(done)

        matrix = train_sat3d(G, measure, steps=steps, batch_size=batch_size, lr=lr, n_codes=n_codes, truncation=truncation,
                             seed=seed, lambdas={"attr": lambda_attr, "prob": lambda_prob, "bg": lambda_bg if face_parser else 0.0},
                             parser=face_parser, descriptors=descriptor_set, checkpoint=_checkpoint_path(checkpoint_name),
                             callback=on_step, preselect_kwargs={"progress": on_preselect},
                             filter_training_set=filter_training_set, training_set_kwargs={"on_batch": on_filter},
                             precision=precision)
        mm.soft_empty_cache()
        if stopped:
            mm.throw_exception_if_processing_interrupted()  # raises (and clears the flag) unless the hook already did
            raise mm.InterruptProcessingException()
        with torch.no_grad():
            logits = matrix.logits.to(G.device)
            edits = torch.cat([edit_styles(flat_src, flat_ref, attribute_mask(logits, matrix.attributes, [a])) for a in matrix.attributes])
            cells = torch.cat([render_styles(G, st) for st in (st_src, st_ref, layout.unflatten(edits, st_src))])
            sheet = captioned_grid(cells, len(cells), ["source", "reference", *matrix.attributes])
        return (matrix, image_from_core(sheet), _train_report(matrix, face_parser is not None and lambda_bg > 0))


def _train_report(matrix, with_bg: bool) -> str:
    losses = matrix.losses.get("total", [])
    tail = losses[-max(1, len(losses) // 10):]
    head = losses[: max(1, len(losses) // 10)]
    lines = [describe_matrix(matrix)]
    if losses:
        lines.append(f"  loss: {sum(head) / len(head):.4f} (first 10%) -> {sum(tail) / len(tail):.4f} (last 10%)")
    lines.append("  background loss L_bg: on (face parser)" if with_bg else
                 "  background loss L_bg: off (connect a face parser to turn it and channel pre-selection on)")
    return "\n".join(lines)


def _descriptor_path(text: str) -> str:
    text = (text or "").strip()
    if not text:
        return ""
    if not os.path.isabs(text) and folder_paths.get_full_path(FOLDER, text):
        return folder_paths.get_full_path(FOLDER, text)
    return text


def _safe_name(text: str, default: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", (text or "").strip()).strip(".") or default


def _checkpoint_path(name: str):
    if not (name or "").strip():
        return None
    folder = os.path.join(folder_paths.get_output_directory(), "sat3d_checkpoints")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, _safe_name(name, "sat3d") + ".ckpt")


class SaveSAT3DMatrix:
    DESCRIPTION = "Save a SAT3D mask matrix as .safetensors (written atomically) into models/sat3d, where Load SAT3D Matrix lists it, or into output/sat3d."
    CATEGORY = f"{CATEGORY}/sat3d"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sat3d": ("SAT3D", {"tooltip": "The matrix to save."}),
            "filename_prefix": ("STRING", {"default": "sat3d", "tooltip": "File name prefix, as ComfyUI's Save Image: a counter is "
                                                                          "appended (sat3d_00001_.safetensors); 'folder/name' saves into a "
                                                                          "subfolder; %year%, %month%, %day% ... are replaced."}),
            "save_to": (SAVE_TO, {"tooltip": "models/sat3d: listed by Load SAT3D Matrix; output/sat3d: ComfyUI's output folder."}),
        }}

    def save(self, sat3d, filename_prefix, save_to):
        if save_to == "models/sat3d":
            folder = folder_paths.get_folder_paths(FOLDER)[0]
        else:
            folder = os.path.join(folder_paths.get_output_directory(), "sat3d")
        path, listed = numbered_path(folder, filename_prefix, "sat3d")
        save_sat3d_matrix(path, sat3d)
        return {"ui": {"text": [listed]}}


NODE_CLASS_MAPPINGS = {
    "TargetCLIP_LoadSAT3DMatrix": LoadSAT3DMatrix,
    "TargetCLIP_LoadFaceParser": LoadFaceParser,
    "TargetCLIP_SAT3DTransfer": SAT3DTransfer,
    "TargetCLIP_SAT3DInstantTransfer": SAT3DInstantTransfer,
    "TargetCLIP_SAT3DTrain": SAT3DTrain,
    "TargetCLIP_SaveSAT3DMatrix": SaveSAT3DMatrix,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TargetCLIP_LoadSAT3DMatrix": "Load SAT3D Matrix (TargetCLIP)",
    "TargetCLIP_LoadFaceParser": "Load Face Parser, BiSeNet (TargetCLIP)",
    "TargetCLIP_SAT3DTransfer": "SAT3D Attribute Transfer (TargetCLIP)",
    "TargetCLIP_SAT3DInstantTransfer": "Instant SAT3D Transfer (TargetCLIP)",
    "TargetCLIP_SAT3DTrain": "SAT3D Train Matrix (TargetCLIP)",
    "TargetCLIP_SaveSAT3DMatrix": "Save SAT3D Matrix (TargetCLIP)",
}
