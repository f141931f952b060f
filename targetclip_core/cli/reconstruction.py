"""The `--refine` / `--pti` options of `targetclip invert` and `edit`: W+ refinement and pivotal tuning after
the encoder, with the reconstruction sheet (photo | e4e | refined | PTI) and its measurements."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from targetclip_core.cli.args import finite_float, float_pair, non_negative_int, positive_float, stage_bars


def add_reconstruction_args(parser) -> None:
    """Options shared by invert and edit."""
    from targetclip_core.methods.reconstruction.pivotal import PTI_LR
    from targetclip_core.methods.reconstruction.refine import REFINE_LR

    g = parser.add_argument_group("closer to the photo (after the encoder)")
    g.add_argument("--refine", type=non_negative_int, default=0, metavar="STEPS",
                   help="optimise the encoder's W+ toward the photo for STEPS steps (e.g. 200; default 0: off)")
    g.add_argument("--refine-lr", type=positive_float, default=REFINE_LR, help=f"Adam learning rate of --refine (default {REFINE_LR:g})")
    g.add_argument("--pti", type=non_negative_int, default=0, metavar="STEPS",
                   help="pivotal tuning: tune a copy of the generator around the latent for STEPS steps (PTI: 350; default 0: off)")
    g.add_argument("--pti-lr", type=positive_float, default=PTI_LR, help=f"Adam learning rate of --pti (default {PTI_LR:g}, PTI's)")
    g.add_argument("--pti-save", choices=["full", "weights"], default="full",
                   help="the tuned generator as a full .safetensors that every -g option loads (default), or only the "
                        "tuned weights (applied on top of the same generator by load_tuned_generator)")
    g.add_argument("--locality-every", type=non_negative_int, default=10,
                   help="PTI's locality regulariser every N steps (default 10; 0: off; PTI's released config: 1)")
    g.add_argument("--lpips", choices=["alex", "vgg", "off"], default="alex",
                   help="perceptual term and score (default alex, as PTI; needs the lpips package and the backbone weights)")
    g.add_argument("--lpips-backbone", default=None, help="torchvision ImageNet weights of the LPIPS backbone (default: "
                   "torch's hub cache, then the weights store: targetclip download lpips-alex-backbone)")
    g.add_argument("--lpips-heads", default=None, help="LPIPS linear heads (default: the ones the lpips package ships)")
    g.add_argument("--arcface", default=None, help="ArcFace IR-SE50 (model_ir_se50.pth or a manifest name): identity "
                   "term of --refine and identity score of every stage")
    g.add_argument("--camera", type=float_pair, default=None, metavar="YAW,PITCH",
                   help="EG3D: the camera the photo was taken from, in degrees (default: the frontal camera)")
    g.add_argument("--lambda-id", type=finite_float, default=0.1, help="weight of the identity term when --arcface is given (default 0.1)")


def wants_reconstruction(args) -> bool:
    return bool(args.refine or args.pti)


def load_scorers(args, device):
    """(LPIPS or None, ArcFace or None) for the terms and scores; a missing LPIPS only warns."""
    lpips = arcface = None
    if args.lpips != "off":
        from targetclip_core.encoders.perceptual import try_load_lpips

        lpips, reason = try_load_lpips(net=args.lpips, backbone=args.lpips_backbone, heads=args.lpips_heads, device=device)
        if lpips is None:
            warnings.warn(f"LPIPS is off: {reason}", stacklevel=2)
    if args.arcface:
        from targetclip_core.encoders.arcface import load_arcface

        arcface = load_arcface(args.arcface, device=device)
    return lpips, arcface


def run_reconstruction(args, G, image, wp, lpips, arcface, start: str = "e4e"):
    """reconstruct_photo with the command's options and a tqdm bar per stage."""
    from targetclip_core.errors import TargetCLIPError
    from targetclip_core.methods.reconstruction import Locality, ReconstructionTerms, reconstruct_photo

    camera = None
    if args.camera is not None:
        if not G.is_3d:
            raise TargetCLIPError(f"--camera is for 3D-aware generators (EG3D); this is a {G.describe()}")
        camera = G.camera(yaw=args.camera[0], pitch=args.camera[1])

    identity = args.lambda_id if arcface is not None else 0.0
    lpips_weight = 1.0 if lpips is not None else 0.0
    refine_terms = ReconstructionTerms(l2=1.0, lpips=lpips_weight, identity=identity)
    pti_terms = ReconstructionTerms(l2=1.0, lpips=lpips_weight)
    with stage_bars("step") as update:
        return reconstruct_photo(G, image, wp, refine_steps=args.refine, refine_lr=args.refine_lr, refine_terms=refine_terms,
                                 pti_steps=args.pti, pti_lr=args.pti_lr, pti_terms=pti_terms,
                                 locality=Locality(every=args.locality_every), lpips=lpips, arcface=arcface, camera=camera,
                                 on_step=lambda stage, info: update(stage, info.step + 1, info.steps,
                                                                     loss=f"{float(info.loss.mean()):.4f}"),
                                 start=start, precision=args.precision)


def write_reconstruction(result, stem_path: Path, pti_save: str = "full") -> list[Path]:
    """`<stem>_stages.png` (the sheet photo | e4e | refined | PTI), `<stem>_stages.json` (the measurements),
    `<stem>_pti.safetensors` (the tuned weights, with PTI); prints the measurements. Returns the files written."""
    from targetclip_core.generators.load import save_generator
    from targetclip_core.io.files import write_text_atomic
    from targetclip_core.io.images import save_png
    from targetclip_core.methods.reconstruction import save_tuned_generator

    sheet = stem_path.with_name(stem_path.stem + "_stages.png")
    save_png(result.sheet(), sheet)
    rows = result.table()
    report = stem_path.with_name(stem_path.stem + "_stages.json")
    write_text_atomic(report, json.dumps({"columns": ["photo"] + [s.name for s in result.stages], "rows": rows},
                                         indent=2) + "\n")
    written = [sheet, report]
    if result.final.name == "PTI":
        tuned = stem_path.with_name(stem_path.stem + "_pti.safetensors")
        if pti_save == "weights":
            save_tuned_generator(result.final.generator, tuned)
        else:
            save_generator(result.final.generator, tuned)
        written.append(tuned)
    keys = [k for k in ("mse", "psnr", "lpips", "identity") if k in rows[0]]
    print(f"{'stage':<10}" + "".join(f"{k:>10}" for k in keys))
    for row in rows:
        print(f"{row['stage']:<10}" + "".join(f"{row[k]:>10.4f}" for k in keys))
    return written
