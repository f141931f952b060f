"""`targetclip convert | download | render`: generator checkpoints in, images out."""

from __future__ import annotations

from pathlib import Path

from targetclip_core.cli.args import (
    DEVICE_HELP,
    add_device_arg,
    add_precision_arg,
    check_out_resolution,
    finite_float,
    float_in,
    float_pair,
    non_negative_int,
    positive_int,
    rays_arg,
    resolution_arg,
    seeds_arg,
    views_arg,
)
from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import check_output_path


def add_parsers(subparsers) -> None:
    """Add the convert, download and render commands to the main parser's subparsers."""
    c = subparsers.add_parser("convert", help="convert any supported generator checkpoint to our .safetensors")
    c.add_argument("input", help="rosinality .pt/.pth, NVlabs .pkl, e4e .pt, .safetensors, or a manifest name")
    c.add_argument("output", help="output path ending in .safetensors")

    d = subparsers.add_parser("download", help="download a known checkpoint (see weights/manifest.json)")
    d.add_argument("name", nargs="?", help="manifest name, e.g. stylegan2-ada-ffhq")
    d.add_argument("--dest", help="folder to put it in (default: the weights store)")
    d.add_argument("--list", action="store_true", help="list the known checkpoints")

    r = subparsers.add_parser("render", help="render seeds or a latent file to PNGs")
    r.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--seeds", type=seeds_arg, help="e.g. 0-3,10 (z drawn like NVlabs' generate.py)")
    src.add_argument("--latent", help="W or W+ latents (.safetensors, .npy, .pt)")
    r.add_argument("--out", "-o", default="renders", help="output folder (default: renders)")
    r.add_argument("--truncation", type=finite_float, default=1.0, help="truncation psi for seeds (default 1.0)")
    r.add_argument("--class-idx", type=non_negative_int, default=None, help="class index for conditional generators")
    r.add_argument("--noise-mode", choices=["const", "random", "none"], default="const",
                   help="per-layer noise: const (the stored noise buffers, reproducible; default), random (new noise each call) or none")
    r.add_argument("--out-resolution", type=resolution_arg, default=None, help="stop synthesis at this resolution")
    r.add_argument("--batch-size", type=positive_int, default=4, help="latents rendered at once (default 4)")
    add_precision_arg(r)
    add_device_arg(r, help=DEVICE_HELP)
    t = r.add_argument_group("StyleGAN3 (as NVlabs' gen_images.py)")
    t.add_argument("--translate", type=float_pair, default=None, metavar="TX,TY",
                   help="move the picture (in half image widths), e.g. 0.3,0 (default 0,0)")
    t.add_argument("--rotate", type=finite_float, default=None, metavar="DEG", help="rotate the picture (degrees)")
    v = r.add_argument_group("3D-aware generators (EG3D)")
    v.add_argument("--views", type=views_arg, default=None, metavar="K | YAW[:PITCH],...",
                   help="render each latent from several cameras: a frame count K (an orbit) or yaw[:pitch] "
                        "degrees, e.g. -30,0,30:10 (default for EG3D: the frontal view)")
    v.add_argument("--yaw-range", type=finite_float, default=30.0, help="orbit: yaw amplitude in degrees (default 30)")
    v.add_argument("--pitch-range", type=finite_float, default=10.0, help="orbit: pitch amplitude in degrees (default 10)")
    v.add_argument("--fov", type=float_in(0, 180, open_low=True, open_high=True), default=None, help="field of view in degrees (default: the generator's, 18.837)")
    v.add_argument("--neural-resolution", type=rays_arg, default=None, help="rays per side (default: the checkpoint's)")
    v.add_argument("--depth", action="store_true", help="also write depth maps (near = bright)")
    v.add_argument("--stochastic", action="store_true", help="jittered ray samples as in training (default: deterministic)")


def cmd_convert(args) -> int:
    from targetclip_core.generators.load import load_generator, save_generator

    out = check_output_path(args.output, "converted generator", suffix=".safetensors")
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
    if args.dest is not None:
        check_output_path(args.dest, "download folder", folder=True)
    path = weights.download(args.name, dest_dir=args.dest)
    print(f"ok: {path}")
    return 0


def cmd_render(args) -> int:
    from tqdm import tqdm

    from targetclip_core.generators.latents import load_latents, wplus_from_seeds
    from targetclip_core.generators.load import load_generator
    from targetclip_core.generators.render import iter_latent_batches
    from targetclip_core.generators.stylegan3 import transform_for
    from targetclip_core.io.images import save_png

    out = check_output_path(args.out, "output folder", folder=True)
    G = load_generator(args.generator, device=args.device)
    if not G.is_3d and (args.views or args.depth):
        raise TargetCLIPError(f"--views/--depth need a 3D-aware generator (EG3D); this is a {G.describe()}")
    check_out_resolution(G, args.out_resolution)
    transform = transform_for(G, args.translate, args.rotate)
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
    batches = iter_latent_batches(G, wp, batch_size=args.batch_size, noise_mode=args.noise_mode,
                                  out_resolution=args.out_resolution, transform=transform, precision=args.precision)
    for done, imgs in tqdm(batches, total=-(-len(wp) // args.batch_size), desc="render", unit="batch"):
        for name, img in zip(names[done - len(imgs) : done], imgs):
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


COMMANDS = {"convert": cmd_convert, "download": cmd_download, "render": cmd_render}
