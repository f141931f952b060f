"""`targetclip edit-video | animate`: a face edited through a clip (audio and frame rate kept), and clips made
from latents (strength ramps, essence interpolation, EG3D turntables) as MP4 / WebM / GIF."""

from __future__ import annotations

from targetclip_core.cli.args import (
    add_device_arg,
    finite_float,
    float_in,
    layers_arg,
    non_negative_int,
    parse_layers,
    positive_float,
    positive_int,
    stage_bars,
)
from targetclip_core.io.files import check_output_path

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif")


def add_parsers(subparsers) -> None:
    from targetclip_core.faces.alignment import DEFAULT_FEATHER
    from targetclip_core.methods.video.edit import LANDMARK_SIGMA, LATENT_SIGMA

    v = subparsers.add_parser("edit-video", help="a clip -> track the face, invert, apply an essence, paste back in every frame")
    v.add_argument("clip", help="video file (mp4, webm, mov, gif, ...)")
    v.add_argument("--essence", required=True, help="essence .safetensors or official .npy")
    v.add_argument("--strength", type=finite_float, default=None, help="essence strength (default: the essence's)")
    v.add_argument("--layers", type=layers_arg, default="all", help="all | coarse | middle | fine | W+ indices")
    v.add_argument("--encoder", default="e4e-ffhq-encode", help="e4e/pSp checkpoint or manifest name")
    v.add_argument("--generator", "-g", default=None, help="default: the generator inside the encoder checkpoint")
    v.add_argument("--out", required=True, help=f"output video ({', '.join(VIDEO_SUFFIXES)}); the clip's audio is copied")
    v.add_argument("--landmark-sigma", type=float_in(0, 50), default=LANDMARK_SIGMA,
                   help=f"temporal smoothing of the face landmarks, in frames (default {LANDMARK_SIGMA:g}; 0: off)")
    v.add_argument("--latent-sigma", type=float_in(0, 50), default=LATENT_SIGMA,
                   help=f"temporal smoothing of the inverted latents, in frames (default {LATENT_SIGMA:g}; 0: off)")
    v.add_argument("--feather", type=float_in(0, 0.5), default=DEFAULT_FEATHER, help=f"mask feathering (default {DEFAULT_FEATHER:g})")
    v.add_argument("--refine", type=non_negative_int, default=0, metavar="STEPS",
                   help="refine each frame's W+ toward the frame for STEPS steps (L2 + LPIPS when available; default 0)")
    v.add_argument("--max-frames", type=positive_int, default=None, help="only the first N frames")
    v.add_argument("--detector", default="mtcnn", help="mtcnn (built in) or dlib:/path/to/shape_predictor_68_face_landmarks.dat")
    add_device_arg(v)

    a = subparsers.add_parser("animate", help="a clip from latents: essence strength ramp, essence interpolation, EG3D turntable")
    a.add_argument("kind", choices=["ramp", "interpolate", "turntable"],
                   help="ramp: one essence 0 -> strength -> 0; interpolate: essence to essence; turntable: an EG3D orbit")
    a.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    a.add_argument("--seed", type=non_negative_int, default=0, help="the face: z drawn like NVlabs' generate.py (default 0)")
    a.add_argument("--latent", default=None, help="a W+ latent file instead of --seed (e.g. from invert)")
    a.add_argument("--truncation", type=finite_float, default=0.7, help="truncation psi for --seed (default 0.7)")
    a.add_argument("--essence", "-e", nargs="+", default=[], help="essence(s): ramp and turntable use the first, interpolate all")
    a.add_argument("--strength", type=finite_float, default=1.0, help="peak strength (ramp, turntable) / strength (interpolate)")
    a.add_argument("--layers", type=layers_arg, default="all", help="all | coarse | middle | fine | W+ indices")
    a.add_argument("--frames", type=positive_int, default=48, help="frames of the ramp or orbit; per step for interpolate (default 48)")
    a.add_argument("--fps", type=positive_float, default=24.0, help="frame rate (default 24)")
    a.add_argument("--shape", choices=["cosine", "linear"], default="cosine", help="ramp shape (default cosine)")
    a.add_argument("--yaw-range", type=finite_float, default=30.0, help="turntable yaw amplitude in degrees (default 30)")
    a.add_argument("--pitch-range", type=finite_float, default=10.0, help="turntable pitch amplitude in degrees (default 10)")
    a.add_argument("--out", required=True, help=f"output video ({', '.join(VIDEO_SUFFIXES)})")
    add_device_arg(a)


def _video_out(path):
    return check_output_path(path, "output video", suffix=VIDEO_SUFFIXES)


def cmd_edit_video(args) -> int:
    from targetclip_core.encoders.inversion import load_inverter
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.video import read_clip, write_clip
    from targetclip_core.methods.targetclip.essence import load_essence
    from targetclip_core.methods.video import edit_clip, essence_edit

    out = _video_out(args.out)
    clip = read_clip(args.clip, max_frames=args.max_frames)
    inverter = load_inverter(args.encoder, device=args.device)
    G = load_generator(args.generator, device=inverter.device) if args.generator else inverter.generator
    essence = load_essence(args.essence, G)
    strength = essence.strength if args.strength is None else args.strength
    refine = _frame_refinement(G, args.refine) if args.refine else None
    with stage_bars("frame") as update:
        result = edit_clip(clip.frames, inverter, essence_edit(G, essence, strength or 1.0, parse_layers(args.layers)),
                           resolution=G.resolution, landmark_sigma=args.landmark_sigma, latent_sigma=args.latent_sigma,
                           feather=args.feather, refine=refine, detector=args.detector, device=inverter.device,
                           on_frame=update)
    write_clip(out, result.frames, clip.fps, audio_from=clip.source if clip.has_audio else None)
    print(f"wrote {out}: {result.report()}")
    return 0


def _frame_refinement(G, steps: int):
    """(aligned frames, e4e's W+) -> W+ refined toward the frames (methods.reconstruction), LPIPS when at hand."""
    import warnings

    from targetclip_core.encoders.perceptual import try_load_lpips
    from targetclip_core.methods.reconstruction import ReconstructionTerms, refine_inversion

    lpips, reason = try_load_lpips("alex", device=G.device)
    if lpips is None:
        warnings.warn(f"LPIPS is off: {reason}", stacklevel=2)
    terms = ReconstructionTerms(l2=1.0, lpips=1.0 if lpips is not None else 0.0)
    return lambda images, wp: refine_inversion(G, images, wp, steps=steps, terms=terms, lpips=lpips).wplus


def cmd_animate(args) -> int:
    import torch

    from targetclip_core.errors import TargetCLIPError
    from targetclip_core.generators.latents import load_latents, wplus_from_seeds
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.video import write_clip
    from targetclip_core.methods.targetclip.essence import load_essence
    from targetclip_core.methods.video import essence_interpolation, essence_ramp, ramp, turntable

    out = _video_out(args.out)
    G = load_generator(args.generator, device=args.device)
    essences = [load_essence(e, G) for e in args.essence]
    if args.kind in ("ramp", "interpolate") and len(essences) < (1 if args.kind == "ramp" else 2):
        raise TargetCLIPError(f"animate {args.kind} needs {'an essence' if args.kind == 'ramp' else 'two essences or more'} (-e)")
    wp = (G.to_wplus(load_latents(args.latent).to(G.device))[:1] if args.latent
          else wplus_from_seeds(G, [args.seed], args.truncation))
    layers = parse_layers(args.layers)
    with stage_bars("frame") as update:
        def on_frame(done, total, images):
            update(args.kind, done, total)

        if args.kind == "ramp":
            frames = essence_ramp(G, wp, essences[0], ramp(args.frames, args.strength, args.shape), layers, on_frame=on_frame)
        elif args.kind == "interpolate":
            frames = essence_interpolation(G, wp, essences, args.frames, args.strength, layers, on_frame=on_frame)
        else:
            strengths = ramp(args.frames, args.strength, args.shape) if essences else None
            frames = turntable(G, wp, args.frames, yaw_range=args.yaw_range, pitch_range=args.pitch_range,
                               essence=essences[0] if essences else None, strengths=strengths, layers=layers,
                               on_frame=on_frame)
    with torch.no_grad():
        write_clip(out, frames, args.fps)
    print(f"wrote {out} ({len(frames)} frames at {args.fps:g} fps)")
    return 0


COMMANDS = {"edit-video": cmd_edit_video, "animate": cmd_animate}
