"""The `targetclip` command line (also `python -m targetclip_core`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from targetclip_core.errors import TargetCLIPError


def parse_seeds(text: str) -> list[int]:
    """'0,3,10-12' -> [0, 3, 10, 11, 12]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds or min(seeds) < 0:
        raise ValueError("seeds must be non-negative integers")
    return seeds


def _seeds_arg(text):
    try:
        return parse_seeds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read seeds {text!r}: use e.g. 0,3,10-12") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="targetclip", description="TargetCLIP essence transfer and StyleGAN2 tools.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert any supported generator checkpoint to our .safetensors")
    c.add_argument("input", help="rosinality .pt/.pth, NVlabs .pkl, e4e .pt, .safetensors, or a manifest name")
    c.add_argument("output", help="output path ending in .safetensors")

    d = sub.add_parser("download", help="download a known checkpoint (see weights/manifest.json)")
    d.add_argument("name", nargs="?", help="manifest name, e.g. stylegan2-ada-ffhq")
    d.add_argument("--dest", help="folder to put it in (default: the weights store)")
    d.add_argument("--list", action="store_true", help="list the known checkpoints")

    r = sub.add_parser("render", help="render seeds or a latent file to PNGs")
    r.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--seeds", type=_seeds_arg, help="e.g. 0-3,10 (z drawn like NVlabs' generate.py)")
    src.add_argument("--latent", help="W or W+ latents (.safetensors, .npy, .pt)")
    r.add_argument("--out", "-o", default="renders", help="output folder (default: renders)")
    r.add_argument("--truncation", type=float, default=1.0, help="truncation psi for seeds (default 1.0)")
    r.add_argument("--class-idx", type=int, default=None, help="class index for conditional generators")
    r.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    r.add_argument("--out-resolution", type=int, default=None, help="stop synthesis at this resolution")
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    v = r.add_argument_group("3D-aware generators (EG3D)")
    v.add_argument("--views", default=None, metavar="K | YAW[:PITCH],...",
                   help="render each latent from several cameras: a frame count K (an orbit) or yaw[:pitch] "
                        "degrees, e.g. -30,0,30:10 (default for EG3D: the frontal view)")
    v.add_argument("--yaw-range", type=float, default=30.0, help="orbit: yaw amplitude in degrees (default 30)")
    v.add_argument("--pitch-range", type=float, default=10.0, help="orbit: pitch amplitude in degrees (default 10)")
    v.add_argument("--fov", type=float, default=None, help="field of view in degrees (default: the generator's, 18.837)")
    v.add_argument("--neural-resolution", type=int, default=None, help="rays per side (default: the checkpoint's)")
    v.add_argument("--depth", action="store_true", help="also write depth maps (near = bright)")
    v.add_argument("--stochastic", action="store_true", help="jittered ray samples as in training (default: deterministic)")

    o = sub.add_parser("optimize", help="find the essence of target image(s) by optimisation (TargetCLIP Sec. 4)")
    o.add_argument("--target", "-t", nargs="+", required=True, help="target image file(s); several are optimised in one batch")
    o.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    o.add_argument("--out", "-o", required=True, help="essence .safetensors (a folder when several targets)")
    o.add_argument("--clip", default="ViT-B-32", help="open_clip architecture, local-dir:..., hf-hub:... (default ViT-B-32)")
    o.add_argument("--pretrained", default="openai", help="open_clip tag or checkpoint file (default openai); 'none' for random")
    o.add_argument("--sources", default=None, help="W+ source latents to train on (default: --n-sources seeds)")
    o.add_argument("--n-sources", type=int, default=4)
    o.add_argument("--truncation", type=float, default=0.7, help="truncation of sampled sources and random init")
    o.add_argument("--steps", type=int, default=1000)
    o.add_argument("--lr", type=float, default=0.2)
    o.add_argument("--lambda-consistency", type=float, default=0.5)
    o.add_argument("--lambda-l2", type=float, default=0.003)
    o.add_argument("--init", default="random", help="random, zeros, a W+ latent file, or an essence file")
    o.add_argument("--learn-coefficients", action="store_true", help="learn a scale per source, as the official code")
    o.add_argument("--out-resolution", default="auto", help="render resolution for the loss (default: auto = CLIP's size)")
    o.add_argument("--preprocess", choices=["default", "paper"], default="default", help="paper = the official CLIP input")
    o.add_argument("--early-stop", type=int, default=None, metavar="PATIENCE", help="stop after this many steps without improvement")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--grid", default=None, help="result grid PNG (default: beside --out)")
    o.add_argument("--device", default=None)

    a = sub.add_parser("apply", help="apply an essence to seeds or latents: G(w + strength * b)")
    a.add_argument("--essence", "-e", nargs="+", required=True, help="essence .safetensors or official .npy (several: one row each)")
    a.add_argument("--generator", "-g", required=True)
    asrc = a.add_mutually_exclusive_group(required=True)
    asrc.add_argument("--seeds", type=_seeds_arg)
    asrc.add_argument("--latent", help="W or W+ latents (.safetensors, .npy, .pt)")
    a.add_argument("--strength", type=float, nargs="+", default=None, help="one or more strengths (default: the essence's recommended)")
    a.add_argument("--layers", default=None, help="coarse, middle, fine (comma-separated) or indices like 0-7")
    a.add_argument("--truncation", type=float, default=0.7)
    a.add_argument("--out", "-o", default="edits", help="output folder")
    a.add_argument("--device", default=None)

    i = sub.add_parser("invert", help="photo(s) -> W+ with e4e/pSp (aligned like FFHQ first); saves the crop and reconstruction")
    i.add_argument("photo", nargs="+")
    i.add_argument("--encoder", default="e4e-ffhq-encode", help="e4e/pSp checkpoint or manifest name")
    i.add_argument("--generator", default=None, help="generator for the reconstruction (default: the one inside the encoder checkpoint)")
    i.add_argument("--out", required=True, help="latent .safetensors (one photo) or a folder")
    _add_alignment_args(i)
    i.add_argument("--device", default=None)
    e = sub.add_parser("encode", help="target image(s) -> essence in one pass with a TargetCLIP essence encoder")
    e.add_argument("target", nargs="+")
    e.add_argument("--encoder", required=True, help="essence-encoder checkpoint (e4e layout), e.g. from train-encoder")
    e.add_argument("--out", required=True, help="essence .safetensors (one target) or a folder")
    e.add_argument("--align", action="store_true", help="align the target like FFHQ first (photos of faces)")
    _add_alignment_args(e, with_toggle=False)
    e.add_argument("--device", default=None)
    ed = sub.add_parser("edit", help="photo -> align, invert, apply an essence, paste back into the photo")
    ed.add_argument("photo")
    ed.add_argument("--essence", required=True, help="essence .safetensors or official .npy")
    ed.add_argument("--strength", type=float, nargs="+", default=None, help="one or more strengths (default: the essence's)")
    ed.add_argument("--layers", default="all", help="all | coarse | middle | fine | comma-separated W+ indices")
    ed.add_argument("--encoder", default="e4e-ffhq-encode")
    ed.add_argument("--generator", default=None, help="default: the generator inside the encoder checkpoint")
    ed.add_argument("--out", required=True, help="output folder")
    ed.add_argument("--feather", type=float, default=None, help="mask feathering, fraction of the crop size (default: alignment.DEFAULT_FEATHER)")
    _add_alignment_args(ed, with_toggle=False)
    ed.add_argument("--device", default=None)
    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="what", required=True)
    bg = bsub.add_parser("generator", help="generator forward / forward+backward time, ours vs a rosinality-style baseline")
    bg.add_argument("--resolution", type=int, default=256)
    bg.add_argument("--batch", type=int, default=4)
    bg.add_argument("--device", default="cpu")
    bg.add_argument("--out-resolution", type=int, default=None, help="early-exit resolution to compare (default: resolution/4, at most 256)")
    bg.add_argument("--repeats", type=int, default=3)
    bg.add_argument("--checkpoint", default=None, help="time a real checkpoint instead of a random network")
    bg.add_argument("--no-baseline", action="store_true", help="skip the rosinality-style baseline")
    bg.add_argument("--no-fused", action="store_true", help="skip the fused (grouped conv) rows")
    bi = bsub.add_parser("invert", help="seconds per e4e inversion and per essence encoding, and the optimisation they replace")
    bi.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    bi.add_argument("--repeats", type=int, default=3)
    bi.add_argument("--device", default="cpu")
    bi.add_argument("--resolution", type=int, default=256, help="generator size for the optimisation comparison")
    bi.add_argument("--no-optimisation", action="store_true", help="skip the per-target optimisation comparison")
    be = bsub.add_parser("eg3d", help="seconds per EG3D frame (and its parts); orbit from cached tri-planes vs frame by frame")
    be.add_argument("--frames", type=int, default=8, help="orbit length (default 8)")
    be.add_argument("--neural-resolution", type=int, default=128)
    be.add_argument("--repeats", type=int, default=2)
    be.add_argument("--device", default="cpu")
    be.add_argument("--checkpoint", default=None, help="time a real EG3D checkpoint instead of the ffhq512-128 architecture")
    bo = bsub.add_parser("optimize", help="seconds per essence-optimisation step, ours vs the official loop")
    bo.add_argument("--resolution", type=int, default=256)
    bo.add_argument("--n-sources", type=int, default=4)
    bo.add_argument("--steps", type=int, default=3, help="timed steps per contender (min is reported)")
    bo.add_argument("--device", default="cpu")
    bo.add_argument("--clip", default="ViT-B-32", help="CLIP architecture (random weights unless --pretrained)")
    bo.add_argument("--pretrained", default=None)
    from targetclip_core.cli import metrics as cli_metrics
    from targetclip_core.cli import sat3d as cli_sat3d
    from targetclip_core.cli import train as cli_train

    cli_train.add_parser(sub)
    cli_metrics.add_parsers(sub)
    cli_sat3d.add_parsers(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"convert": cmd_convert, "download": cmd_download, "render": cmd_render, "bench": cmd_bench,
                    "optimize": cmd_optimize, "apply": cmd_apply, "invert": cmd_invert, "encode": cmd_encode,
                    "edit": cmd_edit}
        from targetclip_core.cli import metrics as cli_metrics
        from targetclip_core.cli import sat3d as cli_sat3d
        from targetclip_core.cli import train as cli_train

        commands["train-encoder"] = cli_train.run
        commands.update(dict.fromkeys(cli_metrics.COMMANDS, cli_metrics.run))
        commands.update(dict.fromkeys(("sat3d-train", "sat3d-transfer"), cli_sat3d.run))
        return commands[args.command](args)
    except TargetCLIPError as e:
        print(f"targetclip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("targetclip: interrupted", file=sys.stderr)
        return 130


def cmd_convert(args) -> int:
    from targetclip_core.generators.load import load_generator, save_generator

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise TargetCLIPError(f"{out}: the output must be a .safetensors file")
    G = load_generator(args.input, device="cpu")
    save_generator(G, out)
    print(f"wrote {out} ({G.describe()}, {G.n_latent} W+ entries, from {G.config.source_format})")
    return 0


def cmd_download(args) -> int:
    from targetclip_core.io import weights

    if args.list or not args.name:
        for name, e in weights.load_manifest().items():
            where = "direct" if e.urls else "manual"
            print(f"{name:<34} {e.kind:<15} {where:<7} {e.description}")
        return 0
    path = weights.download(args.name, dest_dir=args.dest)
    print(f"ok: {path}")
    return 0


def cmd_render(args) -> int:
    import torch
    from tqdm import tqdm

    from targetclip_core.generators.latents import load_latents, wplus_from_seeds
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import save_png

    G = load_generator(args.generator, device=args.device)
    if not G.is_3d and (args.views or args.depth):
        raise TargetCLIPError(f"--views/--depth need a 3D-aware generator (EG3D); this is a {G.describe()}")
    out = Path(args.out)
    if args.seeds is not None:
        names = [f"seed{s:04d}" for s in args.seeds]
        if G.c_dim and not G.is_3d and args.class_idx is None:  # EG3D's label is a camera, not a class
            raise TargetCLIPError(f"this generator is class-conditional ({G.c_dim} classes): pass --class-idx")
        wp = wplus_from_seeds(G, args.seeds, args.truncation, class_idx=args.class_idx)
    else:
        wp = G.to_wplus(load_latents(args.latent).to(G.device))
        names = [f"{Path(args.latent).stem}_{i:04d}" for i in range(len(wp))]
    if G.is_3d:
        _render_views(G, wp, names, out, args)
        return 0
    with torch.no_grad():
        for start in tqdm(range(0, len(wp), args.batch_size), desc="render", unit="batch"):
            imgs = G.synthesis(wp[start : start + args.batch_size], noise_mode=args.noise_mode, out_resolution=args.out_resolution)
            for name, img in zip(names[start : start + args.batch_size], imgs):
                save_png(img, out / f"{name}.png")
    print(f"wrote {len(wp)} images to {out}")
    return 0


def _render_views(G, wp, names, out, args) -> None:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from targetclip_core.generators.cameras import parse_views
    from targetclip_core.generators.eg3d import depth_to_image
    from targetclip_core.io.images import save_png

    try:
        yaws, pitches = parse_views(args.views or "0:0", args.yaw_range, args.pitch_range)
    except ValueError as e:
        raise TargetCLIPError(str(e)) from None
    cams = G.camera(yaws, pitches, fov_degrees=args.fov)
    single = len(yaws) == 1 and not args.views
    with torch.no_grad(), tqdm(total=len(wp) * len(yaws), desc="render", unit="view") as bar:
        for start in range(0, len(wp), args.batch_size):
            batch_names = names[start : start + args.batch_size]
            views = G.render_views(wp[start : start + args.batch_size], cams, args.neural_resolution,
                                   deterministic=not args.stochastic, noise_mode=args.noise_mode)
            for k, rendered in views:
                img = rendered["image"]
                if args.out_resolution and args.out_resolution < img.shape[-1]:
                    img = F.interpolate(img, size=(args.out_resolution,) * 2, mode="bilinear", antialias=True)
                suffix = "" if single else f"_view{k:02d}"
                for i, name in enumerate(batch_names):
                    save_png(img[i], out / f"{name}{suffix}.png")
                    if args.depth:
                        save_png(depth_to_image(rendered["image_depth"][i : i + 1]), out / f"{name}{suffix}_depth.png")
                bar.update(len(batch_names))
    print(f"wrote {len(wp)} x {len(yaws)} views to {out} (yaw {', '.join(f'{y:.1f}' for y in yaws)} degrees)")


def cmd_bench(args) -> int:
    from targetclip_core.bench.benchmarks import bench_generator, bench_inversion, bench_optimize

    if args.what == "eg3d":
        from targetclip_core.bench.benchmarks import bench_eg3d
        from targetclip_core.generators.load import load_generator

        G = load_generator(args.checkpoint, device=args.device) if args.checkpoint else None
        if G is not None and not G.is_3d:
            raise TargetCLIPError(f"{args.checkpoint}: not an EG3D generator")
        bench_eg3d(frames=args.frames, neural_resolution=args.neural_resolution, repeats=args.repeats,
                   device=args.device, G=G)
        return 0
    if args.what == "invert":
        bench_inversion(batches=tuple(args.batch), repeats=args.repeats, device=args.device,
                        resolution=args.resolution, with_optimisation=not args.no_optimisation)
        return 0
    if args.what == "optimize":
        bench_optimize(resolution=args.resolution, n_sources=args.n_sources, steps=args.steps, device=args.device,
                       clip_name=args.clip, clip_pretrained=args.pretrained)
        return 0
    G = None
    if args.checkpoint:
        from targetclip_core.generators.load import load_generator

        G = load_generator(args.checkpoint, device=args.device)
    bench_generator(
        resolution=args.resolution, batch=args.batch, device=args.device, out_resolution=args.out_resolution,
        repeats=args.repeats, with_baseline=not args.no_baseline, with_fused=not args.no_fused, G=G,
    )
    return 0


def _parse_layers(text):
    if text is None or any(c.isalpha() for c in text):
        return text
    return parse_seeds(text)  # same syntax: 0-3,8


def cmd_optimize(args) -> int:
    import torch
    from tqdm import tqdm

    from targetclip_core.encoders.clip import load_clip
    from targetclip_core.generators.latents import load_latents
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import load_image, save_png
    from targetclip_core.methods.targetclip.essence import load_essence, save_essence
    from targetclip_core.methods.targetclip.optimize import optimize_essence

    G = load_generator(args.generator, device=args.device)
    C = load_clip(args.clip, None if args.pretrained.lower() == "none" else args.pretrained, device=G.device, preprocess=args.preprocess)
    targets = [Path(t) for t in args.target]
    images = [load_image(t) for t in targets]
    size = max(max(i.shape[-2:]) for i in images)
    batch = torch.cat([torch.nn.functional.interpolate(i, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
                       if i.shape[-2:] != (size, size) else i for i in images]).clamp(-1, 1)
    sources = load_latents(args.sources) if args.sources else None
    init = args.init
    if init not in ("random", "zeros"):
        init = load_essence(init, G) if init.endswith((".safetensors", ".npy")) and _is_essence(init) else load_latents(init)
    res = args.out_resolution if args.out_resolution == "auto" else int(args.out_resolution)

    bar = tqdm(total=args.steps, desc="optimize", unit="step")

    def progress(info):
        bar.update(1)
        bar.set_postfix({k: f"{float(v.mean()):.4f}" for k, v in info.losses.items()})

    try:
        result = optimize_essence(
            G, C, batch, steps=args.steps, lr=args.lr, n_sources=args.n_sources, sources=sources, truncation=args.truncation,
            seed=args.seed, lambda_consistency=args.lambda_consistency, lambda_l2=args.lambda_l2, init=init,
            learn_coefficients=args.learn_coefficients, out_resolution=res, callback=progress,
            early_stop_patience=args.early_stop, name=targets[0].stem,
        )
    finally:
        bar.close()
    essences = result if isinstance(result, list) else [result]
    out = Path(args.out)
    if len(essences) == 1:
        paths = [out]
    else:
        paths = [out / f"{t.stem}.safetensors" for t in targets]
    from targetclip_core.methods.targetclip.essence import essence_sheet
    from targetclip_core.methods.targetclip.optimize import sample_sources

    show = sources.to(G.device) if sources is not None else sample_sources(G, args.n_sources, args.truncation, args.seed)
    show = G.to_wplus(show)
    with torch.no_grad():
        source_images = G.synthesis(show)  # shared by every target's sheet
    for essence, target_image, target_path, path in zip(essences, batch, targets, paths):
        essence.name = target_path.stem
        save_essence(path, essence)
        grid_path = Path(args.grid) if (args.grid and len(essences) == 1) else path.with_suffix(".png")
        save_png(essence_sheet(G, essence, show, target_image[None], source_images), grid_path)
        final = {k: v[-1] for k, v in essence.losses.items()}
        print(f"wrote {path} and {grid_path} (steps {essence.steps}; last losses " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()) + ")")
    return 0


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

    from targetclip_core.generators.latents import load_latents, wplus_from_seeds
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import save_png
    from targetclip_core.methods.targetclip.essence import apply_essence, load_essence

    G = load_generator(args.generator, device=args.device)
    essences = [load_essence(e, G) for e in args.essence]
    with torch.no_grad():
        if args.seeds is not None:
            wp = wplus_from_seeds(G, args.seeds, args.truncation)
            names = [f"seed{s:04d}" for s in args.seeds]
        else:
            wp = G.to_wplus(load_latents(args.latent).to(G.device))
            names = [f"{Path(args.latent).stem}_{i:04d}" for i in range(len(wp))]
        layers = _parse_layers(args.layers)
        out = Path(args.out)
        jobs = [(e, s) for e in essences for s in (args.strength or [e.strength])]
        for essence, strength in tqdm(jobs, desc="apply", unit="edit"):
            imgs = apply_essence(G, wp, essence.to(G.device), strength=strength, layers=layers)
            for name, img in zip(names, imgs):
                save_png(img, out / f"{name}_{essence.name}_x{strength:g}.png")
    print(f"wrote {len(jobs) * len(wp)} images to {out}")
    return 0


# --------------------------------------------------------------------------- photos: invert, encode, edit


def _add_alignment_args(p, with_toggle: bool = True) -> None:
    if with_toggle:
        p.add_argument("--no-align", action="store_true", help="the photo is already an FFHQ-aligned crop")
    p.add_argument("--detector", default="mtcnn", help="mtcnn (built in) or dlib:/path/to/shape_predictor_68_face_landmarks.dat")
    p.add_argument("--landmarks", default=None, help="landmarks by hand: .npy or .json array [5,2] or [68,2] (x, y pixels)")


def _read_landmarks(path):
    import json

    import numpy as np

    if path is None:
        return None
    p = Path(path)
    try:
        return np.load(p, allow_pickle=False) if p.suffix.lower() == ".npy" else np.asarray(json.loads(p.read_text()), dtype=np.float32)
    except (OSError, ValueError) as e:
        raise TargetCLIPError(f"{p}: cannot read landmarks ({e})") from None


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


def _outputs(out, inputs, suffix):
    out = Path(out)
    if len(inputs) == 1 and out.suffix:
        return [out]
    return [out / f"{Path(i).stem}{suffix}" for i in inputs]


def cmd_invert(args) -> int:
    import torch
    from tqdm import tqdm

    from targetclip_core.encoders.inversion import load_inverter
    from targetclip_core.generators.latents import save_latents
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import save_png

    inverter = load_inverter(args.encoder, device=args.device)
    G = load_generator(args.generator, device=inverter.device) if args.generator else inverter.generator
    for photo, path in tqdm(list(zip(args.photo, _outputs(args.out, args.photo, ".safetensors"))), desc="invert", unit="photo"):
        _, face, image = _aligned(photo, args, size=G.resolution)
        wp = inverter.invert(image)
        G.check_wplus(wp)
        save_latents(path, wp, G.identity)
        with torch.no_grad():
            save_png(G.synthesis(wp), path.with_name(path.stem + "_reconstruction.png"))
        if face is not None:
            save_png(face.image, path.with_name(path.stem + "_aligned.png"))
        print(f"wrote {path} (+ _aligned.png, _reconstruction.png)")
    return 0


def cmd_encode(args) -> int:
    from targetclip_core.methods.targetclip.essence import save_essence
    from targetclip_core.methods.targetclip.essence_encoder import load_essence_encoder

    encoder = load_essence_encoder(args.encoder, device=args.device)
    for target, path in zip(args.target, _outputs(args.out, args.target, ".safetensors")):
        args.no_align = not args.align
        _, _, image = _aligned(target, args, size=256)
        essence = encoder.encode(image, name=Path(target).stem)
        save_essence(path, essence)
        print(f"wrote {path} (|b| = {float(essence.vector.norm()):.3f})")
    return 0


def cmd_edit(args) -> int:
    import torch

    from targetclip_core.encoders.inversion import load_inverter
    from targetclip_core.faces.alignment import DEFAULT_FEATHER, paste_back
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import save_png
    from targetclip_core.methods.targetclip.essence import apply_essence, load_essence

    inverter = load_inverter(args.encoder, device=args.device)
    G = load_generator(args.generator, device=inverter.device) if args.generator else inverter.generator
    essence = load_essence(args.essence, G).to(G.device)
    original, face, image = _aligned(args.photo, args, size=G.resolution)
    wp = inverter.invert(image)
    out, stem = Path(args.out), Path(args.photo).stem
    with torch.no_grad():
        save_png(G.synthesis(wp), out / f"{stem}_reconstruction.png")
        for strength in args.strength or [essence.strength]:
            edited = apply_essence(G, wp, essence, strength=strength, layers=_parse_layers(args.layers))
            pasted = paste_back(original, edited, face, feather=DEFAULT_FEATHER if args.feather is None else args.feather)
            save_png(pasted.image, out / f"{stem}_{essence.name}_x{strength:g}.png")
            save_png(edited, out / f"{stem}_{essence.name}_x{strength:g}_aligned.png")
    save_png(face.image, out / f"{stem}_aligned.png")
    print(f"wrote the edits of {args.photo} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
