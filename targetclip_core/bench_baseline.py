"""The synthesis network computed the way rosinality/stylegan2-pytorch computes it on a
machine without its CUDA extensions: per-sample grouped convolutions and the
"native" upfirdn2d (reshape to one channel, zero-insert by padding a 6-D view,
convolve every channel as a separate image).

It exists only as the side-by-side baseline of `targetclip bench generator`, so the
speed-up we report is measured against the same computation on the same weights in
the same run.  It reads the parameters of one of our generators and must give the
same image (the benchmark checks that too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .stylegan2 import StyleGAN2Generator


def _upfirdn2d_native(x, kernel, up, pad0, pad1):
    """upfirdn2d (no downsampling) through the reshape/pad/single-channel-conv route."""
    _, channels, in_h, in_w = x.shape
    out = x.reshape(-1, in_h, in_w, 1)
    # zero insertion: pad a 6-D view between samples
    out = out.view(-1, in_h, 1, in_w, 1, 1)
    out = F.pad(out, [0, 0, 0, up - 1, 0, 0, 0, up - 1])
    out = out.view(-1, in_h * up, in_w * up, 1)
    out = F.pad(out, [0, 0, pad0, pad1, pad0, pad1])
    out = out.permute(0, 3, 1, 2)
    h, w = in_h * up + pad0 + pad1, in_w * up + pad0 + pad1
    out = out.reshape(-1, 1, h, w)
    k = torch.flip(kernel, [0, 1]).view(1, 1, *kernel.shape)
    out = F.conv2d(out, k)
    out = out.reshape(-1, 1, out.shape[2], out.shape[3]).permute(0, 2, 3, 1)
    return out.reshape(-1, channels, out.shape[1], out.shape[2])


def _fused_leaky_relu(x, bias):
    return F.leaky_relu(x + bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)


def _modulated_conv_grouped(x, conv, style, demodulate, up, blur_kernel):
    b, in_ch, h, w = x.shape
    weight = conv.weight_gain * conv.weight[None] * style.view(b, 1, in_ch, 1, 1)
    if demodulate:
        demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
        weight = weight * demod.view(b, conv.out_ch, 1, 1, 1)
    k = conv.kernel_size
    weight = weight.view(b * conv.out_ch, in_ch, k, k)
    if up:
        x = x.view(1, b * in_ch, h, w)
        weight = weight.view(b, conv.out_ch, in_ch, k, k).transpose(1, 2).reshape(b * in_ch, conv.out_ch, k, k)
        out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
        out = out.view(b, conv.out_ch, out.shape[2], out.shape[3])
        return _upfirdn2d_native(out, blur_kernel, 1, *conv.blur_pad)
    x = x.view(1, b * in_ch, h, w)
    out = F.conv2d(x, weight, padding=k // 2, groups=b)
    return out.view(b, conv.out_ch, out.shape[2], out.shape[3])


def baseline_synthesis(G: StyleGAN2Generator, wp: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
    """Render W+ latents with G's weights, rosinality-style. Returns [B, 3, H, W]."""
    styles = list(G.styles(wp).values())
    x = img = None
    for blk in G.synthesis_blocks.values():
        if blk.resolution == 4:
            x = blk.const[None].repeat(wp.shape[0], 1, 1, 1)
        for name in blk.layer_names():
            layer = getattr(blk, name)
            style = styles.pop(0)
            if name == "torgb":
                y = _modulated_conv_grouped(x, layer.conv, style, False, False, None) + layer.bias.view(1, -1, 1, 1)
                if img is not None:
                    img = _upfirdn2d_native(img, blk.skip_filter * 4, 2, 2, 1)
                    y = y + img
                img = y
                continue
            blur = layer.conv.blur if name == "conv0" else None
            x = _modulated_conv_grouped(x, layer.conv, style, True, name == "conv0", blur)
            if noise_mode == "const":
                x = x + layer.noise_strength * layer.noise_const.view(1, 1, *layer.noise_const.shape)
            elif noise_mode == "random":
                x = x + layer.noise_strength * x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()
            x = _fused_leaky_relu(x, layer.bias)
    return img
