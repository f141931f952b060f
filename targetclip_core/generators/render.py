"""Batched rendering of many latents, for the nodes and the CLI alike.

Rendering a few latents at a time bounds the memory; each batch ends with an `on_batch(done,
total, images)` callback, where a caller shows progress and a preview of `images` (the batch
just rendered) and may cancel by raising. Images are [N, 3, H, W] in about [-1, 1], on the
generator's device; no gradients are recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from targetclip_core.devices import autocast

OnBatch = Callable[[int, int, torch.Tensor], None]  # (done, total, images of this batch)


def _batch_size(batch_size: int) -> int:
    """The batch size as an int, refused below 1."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


def iter_latent_batches(G, wplus: torch.Tensor, *, batch_size: int = 4, noise_mode: str = "const",
                        out_resolution: int | None = None, transform: torch.Tensor | None = None,
                        precision: str = "fp32") -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (done, images) per batch of `wplus` [N, n_latent, w_dim]: `done` latents are rendered so far.

    For callers that consume each batch as it comes (the CLI writes files) and so keep no more
    than one batch of images in memory.  `transform`: StyleGAN3's user transform (stylegan3.user_transform).
    `precision`: devices.PRECISIONS (bf16 renders about twice as fast on CPUs with bf16 units, within about
    1% of fp32: tests/generators/test_precision.py); the images are float32 whatever it is.
    """
    batch_size = _batch_size(batch_size)
    extra = {} if transform is None else {"transform": transform}
    for start in range(0, len(wplus), batch_size):
        with torch.no_grad(), autocast(precision, G.device):  # not around the yield: the caller's modes stay its own
            images = G.synthesis(wplus[start : start + batch_size], noise_mode=noise_mode, out_resolution=out_resolution,
                                 **extra)
        yield min(start + batch_size, len(wplus)), images.float()


def render_latents(G, wplus: torch.Tensor, *, batch_size: int = 4, noise_mode: str = "const",
                   out_resolution: int | None = None, on_batch: OnBatch | None = None,
                   transform: torch.Tensor | None = None, precision: str = "fp32") -> torch.Tensor:
    """Render W+ latents [N, n_latent, w_dim] in batches: images [N, 3, H, W] on the generator's device.

    The same images as one `G.synthesis(wplus)` call; `on_batch(done, total, images)` runs after every batch.
    """
    out = []
    for done, images in iter_latent_batches(G, wplus, batch_size=batch_size, noise_mode=noise_mode,
                                            out_resolution=out_resolution, transform=transform, precision=precision):
        out.append(images)
        if on_batch is not None:
            on_batch(done, len(wplus), images)
    return torch.cat(out)


def render_latent_views(G, codes, cameras: torch.Tensor, *, neural_rendering_resolution: int | None = None,
                        deterministic: bool = True, sampling_multiplier: float = 1.0, latents_per_batch: int = 4,
                        on_batch: OnBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every latent from every camera of a 3D-aware generator, latent-major (all views of the first, then the next).

    `codes`: W+ [N, n_latent, w_dim] or StyleSpace codes {layer: [N, C]} (a SAT3D edit); `cameras`: labels [K, 25].
    Returns (images [N*K, 3, H, W], depth [N*K, 1, H, W] scaled up to the image size). The tri-planes of
    `latents_per_batch` latents are computed at a time (bounding the memory) and shared by their K views;
    `on_batch(done, N*K, images)` runs after every view of a batch.
    """
    per_batch = _batch_size(latents_per_batch)
    styles = isinstance(codes, dict)
    n = len(next(iter(codes.values()))) if styles else len(codes)
    n_views = cameras.shape[0]
    images, depths = [], []
    with torch.no_grad(), G.sampling(sampling_multiplier):
        for start in range(0, n, per_batch):
            part = {k: v[start : start + per_batch] for k, v in codes.items()} if styles else codes[start : start + per_batch]
            rows_img, rows_depth = [], []
            for k, out in G.render_views(part, cameras, neural_rendering_resolution, deterministic):
                rows_img.append(out["image"])
                rows_depth.append(F.interpolate(out["image_depth"], size=out["image"].shape[-2:], mode="bilinear",
                                                align_corners=False))
                if on_batch is not None:
                    on_batch(start * n_views + (k + 1) * len(out["image"]), n * n_views, out["image"])
            images.append(torch.stack(rows_img, 1).flatten(0, 1))  # [b, K, ...] -> latent-major
            depths.append(torch.stack(rows_depth, 1).flatten(0, 1))
    return torch.cat(images), torch.cat(depths)
