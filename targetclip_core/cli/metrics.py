"""`targetclip score | eval | interpret | fid`: measuring essences from the command line.

Wired into the main CLI by `add_parsers(subparsers)` and `COMMANDS`.
"""

from __future__ import annotations

from pathlib import Path

from targetclip_core.cli.args import (
    add_clip_args,
    add_device_arg,
    check_out_resolution,
    finite_float,
    layers_arg,
    parse_layers,
    positive_int,
    resolution_arg,
    seeds_arg,
)
from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import check_output_path


def _add_identity_args(p) -> None:
    p.add_argument("--arcface", default=None, help="ArcFace IR-SE50 weights (model_ir_se50.pth or the manifest name arcface-ir-se50) for the ID scores")
    p.add_argument("--official-id-input", action="store_true",
                   help="feed edits to ArcFace in [0,1] as the official calc_metrics does (to match the paper's numbers)")
    p.add_argument("--blip", default=None, help="local Hugging Face BLIP folder for the optional BLIP score (needs transformers)")


def add_parsers(subparsers) -> None:
    """Add the score, eval, interpret and fid commands to the main parser's subparsers."""
    s = subparsers.add_parser("score", help="score edits against a target: CLIP semantic, consistency, ID, background")
    s.add_argument("edits", nargs="+", help="edited images (FFHQ-aligned faces for the ID scores)")
    s.add_argument("--target", "-t", required=True, help="the target image")
    s.add_argument("--sources", nargs="+", default=None, help="the unedited sources, paired with the edits in order")
    s.add_argument("--mask", default=None, help="face-region mask image (white = face) for the background change; default: FFHQ head region")
    add_clip_args(s, paper_default=True)
    _add_identity_args(s)
    add_device_arg(s)

    e = subparsers.add_parser("eval", help="the paper's protocol (Table 1): targets x sources -> results.csv, table.md, sheet.png")
    e.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    e.add_argument("--essences", "-e", nargs="+", required=True, help="one essence per target, same order (.safetensors or official .npy)")
    e.add_argument("--targets", "-t", nargs="+", required=True, help="target images, same order as the essences")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--sources", help="W+ latents, e.g. the paper's celebs_68_wplus.npy")
    src.add_argument("--seeds", type=seeds_arg, help="sources from seeds, e.g. 0-67")
    e.add_argument("--truncation", type=finite_float, default=0.7, help="truncation for --seeds (default 0.7)")
    e.add_argument("--strength", type=finite_float, default=None, help="c in G(w + c b) (default: each essence's own; the official evaluation used 1.2)")
    e.add_argument("--layers", type=layers_arg, default=None, help="coarse, middle, fine (comma-separated) or indices like 0-7 (default: all)")
    add_clip_args(e, paper_default=True)
    _add_identity_args(e)
    e.add_argument("--out", "-o", required=True, help="output folder for results.csv, table.md, sheet.png")
    e.add_argument("--resume", action="store_true", help="continue the results.csv in --out, skipping its targets")
    e.add_argument("--save-edits", action="store_true", help="also write edits/<target>/<source>.png and sources/<source>.png")
    e.add_argument("--batch-size", type=positive_int, default=4, help="sources rendered and scored at once (default 4)")
    e.add_argument("--out-resolution", type=resolution_arg, default=None, help="render smaller than the generator's size (faster; differs from the paper)")
    e.add_argument("--sheet-columns", type=positive_int, default=8, help="sources shown in sheet.png (default 8)")
    e.add_argument("--cell-size", type=positive_int, default=128, help="pixel size of a sheet cell (default 128)")
    e.add_argument("--method", default="TargetCLIP", help="method name in table.md")
    e.add_argument("--align", action="store_true", help="align the target photos like FFHQ first (for the ID target score)")
    e.add_argument("--detector", default="mtcnn", help="with --align: mtcnn or dlib:/path/to/shape_predictor_68_face_landmarks.dat")
    add_device_arg(e)

    i = subparsers.add_parser("interpret", help="top phrases that describe what an essence does (CLIP text directions)")
    i.add_argument("essence", help="essence .safetensors or official .npy")
    i.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    add_clip_args(i, paper_default=True)
    i.add_argument("--vocabulary", nargs="+", default=(), help="extra vocabulary files: one phrase a line, # comments")
    i.add_argument("--phrase", nargs="+", default=(), help="extra phrases, e.g. --phrase 'red hair' 'a tiara'")
    i.add_argument("--no-default-vocabulary", action="store_true", help="use only --vocabulary and --phrase")
    i.add_argument("--top-k", type=positive_int, default=10, help="phrases listed (default 10)")
    isrc = i.add_mutually_exclusive_group()
    isrc.add_argument("--sources", help="W+ latents to apply the essence to")
    isrc.add_argument("--seeds", type=seeds_arg, default=list(range(8)), help="sources from seeds (default 0-7)")
    i.add_argument("--truncation", type=finite_float, default=0.7, help="truncation for --seeds (default 0.7)")
    i.add_argument("--strength", type=finite_float, default=None, help="default: the essence's recommended strength")
    i.add_argument("--template", default="a face with {}", help="prompt template holding {} (default 'a face with {}')")
    i.add_argument("--neutral", default="a face", help="neutral prompt the template is compared with (default 'a face')")
    add_device_arg(i)

    f = subparsers.add_parser("fid", help="FID of a folder of edits against a reference folder (optional extra: torchmetrics)")
    f.add_argument("edits", help="folder of edited images (searched recursively), e.g. eval's --save-edits output")
    f.add_argument("reference", help="folder of reference images")
    f.add_argument("--inception-weights", default=None, help="weights-inception-2015-12-05-6726825d.pth (default: torch.hub's checkpoint folder)")
    f.add_argument("--download", action="store_true", help="download the Inception weights into torch.hub's folder when missing")
    f.add_argument("--batch-size", type=positive_int, default=32, help="images per Inception forward (default 32)")
    add_device_arg(f)


# --------------------------------------------------------------------------- helpers


def _clip(args, device):
    from targetclip_core.encoders.clip import load_clip

    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    return load_clip(args.clip, pretrained, device=device)


def _optional_models(args, device):
    arcface = blip = None
    if args.arcface:
        from targetclip_core.encoders.arcface import load_arcface

        arcface = load_arcface(args.arcface, device=device)
    if args.blip:
        from targetclip_core.metrics.scores import load_blip

        blip = load_blip(args.blip, device=device)
    return arcface, blip


def _read_mask(path):
    import numpy as np
    import torch

    from targetclip_core.io.images import open_rgb

    arr = np.asarray(open_rgb(path).convert("L"), dtype=np.float32) / 255.0  # the one image reader: errors name the file
    return torch.from_numpy(arr)


def _same_size(images, what):
    import torch

    sizes = {tuple(i.shape[-2:]) for i in images}
    if len(sizes) != 1:
        raise TargetCLIPError(f"the {what} have different sizes {sorted(sizes)}: score images of one size together")
    return torch.cat(images)


# --------------------------------------------------------------------------- commands


def cmd_score(args) -> int:
    from targetclip_core.devices import default_device
    from targetclip_core.io.images import load_image
    from targetclip_core.metrics.scores import score_edits

    device = default_device(args.device)
    edits = _same_size([load_image(p) for p in args.edits], "edits")
    sources = None
    if args.sources:
        if len(args.sources) != len(args.edits):
            raise TargetCLIPError(f"{len(args.sources)} sources for {len(args.edits)} edits: pass one source per edit, in order")
        sources = _same_size([load_image(p) for p in args.sources], "sources")
    C = _clip(args, device)
    arcface, blip = _optional_models(args, device)
    scores = score_edits(C, edits, load_image(args.target), sources, arcface=arcface, blip=blip,
                         face_mask=_read_mask(args.mask) if args.mask else None, official_id_input=args.official_id_input)
    per_edit = [k for k in scores.PER_EDIT if getattr(scores, k) is not None]
    width = max(len(Path(p).name) for p in args.edits)
    print(f"{'edit':<{width}}  " + "  ".join(f"{k:>10}" for k in per_edit))
    for n, path in enumerate(args.edits):
        print(f"{Path(path).name:<{width}}  " + "  ".join(f"{float(getattr(scores, k)[n]):>10.4f}" for k in per_edit))
    print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.means().items()))
    if scores.consistency is None:
        print("consistency: n/a (pass --sources, at least two edits)")
    return 0


def _targets(args):
    """Target images (aligned like FFHQ when asked) and their names."""
    from targetclip_core.io.images import load_image

    images = [load_image(p) for p in args.targets]
    if args.align:
        from targetclip_core.faces.alignment import align_face

        images = [align_face(img, detector=args.detector, output_size=1024, name=str(p)).image for img, p in zip(images, args.targets)]
    return images, [Path(p).stem for p in args.targets]


def cmd_eval(args) -> int:
    from tqdm import tqdm

    from targetclip_core.generators.load import load_generator
    from targetclip_core.metrics.evaluation import evaluate

    check_output_path(args.out, "output folder", folder=True)
    G = load_generator(args.generator, device=args.device)
    check_out_resolution(G, args.out_resolution)
    C = _clip(args, G.device)
    arcface, blip = _optional_models(args, G.device)
    images, names = _targets(args)
    bar = tqdm(desc="eval", unit="edit")

    def progress(done, total, name):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(name)
        bar.refresh()

    try:
        result = evaluate(
            G, C, args.essences, images, args.sources if args.sources else args.seeds, arcface=arcface, blip=blip,
            strength=args.strength, layers=parse_layers(args.layers), truncation=args.truncation, target_names=names,
            out_dir=args.out, resume=args.resume, progress=progress, batch_size=args.batch_size,
            out_resolution=args.out_resolution, official_id_input=args.official_id_input, save_edits=args.save_edits,
            sheet_columns=args.sheet_columns, cell_size=args.cell_size, method=args.method)
    finally:
        bar.close()
    if result.skipped:
        print(f"resumed: {len(result.skipped)} target(s) already in results.csv ({', '.join(result.skipped)})")
    print(result.table(args.method).split("\n\n")[0])
    if arcface is None:
        print("(no --arcface: the ID scores were not measured)")
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0


def cmd_interpret(args) -> int:
    from targetclip_core.generators.load import load_generator
    from targetclip_core.methods.targetclip.essence import load_essence
    from targetclip_core.metrics.evaluation import resolve_sources
    from targetclip_core.metrics.interpret import interpret_essence, load_vocabulary

    G = load_generator(args.generator, device=args.device)
    essence = load_essence(args.essence, G)
    C = _clip(args, G.device)
    wp, _ = resolve_sources(G, args.sources if args.sources else args.seeds, args.truncation)
    phrases = load_vocabulary(args.vocabulary, args.phrase, include_default=not args.no_default_vocabulary)
    ranked = interpret_essence(G, C, essence, wp, vocabulary=phrases, top_k=args.top_k, strength=args.strength,
                               template=args.template, neutral=args.neutral)
    print(f"{essence.name or Path(args.essence).stem}: top {len(ranked)} of {len(phrases)} phrases ({len(wp)} sources)")
    for rank, (phrase, score) in enumerate(ranked, 1):
        print(f"{rank:>3}. {score:+.4f}  {phrase}")
    return 0


def cmd_fid(args) -> int:
    from targetclip_core.metrics.fid import fid

    value = fid(args.edits, args.reference, inception_weights=args.inception_weights, download=args.download,
                batch_size=args.batch_size, device=args.device)
    print(f"FID {value:.4f}")
    return 0


COMMANDS = {"score": cmd_score, "eval": cmd_eval, "interpret": cmd_interpret, "fid": cmd_fid}
