"""`targetclip sat3d-train` and `targetclip sat3d-transfer` (SAT3D on StyleGAN2).

cli.main wires these in with `add_parsers(sub)` and `COMMANDS`; `main` runs them alone.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path

from targetclip_core.cli.args import (
    ArgumentParser,
    add_precision_arg,
    check_out_resolution,
    finite_float,
    float_in,
    non_negative_float,
    positive_float,
    positive_int,
    resolution_or_auto,
    run_command,
    seed_arg,
    seeds_arg,
)
from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.files import check_output_path, write_text_atomic


def _delta_arg(text: str) -> float:
    """argparse `type=` for --delta: an editing intensity in the range SAT3D defines (methods.sat3d.matrix)."""
    from targetclip_core.methods.sat3d.matrix import DELTA_RANGE

    return float_in(*DELTA_RANGE)(text)


def add_parsers(subparsers) -> None:
    """Add the sat3d-train and sat3d-transfer commands to the main parser's subparsers."""
    t = subparsers.add_parser(
        "sat3d-train", help="learn a SAT3D attribute x channel mask matrix (CLIP descriptor groups)",
        description="Learn a SAT3D attribute x channel mask matrix.  Data parallel: `torchrun --nproc_per_node N -m "
                    "targetclip_core sat3d-train ...` runs N processes (one GPU each with nccl, or gloo on CPU); "
                    "--batch-size stays the global batch, so the matrix is the one a single process learns with it, "
                    "and a checkpoint can be resumed with any number of processes.")
    t.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    t.add_argument("--out", "-o", required=True, help="matrix .safetensors to write")
    t.add_argument("--descriptors", default="faces", help="faces, cats, cars, or a descriptor JSON file (default faces)")
    t.add_argument("--clip", default="ViT-B-32", help="open_clip architecture, local-dir:..., hf-hub:... (default ViT-B-32)")
    t.add_argument("--pretrained", default="openai", help="open_clip tag or checkpoint file (default openai); 'none' for random")
    t.add_argument("--steps", type=positive_int, default=10000, help="training steps in all, a resumed run included (default 10000)")
    t.add_argument("--batch-size", type=positive_int, default=4,
                   help="(source, reference) pairs per step: the GLOBAL batch, split over the processes under torchrun "
                        "(a multiple of their number; default 4)")
    t.add_argument("--lr", type=positive_float, default=0.01, help="Ranger learning rate (default 0.01, as the paper)")
    t.add_argument("--n-codes", type=positive_int, default=6000, help="pre-sampled latents to draw pairs from (default 6000)")
    t.add_argument("--no-filter-training-set", dest="filter_training_set", action="store_false",
                   help="draw the latents unfiltered (default: filtered by the descriptor set's training_set rules with "
                        "CLIP zero-shot checks, as the paper: faces without hats, >= 40%% with glasses)")
    t.add_argument("--filter-candidates", type=positive_int, default=None, metavar="N",
                   help="at most N candidates rendered and checked for the filtered set (default 4 x --n-codes); when "
                        "reached first, the set is kept with the shares it got (a warning says so)")
    t.add_argument("--truncation", type=finite_float, default=1.0, help="truncation of the pre-sampled latents (default 1.0)")
    t.add_argument("--lambda-attr", type=non_negative_float, default=3.5, help="weight of L_attr = L_ref + L_src (default 3.5, as the paper)")
    t.add_argument("--lambda-ref", type=non_negative_float, default=None,
                   help="variant: weight L_ref on its own instead of --lambda-attr (default: off)")
    t.add_argument("--lambda-src", type=non_negative_float, default=None,
                   help="variant: weight L_src on its own instead of --lambda-attr (default: off)")
    t.add_argument("--loss-reduction", choices=["sum", "mean"], default="sum",
                   help="L_ref / L_src over attributes and descriptor groups: sum (the paper, default) or mean (a variant)")
    t.add_argument("--lambda-bg", type=non_negative_float, default=40.0,
                   help="weight of L_bg (default 40, as the paper); needs --parser; off (with a warning) without one")
    t.add_argument("--parser", default=None, metavar="PATH_OR_NAME",
                   help="face parser for L_bg and channel pre-selection: BiSeNet 79999_iter.pth or its manifest name "
                        "bisenet-face-parsing-79999 (face descriptor sets only)")
    t.add_argument("--preselect-samples", type=positive_int, default=32, metavar="N",
                   help="with --parser: images of the pre-selection's gradient statistics pass, drawn from the training "
                        "latents (default 32; one render and one backward each)")
    t.add_argument("--preselect-stats", default=None, metavar="FILE",
                   help="with --parser: pre-selection statistics file, reused when it exists (same generator, regions, "
                        "seed, --preselect-samples), else written by the pass (a --checkpoint also keeps them)")
    t.add_argument("--lambda-prob", type=non_negative_float, default=0.1, help="weight of L_prob, one attribute per channel (default 0.1)")
    t.add_argument("--checkpoint", default=None, help="training checkpoint file: resumed from when it exists")
    t.add_argument("--checkpoint-every", type=positive_int, default=500, help="write --checkpoint every N steps (default 500)")
    t.add_argument("--out-resolution", type=resolution_or_auto, default="auto",
                   help="render resolution for the losses (default: CLIP's size)")
    t.add_argument("--seed", type=seed_arg, default=0, help="seed of the latents and pairs (default 0)")
    t.add_argument("--device", default=None,
                   help="cpu, cuda, mps (default: best available); under torchrun, cuda means cuda:LOCAL_RANK")
    add_precision_arg(t)

    x = subparsers.add_parser(
        "sat3d-transfer", help="move attributes of a reference onto sources with a SAT3D matrix",
        description="Move attributes of a reference onto sources with a trained SAT3D matrix (--matrix), with a mask "
                    "optimised for each pair alone (--instant STEPS), or both side by side with their SAT3D losses "
                    "(--compare STEPS).  --instant/--compare take the attributes as one target set (one summed mask, "
                    "as --combine) and need CLIP (--clip/--pretrained) and the matrix's descriptor set.")
    x.add_argument("--generator", "-g", required=True, help="checkpoint path or manifest name")
    x.add_argument("--matrix", "-m", default=None,
                   help="matrix .safetensors from sat3d-train (required, except with --instant)")
    mode = x.add_mutually_exclusive_group()
    mode.add_argument("--instant", type=positive_int, default=None, metavar="STEPS",
                      help="optimise a mask for each (source, reference) pair with the SAT3D losses for STEPS steps "
                           "instead of using --matrix (which, with --init-from-matrix, is its starting point)")
    mode.add_argument("--compare", type=positive_int, default=None, metavar="STEPS",
                      help="needs --matrix: also optimise an instant mask per pair (STEPS steps) and write compare.csv "
                           "(both matrices' loss terms per pair), compare.md (their means) and compare_NNNN.png "
                           "(source | reference | trained | instant)")
    x.add_argument("--init-from-matrix", action="store_true", help="start the instant masks from --matrix")
    x.add_argument("--lr", type=positive_float, default=0.01, help="Ranger learning rate of the instant masks (default 0.01)")
    x.add_argument("--descriptors", default=None,
                   help="descriptor set for --instant/--compare: faces, cats, cars or a JSON file (default: the matrix's, "
                        "else faces)")
    x.add_argument("--clip", default="ViT-B-32",
                   help="for --instant/--compare: open_clip architecture, local-dir:..., hf-hub:... (default ViT-B-32)")
    x.add_argument("--pretrained", default="openai",
                   help="for --instant/--compare: open_clip tag or checkpoint file (default openai); 'none' for random")
    x.add_argument("--parser", default=None, metavar="PATH_OR_NAME",
                   help="for --instant/--compare: face parser for L_bg (BiSeNet 79999_iter.pth or bisenet-face-parsing-79999); "
                        "without one L_bg is 0")
    x.add_argument("--out-resolution", type=resolution_or_auto, default="auto",
                   help="for --instant/--compare: render resolution for the losses (default: CLIP's size)")
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--source-seeds", type=seeds_arg, help="source seeds, e.g. 0-3,10")
    src.add_argument("--source", help="source W/W+ latent file")
    ref = x.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference-seed", type=seed_arg, help="reference seed")
    ref.add_argument("--reference", help="reference W/W+ latent file (its first latent is used)")
    x.add_argument("--attributes", "-a", nargs="+", required=True, help="attribute names, applied in this order")
    x.add_argument("--delta", type=_delta_arg, nargs="+", default=[1.0], help="editing intensity in [0, 3], one or one per attribute")
    x.add_argument("--combine", action="store_true", help="one summed mask instead of edits in sequence")
    x.add_argument("--truncation", type=finite_float, default=0.7, help="truncation for seeds (default 0.7)")
    x.add_argument("--allow-other-weights", action="store_true",
                   help="accept a matrix trained on another network of the same layout (a fine-tuned relative)")
    x.add_argument("--out", "-o", default="sat3d", help="output folder (default: sat3d)")
    x.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    add_precision_arg(x)


def cmd_sat3d_train(args) -> int:
    out = check_output_path(args.out, "matrix", suffix=".safetensors")
    if args.checkpoint:  # torch.save / safetensors files, read back by their content whatever their names
        check_output_path(args.checkpoint, "training checkpoint")
    if args.preselect_stats:
        check_output_path(args.preselect_stats, "pre-selection statistics")
    device, started = _join_torchrun(args.device)
    try:
        return _sat3d_train(args, out, device)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _join_torchrun(device):
    """Under torchrun (WORLD_SIZE > 1) with no process group yet, start one: nccl with this
    process's GPU (cuda:LOCAL_RANK) when CUDA is used, gloo on CPU.  Returns (device, started)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return device, False
    import torch
    import torch.distributed as dist

    from targetclip_core.devices import default_device

    if not dist.is_available():
        raise TargetCLIPError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed")
    if dist.is_initialized():  # the caller's group
        return device, False
    dev = default_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise TargetCLIPError(f"sat3d-train under torchrun runs on CUDA (nccl) or CPU (gloo), not {dev.type}: pass --device cpu")
    dist.init_process_group(backend)  # rank, world size and rendezvous from torchrun's environment
    return str(dev), True


def _sat3d_train(args, out: Path, device) -> int:
    import torch.distributed as dist
    from tqdm import tqdm

    from targetclip_core.encoders.clip import load_clip
    from targetclip_core.generators.load import load_generator
    from targetclip_core.methods.sat3d import QMM, load_descriptors, save_sat3d_matrix, train_sat3d

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    descriptors = load_descriptors(args.descriptors)
    G = load_generator(args.generator, device=device)
    check_out_resolution(G, args.out_resolution)
    C = load_clip(args.clip, None if args.pretrained.lower() == "none" else args.pretrained, device=G.device)
    measure = QMM(C, descriptors)
    parser = None
    if args.parser:
        from targetclip_core.faces.parsing import load_face_parser

        parser = load_face_parser(args.parser, device=G.device)
    bar = tqdm(total=args.steps, desc="sat3d-train", unit="step", disable=rank != 0)
    channels_bar = {}

    def preselect_progress(done, total) -> None:  # with a parser, pre-selection's statistics pass comes first
        if "bar" not in channels_bar:
            channels_bar["bar"] = tqdm(total=total, desc="pre-selection", unit="image", disable=rank != 0, leave=False)
        channels_bar["bar"].n = done
        channels_bar["bar"].refresh()

    filter_bar = {}

    def filter_progress(done, total) -> None:  # the training-set filter renders and checks candidates first
        if "bar" not in filter_bar:
            filter_bar["bar"] = tqdm(total=total, desc="training set", unit="candidate", disable=rank != 0, leave=False)
        filter_bar["bar"].n = done
        filter_bar["bar"].refresh()

    def progress(info) -> None:
        bar.n = info.step
        bar.set_postfix(attr=info.attributes[0], loss=f"{info.losses['total']:.4f}", refresh=False)
        bar.refresh()

    lambdas = {"attr": args.lambda_attr, "bg": args.lambda_bg, "prob": args.lambda_prob}
    lambdas.update({k: v for k, v in (("ref", args.lambda_ref), ("src", args.lambda_src)) if v is not None})
    matrix = train_sat3d(G, measure, steps=args.steps, batch_size=args.batch_size, lr=args.lr, n_codes=args.n_codes,
                         truncation=args.truncation, seed=args.seed, lambdas=lambdas, reduction=args.loss_reduction,
                         parser=parser, checkpoint=args.checkpoint,
                         checkpoint_every=args.checkpoint_every, callback=progress, out_resolution=args.out_resolution,
                         preselect_kwargs={"progress": preselect_progress, "n_samples": args.preselect_samples},
                         preselect_statistics=args.preselect_stats, filter_training_set=args.filter_training_set,
                         training_set_kwargs={"on_batch": filter_progress, "max_candidates": args.filter_candidates},
                         precision=args.precision)
    bar.close()
    if "bar" in filter_bar:
        filter_bar["bar"].close()
    if "bar" in channels_bar:
        channels_bar["bar"].close()
    if rank == 0:  # every process holds the same matrix
        save_sat3d_matrix(out, matrix)
        processes = f", {dist.get_world_size()} processes" if distributed else ""
        print(f"wrote {out}: {len(matrix.attributes)} attributes x {matrix.layout.n_channels} channels, {matrix.steps} steps "
              f"(pre-selection: {matrix.preselection}){processes}")
        for name in matrix.attributes:
            top = ", ".join(f"{layer}[{ch}]" for layer, ch, _ in matrix.top_channels(name, 3))
            print(f"  {name:<12} strongest channels: {top}")
        print(f"  training set: {matrix.training_set.get('summary', '?')}")
    if distributed:
        dist.barrier()  # nobody returns before the matrix is written
    return 0


def _latents(G, seeds, path, truncation, first_only=False):
    """W+ latents from a latent file (its first only with first_only) or from seeds (a list, or one seed)."""
    from targetclip_core.generators.latents import load_latents, wplus_from_seeds

    if path:
        wp = G.to_wplus(load_latents(path).to(G.device).float())
        return wp[:1] if first_only else wp
    return wplus_from_seeds(G, seeds if isinstance(seeds, list) else [seeds], truncation)


def _check_transfer_mode(args) -> None:
    """Refuse inconsistent flags before anything is loaded."""
    if args.compare is not None and not args.matrix:
        raise TargetCLIPError("--compare compares an instant mask with a trained one: pass the trained --matrix")
    if not args.matrix and args.instant is None:
        raise TargetCLIPError("pass a trained --matrix, or --instant STEPS to optimise a mask for each pair instead")
    if args.init_from_matrix and not (args.matrix and (args.instant is not None or args.compare is not None)):
        raise TargetCLIPError("--init-from-matrix starts the --instant/--compare masks from --matrix: pass both")
    steps = args.instant if args.instant is not None else args.compare
    if steps is not None:
        if steps < 1:
            raise TargetCLIPError(f"--instant/--compare need at least 1 step, got {steps}")
        if len(args.delta) != 1:
            raise TargetCLIPError("--instant/--compare optimise one mask for the attribute set: give one --delta")


def cmd_sat3d_transfer(args) -> int:
    _check_transfer_mode(args)
    check_output_path(args.out, "output folder", folder=True)
    if args.instant is not None or args.compare is not None:
        return _sat3d_transfer_instant(args)
    import torch

    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import save_png
    from targetclip_core.methods.sat3d import load_sat3d_matrix, transfer

    G = load_generator(args.generator, device=args.device)
    matrix = load_sat3d_matrix(args.matrix, generator=G, strict_weights=not args.allow_other_weights)
    source = _latents(G, args.source_seeds, args.source, args.truncation)
    reference = _latents(G, args.reference_seed, args.reference, args.truncation, first_only=True)
    delta = args.delta[0] if len(args.delta) == 1 else list(args.delta)
    out = Path(args.out)
    with torch.no_grad():
        edited = transfer(G, source, reference, matrix, args.attributes, delta=delta, combine=args.combine,
                          precision=args.precision)
        save_png(G.synthesis(reference)[0], out / "reference.png")
        for i, (src_img, img) in enumerate(zip(G.synthesis(source), edited)):
            save_png(src_img, out / f"source_{i:04d}.png")
            save_png(img, out / f"transfer_{i:04d}.png")
    write_text_atomic(out / "transfer.json", json.dumps({"matrix": str(args.matrix), "attributes": args.attributes,
                                                         "delta": args.delta, "combine": args.combine}, indent=1))
    print(f"wrote {len(edited)} transfers of {', '.join(args.attributes)} to {out}")
    return 0


def _descriptor_name(args, matrix) -> str:
    if args.descriptors:
        return args.descriptors
    recorded = matrix.descriptors if matrix is not None else ""
    if recorded.startswith("builtin:"):
        return recorded.split(":", 1)[1]
    return recorded or "faces"


COMPARE_COLUMNS = ("pair", "source", "winner", *(f"{side}_{k}" for side in ("trained", "instant")
                                                  for k in ("total", "ref", "src", "bg", "prob")))


def _sat3d_transfer_instant(args) -> int:
    """--instant (a mask per pair instead of the matrix) and --compare (both, with their losses)."""
    import torch
    from tqdm import tqdm

    from targetclip_core.encoders.clip import load_clip
    from targetclip_core.generators.load import load_generator
    from targetclip_core.io.images import captioned_grid, save_png
    from targetclip_core.methods.sat3d import (
        QMM,
        compare_instant_with_trained,
        instant_transfer,
        load_descriptors,
        load_sat3d_matrix,
        transfer_styles,
    )

    G = load_generator(args.generator, device=args.device)
    check_out_resolution(G, args.out_resolution)
    matrix = (load_sat3d_matrix(args.matrix, generator=G, strict_weights=not args.allow_other_weights)
              if args.matrix else None)
    descriptors = load_descriptors(_descriptor_name(args, matrix))
    for name in args.attributes:
        descriptors[name]  # an unknown attribute fails before CLIP is loaded
    if matrix is not None and list(matrix.attributes) != descriptors.names:
        raise TargetCLIPError(f"{args.matrix} has attributes {', '.join(matrix.attributes)} but descriptor set "
                              f"{descriptors.source} has {', '.join(descriptors.names)}: pass the matrix's --descriptors")
    parser = None
    if args.parser:
        from targetclip_core.faces.parsing import load_face_parser

        parser = load_face_parser(args.parser, device=G.device)
        if hasattr(parser, "check_regions"):
            parser.check_regions(sorted({descriptors[a].region for a in args.attributes if descriptors[a].region}))
    C = load_clip(args.clip, None if args.pretrained.lower() == "none" else args.pretrained, device=G.device)
    measure = QMM(C, descriptors)
    source = _latents(G, args.source_seeds, args.source, args.truncation)
    reference = _latents(G, args.reference_seed, args.reference, args.truncation, first_only=True)
    labels = _source_labels(args, len(source))
    steps = args.instant if args.instant is not None else args.compare
    bar = tqdm(total=steps * len(source), desc="sat3d-transfer", unit="step")

    def progress(i, info) -> None:
        bar.n = i * steps + info.step
        bar.set_postfix(pair=i, loss=f"{info.losses['total']:.4f}", refresh=False)
        bar.refresh()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"steps": steps, "lr": args.lr, "delta": args.delta[0], "parser": parser, "out_resolution": args.out_resolution,
              "precision": args.precision}
    if args.compare is not None:
        result = compare_instant_with_trained(G, measure, matrix, source, reference, args.attributes,
                                              init_from_trained=args.init_from_matrix, callback=progress, **common)
        bar.close()
        styles = [(p["styles_trained"], p["styles_instant"]) for p in result.pairs]
    else:
        styles = []
        for i in range(len(source)):
            m = instant_transfer(G, measure, source[i : i + 1], reference, args.attributes,
                                 init=matrix if args.init_from_matrix else None,
                                 callback=lambda info, i=i: progress(i, info), **common)
            styles.append((None, transfer_styles(G, source[i : i + 1], reference, m, args.attributes, args.delta[0],
                                                 combine=True)))
        bar.close()
    with torch.no_grad():
        ref_img = G.synthesis(reference)
        save_png(ref_img[0], out / "reference.png")
        for i, (src_img, (st_trained, st_instant)) in enumerate(zip(G.synthesis(source), styles)):
            instant_img = G.synthesis_from_styles(st_instant)
            save_png(src_img, out / f"source_{i:04d}.png")
            if st_trained is None:
                save_png(instant_img[0], out / f"transfer_{i:04d}.png")
                continue
            trained_img = G.synthesis_from_styles(st_trained)
            save_png(trained_img[0], out / f"transfer_{i:04d}.png")
            save_png(instant_img[0], out / f"instant_{i:04d}.png")
            row = torch.cat([src_img[None], ref_img[:1], trained_img[:1], instant_img[:1]])
            save_png(captioned_grid(row, 4, ["source", "reference", "trained", "instant"])[0], out / f"compare_{i:04d}.png")
    info = {"matrix": str(args.matrix) if args.matrix else None, "attributes": args.attributes, "delta": args.delta,
            "combine": True, "mode": "compare" if args.compare is not None else "instant", "steps": steps, "lr": args.lr,
            "init_from_matrix": args.init_from_matrix, "descriptors": descriptors.source, "clip": args.clip,
            "pretrained": args.pretrained, "parser": args.parser}
    if args.compare is not None:
        _write_comparison(out, result, labels, info)
        s = result.summary
        print(f"compared {s['pairs']} pairs: mean total loss trained {s['trained']['total']:.4f}, instant "
              f"{s['instant']['total']:.4f}; instant lower on {s['instant_wins']} of {s['pairs']}")
    write_text_atomic(out / "transfer.json", json.dumps(info, indent=1))
    print(f"wrote {len(source)} {info['mode']} transfers of {', '.join(args.attributes)} to {out}")
    return 0


def _source_labels(args, n) -> list[str]:
    if args.source_seeds is not None:
        return [f"seed {s}" for s in args.source_seeds]
    return [f"{Path(args.source).name}[{i}]" for i in range(n)]


def _write_comparison(out: Path, result, labels, info) -> None:
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(COMPARE_COLUMNS)
    for p, label in zip(result.pairs, labels):
        w.writerow([p["pair"], label, p["winner"], *(repr(p[side][k]) for side in ("trained", "instant")
                                                      for k in ("total", "ref", "src", "bg", "prob"))])
    write_text_atomic(out / "compare.csv", table.getvalue())
    s = result.summary
    init = "the trained matrix" if info["init_from_matrix"] else "the usual initialisation"
    lines = [f"# SAT3D: trained matrix vs instant per-pair masks ({', '.join(info['attributes'])})", "",
             f"{s['pairs']} pairs; instant masks: {info['steps']} steps at lr {info['lr']:g} from {init}; "
             f"delta {info['delta'][0]:g}; matrix `{info['matrix']}`; descriptors {info['descriptors']}; "
             f"L_bg {'on (' + str(info['parser']) + ')' if info['parser'] else 'off (no --parser)'}.", "",
             *result.mean_terms_table()]
    lines += ["", f"Lower total loss: instant on {s['instant_wins']} pairs, trained on {s['trained_wins']}, "
                  f"ties {s['ties']} (per pair: compare.csv).", ""]
    write_text_atomic(out / "compare.md", "\n".join(lines))


COMMANDS = {"sat3d-train": cmd_sat3d_train, "sat3d-transfer": cmd_sat3d_transfer}


def build_standalone_parser() -> argparse.ArgumentParser:
    """A parser holding only the SAT3D commands (for tests and `python -m targetclip_core.cli.sat3d`)."""
    p = ArgumentParser(prog="targetclip")
    add_parsers(p.add_subparsers(dest="command", required=True))
    return p


def main(argv=None) -> int:
    args = build_standalone_parser().parse_args(argv)
    return run_command(COMMANDS[args.command], args)


if __name__ == "__main__":
    raise SystemExit(main())
