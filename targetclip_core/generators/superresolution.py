"""EG3D's super-resolution modules (NVlabs/eg3d training/superresolution.py): two StyleGAN2 blocks
driven by the last ws entry, from the raw 32-channel feature image to 128/256/512 pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from targetclip_core.generators.stylegan2 import SynthesisLayer, ToRGBLayer
from targetclip_core.generators.fir import fir_kernel_2d, upsample_fir
from targetclip_core.generators.volume_rendering import PLANE_CHANNELS


@dataclass(frozen=True)
class SuperResolutionSpec:
    """Layout of one of EG3D's super-resolution modules."""

    img_resolution: int
    input_resolution: int
    block_channels: tuple[int, int]
    block0_upsamples: bool
    resize_when_smaller_only: bool  # Hybrid4X resizes only smaller inputs; the others any other size


SUPERRESOLUTION_MODULES = {
    "SuperresolutionHybrid2X": SuperResolutionSpec(128, 64, (128, 64), False, False),
    "SuperresolutionHybrid4X": SuperResolutionSpec(256, 128, (128, 64), False, True),
    "SuperresolutionHybrid8X": SuperResolutionSpec(512, 128, (128, 64), True, False),
    "SuperresolutionHybrid8XDC": SuperResolutionSpec(512, 128, (256, 128), True, False),
}


class SuperResolutionBlock(nn.Module):
    """conv0 (optionally 2x up) + conv1 + toRGB, adding to the (upsampled) running image."""

    def __init__(self, in_ch, out_ch, resolution, w_dim, *, up: bool, conv_clamp):
        super().__init__()
        kernel = (1, 3, 3, 1)
        self.up = up
        self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, resolution, up=up, blur_kernel=kernel, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim, resolution, up=False, blur_kernel=kernel, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_ch, 3, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("skip_filter", fir_kernel_2d(kernel), persistent=False)

    def forward(self, x, img, styles, noise_mode, impl):
        x = self.conv0(x, styles[0], noise_mode, impl)
        x = self.conv1(x, styles[1], noise_mode, impl)
        y = self.torgb(x, styles[2], impl)
        return x, (upsample_fir(img, self.skip_filter) if self.up else img) + y


class SuperResolution(nn.Module):
    LAYERS = ("block0.conv0", "block0.conv1", "block0.torgb", "block1.conv0", "block1.conv1", "block1.torgb")

    def __init__(self, spec: SuperResolutionSpec, w_dim: int, *, antialias: bool, conv_clamp):
        super().__init__()
        self.spec, self.antialias = spec, antialias
        c0, c1 = spec.block_channels
        res0 = spec.input_resolution * (2 if spec.block0_upsamples else 1)
        self.block0 = SuperResolutionBlock(PLANE_CHANNELS, c0, res0, w_dim, up=spec.block0_upsamples, conv_clamp=conv_clamp)
        self.block1 = SuperResolutionBlock(c0, c1, spec.img_resolution, w_dim, up=True, conv_clamp=conv_clamp)

    def layers(self):
        for name in self.LAYERS:
            block, layer = name.split(".")
            yield name, getattr(getattr(self, block), layer)

    def forward(self, rgb, features, styles, noise_mode="none", impl="unfused"):
        size = self.spec.input_resolution
        needs = features.shape[-1] < size if self.spec.resize_when_smaller_only else features.shape[-1] != size
        if needs:
            def resize(t):
                return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=self.antialias)
            features, rgb = resize(features), resize(rgb)
        if features.device.type == "cpu":  # oneDNN convolutions: 1.5x faster on NHWC here (bench eg3d)
            features = features.contiguous(memory_format=torch.channels_last)
        x, img = self.block0(features, rgb, styles[:3], noise_mode, impl)
        _, img = self.block1(x, img, styles[3:], noise_mode, impl)
        return img.contiguous()
