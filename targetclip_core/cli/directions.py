"""`targetclip directions ganspace | sefa | text`: edit directions without a target photo, as essence files.

ganspace and sefa write one essence per component (`<method>_<k>.safetensors`) and a preview sheet (one
row per component, the strengths as columns); text measures (or resumes) the StyleSpace channel statistics
once per generator / CLIP pair, then writes the text's essence and a sheet (source | exact StyleSpace
edit | its W+ essence).  Every file is an ordinary essence: `targetclip apply`, Mix Essences and the
nodes take it.  Wired into the main CLI by `add_parsers(subparsers)` and `COMMANDS`.
"""

from __future__ import annotations

from pathlib import Path

from targetclip_core.cli.args import (
    add_clip_args,
    add_device_arg,
    finite_float,
    layers_arg,
    parse_layers,
    positive_float,
    positive_int,
    seed_arg,
    seeds_arg,
)
from targetclip_core.io.files import check_output_path

PREVIEW_STRENGTHS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # in units of each direction's own scale (its std)


def add_parsers(subparsers) -> None:
    """Add the directions command (with its methods ganspace, sefa, text) to the main parser's subparsers."""
    d = subparsers.add_parser("directions", help="edit directions without a target photo: GANSpace, SeFa, StyleCLIP text",
                              description="Directions found from the generator (and CLIP) alone, written as essences.")
    methods = d.add_subparsers(dest="method", required=True)

    def common(p, out_help: str) -> None:
        p.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
        p.add_argument("--out", "-o", required=True, help=out_help)
        p.add_argument("--layers", type=layers_arg, default=None,
                       help="W+ entries the directions act on: all (default), coarse, middle, fine or indices like 0-5")
        p.add_argument("--preview-seeds", type=seeds_arg, default=[0], help="seeds of the preview sheet (default 0)")
        p.add_argument("--truncation", type=finite_float, default=0.7, help="truncation of the preview seeds (default 0.7)")
        p.add_argument("--seed", type=seed_arg, default=0, help="seed of the W samples (default 0)")
        add_device_arg(p)

    g = methods.add_parser("ganspace", help="principal components of sampled W (Härkönen et al. 2020)")
    common(g, "output folder (ganspace_<k>.safetensors per component, ganspace.png)")
    g.add_argument("--k", type=positive_int, default=10, help="number of components (default 10)")
    g.add_argument("--samples", type=positive_int, default=None, help="W samples of the PCA (default: the engine's, 100000)")

    s = methods.add_parser("sefa", help="closed-form factorisation of the modulation weights (Shen & Zhou 2021)")
    common(s, "output folder (sefa_<k>.safetensors per component, sefa.png)")
    s.add_argument("--k", type=positive_int, default=5, help="number of directions (default 5)")
    s.add_argument("--include-torgb", action="store_true", help="also factorise the toRGB layers' modulation")

    t = methods.add_parser("text", help="StyleCLIP global directions: a text prompt -> a StyleSpace edit and its essence")
    common(t, "essence .safetensors (and a .png sheet beside it)")
    add_clip_args(t, paper_default=True)
    t.add_argument("--target", "-t", required=True, help='the text to move towards, e.g. "a smiling face"')
    t.add_argument("--neutral", default=None, help='the neutral text (default: the engine\'s, "face")')
    t.add_argument("--statistics", "-s", required=True,
                   help="channel statistics .safetensors of this generator and CLIP: computed (resumably) when absent")
    t.add_argument("--alpha", type=finite_float, default=None, help="edit strength (default 4.1, StyleCLIP's)")
    t.add_argument("--beta", type=positive_float, default=None, help="disentanglement threshold (default 0.15)")
    t.add_argument("--n-images", type=positive_int, default=None, help="images per channel for the statistics (default 100)")


def cmd_directions(args) -> int:
    return {"ganspace": _latent_directions, "sefa": _latent_directions, "text": _text_direction}[args.method](args)


def _latent_directions(args) -> int:
    from targetclip_core.generators.load import load_generator
    from targetclip_core.methods.directions import ganspace_directions, save_direction, sefa_directions

    out = check_output_path(args.out, f"{args.method} folder", folder=True)
    G = load_generator(args.generator, device=args.device)
    layers = parse_layers(args.layers)
    if args.method == "ganspace":
        extra = {} if args.samples is None else {"n_samples": args.samples}
        directions = ganspace_directions(G, k=args.k, seed=args.seed, layers=layers, **extra)
    else:
        directions = sefa_directions(G, k=args.k, layers=layers, seed=args.seed, include_torgb=args.include_torgb)
    for d in directions:
        d.essence.name = f"{args.method}_{d.info['component']:02d}"
        save_direction(out / f"{d.essence.name}.safetensors", d)
    sheet = out / f"{args.method}.png"
    _save_sheet(G, [d.essence for d in directions], args, sheet)
    print(f"wrote {len(directions)} {args.method} directions and {sheet} to {out}")
    return 0


def _text_direction(args) -> int:
    from tqdm import tqdm

    from targetclip_core.encoders.clip import load_clip
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import save_png
    from targetclip_core.methods.directions import compute_global_statistics, save_direction
    from targetclip_core.methods.directions.pipelines import text_edit, text_edit_sheet

    out = check_output_path(args.out, "essence", suffix=".safetensors")
    stats_path = check_output_path(args.statistics, "channel statistics", suffix=".safetensors")
    G = load_generator(args.generator, device=args.device)
    C = load_clip(args.clip, None if args.pretrained.lower() == "none" else args.pretrained, device=G.device)
    bar = tqdm(desc="channel statistics", unit="channel")

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    try:
        stats = compute_global_statistics(G, C, stats_path, on_progress=progress,
                                          **({} if args.n_images is None else {"n_images": args.n_images}))
    finally:
        bar.close()
    options = {k: v for k, v in (("neutral", args.neutral), ("alpha", args.alpha), ("beta", args.beta)) if v is not None}
    edit = text_edit(G, C, stats, args.target, **options)
    edit.essence.essence.name = Path(out).stem
    save_direction(out, edit.essence)
    sheet = out.with_suffix(".png")
    save_png(text_edit_sheet(G, _preview_latents(G, args), edit), sheet)
    print(f"wrote {out} and {sheet}: {edit.describe(G.n_latent)}")
    return 0


def _preview_latents(G, args):
    from targetclip_core.generators.latents import wplus_from_seeds

    return wplus_from_seeds(G, args.preview_seeds, truncation=args.truncation)


def _save_sheet(G, essences, args, path: Path) -> None:
    """One row per essence and preview seed, one column per strength (in the essence's own units)."""
    import torch

    from targetclip_core.io.images import save_png
    from targetclip_core.methods.directions.pipelines import sweep_sheet

    wp = _preview_latents(G, args)
    with torch.no_grad():
        save_png(torch.cat([sweep_sheet(G, wp, e, PREVIEW_STRENGTHS) for e in essences], dim=2), path)


COMMANDS = {"directions": cmd_directions}
