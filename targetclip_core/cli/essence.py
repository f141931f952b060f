"""`targetclip optimize | apply`: find a target's essence by optimisation, and apply essences to latents."""

from __future__ import annotations

from pathlib import Path

from targetclip_core.cli.args import (
    add_clip_args,
    add_device_arg,
    add_precision_arg,
    check_out_resolution,
    finite_float,
    layers_arg,
    non_negative_float,
    parse_layers,
    positive_int,
    resolution_or_auto,
    seed_arg,
    seeds_arg,
)
from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import check_output_path, safe_file_name


def add_parsers(subparsers) -> None:
    """Add the optimize and apply commands to the main parser's subparsers."""
    o = subparsers.add_parser("optimize", help="find the essence of target image(s) by optimisation (TargetCLIP Sec. 4)")
    o.add_argument("--target", "-t", nargs="+", required=True, help="target image file(s); several are optimised in one batch")
    o.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    o.add_argument("--out", "-o", required=True, help="essence .safetensors (a folder when several targets)")
    add_clip_args(o)
    o.add_argument("--sources", default=None, help="W+ source latents to train on (default: --n-sources seeds)")
    o.add_argument("--n-sources", type=positive_int, default=4, help="sources sampled from the generator when --sources is not given (default 4)")
    o.add_argument("--truncation", type=finite_float, default=0.7, help="truncation of sampled sources and random init")
    o.add_argument("--steps", type=positive_int, default=1000, help="optimisation steps (default 1000)")
    o.add_argument("--lr", type=non_negative_float, default=0.2, help="Adam learning rate (default 0.2; 0 keeps the init)")
    o.add_argument("--lambda-consistency", type=non_negative_float, default=0.5, help="weight of the consistency loss (default 0.5)")
    o.add_argument("--lambda-l2", type=non_negative_float, default=0.003, help="weight of ||b|| (default 0.003)")
    o.add_argument("--init", default="random", help="random, zeros, a W+ latent file, or an essence file")
    o.add_argument("--learn-coefficients", action="store_true", help="learn a scale per source, as the official code")
    o.add_argument("--out-resolution", type=resolution_or_auto, default="auto", help="render resolution for the loss (default: auto = CLIP's size)")
    o.add_argument("--preprocess", choices=["default", "paper"], default="default", help="paper = the official CLIP input")
    o.add_argument("--early-stop", type=positive_int, default=None, metavar="PATIENCE", help="stop after this many steps without improvement")
    o.add_argument("--seed", type=seed_arg, default=0, help="seed of the sampled sources and the random init (default 0)")
    o.add_argument("--avoid", nargs="+", default=(), metavar="TEXT",
                   help='texts the edit must not move towards in CLIP space, e.g. "make-up" (a variant; off by default)')
    o.add_argument("--keep", nargs="+", default=(), metavar="TEXT",
                   help="texts the edit must not move away from in CLIP space (a variant; off by default)")
    o.add_argument("--lambda-text", type=non_negative_float, default=1.0, help="weight of the --avoid / --keep term (default 1)")
    o.add_argument("--grid", default=None, help="result grid PNG (default: beside --out; one target only)")
    add_device_arg(o)
    add_precision_arg(o, default="auto")  # the loop's renders: losses stay fp32 (tests/generators/test_precision.py)
    o.add_argument("--compile", action="store_true", help="run CLIP's image encoder through torch.compile (falls back "
                   "to uncompiled with a warning where it cannot; does not pay on a CPU)")

    a = subparsers.add_parser("apply", help="apply an essence to seeds or latents: G(w + strength * b)")
    a.add_argument("--essence", "-e", nargs="+", required=True, help="essence .safetensors or official .npy (several: one row each)")
    a.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    asrc = a.add_mutually_exclusive_group(required=True)
    asrc.add_argument("--seeds", type=seeds_arg, help="latents from seeds, e.g. 0-3,10")
    asrc.add_argument("--latent", help="W or W+ latents (.safetensors, .npy, .pt)")
    a.add_argument("--strength", type=finite_float, nargs="+", default=None, help="one or more strengths (default: the essence's recommended)")
    a.add_argument("--layers", type=layers_arg, default=None, help="coarse, middle, fine (comma-separated) or indices like 0-7")
    a.add_argument("--truncation", type=finite_float, default=0.7, help="truncation for --seeds (default 0.7)")
    a.add_argument("--out", "-o", default="edits", help="output folder")
    add_device_arg(a)
    add_precision_arg(a)


def cmd_optimize(args) -> int:
    import torch
    from tqdm import tqdm

    from targetclip_core.encoders.clip import load_clip
    from targetclip_core.generators.latents import load_latents
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import load_image, save_png
    from targetclip_core.methods.targetclip.essence import load_essence, save_essence
    from targetclip_core.methods.targetclip.optimize import optimize_essence

    targets = [Path(t) for t in args.target]
    paths, grid = _optimize_outputs(args, targets)
    G = load_generator(args.generator, device=args.device)
    check_out_resolution(G, args.out_resolution)
    C = load_clip(args.clip, None if args.pretrained.lower() == "none" else args.pretrained, device=G.device, preprocess=args.preprocess)
    images = [load_image(t) for t in targets]
    size = max(max(i.shape[-2:]) for i in images)
    batch = torch.cat([torch.nn.functional.interpolate(i, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
                       if i.shape[-2:] != (size, size) else i for i in images]).clamp(-1, 1)
    sources = load_latents(args.sources) if args.sources else None
    init = args.init
    if init not in ("random", "zeros"):
        init = load_essence(init, G) if init.endswith((".safetensors", ".npy")) and _is_essence(init) else load_latents(init)
    res = args.out_resolution

    bar = tqdm(total=args.steps, desc="optimize", unit="step")

    def progress(info):
        bar.update(1)
        # the losses are read every 10 steps: on a GPU each read waits for the step to finish
        if info.step % 10 == 0 or info.step + 1 == info.steps:
            bar.set_postfix({k: f"{float(v.mean()):.4f}" for k, v in info.losses.items()})

    try:
        result = optimize_essence(
            G, C, batch, steps=args.steps, lr=args.lr, n_sources=args.n_sources, sources=sources, truncation=args.truncation,
            seed=args.seed, lambda_consistency=args.lambda_consistency, lambda_l2=args.lambda_l2, init=init,
            learn_coefficients=args.learn_coefficients, out_resolution=res, callback=progress,
            early_stop_patience=args.early_stop, name=targets[0].stem, avoid=args.avoid, keep=args.keep,
            lambda_text=args.lambda_text, precision=args.precision, compile=args.compile,
        )
    finally:
        bar.close()
    essences = result if isinstance(result, list) else [result]
    from targetclip_core.methods.targetclip.essence import essence_sheet
    from targetclip_core.methods.targetclip.optimize import sample_sources

    show = sources.to(G.device) if sources is not None else sample_sources(G, args.n_sources, args.truncation, args.seed)
    show = G.to_wplus(show)
    with torch.no_grad():
        source_images = G.synthesis(show)  # shared by every target's sheet
    for essence, target_image, target_path, path in zip(essences, batch, targets, paths):
        essence.name = target_path.stem
        save_essence(path, essence)
        grid_path = grid or path.with_suffix(".png")
        save_png(essence_sheet(G, essence, show, target_image[None], source_images), grid_path)
        final = {k: v[-1] for k, v in essence.losses.items()}
        print(f"wrote {path} and {grid_path} (steps {essence.steps}; last losses " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()) + ")")
    return 0


def _optimize_outputs(args, targets) -> tuple[list[Path], Path | None]:
    """The essence file of each target and the --grid file (None: beside the essence), checked before any work:
    one target writes --out itself (a .safetensors), several write <target stem>.safetensors into the folder --out."""
    if len(targets) == 1:
        grid = check_output_path(args.grid, "result grid", suffix=".png") if args.grid else None
        return [check_output_path(args.out, "essence", suffix=".safetensors")], grid
    if args.grid:
        raise TargetCLIPError(f"--grid names one grid, but {len(targets)} targets write one each beside their essence: "
                              "drop --grid")
    if Path(args.out).suffix.lower() == ".safetensors":
        raise TargetCLIPError(f"{args.out}: {len(targets)} targets write one essence each into a folder: "
                              "pass a folder as --out")
    stems = [t.stem for t in targets]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise TargetCLIPError(f"targets {', '.join(twice)} share a name: their essences would overwrite each other in "
                              f"{args.out}; rename them or optimise them apart")
    out = check_output_path(args.out, "essence folder", folder=True)
    return [out / f"{stem}.safetensors" for stem in stems], None


def _is_essence(path) -> bool:
    if path.endswith(".npy"):
        return True  # official directions
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format") == "targetclip.essence"
    except Exception:
        return False


def cmd_apply(args) -> int:
    import torch
    from tqdm import tqdm

    from targetclip_core.devices import autocast
    from targetclip_core.generators.latents import load_latents, wplus_from_seeds
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import save_png
    from targetclip_core.methods.targetclip.essence import apply_essence, load_essence

    out = check_output_path(args.out, "output folder", folder=True)
    G = load_generator(args.generator, device=args.device)
    essences = [load_essence(e, G) for e in args.essence]
    with torch.no_grad():
        if args.seeds is not None:
            wp = wplus_from_seeds(G, args.seeds, args.truncation)
            names = [f"seed{s:04d}" for s in args.seeds]
        else:
            wp = G.to_wplus(load_latents(args.latent).to(G.device))
            names = [f"{Path(args.latent).stem}_{i:04d}" for i in range(len(wp))]
        layers = parse_layers(args.layers)
        jobs = [(e, s) for e in essences for s in (args.strength or [e.strength])]
        for essence, strength in tqdm(jobs, desc="apply", unit="edit"):
            with autocast(args.precision, G.device):
                imgs = apply_essence(G, wp, essence.to(G.device), strength=strength, layers=layers).float()
            for name, img in zip(names, imgs):
                save_png(img, out / f"{name}_{safe_file_name(essence.name)}_x{strength:g}.png")
    print(f"wrote {len(jobs) * len(wp)} images to {out}")
    return 0


COMMANDS = {"optimize": cmd_optimize, "apply": cmd_apply}
