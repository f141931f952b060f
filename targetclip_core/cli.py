"""The `targetclip` command line (also `python -m targetclip_core`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import TargetCLIPError


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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"convert": cmd_convert, "download": cmd_download, "render": cmd_render, "bench": cmd_bench}[args.command](args)
    except TargetCLIPError as e:
        print(f"targetclip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("targetclip: interrupted", file=sys.stderr)
        return 130


def cmd_convert(args) -> int:
    from .loaders import load_generator, save_generator

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise TargetCLIPError(f"{out}: the output must be a .safetensors file")
    G = load_generator(args.input, device="cpu")
    save_generator(G, out)
    print(f"wrote {out} ({G.resolution}px StyleGAN2, {G.n_latent} W+ entries, from {G.config.source_format})")
    return 0


def cmd_download(args) -> int:
    from . import weights

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

    from .images import save_png
    from .latents import load_latents, z_from_seeds
    from .loaders import load_generator

    G = load_generator(args.generator, device=args.device)
    out = Path(args.out)
    if args.seeds is not None:
        names = [f"seed{s:04d}" for s in args.seeds]
        c = None
        if G.c_dim:
            if args.class_idx is None:
                raise TargetCLIPError(f"this generator is class-conditional ({G.c_dim} classes): pass --class-idx")
            c = torch.zeros(1, G.c_dim, device=G.device)
            c[0, args.class_idx] = 1
        with torch.no_grad():
            z = z_from_seeds(args.seeds, G.z_dim).to(G.device)
            wp = G.to_wplus(G.mapping(z, None if c is None else c.expand(len(z), -1), truncation=args.truncation))
    else:
        wp = G.to_wplus(load_latents(args.latent).to(G.device))
        names = [f"{Path(args.latent).stem}_{i:04d}" for i in range(len(wp))]
    with torch.no_grad():
        for start in tqdm(range(0, len(wp), args.batch_size), desc="render", unit="batch"):
            imgs = G.synthesis(wp[start : start + args.batch_size], noise_mode=args.noise_mode, out_resolution=args.out_resolution)
            for name, img in zip(names[start : start + args.batch_size], imgs):
                save_png(img, out / f"{name}.png")
    print(f"wrote {len(wp)} images to {out}")
    return 0


def cmd_bench(args) -> int:
    from .bench import bench_generator

    G = None
    if args.checkpoint:
        from .loaders import load_generator

        G = load_generator(args.checkpoint, device=args.device)
    bench_generator(
        resolution=args.resolution, batch=args.batch, device=args.device, out_resolution=args.out_resolution,
        repeats=args.repeats, with_baseline=not args.no_baseline, with_fused=not args.no_fused, G=G,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
