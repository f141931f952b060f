"""A synthesis layer with a hand-written backward, for gradients w.r.t. latents only.

Essence optimisation, inversion and SAT3D backpropagate through a frozen generator to
its W+ / StyleSpace codes. Autograd's generic backward of the layer

    out = clamp(leaky_relu(conv(x * s, W) * coef + offset))

allocates a fresh full-size tensor for nearly every elementwise step (the leaky ReLU
gradient, addcmul's two gradients and the product it reduces, mul's two gradients and
its product).  On CPU each fresh tensor of this size is new memory from the kernel, so
page faults cost as much as the arithmetic (`bench generator` measured a third of
forward+backward time).  Here the backward writes into the buffers the forward already
owns, and the reductions run over row chunks small enough to be recycled by malloc.

It is exact (the same operations, in a different memory order) and is used only when
the layer's weights are frozen; with trainable weights the layer falls back to autograd.
The forward's buffers are reused by the backward, so a graph can be backpropagated once
(retain_graph=True is refused with a clear error; double backward is not supported).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from targetclip_core.generators.fir import depthwise_fir, depthwise_fir_adjoint

# elements per chunk of the chunked reductions (~8 MB in fp32): below glibc's largest
# mmap threshold, so the temporaries come from the heap instead of fresh pages
_CHUNK_ELEMENTS = 1 << 21


def _row_chunks(t: torch.Tensor):
    batch, channels, rows, width = t.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, batch * channels * width))
    return [slice(i, i + step) for i in range(0, rows, step)]


def channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over H, W of a * b, per (sample, channel), without a full-size temporary."""
    out = a.new_zeros(a.shape[:2])
    for rows in _row_chunks(a):
        out += (a[:, :, rows] * b[:, :, rows]).sum((2, 3))
    return out


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _storage_as(buffer: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """An uninitialised tensor shaped and strided as `like`, on `buffer`'s memory (which
    the caller no longer needs), or None when it does not fit."""
    if buffer.dtype != like.dtype or buffer.device != like.device or not _dense(like):
        return None
    if buffer.untyped_storage().nbytes() < like.numel() * like.element_size():
        return None
    return like.new_empty(0).set_(buffer.untyped_storage(), 0, like.shape, like.stride())


def layer_forward(x, style, coef, offset, weight, conv, conv_clamp):
    """(y, out): the conv output before demodulation (kept for the backward) and the
    layer's activation, written over a buffer the conv no longer needs."""
    xs = x * style[:, :, None, None]
    if conv.up:
        spent = F.conv_transpose2d(xs, weight.transpose(0, 1), stride=2)
        del xs
        y = depthwise_fir(spent, conv.blur, conv.blur_pad)
    else:
        y = F.conv2d(xs, weight, padding=conv.kernel_size // 2)
        spent = xs
    out = _storage_as(spent, y) if y.dtype == offset.dtype == coef.dtype else None
    out = torch.addcmul(offset, y, coef[:, :, None, None], out=out)
    F.leaky_relu_(out, 0.2)
    if conv_clamp is not None:
        out.clamp_(-conv_clamp, conv_clamp)
    return y, out


class _FrozenSynthesisLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, style, coef, offset, weight, conv, conv_clamp):
        y, out = layer_forward(x, style, coef, offset, weight, conv, conv_clamp)
        ctx.conv, ctx.conv_clamp, ctx.spent = conv, conv_clamp, False
        ctx.save_for_backward(x, style, coef, weight, y, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.spent:
            raise RuntimeError(
                "this generator graph was already backpropagated: the frozen-weight fast path reuses its buffers, "
                "so retain_graph=True cannot backpropagate it twice (render again instead)"
            )
        ctx.spent = True
        x, style, coef, weight, y, out = ctx.saved_tensors
        conv = ctx.conv
        # y becomes dL/dy in place; dL/dcoef is reduced chunk by chunk on the way
        grad_coef = y.new_zeros(coef.shape)
        scale = coef[:, :, None, None]
        for rows in _row_chunks(y):
            g = torch.ops.aten.leaky_relu_backward(grad_out[:, :, rows], out[:, :, rows], 0.2, True)
            if ctx.conv_clamp is not None:  # out at a bound was clamped: no gradient
                g = g.masked_fill_(out[:, :, rows].abs() >= ctx.conv_clamp, 0)
            grad_coef += (g * y[:, :, rows]).sum((2, 3))
            torch.mul(g, scale, out=y[:, :, rows])  # y now holds dL/dy
        if conv.up:
            grad_xs = F.conv2d(depthwise_fir_adjoint(y, conv.blur, conv.blur_pad), weight.transpose(0, 1), stride=2)
        else:
            grad_xs = F.conv_transpose2d(y, weight, padding=conv.kernel_size // 2)
        grad_style = channel_dot(grad_xs, x) if ctx.needs_input_grad[1] else None
        grad_x = grad_xs.mul_(style[:, :, None, None]) if ctx.needs_input_grad[0] else None
        return grad_x, grad_style, grad_coef if ctx.needs_input_grad[2] else None, None, None, None, None


def synthesis_layer(x, style, coef, offset, weight, conv, conv_clamp):
    """out = clamp(leaky_relu(conv(x * style, weight) * coef + offset)), coef/offset already
    folding the sqrt(2) gain, weight the gain-scaled conv weight and `conv` the ModulatedConv
    (its up/blur settings). Gradients flow to x, style and coef; weight and offset must not
    require grad (the caller falls back to autograd then)."""
    if torch.is_grad_enabled() and (x.requires_grad or style.requires_grad or coef.requires_grad):
        return _FrozenSynthesisLayer.apply(x, style, coef, offset, weight, conv, conv_clamp)
    return layer_forward(x, style, coef, offset, weight, conv, conv_clamp)[1]


def autocast_enabled(device_type: str) -> bool:
    """Under autocast the layer's dtypes mix; the hand-written backward is left out then."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
