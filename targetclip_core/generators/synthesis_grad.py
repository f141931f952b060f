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

Low precision (bf16 / fp16): x, the weight and the offset may come in the reduced type while
style and coef stay fp32 (the caller computes demodulation in fp32). The convolutions and the
elementwise passes then run in the reduced type, every reduction (dL/dstyle, dL/dcoef)
accumulates in fp32, and the gradients come back in their inputs' own types.
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
    """sum over H, W of a * b, per (sample, channel), without a full-size temporary; accumulated in fp32
    (and returned so) for reduced-type inputs."""
    acc = accumulation_dtype(a.dtype)
    out = a.new_zeros(a.shape[:2], dtype=acc)
    for rows in _row_chunks(a):
        out += (a[:, :, rows] * b[:, :, rows]).sum((2, 3), dtype=acc)
    return out


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums of reduced-type (bf16 / fp16) values accumulate in fp32; fp32 and fp64 in their own type."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


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
    xs = x * style.to(x.dtype)[:, :, None, None]
    if conv.up:
        spent = F.conv_transpose2d(xs, weight.transpose(0, 1), stride=2)
        del xs
        y = depthwise_fir(spent, conv.blur, conv.blur_pad)
    else:
        y = F.conv2d(xs, weight, padding=conv.kernel_size // 2)
        spent = xs
    out = _storage_as(spent, y) if y.dtype == offset.dtype else None
    out = torch.addcmul(offset, y, coef.to(y.dtype)[:, :, None, None], out=out)
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
        acc = accumulation_dtype(y.dtype)
        grad_coef = y.new_zeros(coef.shape, dtype=acc)
        scale = coef.to(y.dtype)[:, :, None, None]
        for rows in _row_chunks(y):
            g = torch.ops.aten.leaky_relu_backward(grad_out[:, :, rows], out[:, :, rows], 0.2, True)
            if ctx.conv_clamp is not None:  # out at a bound was clamped: no gradient
                g = g.masked_fill_(out[:, :, rows].abs() >= ctx.conv_clamp, 0)
            grad_coef += (g * y[:, :, rows]).sum((2, 3), dtype=acc)
            torch.mul(g, scale, out=y[:, :, rows])  # y now holds dL/dy
        if conv.up:
            grad_xs = F.conv2d(depthwise_fir_adjoint(y, conv.blur, conv.blur_pad), weight.transpose(0, 1), stride=2)
        else:
            grad_xs = F.conv_transpose2d(y, weight, padding=conv.kernel_size // 2)
        grad_style = channel_dot(grad_xs, x).to(style.dtype) if ctx.needs_input_grad[1] else None
        grad_x = grad_xs.mul_(style.to(grad_xs.dtype)[:, :, None, None]) if ctx.needs_input_grad[0] else None
        grad_coef = grad_coef.to(coef.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_style, grad_coef, None, None, None, None


def synthesis_layer(x, style, coef, offset, weight, conv, conv_clamp):
    """out = clamp(leaky_relu(conv(x * style, weight) * coef + offset)), coef/offset already
    folding the sqrt(2) gain, weight the gain-scaled conv weight and `conv` the ModulatedConv
    (its up/blur settings). Gradients flow to x, style and coef; weight and offset must not
    require grad (the caller falls back to autograd then)."""
    if torch.is_grad_enabled() and (x.requires_grad or style.requires_grad or coef.requires_grad):
        return _FrozenSynthesisLayer.apply(x, style, coef, offset, weight, conv, conv_clamp)
    return layer_forward(x, style, coef, offset, weight, conv, conv_clamp)[1]



def frozen_weight(conv, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen ModulatedConv's gain-scaled weight in `dtype` and its per-(out, in) sums of squares in the
    weight's own type (what demodulation needs), cached on the module and keyed on the weight's storage,
    version and the dtype, so a loaded state or an in-place edit renews them. Autocast itself caches casts
    only of weights that require grad: re-casting every frozen weight at every render costs a pass over the
    whole network (measured: a bf16 forward+backward at 256 px went from 2.0 to 1.4 s)."""
    w = conv.weight
    if w.is_inference():  # no version counter to notice an in-place change: nothing is cached
        with torch.no_grad():
            scaled = w * conv.weight_gain
            return scaled.to(dtype), scaled.square().sum(dim=(2, 3))
    key = (w.data_ptr(), w._version, w.device, w.dtype, dtype)
    cached = getattr(conv, "_frozen_weight_cache", None)
    if cached is None or cached[0] != key:
        # made outside inference mode (ComfyUI runs nodes in it): a later optimisation saves these for backward
        with torch.inference_mode(False), torch.no_grad():
            scaled = w * conv.weight_gain
            # a same-type copy is not kept: it would double the weights' memory to save one multiply
            cached = (key, scaled.to(dtype) if dtype != w.dtype else None, scaled.square().sum(dim=(2, 3)))
        conv._frozen_weight_cache = cached
    weight = cached[1] if cached[1] is not None else w * conv.weight_gain
    return weight, cached[2]
