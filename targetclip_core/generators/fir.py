"""The FIR filters of StyleGAN2's resampling (the [1, 3, 3, 1] blur), as depthwise convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from targetclip_core.errors import CheckpointError


def fir_kernel_2d(kernel_1d: tuple[int, ...]) -> torch.Tensor:
    k = torch.tensor(kernel_1d, dtype=torch.float32)
    k = k[:, None] * k[None, :]
    return k / k.sum()


def depthwise_fir(x, kernel_2d, pad):
    """Filter every channel with the same 2D FIR (true convolution), zero padding (pad0, pad1)."""
    c = x.shape[1]
    k = kernel_2d.flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, *kernel_2d.shape)
    if pad[0] == pad[1]:  # the padding argument avoids a padded copy (and its backward)
        return F.conv2d(x, k, groups=c, padding=pad[0])
    return F.conv2d(F.pad(x, (pad[0], pad[1], pad[0], pad[1])), k, groups=c)


def depthwise_fir_adjoint(g, kernel_2d, pad):
    """Adjoint of `depthwise_fir(x, kernel_2d, pad)` (its backward w.r.t. x): a depthwise
    correlation with the kernel itself (the forward convolves, i.e. flips it), full padding."""
    c, taps = g.shape[1], kernel_2d.shape[0]
    k = kernel_2d.to(g.dtype)[None, None].expand(c, 1, taps, taps)
    full = (taps - 1 - pad[0], taps - 1 - pad[1])
    if full[0] == full[1]:
        return F.conv2d(g, k, groups=c, padding=full[0])
    return F.conv2d(F.pad(g, (full[0], full[1], full[0], full[1])), k, groups=c)


def upsample_fir(x, kernel_2d):
    """2x upsampling by zero insertion + FIR, as one stride-2 transposed depthwise conv."""
    c = x.shape[1]
    taps = kernel_2d.shape[0]
    k = (kernel_2d * 4).to(x.dtype)[None, None].expand(c, 1, taps, taps)
    # zero insertion then padding (pad0, taps - 2 - pad0) and a true convolution equals a
    # transposed conv with padding taps - 1 - pad0; output exactly 2H x 2W
    pad0 = (taps - 1) // 2 + 1
    return F.conv_transpose2d(x, k, stride=2, padding=taps - 1 - pad0, groups=c)


def check_fir_kernel(kernel, expected, key, file):
    """The resampling filter stored in a checkpoint must be the one the network is built with."""
    if kernel.shape != expected.shape or not torch.allclose(kernel.float(), expected, atol=1e-6):
        raise CheckpointError(f"{file}: {key} is not the [1,3,3,1] FIR kernel this implementation supports")
