"""Real images -> W+ with an e4e or pSp encoder: `load_inverter(path).invert(images)`.

Images are [B,3,H,W] in [-1,1] (the official inference normalisation: ToTensor then
Normalize(0.5, 0.5)); images that are not at the encoder's training size (256) are
resized with an antialiased bilinear filter first.  The codes get the checkpoint's
`latent_avg` added, as pSp/e4e do when trained with `start_from_latent_avg` (e4e always
is).  The generator stored in the same checkpoint is available as `.generator`
(`load_generator` reads these files too).  Faces should be aligned first (alignment.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from targetclip_core.devices import autocast, default_device, widened
from targetclip_core.encoders.e4e import EncoderCheckpoint, build_encoder, read_encoder_checkpoint
from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.weights import resolve_checkpoint


class Inverter(nn.Module):
    """An image encoder plus the average latent it predicts offsets from."""

    def __init__(self, encoder: nn.Module, latent_avg: torch.Tensor | None, add_latent_avg: bool, name: str = ""):
        super().__init__()
        self.encoder = encoder
        self.cfg = encoder.cfg
        self.name = name
        avg = latent_avg if (add_latent_avg and latent_avg is not None) else torch.zeros(self.cfg.w_dim)
        self.register_buffer("latent_avg", avg.reshape(1, 1, -1).float())
        self.adds_latent_avg = bool(add_latent_avg and latent_avg is not None)
        self._generator = None
        self._checkpoint_path: Path | None = None

    @property
    def n_latent(self) -> int:
        return self.cfg.n_styles

    @property
    def w_dim(self) -> int:
        return self.cfg.w_dim

    @property
    def device(self) -> torch.device:
        return self.latent_avg.device

    @property
    def generator_identity(self) -> dict:
        """The layout of the generator these codes are for (StyleGAN2Generator.identity)."""
        n = self.cfg.n_styles
        return {"arch": "stylegan2", "resolution": 2 ** ((n + 2) // 2), "n_latent": n, "w_dim": self.cfg.w_dim}

    @property
    def has_generator(self) -> bool:
        return self._checkpoint_path is not None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check images and bring them to the encoder's input size."""
        images = check_images(images, "images to invert")
        size = self.cfg.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images.to(self.device, torch.float32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return widened(self.encoder(self.prepare(images))) + self.latent_avg  # the mean added in fp32

    @torch.no_grad()
    def invert(self, images: torch.Tensor, batch_size: int = 8, precision: str = "fp32") -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> W+ [B, n_latent, w_dim] (fp32), batch by batch; `precision` (devices.PRECISIONS)
        is the encoder pass's."""
        images = check_images(images, "images to invert")
        with autocast(precision, self.device):
            parts = [self(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        return torch.cat(parts).float()

    @property
    def generator(self):
        """The StyleGAN2 decoder stored in the same checkpoint (loaded on first use)."""
        if self._generator is None:
            if self._checkpoint_path is None:
                raise TargetCLIPError(f"inverter {self.name or ''} has no checkpoint file holding a generator")
            from targetclip_core.generators.load import load_generator

            self._generator = load_generator(self._checkpoint_path, device=self.device)
        return self._generator


def check_images(images, what: str) -> torch.Tensor:
    """Refuse anything that is not a finite [B,3,H,W] float batch, naming what is wrong."""
    if not torch.is_tensor(images):
        raise TargetCLIPError(f"{what}: expected a tensor [B,3,H,W] in [-1,1], got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise TargetCLIPError(f"{what}: expected shape [B,3,H,W] (RGB), got {list(images.shape)}")
    if not images.is_floating_point():
        raise TargetCLIPError(f"{what}: expected float values in [-1,1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise TargetCLIPError(f"{what}: contain NaN or infinite values")
    return images


def load_inverter(path, device=None) -> Inverter:
    """Load `e4e_ffhq_encode.pt` / `psp_ffhq_encode.pt` (or a manifest name) as an Inverter."""
    file = resolve_checkpoint(path)
    ckpt = read_encoder_checkpoint(file)
    inverter = inverter_from_checkpoint(ckpt, file, add_latent_avg=ckpt.opts.get("start_from_latent_avg", True))
    return inverter.to(default_device(device))


def inverter_from_checkpoint(ckpt: EncoderCheckpoint, file, add_latent_avg: bool) -> Inverter:
    if add_latent_avg and ckpt.latent_avg is None:
        raise TargetCLIPError(f"{file}: the encoder predicts offsets from latent_avg, but the checkpoint has none")
    inverter = Inverter(build_encoder(ckpt, file), ckpt.latent_avg, add_latent_avg, name=Path(file).name)
    inverter._checkpoint_path = Path(file) if _has_decoder(ckpt) else None
    return inverter


def _has_decoder(ckpt: EncoderCheckpoint) -> bool:
    return any(isinstance(k, str) and k.startswith("decoder.") for k in ckpt.raw["state_dict"])
