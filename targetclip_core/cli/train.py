"""`targetclip train-encoder`: fine-tune an e4e checkpoint into a TargetCLIP essence encoder.

cli.main wires it in with `add_parsers(sub)` and `COMMANDS`.  Imports stay light at module
level so `targetclip --help` does not load torch.
"""

from __future__ import annotations

import signal
import sys
import threading

from targetclip_core.cli.args import (
    DEVICE_HELP,
    add_device_arg,
    float_in,
    non_negative_float,
    positive_float,
    positive_int,
    resolution_or_auto,
    seed_arg,
)
from targetclip_core.io.files import check_output_path


def add_parsers(subparsers) -> None:
    """Add the train-encoder command to the main parser's subparsers."""
    t = subparsers.add_parser(
        "train-encoder", help="train the essence encoder: e4e fine-tuned to map a target image to its essence (paper Sec. 4)",
        description="Fine-tune an e4e checkpoint so that it maps a target image straight to its essence b "
                    "(used as G(w + b)). Writes best_model.pt, last.pt and loss_log.csv to --out-dir. "
                    "Ctrl-C stops after the current step and saves last.pt; --resume continues.",
    )
    t.add_argument("--images", required=True, help="folder of target images (.jpg/.png/.webp, searched recursively)")
    t.add_argument("--init", required=True, help="e4e checkpoint to start from (official layout, e.g. e4e_ffhq_encode.pt)")
    t.add_argument("--out-dir", required=True, help="run folder: best_model.pt, last.pt, loss_log.csv")
    t.add_argument("--generator", "-g", default=None, help="generator checkpoint (default: the decoder stored in --init)")
    t.add_argument("--clip", default="ViT-B-32", help="open_clip architecture, local-dir:..., hf-hub:... (default ViT-B-32)")
    t.add_argument("--clip-pretrained", default="openai", help="open_clip tag or checkpoint file (default openai); 'none' for random")
    t.add_argument("--sources", default=None, help="W+ source latents, e.g. the official encoder_sources_5.pt (default: sampled)")
    t.add_argument("--n-sources", type=positive_int, default=5, help="sources sampled from the generator when --sources is not given")
    t.add_argument("--steps", type=positive_int, default=3000, help="training steps in all, a resumed run included (default 3000)")
    t.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate (default 1e-4, as the official coach)")
    t.add_argument("--batch-size", type=positive_int, default=4, help="target images per step; each renders one edit per source (default 4)")
    t.add_argument("--optimizer", choices=["ranger", "adam"], default="ranger", help="ranger (the official coach, default) or adam")
    t.add_argument("--lambda-consistency", type=non_negative_float, default=0.5, help="weight of the consistency loss (default 0.5, as the paper)")
    t.add_argument("--lambda-l2", type=non_negative_float, default=0.003, help="weight of ||b|| (default 0.003)")
    t.add_argument("--val-images", default=None, help="folder of validation images (default: hold out --val-fraction)")
    t.add_argument("--val-fraction", type=float_in(0, 1, open_high=True), default=0.05,
                   help="share of the images held out for validation, in [0, 1) (default 0.05)")
    t.add_argument("--val-every", type=positive_int, default=250, help="validate (and keep best_model.pt) every N steps (default 250)")
    t.add_argument("--save-every", type=positive_int, default=500, help="write last.pt every N steps (default 500)")
    t.add_argument("--out-resolution", type=resolution_or_auto, default="auto", help="render resolution for the loss (default: auto = CLIP's size)")
    t.add_argument("--no-flip", action="store_true", help="no random horizontal flips of the training images")
    t.add_argument("--seed", type=seed_arg, default=0, help="seed of the sampled sources, batch order and flips (default 0)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out-dir from last.pt")
    add_device_arg(t, help=DEVICE_HELP)


def cmd_train_encoder(args) -> int:
    from tqdm import tqdm

    from targetclip_core.devices import default_device
    from targetclip_core.encoders.clip import load_clip
    from targetclip_core.methods.targetclip.encoder_training import EncoderTrainingConfig, train_essence_encoder

    check_output_path(args.out_dir, "run folder", folder=True)
    config = EncoderTrainingConfig(
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, n_sources=args.n_sources, optimizer=args.optimizer,
        lambdas=(1.0, args.lambda_consistency, args.lambda_l2), val_fraction=args.val_fraction, val_every=args.val_every,
        save_every=args.save_every, flip=not args.no_flip, seed=args.seed,
        out_resolution=args.out_resolution,
    )
    pretrained = None if args.clip_pretrained.lower() == "none" else args.clip_pretrained
    clip = load_clip(args.clip, pretrained, device=default_device(args.device),
                     where="anywhere, and pass its path as --clip-pretrained")
    bar = tqdm(total=args.steps, desc="train-encoder", unit="step")
    interrupt = _StopOnInterrupt()

    def progress(info) -> bool:
        bar.n = info.step
        shown = {"total": info.losses["total"], "sim": info.losses["similarity"], "cons": info.losses["consistency"],
                 "l2": info.losses["l2"]}
        postfix = {k: f"{v:.4f}" for k, v in shown.items()}
        if info.best_val_loss is not None:
            postfix["best_val"] = f"{info.best_val_loss:.4f}@{info.best_step}"
        bar.set_postfix(postfix)  # refreshes the bar too
        return not interrupt.requested

    try:
        with interrupt:
            result = train_essence_encoder(
                args.init, args.images, args.out_dir, generator=args.generator, clip=clip, sources=args.sources,
                val_images=args.val_images, config=config, resume=args.resume, device=args.device, callback=progress,
            )
    finally:
        bar.close()
    best = "none" if result.best_val_loss is None else f"{result.best_val_loss:.4f} at step {result.best_step}"
    print(f"{'stopped' if result.stopped else 'finished'} at step {result.global_step}/{args.steps}; "
          f"best validation loss {best}")
    print(f"wrote {result.best_path}, {result.last_path} and {result.log_path}")
    if result.stopped:
        print("continue with the same command and --resume", file=sys.stderr)
        return 130
    return 0


class _StopOnInterrupt:
    """The first Ctrl-C asks the run to stop after the current step (last.pt is saved); a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


COMMANDS = {"train-encoder": cmd_train_encoder}
