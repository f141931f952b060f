"""The latent-space half every generator shares (StyleGAN2, StyleGAN3, and through its backbone EG3D):
sizes from the config, z -> w through the mapping network, W+ as one w per synthesis layer, and the checks
of W+ latents and StyleSpace codes, whose errors name the generator a latent does not fit."""

from __future__ import annotations

import torch
from torch import nn

from targetclip_core.errors import LatentError


def check_wplus_shape(wp, n_latent: int, w_dim: int, generator: str) -> None:
    """A W+ latent must be a finite [B, n_latent, w_dim] tensor; the error names the generator.

    A latent inside an optimisation (one that is part of a graph: it requires grad) is not checked for NaN:
    reading the check makes the host wait for the device at every step, and the optimisation loops refuse a
    non-finite loss themselves (methods.optimization.check_converged)."""
    if not torch.is_tensor(wp) or wp.dim() != 3 or wp.shape[1:] != (n_latent, w_dim):
        shape = list(wp.shape) if torch.is_tensor(wp) else type(wp).__name__
        raise LatentError(
            f"W+ latent of shape {shape} does not fit this generator: it expects "
            f"[B, {n_latent}, {w_dim}] ({generator}). Was it made for another generator?"
        )
    if not wp.requires_grad and not torch.isfinite(wp).all():
        raise LatentError("W+ latent contains NaN or infinite values")



class MappedGenerator:
    """The latent-space half of the generator protocol, shared by StyleGAN2 and StyleGAN3: sizes from
    `self.config`, z -> w through `self.mapping` (a MappingNetwork), W+ as one w per synthesis layer."""

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def w_dim(self) -> int:
        return self.config.w_dim

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def c_dim(self) -> int:
        return self.config.c_dim

    @property
    def device(self) -> torch.device:
        return self.mapping.w_avg.device

    @property
    def mapping_network(self) -> nn.Module:
        """The z -> w network (`self.mapping`; holds w_avg and whether the checkpoint trained it)."""
        return self.mapping

    def truncation_latent(self) -> torch.Tensor:
        """The centre truncation moves toward: the trained w_avg, else a sampled mean [1, w_dim]."""
        return self.mapping.truncation_latent()

    def mean_latent(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Mean of `n` mapped samples (deterministic for a seed): [1, w_dim]."""
        return self.mapping.mean(n, seed)

    def to_wplus(self, w: torch.Tensor) -> torch.Tensor:
        if w.dim() == 3:
            self.check_wplus(w)
            return w
        if w.dim() != 2 or w.shape[1] != self.w_dim:
            raise LatentError(f"expected w of shape [B, {self.w_dim}], got {list(w.shape)}")
        return w[:, None, :].expand(-1, self.n_latent, -1)

    def check_wplus(self, wp: torch.Tensor) -> None:
        check_wplus_shape(wp, self.n_latent, self.w_dim, self.describe())

    def forward(self, z, c=None, truncation=1.0, noise_mode="const", out_resolution=None):
        return self.synthesis(self.to_wplus(self.mapping(z, c, truncation=truncation)), noise_mode, out_resolution)

    def ordered_style_codes(self, styles, widths: list[int]) -> list[torch.Tensor]:
        """StyleSpace codes (a dict by `layer_names()` or a list in that order) as a list, each checked to be
        [B, width] for its layer."""
        return ordered_style_codes(styles, self.layer_names(), self.describe(), widths)


def ordered_style_codes(styles, names: list[str], what: str, widths: list[int] | None = None) -> list[torch.Tensor]:
    """StyleSpace codes of the generator `what` (a dict by layer name or a list in the order of `names`) as a list;
    with `widths`, each is checked to be [B, width]. Errors name the missing layers and the generator."""
    if isinstance(styles, dict):
        missing = [n for n in names if n not in styles]
        if missing:
            raise LatentError(f"style codes missing for layers {missing[:4]}{'...' if len(missing) > 4 else ''} of {what}")
        styles = [styles[n] for n in names]
    styles = list(styles)
    if len(styles) != len(names):
        raise LatentError(f"expected {len(names)} style codes for {what}, got {len(styles)}")
    for name, s, width in zip(names, styles, widths or ()):
        if s.dim() != 2 or s.shape[1] != width:
            raise LatentError(f"style code of {name} has shape {list(s.shape)}, expected [B, {width}]")
    return styles
