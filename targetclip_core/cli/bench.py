"""`targetclip bench generator | invert | eg3d | reconstruct | video | optimize | gpu`: timings of the engine against the baselines it replaces, and the GPU readiness check."""

from __future__ import annotations

from targetclip_core.cli.args import check_out_resolution, positive_int, rays_arg, resolution_arg
from targetclip_core.devices import PRECISIONS
from targetclip_core.errors import TargetCLIPError


def add_parsers(subparsers) -> None:
    """Add the bench command (and its generator, invert, eg3d and optimize benchmarks) to the main parser's subparsers."""
    b = subparsers.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="what", required=True)
    bg = bsub.add_parser("generator", help="generator forward / forward+backward time, ours vs a rosinality-style baseline")
    bg.add_argument("--arch", choices=["stylegan2", "stylegan3-t", "stylegan3-r"], default="stylegan2",
                    help="random network to time (default stylegan2; StyleGAN3 is timed against NVlabs' reference path)")
    bg.add_argument("--resolution", type=resolution_arg, default=256, help="random network size (default 256)")
    bg.add_argument("--batch", type=positive_int, default=4, help="images per forward (default 4)")
    bg.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    bg.add_argument("--out-resolution", type=resolution_arg, default=None, help="early-exit resolution to compare (default: resolution/4, at most 256)")
    bg.add_argument("--repeats", type=positive_int, default=3, help="timed repeats, the fastest is reported (default 3)")
    bg.add_argument("--checkpoint", default=None, help="time a real checkpoint instead of a random network")
    bg.add_argument("--no-baseline", action="store_true", help="skip the rosinality-style baseline")
    bg.add_argument("--no-fused", action="store_true", help="skip the fused (grouped conv) rows")
    bi = bsub.add_parser("invert", help="seconds per e4e inversion and per essence encoding, and the optimisation they replace")
    bi.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8], help="batch sizes to time (default 1 8)")
    bi.add_argument("--repeats", type=positive_int, default=3, help="timed repeats, the fastest is reported (default 3)")
    bi.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    bi.add_argument("--resolution", type=resolution_arg, default=256, help="generator size for the optimisation comparison")
    bi.add_argument("--no-optimisation", action="store_true", help="skip the per-target optimisation comparison")
    be = bsub.add_parser("eg3d", help="seconds per EG3D frame (and its parts); orbit from cached tri-planes vs frame by frame")
    be.add_argument("--frames", type=positive_int, default=8, help="orbit length (default 8)")
    be.add_argument("--neural-resolution", type=rays_arg, default=128, help="rays per side of the volume rendering (default 128)")
    be.add_argument("--repeats", type=positive_int, default=2, help="timed repeats, the fastest is reported (default 2)")
    be.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    be.add_argument("--checkpoint", default=None, help="time a real EG3D checkpoint instead of the ffhq512-128 architecture")
    br = bsub.add_parser("reconstruct", help="seconds per W+ refinement step and per pivotal-tuning step, peak memory")
    br.add_argument("--resolution", type=resolution_arg, default=1024, help="random generator size (default 1024)")
    br.add_argument("--steps", type=positive_int, default=3, help="timed steps of each (min is reported)")
    br.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    br.add_argument("--no-lpips", action="store_true", help="without the perceptual term")
    br.add_argument("--no-arcface", action="store_true", help="without the identity term")
    bv = bsub.add_parser("video", help="seconds per frame of edit-video (random networks, a clip of yours with a face)")
    bv.add_argument("--clip", required=True, help="a video with a face (the detector needs a real one)")
    bv.add_argument("--resolution", type=resolution_arg, default=1024, help="random generator size (default 1024)")
    bv.add_argument("--frames", type=positive_int, default=8, help="frames of the clip to edit (default 8)")
    bv.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    bo = bsub.add_parser("optimize", help="seconds per essence-optimisation step, ours vs the official loop")
    bo.add_argument("--resolution", type=resolution_arg, default=256, help="random generator size (default 256)")
    bo.add_argument("--n-sources", type=positive_int, default=4, help="sources per step (default 4)")
    bo.add_argument("--steps", type=positive_int, default=3, help="timed steps per contender (min is reported)")
    bo.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    bo.add_argument("--clip", default="ViT-B-32", help="CLIP architecture (random weights unless --pretrained)")
    bo.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint file (default: random weights)")
    bo.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32", "auto"],
                    help="precision(s) of our steps, each timed in the same run (default fp32 and auto, the optimiser's "
                         "default); the official loop is fp32")
    bo.add_argument("--compile", action="store_true", help="also time our step with CLIP through torch.compile")
    bgpu = bsub.add_parser("gpu", help="GPU readiness: essence steps per precision, a whole essence, encoder, EG3D frame, "
                           "fixture conformance on the device, peak memory; one table")
    bgpu.add_argument("--device", default="cuda", help="cuda (default), cuda:N, mps or cpu")
    bgpu.add_argument("--resolution", type=resolution_arg, nargs="+", default=[256, 1024],
                      help="generator sizes of the essence steps (default 256 1024)")
    bgpu.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32", "bf16", "fp16"],
                      help="precisions of the essence steps (default fp32 bf16 fp16)")
    bgpu.add_argument("--steps", type=positive_int, default=3, help="timed steps per essence-step row (min is reported)")
    bgpu.add_argument("--full-steps", type=positive_int, default=1000, help="steps of the whole-essence row (default 1000)")
    bgpu.add_argument("--fixtures", default=None, help="the shared fixtures folder (default $TARGETCLIP_SHARED/fixtures or "
                      "../shared/fixtures)")
    bgpu.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")


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
    if args.what == "reconstruct":
        from targetclip_core.bench.benchmarks import bench_reconstruction

        bench_reconstruction(resolution=args.resolution, steps=args.steps, device=args.device,
                             with_lpips=not args.no_lpips, with_arcface=not args.no_arcface)
        return 0
    if args.what == "video":
        from targetclip_core.bench.benchmarks import bench_edit_video

        bench_edit_video(args.clip, resolution=args.resolution, max_frames=args.frames, device=args.device)
        return 0
    if args.what == "gpu":
        return _bench_gpu(args)
    if args.what == "optimize":
        bench_optimize(resolution=args.resolution, n_sources=args.n_sources, steps=args.steps, device=args.device,
                       clip_name=args.clip, clip_pretrained=args.pretrained, precisions=tuple(args.precision),
                       with_compile=args.compile)
        return 0
    G = None
    if args.checkpoint:
        from targetclip_core.generators.load import load_generator

        G = load_generator(args.checkpoint, device=args.device)
        check_out_resolution(G, args.out_resolution)
    if args.arch.startswith("stylegan3") or (G is not None and G.identity["arch"].startswith("stylegan3")):
        from targetclip_core.bench.benchmarks import bench_stylegan3

        if G is not None and not G.identity["arch"].startswith("stylegan3"):
            raise TargetCLIPError(f"{args.checkpoint}: --arch {args.arch} needs a StyleGAN3 checkpoint, not a {G.describe()}")
        bench_stylegan3(resolution=args.resolution, variant=args.arch[-1], batch=args.batch, device=args.device,
                        repeats=args.repeats, with_baseline=not args.no_baseline, G=G)
        return 0
    elif args.out_resolution is not None and args.out_resolution > args.resolution:
        raise TargetCLIPError(f"--out-resolution {args.out_resolution} is larger than --resolution {args.resolution}")
    bench_generator(
        resolution=args.resolution, batch=args.batch, device=args.device, out_resolution=args.out_resolution,
        repeats=args.repeats, with_baseline=not args.no_baseline, with_fused=not args.no_fused, G=G,
    )
    return 0


COMMANDS = {"bench": cmd_bench}


def _bench_gpu(args) -> int:
    import json

    from targetclip_core.bench.gpu_check import gpu_readiness, rows_as_dicts
    from targetclip_core.io.files import check_output_path, write_text_atomic

    out = check_output_path(args.json, "JSON report", suffix=".json") if args.json else None
    rows = gpu_readiness(device=args.device, resolutions=tuple(args.resolution), precisions=tuple(args.precision),
                         steps=args.steps, full_steps=args.full_steps, fixtures=args.fixtures)
    if out is not None:
        write_text_atomic(out, json.dumps(rows_as_dicts(rows), indent=1) + "\n")
    return 0
