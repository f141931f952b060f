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

from targetclip_core.generators.stylegan2 import StyleGAN2Generator


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


# --------------------------------------------------------------------------- the official optimiser loop


def _official_clip_encode(C, img):
    """The official CLIP loss input: nearest x7 upsampling, average pooling, no mean/std."""
    size = img.shape[-1]
    x = F.interpolate(img, scale_factor=7, mode="nearest")
    x = F.avg_pool2d(x, kernel_size=size * 7 // C.input_size)
    return C.model.encode_image(x).float()


def official_style_step(G, C, state: dict, step: int, steps: int, use_baseline_generator: bool = True) -> float:
    """One step of the official TargetCLIP optimisation loop, re-implemented faithfully.

    Per step, as the official script does: sources re-rendered at full resolution and
    re-encoded, a new Adam for the per-source coefficients, edit latents built source by
    source in Python, full-resolution renders upsampled x7 for CLIP, the edit codes
    normalised twice, host syncs for every coefficient and the losses.
    `state` holds: sources [N,n,w], direction [1,n,w] (requires grad), coefficients (list of
    [1] tensors), optimizer (Adam over direction), target_code [1,D].
    """
    from targetclip_core.methods.targetclip.optimize import official_lr

    render = (lambda wp: baseline_synthesis(G, wp)) if use_baseline_generator else G.synthesis
    opt = state["optimizer"]
    opt.param_groups[0]["lr"] = official_lr(step, steps, 0.2)
    coef_opt = torch.optim.Adam(state["coefficients"], lr=0.2, weight_decay=0.01)
    sources, direction, coefficients = state["sources"], state["direction"], state["coefficients"]
    n = sources.shape[0]
    with torch.no_grad():
        src_codes = _official_clip_encode(C, render(sources))
    latents = torch.stack([sources[i : i + 1] + coefficients[i] * direction for i in range(n)]).squeeze(1)
    edit_codes = _official_clip_encode(C, render(latents))
    edit_codes = edit_codes / edit_codes.norm(dim=-1, keepdim=True)
    src_n = src_codes / src_codes.norm(dim=-1, keepdim=True)
    deltas = src_n - edit_codes
    deltas = deltas / deltas.norm(dim=-1, keepdim=True)
    consistency = (1 - deltas @ deltas.t()).sum() / (n * n - n)
    edit_codes = edit_codes / edit_codes.norm(dim=-1, keepdim=True)
    transfer = 1 - (edit_codes @ state["target_code"].t()).mean()
    loss = 0.5 * consistency + transfer
    _ = [c.item() for c in coefficients]
    opt.zero_grad()
    coef_opt.zero_grad()
    loss.backward()
    opt.step()
    coef_opt.step()
    return float(loss.item())


def official_style_state(G, C, target_image, sources) -> dict:
    """Initial state for `official_style_step`, as the official script sets it up."""
    from targetclip_core.methods.targetclip.optimize import sample_sources

    direction = sample_sources(G, 1, 0.7, seed=0).requires_grad_(True)
    with torch.no_grad():
        t = C.encode_image(target_image)
    return {
        "sources": sources,
        "direction": direction,
        "coefficients": [torch.ones(1, device=sources.device, requires_grad=True) for _ in range(sources.shape[0])],
        "optimizer": torch.optim.Adam([direction], lr=0.2, weight_decay=3e-3),
        "target_code": t,
    }


# --------------------------------------------------------------------------- EG3D volume rendering


def reference_volume_render(G, planes, origins, directions):
    """EG3D's ImportanceRenderer laid out as NVlabs/eg3d computes it (deterministic sampling):
    plane features transposed to [N, M, C] rows, the decoder as row-wise FC layers, the
    widened sigmoid on every sample, mid-point colours of all 32 channels, and the colours
    concatenated and gathered into depth order.  Baseline of `targetclip bench eg3d`;
    returns (features [N, M, 32] in [-1, 1], depth [N, M, 1]) like `G._volume_render`.
    """
    from targetclip_core.generators.volume_rendering import importance_depths, march, stratified_depths

    opts = G.rendering
    n, m, _ = origins.shape
    fc0, fc1 = G.decoder.net[0], G.decoder.net[2]

    def query(depths):
        s = depths.shape[2]
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, m * s, 3)
        p = points * (2.0 / float(opts["box_warp"]))
        grids = [torch.stack(uv, -1) for uv in ((p[..., 0], p[..., 1]), (p[..., 0], p[..., 2]), (p[..., 2], p[..., 0]))]
        c, h, w = planes.shape[2:]
        sampled = F.grid_sample(planes.reshape(n * 3, c, h, w), torch.stack(grids, 1).reshape(n * 3, 1, -1, 2),
                                mode="bilinear", padding_mode="zeros", align_corners=False)
        feats = sampled.permute(0, 3, 2, 1).reshape(n, 3, m * s, c).mean(1).reshape(n * m * s, c)
        x = torch.addmm(fc0.bias * fc0.bias_gain, feats, (fc0.weight * fc0.weight_gain).t())
        x = torch.addmm(fc1.bias * fc1.bias_gain, F.softplus(x), (fc1.weight * fc1.weight_gain).t()).reshape(n, m, s, -1)
        return torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001, x[..., :1]

    def composite(colors, densities, depths):
        weights, depth, total = march(densities, depths)
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        return torch.sum(weights * colors_mid, -2), depth, weights

    coarse = stratified_depths(n, m, float(opts["ray_start"]), float(opts["ray_end"]), int(opts["depth_resolution"]),
                               disparity=False, deterministic=True, device=origins.device)
    colors, densities = query(coarse)
    _, _, weights = composite(colors, densities, coarse)
    fine = importance_depths(coarse, weights, int(opts["depth_resolution_importance"]), deterministic=True)
    colors_f, densities_f = query(fine)
    depths = torch.cat([coarse, fine], -2)
    order = depths.argsort(dim=-2)
    depths = torch.gather(depths, -2, order)
    colors = torch.gather(torch.cat([colors, colors_f], -2), -2, order.expand(-1, -1, -1, colors.shape[-1]))
    densities = torch.gather(torch.cat([densities, densities_f], -2), -2, order)
    rgb, depth, _ = composite(colors, densities, depths)
    return rgb * 2 - 1, depth.clamp(depths.min(), depths.max())
