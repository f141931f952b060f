"""StyleSpace S as one flat channel vector, the space SAT3D edits in.

`G.styles(wp)` gives the affine output of every modulated conv, layer by layer.  SAT3D
(Zhai et al., MM 2024, Sec. 3) edits the codes of the *feature* convs only: toRGB codes
set colour mixing of the skip images rather than semantics, and are always kept from
the source.  `StyleLayout` lays the kept channels end to end as [B, n] and maps each
flat index back to (layer name, channel) and the other way round.

Editing (paper Eq. 1): s_edit = s_src + delta * mask * (s_ref - s_src), mask in [0, 1]^n.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from targetclip_core.errors import LatentError


def is_torgb(layer_name: str) -> bool:
    return layer_name.rsplit(".", 1)[-1] == "torgb"


def is_edited(layer_name: str) -> bool:
    """Layers SAT3D edits: feature convs of the synthesis (EG3D: of the tri-plane backbone).

    EG3D's super-resolution codes come after the 3D representation; editing them would
    change the images without changing the 3D scene, so they stay the source's like toRGB.
    StyleGAN3's "input" code is a rotation and translation of its Fourier features, not a
    channel style: it moves the picture, so it stays the source's too.
    """
    return not is_torgb(layer_name) and not layer_name.startswith("superresolution.") and layer_name != "input"


@dataclass(frozen=True)
class StyleLayout:
    """Which layers make up the flat vector, in synthesis order, and how wide each is."""

    layers: tuple[tuple[str, int], ...]  # (layer name, channels) of the edited layers (see is_edited)

    @classmethod
    def from_styles(cls, styles) -> "StyleLayout":
        return cls(tuple((name, int(s.shape[1])) for name, s in styles.items() if is_edited(name)))

    @classmethod
    def from_generator(cls, G) -> "StyleLayout":
        """Read the layout off one tiny probe through the affines (no synthesis)."""
        with torch.no_grad():
            probe = G.to_wplus(torch.zeros(1, G.w_dim, device=G.device))
            return cls.from_styles(G.styles(probe))

    @property
    def n_channels(self) -> int:
        return sum(c for _, c in self.layers)

    @property
    def offsets(self) -> dict[str, int]:
        """Flat index of channel 0 of each layer."""
        out, start = {}, 0
        for name, c in self.layers:
            out[name] = start
            start += c
        return out

    def index_of(self, layer_name: str, channel: int) -> int:
        widths = dict(self.layers)
        if layer_name not in widths:
            raise LatentError(f"{layer_name!r} is not an edited StyleSpace layer (toRGB and super-resolution layers are never edited)")
        if not 0 <= channel < widths[layer_name]:
            raise LatentError(f"{layer_name} has {widths[layer_name]} channels, no channel {channel}")
        return self.offsets[layer_name] + channel

    def channel_of(self, index: int) -> tuple[str, int]:
        if not 0 <= index < self.n_channels:
            raise LatentError(f"flat StyleSpace index {index} out of range [0, {self.n_channels})")
        for name, c in self.layers:
            if index < c:
                return name, index
            index -= c
        raise AssertionError("unreachable")

    def to_json(self) -> list:
        return [[name, c] for name, c in self.layers]

    @classmethod
    def from_json(cls, data) -> "StyleLayout":
        return cls(tuple((str(name), int(c)) for name, c in data))

    def flatten(self, styles) -> torch.Tensor:
        """OrderedDict of per-layer codes -> [B, n] (unedited codes left out)."""
        self.check(styles)
        return torch.cat([styles[name] for name, _ in self.layers], dim=1)

    def unflatten(self, flat: torch.Tensor, like) -> "OrderedDict[str, torch.Tensor]":
        """[B, n] -> per-layer codes in `like`'s order; unedited codes are taken from `like`."""
        self.check(like)
        if flat.dim() != 2 or flat.shape[1] != self.n_channels:
            raise LatentError(f"flat style codes must be [B, {self.n_channels}], got {list(flat.shape)}")
        pieces = dict(zip([n for n, _ in self.layers], flat.split([c for _, c in self.layers], dim=1)))
        batch = flat.shape[0]
        out = OrderedDict()
        for name, s in like.items():
            kept = pieces.get(name, s)
            out[name] = kept if kept.shape[0] == batch else kept.expand(batch, -1)
        return out

    def check(self, styles) -> None:
        got = StyleLayout.from_styles(styles)
        if got != self:
            raise LatentError(
                f"style codes with {len(got.layers)} edited layers / {got.n_channels} channels do not fit "
                f"this layout ({len(self.layers)} layers / {self.n_channels} channels): another generator?"
            )


def flatten_styles(G, styles) -> tuple[torch.Tensor, StyleLayout]:
    """Flat [B, n] non-toRGB codes of `styles` and the layout that maps them back."""
    layout = StyleLayout.from_styles(styles)
    return layout.flatten(styles), layout


def unflatten(flat: torch.Tensor, layout: StyleLayout, source_styles) -> "OrderedDict[str, torch.Tensor]":
    """Per-layer codes from a flat vector; toRGB codes come unchanged from `source_styles`."""
    return layout.unflatten(flat, source_styles)


def edit_styles(s_src: torch.Tensor, s_ref: torch.Tensor, mask: torch.Tensor, delta: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Paper Eq. 1: s_src + delta * mask * (s_ref - s_src) on flat codes [B, n]; mask [n] or [B, n]."""
    return s_src + delta * mask * (s_ref - s_src)


def as_styles(G, latent_or_styles) -> "OrderedDict[str, torch.Tensor]":
    """Accept W [B, w_dim], W+ [B, n_latent, w_dim] or StyleSpace codes; return StyleSpace codes."""
    if isinstance(latent_or_styles, dict):
        return OrderedDict(latent_or_styles)
    if not torch.is_tensor(latent_or_styles):
        raise LatentError(f"expected a W/W+ latent tensor or StyleSpace codes, got {type(latent_or_styles).__name__}")
    return G.styles(G.to_wplus(latent_or_styles.to(G.device).float()))
