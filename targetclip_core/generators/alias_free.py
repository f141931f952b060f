"""StyleGAN3's alias-free resampling (Karras et al. 2021) in plain PyTorch: the low-pass filter design
and the filtered leaky ReLU (bias, upsample, leaky ReLU + clamp, downsample) of NVlabs/stylegan3.

The computation is the one of NVlabs' reference path (`filtered_lrelu._filtered_lrelu_ref`, built from
`upfirdn2d` and `bias_act`), which its CUDA kernel approximates; their CUDA-only fused kernel is not
needed.  Upsampling by zero insertion is a strided transposed convolution and downsampling a strided
convolution, one axis at a time for the separable (Kaiser) filters, so no zero-stuffed or discarded
pixels are ever computed.

Filter design reproduces `scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)` (Kaiser window) and
NVlabs' radially symmetric jinc filter in float64 numpy: published checkpoints store their filters, so
the design only runs for networks built from a config (tests, benchmarks); scipy is not needed for 30
lines (tests compare the design with the values NVlabs' code stored in the conformance fixtures).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- filter design


def kaiser_beta(attenuation_db: float) -> float:
    """Kaiser window beta for a stop-band attenuation in dB (Kaiser's formula, as scipy.signal.kaiser_beta)."""
    a = attenuation_db
    if a > 50:
        return 0.1102 * (a - 8.7)
    if a > 21:
        return 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    return 0.0


def kaiser_attenuation(numtaps: int, width: float) -> float:
    """Attenuation in dB of a Kaiser FIR of `numtaps` taps and transition `width` (fraction of Nyquist)."""
    return 2.285 * (numtaps - 1) * math.pi * width + 7.95


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False) -> torch.Tensor | None:
    """NVlabs' `SynthesisLayer.design_lowpass_filter`: None for one tap, else a float32 filter
    ([numtaps] separable Kaiser low-pass, or [numtaps, numtaps] radially symmetric jinc) summing to one."""
    if numtaps < 1:
        raise ValueError(f"a filter needs at least one tap, got {numtaps}")
    if numtaps == 1:
        return None
    nyquist = fs / 2
    beta = kaiser_beta(kaiser_attenuation(numtaps, width / nyquist))
    window = np.kaiser(numtaps, beta)
    if not radial:
        m = np.arange(numtaps) - (numtaps - 1) / 2
        c = cutoff / nyquist
        f = c * np.sinc(c * m) * window
        return torch.as_tensor(f / f.sum(), dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    arg = torch.from_numpy(2 * cutoff * np.pi * r)
    j1 = torch.special.bessel_j1(arg).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(r > 0, j1 / (np.pi * r), cutoff)  # the jinc's limit at r = 0
    f = f * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


# --------------------------------------------------------------------------- resampling


def upsample_matrix(f: torch.Tensor | None, up: int, pad: tuple[int, int], length: int) -> torch.Tensor:
    """`upfirdn2d` along one axis as a [out, length] matrix: insert up-1 zeros after every sample, pad
    (pad0, pad1) (negative: crop), convolve with `f` * up (its share of the gain up**2)."""
    if f is None:  # the identity filter ([[1]] in NVlabs' code): only padding or cropping
        if up != 1:
            raise ValueError("upsampling needs a filter")
        f = torch.ones(1)
    if f.dim() != 1:
        raise ValueError("2D upsampling filters do not occur in StyleGAN3 (only its down filters are radial)")
    taps = f.numel()
    out = length * up + pad[0] + pad[1] - taps + 1
    if out < 1:
        raise ValueError(f"{length} samples padded by {pad} are shorter than a {taps}-tap filter")
    # row i of `full` is the response to a unit impulse at input sample i (a true convolution)
    full = F.conv_transpose1d(torch.eye(length, dtype=torch.float64)[:, None], (f.double() * up).view(1, 1, taps),
                              stride=up)[:, 0]
    start = taps - 1 - pad[0]
    window = F.pad(full, (max(-start, 0), max(start + out - full.shape[1], 0)))[:, max(start, 0):][:, :out]
    return window.t().to(torch.float32).contiguous()


def downsample_matrix(f: torch.Tensor | None, down: int, length: int) -> torch.Tensor:
    """`upfirdn2d(f, down=down)` along one axis as a [out, length] matrix: a valid convolution with `f`,
    every `down`-th sample kept."""
    f = torch.ones(1) if f is None else f
    taps = f.numel()
    out = (length - taps) // down + 1
    m = torch.zeros(out, length, dtype=torch.float64)
    rows = torch.arange(out)[:, None]
    m[rows, rows * down + torch.arange(taps)] = f.double().flip(0)
    return m.to(torch.float32)


def _along(x: torch.Tensor, width: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    """Apply one [out, in] matrix along the width and one along the height (GEMMs: faster on CPU than the
    equivalent strided depthwise convolutions, and exact)."""
    x = x @ width.to(x.dtype).t()
    return torch.matmul(height.to(x.dtype), x)


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None, b: torch.Tensor, *, up: int,
                   down: int, padding: tuple[int, int, int, int], gain: float, slope: float,
                   clamp: float | None) -> torch.Tensor:
    """NVlabs' `filtered_lrelu` reference: x + b, upsample by `up` with `fu` (padding [x0, x1, y0, y1]),
    leaky ReLU (`slope`) times `gain`, clamp to +-`clamp`, downsample by `down` with `fd`."""
    x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    px0, px1, py0, py1 = padding
    if fu is not None or up > 1 or any(padding):
        h, w = x.shape[-2:]
        x = _along(x, upsample_matrix(fu, up, (px0, px1), w).to(x.device),
                   upsample_matrix(fu, up, (py0, py1), h).to(x.device))
    # x is a fresh tensor here: without autograd the full-size activation is changed in place
    inplace = not torch.is_grad_enabled()
    if slope != 1:
        x = F.leaky_relu_(x, slope) if inplace else F.leaky_relu(x, slope)
    # the gain is positive: clamp(g * y, +-c) = g * clamp(y, +-c / g), and g rides on the down filter
    if clamp is not None:
        x = x.clamp_(-clamp / gain, clamp / gain) if inplace else x.clamp(-clamp / gain, clamp / gain)
    if fd is None and down == 1:
        return x * gain if gain != 1 else x
    if fd is not None and fd.dim() == 2:  # StyleGAN3-R's radially symmetric filter: not separable
        c = x.shape[1]
        k = (fd * gain).flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, *fd.shape)
        return F.conv2d(x, k, stride=down, groups=c)
    h, w = x.shape[-2:]
    fd = torch.ones(1) if fd is None else fd
    return _along(x, downsample_matrix(fd * gain, down, w).to(x.device), downsample_matrix(fd, down, h).to(x.device))
