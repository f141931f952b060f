"""EG3D's volume rendering (NVlabs/eg3d training/volumetric_rendering/*), apart from the network:
rays through pixels, tri-plane sampling, stratified and importance depths along each ray,
MipNeRF ray marching, and the ray-box limits of 'auto' ray starts.

All functions are pure tensor maths on batches of rays; EG3DGenerator.render ties them together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PLANE_CHANNELS = 32  # features per tri-plane
N_PLANES = 3


def ray_bundle(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One ray through the centre of every pixel: origins and unit directions [N, R*R, 3]."""
    dev = cam2world.device
    centres = (torch.arange(resolution, dtype=torch.float32, device=dev) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # row-major pixels: u along x, v along y
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
    x_lift = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y_lift = (v - cy) / fy
    ones = torch.ones_like(x_lift)
    cam_points = torch.stack((x_lift, y_lift, ones, ones), dim=-1)  # [N, M, 4]
    world = torch.bmm(cam2world, cam_points.transpose(1, 2)).transpose(1, 2)[..., :3]
    origins = cam2world[:, None, :3, 3]
    directions = F.normalize(world - origins, dim=2)
    return origins.expand_as(directions), directions


def sample_planes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Mean of the xy, xz and zx plane features at `points` [N, M, 3] -> [N, C, M].

    These are EG3D's plane axes (its projections through the inverse of generate_planes()),
    including the third plane reading (z, x).
    """
    n, _, c, h, w = planes.shape
    p = points * (2.0 / box_warp)
    x, y, z = p.unbind(-1)
    grid = torch.stack([torch.stack(uv, dim=-1) for uv in ((x, y), (x, z), (z, x))], dim=1)  # [N, 3, M, 2]
    sampled = F.grid_sample(planes.reshape(n * N_PLANES, c, h, w), grid.reshape(n * N_PLANES, 1, -1, 2),
                            mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.reshape(n, N_PLANES, c, -1).mean(1)


def march(densities, depths):
    """MipNeRF ray marching (EG3D's MipRayMarcher2) on sorted samples [N, M, S, 1].

    Returns (interval weights [N, M, S-1, 1], expected depth (unclamped, NaN -> inf), total
    weight).  Colours are not needed here: see `point_weights`.
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)  # bias -1: EG3D's init
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    alpha = 1 - torch.exp(-densities_mid * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2), -2)[:, :, :-1]
    weights = alpha * transmittance
    weight_total = weights.sum(2)
    depth = torch.nan_to_num(torch.sum(weights * depths_mid, -2) / weight_total, float("inf"))
    return weights, depth, weight_total


def point_weights(interval_weights):
    """Weights per sample [N, M, S, 1] such that sum_j a_j c_j = sum_i w_i (c_i + c_i+1) / 2.

    The reference composites mid-point colours; spreading each interval's weight onto its two
    ends gives the same sum without building (and sorting) a mid-point copy of 32 channels.
    """
    half = interval_weights / 2
    zero = torch.zeros_like(half[:, :, :1])
    return torch.cat([half, zero], -2) + torch.cat([zero, half], -2)


def stratified_depths(n, m, start, end, count, *, disparity, deterministic, device, generator=None):
    """Coarse depths [n, m, count, 1]: one per bin, jittered or (deterministic) mid-bin."""
    def jitter(t):
        if deterministic:
            return torch.full_like(t, 0.5)
        return torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype)

    if disparity:
        d = torch.linspace(0, 1, count, device=device).reshape(1, 1, count, 1).repeat(n, m, 1, 1)
        d = d + jitter(d) / (count - 1)
        return 1.0 / (1.0 / start * (1.0 - d) + 1.0 / end * d)
    if torch.is_tensor(start):  # per-ray limits [n, m, 1]
        steps = torch.arange(count, dtype=torch.float32, device=device) / (count - 1)
        depths = start[:, :, None, :] + steps.reshape(1, 1, count, 1) * (end - start)[:, :, None, :]
        return depths + jitter(depths) * ((end - start) / (count - 1))[..., None]
    depths = torch.linspace(start, end, count, device=device).reshape(1, 1, count, 1).repeat(n, m, 1, 1)
    return depths + jitter(depths) * ((end - start) / (count - 1))


def importance_depths(depths, weights, count, *, deterministic, generator=None):
    """Fine depths [n, m, count, 1] drawn from the coarse weights (EG3D's smoothing + NeRF's inverse CDF)."""
    n, m, s, _ = depths.shape
    z = depths.reshape(n * m, s)
    w = weights.reshape(n * m, -1)
    w = F.max_pool1d(w.unsqueeze(1).float(), 2, 1, padding=1)
    w = F.avg_pool1d(w, 2, 1).squeeze(1) + 0.01
    bins = 0.5 * (z[:, :-1] + z[:, 1:])
    return sample_pdf(bins, w[:, 1:-1], count, deterministic, generator).reshape(n, m, count, 1)


def sample_pdf(bins, weights, count, deterministic, generator, eps=1e-5):
    """`count` depths per ray [rays, count] by inverse-CDF sampling of piecewise-constant `weights` over `bins`."""
    rays, n_bins = weights.shape
    weights = weights + eps
    cdf = torch.cumsum(weights / weights.sum(-1, keepdim=True), -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
    if deterministic:
        u = torch.linspace(0, 1, count, device=bins.device).expand(rays, count).contiguous()
    else:
        u = torch.rand(rays, count, generator=generator, device=bins.device)
    inds = torch.searchsorted(cdf, u, right=True)
    below, above = (inds - 1).clamp_min(0), inds.clamp_max(n_bins)
    pairs = torch.stack([below, above], -1).reshape(rays, 2 * count)
    cdf_g = torch.gather(cdf, 1, pairs).reshape(rays, count, 2)
    bins_g = torch.gather(bins, 1, pairs).reshape(rays, count, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)  # empty bins are never drawn
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def ray_box_limits(origins, directions, box_side):
    """Entry/exit distances [N, M, 1] of rays through the cube of side `box_side` (EG3D's 'auto' limits)."""
    half = box_side / 2
    inv = 1 / directions
    t0 = (-half - origins) * inv
    t1 = (half - origins) * inv
    tmin = torch.minimum(t0, t1).amax(-1, keepdim=True)
    tmax = torch.maximum(t0, t1).amin(-1, keepdim=True)
    valid = tmax > tmin
    if valid.any():
        # rays that miss the box get the extreme limits of those that hit it (as the reference)
        tmin = torch.where(valid, tmin, tmin[valid].min())
        tmax = torch.where(valid, tmax, tmin[valid].max())
    return tmin, tmax


def weighted_sum(weights, colors):
    """sum_s weights[n, m, s, 0] * colors[n, :, m, s] -> [N, M, C]."""
    return torch.einsum("ncms,nms->nmc", colors, weights[..., 0])
