"""StyleGAN3's synthesis computed the way NVlabs/stylegan3 computes it on a machine without its CUDA
kernels: `modulated_conv2d` with per-sample weights as one grouped convolution, and the reference
`filtered_lrelu` (`_filtered_lrelu_ref`) built from the reference `upfirdn2d`, which upsamples by
inserting zeros into a full-size tensor and downsamples by computing every pixel, then dropping most.

The side-by-side baseline of `targetclip bench generator --arch stylegan3-t|r`: it reads the parameters
of one of our StyleGAN3Generators and must give the same image (the benchmark checks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def upfirdn2d_reference(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0):
    """NVlabs' `_upfirdn2d_ref`: zero insertion, pad/crop, true convolution, decimation."""
    if f is None:
        f = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    b, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    x = x.reshape(b, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(b, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def _modulated_conv2d_ref(x, weight, s, demodulate, padding, input_gain):
    b = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w = weight
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    w = w.unsqueeze(0) * s[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum([2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    w = w * input_gain
    x = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, in_ch, kh, kw), padding=padding, groups=b)
    return x.reshape(b, out_ch, *x.shape[2:])


def nvlabs_stylegan3_synthesis(G, wp: torch.Tensor) -> torch.Tensor:
    """Images of a StyleGAN3Generator `G` for W+ `wp`, by NVlabs' reference computation."""
    styles = list(G.styles(wp).values())
    x = G.input(styles[0])
    for layer, s in zip(G.layers.values(), styles[1:]):
        spec = layer.spec
        if spec.is_torgb:
            s = s / math.sqrt(spec.in_channels * spec.conv_kernel**2)
        x = _modulated_conv2d_ref(x, layer.weight, s, not spec.is_torgb, spec.conv_kernel - 1,
                                  layer.magnitude_ema.rsqrt())
        gain, slope = (1.0, 1.0) if spec.is_torgb else (math.sqrt(2), 0.2)
        x = filtered_lrelu_reference(x, layer.up_filter, layer.down_filter, layer.bias, spec.up_factor, spec.down_factor,
                                     spec.padding, gain, slope, layer.conv_clamp)
    return x * G.config.output_scale


def filtered_lrelu_reference(x, fu, fd, b, up, down, padding, gain, slope, clamp):
    """NVlabs' `_filtered_lrelu_ref`: bias, upsample, leaky ReLU and gain, clamp, downsample."""
    x = x + b[None, :, None, None]
    x = upfirdn2d_reference(x, fu, up=up, padding=padding, gain=up**2)
    x = F.leaky_relu(x, slope) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d_reference(x, fd, down=down)
