"""`targetclip invert | encode | edit`: real photos, aligned like FFHQ, through the e4e / essence encoders."""

from __future__ import annotations

from pathlib import Path

from targetclip_core.cli.args import (
    add_alignment_args,
    add_device_arg,
    add_precision_arg,
    finite_float,
    float_in,
    layers_arg,
    parse_layers,
)
from targetclip_core.cli.reconstruction import (
    add_reconstruction_args,
    load_scorers,
    run_reconstruction,
    wants_reconstruction,
    write_reconstruction,
)
from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import check_output_path, safe_file_name


def add_parsers(subparsers) -> None:
    """Add the invert, encode and edit commands to the main parser's subparsers."""
    from targetclip_core.faces.alignment import DEFAULT_FEATHER

    i = subparsers.add_parser("invert", help="photo(s) -> W+ with e4e/pSp (aligned like FFHQ first); saves the crop and reconstruction")
    i.add_argument("photo", nargs="+", help="photo file(s) of faces")
    i.add_argument("--encoder", default="e4e-ffhq-encode", help="e4e/pSp checkpoint or manifest name; 'none': start from "
                   "the generator's average latent, as NVlabs' projector does (needs --generator and --refine)")
    i.add_argument("--generator", "-g", default=None, help="generator for the reconstruction (default: the one inside the encoder checkpoint)")
    i.add_argument("--out", required=True, help="latent .safetensors (one photo) or a folder")
    add_reconstruction_args(i)
    add_alignment_args(i)
    add_device_arg(i)
    add_precision_arg(i)
    e = subparsers.add_parser("encode", help="target image(s) -> essence in one pass with a TargetCLIP essence encoder")
    e.add_argument("target", nargs="+", help="target image file(s)")
    e.add_argument("--encoder", required=True, help="essence-encoder checkpoint (e4e layout), e.g. best_model.pt from "
                   "train-encoder (an e4e/pSp inverter is refused: use it with invert)")
    e.add_argument("--out", required=True, help="essence .safetensors (one target) or a folder")
    e.add_argument("--align", action="store_true", help="align the target like FFHQ first (photos of faces)")
    add_alignment_args(e, with_toggle=False)
    add_device_arg(e)
    add_precision_arg(e)
    ed = subparsers.add_parser("edit", help="photo -> align, invert, apply an essence, paste back into the photo")
    ed.add_argument("photo", help="photo file of a face")
    ed.add_argument("--essence", required=True, help="essence .safetensors or official .npy")
    ed.add_argument("--strength", type=finite_float, nargs="+", default=None, help="one or more strengths (default: the essence's)")
    ed.add_argument("--layers", type=layers_arg, default="all", help="all | coarse | middle | fine | comma-separated W+ indices")
    ed.add_argument("--encoder", default="e4e-ffhq-encode", help="e4e/pSp checkpoint or manifest name (default e4e-ffhq-encode)")
    ed.add_argument("--generator", "-g", default=None, help="default: the generator inside the encoder checkpoint")
    ed.add_argument("--out", required=True, help="output folder")
    ed.add_argument("--feather", type=float_in(0, 0.5), default=None, help=f"mask feathering, fraction of the crop size (default {DEFAULT_FEATHER:g})")
    add_reconstruction_args(ed)
    add_alignment_args(ed, with_toggle=False)
    add_device_arg(ed)
    add_precision_arg(ed)


def _read_landmarks(path):
    from targetclip_core.faces.landmarks import read_landmarks_file

    return None if path is None else read_landmarks_file(path)


def _aligned(photo_path, args, size=None):
    """(original image, AlignedFace or None, image to encode) for one photo."""
    from targetclip_core.io.images import load_image

    original = load_image(photo_path)
    if getattr(args, "no_align", False):
        return original, None, original
    from targetclip_core.faces.alignment import align_face

    face = align_face(original, landmarks=_read_landmarks(args.landmarks), detector=args.detector,
                      output_size=size or 1024, name=str(photo_path))
    return original, face, face.image


def _outputs(out, inputs, suffix, what):
    """The file each input writes, checked before any work: one input and --out with a suffix writes --out itself
    (which must then end in `suffix`); otherwise one <input stem><suffix> each in the folder --out."""
    out = Path(out)
    if len(inputs) == 1 and out.suffix:
        return [check_output_path(out, what, suffix=suffix)]
    if out.suffix.lower() == suffix:
        raise TargetCLIPError(f"{out}: {len(inputs)} inputs write one {what} each into a folder: "
                              "pass a folder as --out")
    stems = [Path(i).stem for i in inputs]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise TargetCLIPError(f"inputs {', '.join(twice)} share a name: their outputs would overwrite each other "
                              f"in {out}")
    check_output_path(out, f"{what} folder", folder=True)
    return [out / f"{stem}{suffix}" for stem in stems]


def cmd_invert(args) -> int:
    import torch
    from tqdm import tqdm

    from targetclip_core.encoders.inversion import load_inverter
    from targetclip_core.generators.latents import save_latents
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import save_png

    paths = _outputs(args.out, args.photo, ".safetensors", "latent")
    if args.encoder == "none":  # the projector's start: the average latent, then --refine does the work
        if not args.generator or not args.refine:
            raise TargetCLIPError("--encoder none starts from the average latent: it needs --generator and --refine STEPS")
        inverter, G = None, load_generator(args.generator, device=args.device)
    else:
        inverter = load_inverter(args.encoder, device=args.device)
        G = load_generator(args.generator, device=inverter.device) if args.generator else inverter.generator
    lpips, arcface = load_scorers(args, G.device) if wants_reconstruction(args) else (None, None)
    for photo, path in tqdm(list(zip(args.photo, paths)), desc="invert", unit="photo"):
        _, face, image = _aligned(photo, args, size=G.resolution)
        if inverter is None:
            with torch.no_grad():
                wp = G.to_wplus(G.truncation_latent()).expand(image.shape[0], -1, -1).clone()
        else:
            wp = inverter.invert(image, precision=args.precision)
        G.check_wplus(wp)
        extra = ["_reconstruction.png"]
        if wants_reconstruction(args):
            result = run_reconstruction(args, G, image, wp, lpips, arcface, start="average" if inverter is None else "e4e")
            wp = result.final.wplus
            save_png(result.final.images, path.with_name(path.stem + "_reconstruction.png"))
            extra += [p.name[len(path.stem):] for p in write_reconstruction(result, path, args.pti_save)]
        else:
            with torch.no_grad():
                save_png(G.synthesis(wp), path.with_name(path.stem + "_reconstruction.png"))
        save_latents(path, wp, G.identity)
        if face is not None:
            save_png(face.image, path.with_name(path.stem + "_aligned.png"))
            extra.insert(0, "_aligned.png")
        print(f"wrote {path} (+ {', '.join(extra)})")
    return 0


def cmd_encode(args) -> int:
    from tqdm import tqdm

    from targetclip_core.methods.targetclip.essence import save_essence
    from targetclip_core.methods.targetclip.essence_encoder import load_essence_encoder

    paths = _outputs(args.out, args.target, ".safetensors", "essence")
    encoder = load_essence_encoder(args.encoder, device=args.device)
    args.no_align = not args.align
    bar = tqdm(list(zip(args.target, paths)), desc="encode", unit="target")
    for target, path in bar:
        _, _, image = _aligned(target, args, size=256)
        essence = encoder.encode(image, name=Path(target).stem, precision=args.precision)
        save_essence(path, essence)
        bar.write(f"wrote {path} (|b| = {float(essence.vector.norm()):.3f})")
    return 0


def cmd_edit(args) -> int:
    from tqdm import tqdm

    from targetclip_core.encoders.inversion import load_inverter
    from targetclip_core.generators.load import load_generator
    from targetclip_core.methods.targetclip.essence import load_essence

    out = check_output_path(args.out, "output folder", folder=True)
    strengths = args.strength or [None]
    bar = tqdm(total=4 + len(strengths), desc="edit", unit="stage")

    def stage(name: str) -> None:
        bar.set_postfix_str(name)

    try:
        stage("load encoder")
        inverter = load_inverter(args.encoder, device=args.device)
        G = load_generator(args.generator, device=inverter.device) if args.generator else inverter.generator
        essence = load_essence(args.essence, G).to(G.device)
        bar.update(1)
        stage("align")
        original, face, image = _aligned(args.photo, args, size=G.resolution)
        bar.update(1)
        stage("invert")
        wp = inverter.invert(image, precision=args.precision)
        bar.update(1)
        if wants_reconstruction(args):
            stage("refine / PTI")
            lpips, arcface = load_scorers(args, G.device)
            result = run_reconstruction(args, G, image, wp, lpips, arcface)
            write_reconstruction(result, out / Path(args.photo).name, args.pti_save)
            wp, G = result.final.wplus, result.final.generator
        stage("reconstruct")
        _edit_outputs(args, G, wp, essence, original, face, out, [s if s is not None else essence.strength for s in strengths],
                      bar, stage)
    finally:
        bar.close()
    print(f"wrote the edits of {args.photo} to {out}")
    return 0


def _edit_outputs(args, G, wp, essence, original, face, out, strengths, bar, stage) -> None:
    """The reconstruction, then each strength's edit pasted back (one progress stage each), then the crop."""
    import torch

    from targetclip_core.faces.alignment import DEFAULT_FEATHER, paste_back
    from targetclip_core.io.images import save_png
    from targetclip_core.methods.targetclip.essence import apply_essence

    stem = Path(args.photo).stem
    with torch.no_grad():
        save_png(G.synthesis(wp), out / f"{stem}_reconstruction.png")
        bar.update(1)
        for strength in strengths:
            stage(f"edit x{strength:g}")
            edited = apply_essence(G, wp, essence, strength=strength, layers=parse_layers(args.layers))
            pasted = paste_back(original, edited, face, feather=DEFAULT_FEATHER if args.feather is None else args.feather)
            edit_name = f"{stem}_{safe_file_name(essence.name)}_x{strength:g}"  # the name comes from the file
            save_png(pasted.image, out / f"{edit_name}.png")
            save_png(edited, out / f"{edit_name}_aligned.png")
            bar.update(1)
    save_png(face.image, out / f"{stem}_aligned.png")


COMMANDS = {"invert": cmd_invert, "encode": cmd_encode, "edit": cmd_edit}
