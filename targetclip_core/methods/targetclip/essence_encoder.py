"""The essence encoder (TargetCLIP Sec. 4): an e4e network fine-tuned to map a target image to its essence b.

Same architecture and checkpoint layout as e4e (`encoders.py`); its output is used as b
directly (G(w + b) for any source w), with `latent_avg` added only if the checkpoint was
trained with `start_from_latent_avg` (TargetCLIP's own coach honours that option too).
Training lives in `encoder_training.py`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from targetclip_core.devices import autocast, default_device
from targetclip_core.encoders.e4e import EncoderCheckpoint, read_encoder_checkpoint
from targetclip_core.encoders.inversion import (
    Inverter,
    check_images,
    inverter_from_checkpoint,
)
from targetclip_core.errors import CheckpointError
from targetclip_core.io.weights import resolve_checkpoint
from targetclip_core.methods.targetclip.essence import Essence, target_thumbnails


class EssenceEncoder(nn.Module):
    """Target image(s) -> essence vector(s) b in one forward pass."""

    def __init__(self, inverter: Inverter):
        super().__init__()
        self.net = inverter  # resizing to the input size and the optional latent_avg live there
        self.name = inverter.name

    @property
    def cfg(self):
        return self.net.cfg

    @property
    def generator_identity(self) -> dict:
        return self.net.generator_identity

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> b [B, n_latent, w_dim]; differentiable (training uses it)."""
        return self.net(targets)

    @torch.no_grad()
    def encode(self, target: torch.Tensor, name: str = "", precision: str = "fp32") -> Essence | list[Essence]:
        """One target [1,3,H,W] -> an Essence; a batch -> a list of Essences (one per target). `precision`
        (devices.PRECISIONS) is the encoder pass's; the essences are fp32."""
        targets = check_images(target, "target images")
        with autocast(precision, self.net.device):
            vectors = self(targets)
        vectors = vectors.float().cpu()
        thumbs = target_thumbnails(targets)
        essences = [
            Essence(
                vector=v[None],
                generator=self.generator_identity,
                thumbnail=torch.from_numpy(t),
                name=name if targets.shape[0] == 1 else f"{name}{i}",
                source="encoder",
                losses={},
            )
            for i, (v, t) in enumerate(zip(vectors, thumbs))
        ]
        return essences[0] if len(essences) == 1 else essences


ESSENCE_FORMAT = "targetclip.essence_encoder"  # opts.format of the checkpoints train-encoder writes
ESSENCE_OPTS = ("num_consistency", "lambda_consistency")  # TargetCLIP's coach options: an essence encoder's run


def inverter_reason(ckpt: EncoderCheckpoint) -> str | None:
    """Why an e4e-layout checkpoint is an inverter (photo -> W+ latent) rather than an essence encoder, or None.

    Both share one layout. An essence encoder is marked by our opts.format or by TargetCLIP's training options
    (ESSENCE_OPTS); without those, one trained with start_from_latent_avg is an inverter (e4e always is: its
    output is a whole latent around the mean face, not an offset from a source). A checkpoint with no opts is taken as an essence encoder (a hand-made file)."""
    opts = ckpt.opts
    if opts.get("format") == ESSENCE_FORMAT or any(k in opts for k in ESSENCE_OPTS):
        return None
    if opts.get("start_from_latent_avg") is True:
        return "its opts say start_from_latent_avg: it predicts latents around latent_avg"
    return None


def load_essence_encoder(path, device=None) -> EssenceEncoder:
    """Load a TargetCLIP essence encoder (e4e checkpoint layout), e.g. one `targetclip train-encoder` wrote.

    An e4e/pSp inverter (same layout, e.g. e4e_ffhq_encode.pt) is refused (`inverter_reason`): its output is a
    latent, and used as an essence it would add a whole face to every source."""
    file = resolve_checkpoint(path)
    ckpt = read_encoder_checkpoint(file)
    why = inverter_reason(ckpt)
    if why:
        raise CheckpointError(
            f"{file}: an e4e/pSp inverter (photo -> W+ latent; {why}), not a TargetCLIP essence encoder. Use it to "
            "invert photos (`targetclip invert` / `edit --encoder`, or the 'inverter' role); an essence encoder "
            "comes from `targetclip train-encoder`.")
    inverter = inverter_from_checkpoint(ckpt, file, add_latent_avg=bool(ckpt.opts.get("start_from_latent_avg", False)))
    inverter.name = Path(file).stem
    return EssenceEncoder(inverter).to(default_device(device)).eval()
