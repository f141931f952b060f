"""What every generator of the engine offers, the 2D StyleGAN2 and the 3D-aware EG3D alike, so that
methods, metrics, the CLI and the nodes use one API and never branch on the kind of generator.

Latents: `mapping` gives w [B, w_dim] for both (EG3D conditions on its frontal camera unless given
one), `to_wplus` broadcasts to W+ [B, n_latent, w_dim], the space essences and SAT3D edit; StyleSpace
codes come from `styles` and render with `synthesis_from_styles`. Images are [B, 3, H, W] in about
[-1, 1]. 3D-aware extras (cameras, `render`, `render_views`) exist where `is_3d` is True.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Generator(Protocol):
    is_3d: bool  # True for 3D-aware generators (cameras, depth, orbits)
    config: Any  # the dataclass the network was built from (stored in our safetensors files)

    @property
    def resolution(self) -> int: ...
    @property
    def n_latent(self) -> int: ...
    @property
    def w_dim(self) -> int: ...
    @property
    def z_dim(self) -> int: ...
    @property
    def c_dim(self) -> int: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def identity(self) -> dict:
        """What makes two generators' latents interchangeable (arch, resolution, n_latent, w_dim)."""
    @property
    def output_resolutions(self) -> list[int]:
        """Sizes `synthesis(out_resolution=...)` renders natively."""
    @property
    def mapping_network(self) -> nn.Module:
        """The z -> w network, with its `w_avg` buffer and `has_w_avg` flag."""

    def describe(self) -> str: ...
    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation: float = 1.0,
                truncation_latent: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, z_dim] -> w [B, w_dim], truncated toward `truncation_latent` (default `truncation_latent()`)."""
    def truncation_latent(self) -> torch.Tensor:
        """[1, w_dim]: the trained w_avg, else a sampled mean."""
    def mean_latent(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Mean of `n` mapped samples [1, w_dim]."""
    def to_wplus(self, w: torch.Tensor) -> torch.Tensor:
        """w [B, w_dim] -> W+ [B, n_latent, w_dim] (W+ passes through, checked)."""
    def check_wplus(self, wp: torch.Tensor) -> None: ...
    def layer_names(self) -> list[str]:
        """StyleSpace layers in synthesis order."""
    def styles(self, wp: torch.Tensor) -> "OrderedDict[str, torch.Tensor]": ...
    def synthesis(self, wp: torch.Tensor, noise_mode: str = "const", out_resolution: int | None = None) -> torch.Tensor: ...
    def synthesis_from_styles(self, styles, noise_mode: str = "const", out_resolution: int | None = None) -> torch.Tensor: ...
