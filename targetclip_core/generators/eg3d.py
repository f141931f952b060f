"""EG3D (Chan et al., CVPR 2022): the tri-plane 3D-aware generator, in plain PyTorch.

Follows NVlabs/eg3d (training/triplane.py, training/volumetric_rendering/*,
training/superresolution.py) layer for layer, so official network pickles load and render
the same images:

  mapping(z, c)          StyleGAN2 mapping conditioned on the 25-dim camera label (x c_scale)
  backbone.synthesis(ws) a 256px StyleGAN2 whose skip output has 96 channels = 3 planes x 32
  rays                   one per pixel of the neural rendering resolution (OpenCV camera)
  renderer               stratified + importance samples along each ray; every sample reads
                         the xy, xz and zx planes (bilinear, zeros outside box_warp), averages
                         them and the OSG decoder (FC 32-64, softplus, FC 64-33) gives a
                         density and 32 features; MipNeRF-style compositing with
                         softplus(density - 1)
  superresolution        two StyleGAN2 blocks driven by the last ws entry, from the raw
                         32-channel feature image to 128/256/512 pixels

The StyleGAN2 backbone is this package's own `StyleGAN2Generator`, so the modulated convs,
W+ layout and StyleSpace are exactly those of the 2D generator: essences and SAT3D work in
EG3D's backbone as they do in StyleGAN2.  The super-resolution layers are not part of the
edited StyleSpace (they sit after the 3D representation; SAT3D edits the tri-planes).

Rendering modes: `deterministic=True` (the default) puts the stratified samples in the
middle of their bins and samples the importance pass with evenly spaced quantiles, so an
orbit does not flicker and the same camera renders the same image twice; `False` is the
jittered sampling of training.

Where this deliberately differs from the reference: when the feature image already has the
super-resolution input size, the reference adds the first SR block's RGB into `image_raw`
in place (its `img.add_`); we return the raw rendering untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from targetclip_core.errors import LatentError
from targetclip_core.generators.cameras import CameraRig, camera_labels, split_label
from targetclip_core.generators.limits import MAX_RAY_SAMPLES, MAX_RESOLUTION, checked_float, checked_int, checked_mapping
from targetclip_core.generators.mapped import check_wplus_shape, ordered_style_codes
from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from targetclip_core.generators.superresolution import SUPERRESOLUTION_MODULES, SuperResolution, SuperResolutionSpec
from targetclip_core.generators.volume_rendering import (
    N_PLANES,
    PLANE_CHANNELS,
    importance_depths,
    march,
    point_weights,
    ray_box_limits,
    ray_bundle,
    sample_planes,
    stratified_depths,
    weighted_sum,
)

# Rendering options of an official pickle (rendering_kwargs) that change the image, with the
# reference defaults for the ones an older pickle may lack.
RENDERING_DEFAULTS = {
    "depth_resolution": 48,
    "depth_resolution_importance": 48,
    "ray_start": 2.25,
    "ray_end": 3.3,
    "box_warp": 1.0,
    "disparity_space_sampling": False,
    "clamp_mode": "softplus",
    "white_back": False,
    "c_gen_conditioning_zero": False,
    "c_scale": 0.0,  # the reference's mapping uses rendering_kwargs.get('c_scale', 0); official pickles say 1
    "avg_camera_radius": 2.7,
    "avg_camera_pivot": [0.0, 0.0, 0.2],
    "superresolution_noise_mode": "none",
    "density_noise": 0.0,
}


@dataclass(frozen=True)
class EG3DConfig:
    """Everything needed to build an EG3D generator; stored verbatim in our safetensors files."""

    backbone: StyleGAN2Config
    img_resolution: int
    superresolution_module: str
    sr_antialias: bool = True
    sr_conv_clamp: float | None = None
    neural_rendering_resolution: int = 64
    decoder_lr_mul: float = 1.0
    decoder_output_dim: int = PLANE_CHANNELS
    rendering: dict = field(default_factory=dict)
    source_format: str = "unknown"

    def __post_init__(self):
        if not isinstance(self.backbone, StyleGAN2Config):
            raise ValueError("the EG3D backbone must be a StyleGAN2 config")
        if not isinstance(self.superresolution_module, str):
            raise ValueError("superresolution_module must be a class name")
        object.__setattr__(self, "neural_rendering_resolution", checked_int(
            "neural_rendering_resolution", self.neural_rendering_resolution, 4, MAX_RESOLUTION))
        object.__setattr__(self, "decoder_lr_mul", checked_float("decoder_lr_mul", self.decoder_lr_mul, positive=True))
        if self.sr_conv_clamp is not None:
            object.__setattr__(self, "sr_conv_clamp", checked_float("sr_conv_clamp", self.sr_conv_clamp, positive=True))
        checked_mapping("rendering", self.rendering)
        name = self.superresolution_module.rsplit(".", 1)[-1]
        if name not in SUPERRESOLUTION_MODULES:
            raise ValueError(f"unsupported EG3D super-resolution module {self.superresolution_module!r} "
                             f"(supported: {', '.join(SUPERRESOLUTION_MODULES)})")
        object.__setattr__(self, "superresolution_module", name)
        if SUPERRESOLUTION_MODULES[name].img_resolution != self.img_resolution:
            raise ValueError(f"{name} makes {SUPERRESOLUTION_MODULES[name].img_resolution}px images, "
                             f"the config says {self.img_resolution}")
        if self.backbone.img_channels != N_PLANES * PLANE_CHANNELS:
            raise ValueError(f"the EG3D backbone must output {N_PLANES * PLANE_CHANNELS} channels (3 planes x 32)")
        if self.decoder_output_dim != PLANE_CHANNELS:
            raise ValueError(f"decoder_output_dim must be {PLANE_CHANNELS} (the feature image feeds the super-resolution)")
        rendering = {**RENDERING_DEFAULTS, **dict(self.rendering)}
        if rendering["clamp_mode"] != "softplus":
            raise ValueError("EG3D's ray marcher supports clamp_mode 'softplus' only")
        auto = [rendering["ray_start"] == "auto", rendering["ray_end"] == "auto"]
        if any(auto) and not all(auto):
            raise ValueError("ray_start and ray_end must both be numbers or both 'auto'")
        for key in ("depth_resolution", "depth_resolution_importance"):
            rendering[key] = checked_int(key, rendering[key], 0 if "importance" in key else 1, MAX_RAY_SAMPLES)
        for key in ("box_warp", "avg_camera_radius"):
            rendering[key] = checked_float(key, rendering[key], positive=True)
        for key in ("c_scale", "density_noise") + (() if all(auto) else ("ray_start", "ray_end")):
            rendering[key] = checked_float(key, rendering[key])
        pivot = rendering["avg_camera_pivot"]
        if not isinstance(pivot, (list, tuple)) or len(pivot) != 3:
            raise ValueError("avg_camera_pivot must be 3 numbers")
        rendering["avg_camera_pivot"] = [checked_float("avg_camera_pivot", v) for v in pivot]
        object.__setattr__(self, "rendering", rendering)

    @property
    def sr_spec(self) -> SuperResolutionSpec:
        return SUPERRESOLUTION_MODULES[self.superresolution_module]

    def to_json_dict(self) -> dict:
        d = asdict(self)
        d["backbone"] = self.backbone.to_json_dict()
        return d

    @classmethod
    def from_json_dict(cls, d: dict) -> "EG3DConfig":
        """The config a to_json_dict() wrote (ValueError naming the field when a value is wrong)."""
        d = dict(checked_mapping("the EG3D config", d))
        if "backbone" not in d:
            raise ValueError("the EG3D config has no 'backbone'")
        d["backbone"] = StyleGAN2Config.from_json_dict(d["backbone"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------- the tri-plane decoder


class OSGDecoder(nn.Module):
    """Tri-plane features (mean of the three planes) -> density + 32 features.

    Works channels-first on [N, C, M] sample features (each FC layer one batched GEMM with
    the bias fused), so the millions of samples of a frame are never transposed.  The features come
    out as plain sigmoids; the reference widens them to (-0.001, 1.001) (MipNeRF), which is
    affine and so is applied after compositing (`widen`), on one value per ray.
    """

    WIDEN = 0.001

    def __init__(self, n_features: int = PLANE_CHANNELS, output_dim: int = PLANE_CHANNELS, lr_mul: float = 1.0,
                 hidden: int = 64):
        super().__init__()
        from targetclip_core.generators.stylegan2 import ScaledLinear

        self.net = nn.Sequential(ScaledLinear(n_features, hidden, lr_mul=lr_mul), nn.Softplus(),
                                 ScaledLinear(hidden, 1 + output_dim, lr_mul=lr_mul))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [N, C, M] -> (sigmoid features [N, output_dim, M], sigma [N, 1, M])."""
        h = F.softplus(self._linear(self.net[0], features))
        x = self._linear(self.net[2], h)
        return torch.sigmoid(x[:, 1:]), x[:, :1]

    @staticmethod
    def _linear(fc, x):
        # [out, in] @ [N, in, M] + bias as one batched GEMM (about twice a 1x1 conv1d's speed on CPU)
        weight = (fc.weight * fc.weight_gain).expand(x.shape[0], -1, -1)
        return torch.baddbmm((fc.bias * fc.bias_gain)[None, :, None], weight, x)

    @classmethod
    def widen(cls, composited: torch.Tensor, weight_total: torch.Tensor) -> torch.Tensor:
        """sum_j a_j (s_j (1 + 2e) - e) = (1 + 2e) sum_j a_j s_j - e sum_j a_j."""
        return composited * (1 + 2 * cls.WIDEN) - cls.WIDEN * weight_total


# --------------------------------------------------------------------------- the generator


class EG3DGenerator(nn.Module):
    """EG3D tri-plane generator with the engine's generator API plus camera-aware rendering.

    As a drop-in for StyleGAN2 code (essences, SAT3D, nodes) `synthesis`/`synthesis_from_styles`
    render from the generator's frontal camera unless a camera label `c` is given.
    """

    is_3d = True

    def __init__(self, cfg: EG3DConfig):
        super().__init__()
        self.config = cfg
        self.backbone = StyleGAN2Generator(cfg.backbone)
        self.decoder = OSGDecoder(PLANE_CHANNELS, cfg.decoder_output_dim, cfg.decoder_lr_mul)
        self.superresolution = SuperResolution(cfg.sr_spec, cfg.backbone.w_dim, antialias=cfg.sr_antialias,
                                               conv_clamp=cfg.sr_conv_clamp)
        self.rendering = dict(cfg.rendering)  # per instance: users may raise depth_resolution etc.
        self.neural_rendering_resolution = cfg.neural_rendering_resolution
        self.ray_chunk = 2**15  # rays per volume-rendering pass: bounds memory, same result

    # ---- properties shared with StyleGAN2Generator
    @property
    def resolution(self) -> int:
        return self.config.img_resolution

    @property
    def n_latent(self) -> int:
        return self.backbone.n_latent

    @property
    def w_dim(self) -> int:
        return self.backbone.w_dim

    @property
    def z_dim(self) -> int:
        return self.backbone.z_dim

    @property
    def c_dim(self) -> int:
        return self.backbone.c_dim

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def modconv_impl(self) -> str:
        return self.backbone.modconv_impl

    @modconv_impl.setter
    def modconv_impl(self, value: str) -> None:
        self.backbone.modconv_impl = value

    @property
    def output_resolutions(self) -> list[int]:
        """Sizes `synthesis(out_resolution=...)` renders natively (raw rendering, super-resolved)."""
        return sorted({self.neural_rendering_resolution, self.resolution})

    @property
    def identity(self) -> dict:
        return {"arch": "eg3d", "resolution": self.resolution, "n_latent": self.n_latent, "w_dim": self.w_dim}

    def describe(self) -> str:
        return f"{self.resolution}px EG3D"

    @contextmanager
    def sampling(self, multiplier: float = 1.0):
        """Scale the samples per ray for a while (EG3D gen_videos' --sample_mult): more is sharper, slower."""
        if not multiplier > 0:
            raise ValueError(f"the sampling multiplier must be positive, got {multiplier}")
        saved = dict(self.rendering)
        for key in ("depth_resolution", "depth_resolution_importance"):
            if saved[key]:
                self.rendering[key] = max(2, int(round(saved[key] * multiplier)))
        try:
            yield self
        finally:
            self.rendering.clear()
            self.rendering.update(saved)

    # ---- cameras and latents
    @property
    def rig(self) -> CameraRig:
        """Where this generator's cameras sit: its training radius and pivot (rendering options)."""
        r = self.rendering
        return CameraRig(radius=float(r["avg_camera_radius"]), pivot=tuple(float(v) for v in r["avg_camera_pivot"]))

    def camera(self, yaw=0.0, pitch=0.0, fov_degrees: float | None = None) -> torch.Tensor:
        """Camera labels [B, 25] around this generator's pivot (degrees; 0, 0 = frontal)."""
        rig = self.rig if fov_degrees is None else CameraRig(self.rig.radius, self.rig.pivot, float(fov_degrees))
        return camera_labels(yaw, pitch, rig, device=self.device)

    def _conditioning(self, c, batch):
        c = self.camera().expand(batch, -1) if c is None else c.to(self.device, torch.float32)
        split_label(c)  # shape and finiteness
        if c.shape[0] == 1 and batch > 1:
            c = c.expand(batch, -1)
        elif c.shape[0] != batch:
            raise LatentError(f"{c.shape[0]} camera labels for {batch} latents: give one label or one per latent")
        if self.rendering["c_gen_conditioning_zero"]:
            c = torch.zeros_like(c)
        return c * float(self.rendering["c_scale"])

    def mapping(self, z, c=None, truncation=1.0, truncation_latent=None):
        """z [B, z_dim] (+ camera labels c [B, 25], default frontal) -> w [B, w_dim], as StyleGAN2's.

        `to_wplus` broadcasts w to the ws the renderer takes; `latents.wplus_from_z` also truncates
        only the first entries (the reference's truncation_cutoff).
        """
        if not torch.is_tensor(z) or z.dim() != 2:
            raise LatentError(f"expected z of shape [B, {self.z_dim}], got {list(getattr(z, 'shape', []))}")
        w = self.backbone.mapping(z, self._conditioning(c, z.shape[0]))
        if truncation != 1.0:
            centre = self.truncation_latent() if truncation_latent is None else truncation_latent.reshape(1, -1)
            w = centre.lerp(w, truncation)
        return w

    @property
    def mapping_network(self) -> nn.Module:
        """The backbone's z -> w network (holds w_avg and whether the checkpoint trained it)."""
        return self.backbone.mapping

    def truncation_latent(self) -> torch.Tensor:
        """The centre truncation moves toward: the trained w_avg, else the frontal-camera mean [1, w_dim]."""
        if self.backbone.mapping.has_w_avg:
            return self.backbone.mapping.w_avg.reshape(1, -1)
        return self.mean_latent()

    def mean_latent(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Mean of `n` mapped samples under the frontal conditioning camera: [1, w_dim]."""
        z = torch.randn(n, self.z_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)
        with torch.no_grad():
            return self.backbone.mapping(z, self._conditioning(None, n)).mean(0, keepdim=True)

    def to_wplus(self, w: torch.Tensor) -> torch.Tensor:
        if w.dim() == 3:
            self.check_wplus(w)
            return w
        return self.backbone.to_wplus(w)

    def check_wplus(self, wp) -> None:
        check_wplus_shape(wp, self.n_latent, self.w_dim, self.describe())

    # ---- StyleSpace: the backbone's codes, then the super-resolution's (never edited)
    def layer_names(self) -> list[str]:
        return self.backbone.layer_names() + [f"superresolution.{n}" for n in SuperResolution.LAYERS]

    def styles(self, wp: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        self.check_wplus(wp)
        out = self.backbone.styles(wp)
        for name, layer in self.superresolution.layers():
            out[f"superresolution.{name}"] = layer.affine(wp[:, -1])  # SR reads the last ws entry
        return out

    # ---- rendering
    def render(self, ws, c, neural_rendering_resolution=None, deterministic=True, noise_mode="const", generator=None):
        """ws [B, n_latent, w_dim], camera labels c [B, 25] -> dict(image, image_raw, image_depth)."""
        return self.render_from_styles(self.styles(ws), c, neural_rendering_resolution, deterministic, noise_mode, generator)

    def render_from_styles(self, styles, c, neural_rendering_resolution=None, deterministic=True, noise_mode="const",
                           generator=None, super_resolve=True):
        """As `render`, from StyleSpace codes (an OrderedDict from `styles`, or a list in that order)."""
        backbone_styles, sr_styles = self._split_styles(styles)
        planes = self.triplanes(backbone_styles, noise_mode)
        return self.render_triplanes(planes, sr_styles, c, neural_rendering_resolution, deterministic, generator, super_resolve)

    def triplanes(self, backbone_styles, noise_mode="const") -> torch.Tensor:
        """The 3D representation: [B, 3, 32, H, W] feature planes from the backbone's codes.

        Render several cameras from one set of planes with `render_triplanes` (an orbit runs
        the backbone once).
        """
        planes = self.backbone.synthesis_from_styles(backbone_styles, noise_mode=noise_mode)
        return planes.reshape(planes.shape[0], N_PLANES, PLANE_CHANNELS, *planes.shape[-2:])

    def render_triplanes(self, planes, sr_styles, c, neural_rendering_resolution=None, deterministic=True,
                         generator=None, super_resolve=True) -> dict:
        """Volume-render `planes` from cameras `c` (one, or one per plane set) and super-resolve.

        `sr_styles`: the six super-resolution codes (see `styles`); unused when `super_resolve`
        is False.  Returns dict(image, image_raw, image_depth); depth is the ray distance.
        """
        batch = planes.shape[0]
        cam2world, intrinsics = split_label(c.to(planes.device, torch.float32))
        if cam2world.shape[0] != batch:
            if cam2world.shape[0] != 1:
                raise LatentError(f"{cam2world.shape[0]} cameras for {batch} latents: give one camera or one per latent")
            cam2world, intrinsics = cam2world.expand(batch, -1, -1), intrinsics.expand(batch, -1, -1)
        res = int(neural_rendering_resolution or self.neural_rendering_resolution)
        if res < 1:
            raise ValueError(f"neural rendering resolution must be positive, got {res}")
        origins, directions = ray_bundle(cam2world, intrinsics, res)
        features, depth = self._volume_render(planes, origins, directions, deterministic, generator)
        feature_image = features.transpose(1, 2).reshape(batch, -1, res, res).contiguous()
        out = {"image_raw": feature_image[:, :3].clone(), "image_depth": depth.transpose(1, 2).reshape(batch, 1, res, res)}
        if super_resolve:
            if len(sr_styles) != len(SuperResolution.LAYERS):
                raise LatentError(f"expected {len(SuperResolution.LAYERS)} super-resolution style codes, got {len(sr_styles)}")
            sr_styles = [s if s.shape[0] == batch else s.expand(batch, -1) for s in sr_styles]
            impl = self.backbone._pick_impl(batch, feature_image.device)
            sr_noise = self.rendering["superresolution_noise_mode"]
            out["image"] = self.superresolution(feature_image[:, :3], feature_image, sr_styles, sr_noise, impl)
        return out

    def _split_styles(self, styles) -> tuple[list, list]:
        styles = ordered_style_codes(styles, self.layer_names(), self.describe())  # the backbone checks its widths
        n = len(self.backbone.layer_names())
        return styles[:n], styles[n:]

    def _volume_render(self, planes, origins, directions, deterministic, generator):
        opts = self.rendering
        n, m, _ = origins.shape
        start, end = opts["ray_start"], opts["ray_end"]
        if start == "auto":
            start, end = ray_box_limits(origins, directions, float(opts["box_warp"]))
        feats, depths, lo, hi = [], [], [], []
        for i in range(0, m, self.ray_chunk):
            sl = slice(i, i + self.ray_chunk)
            s, e = (start[:, sl], end[:, sl]) if torch.is_tensor(start) else (float(start), float(end))
            f, d, dmin, dmax = self._render_rays(planes, origins[:, sl], directions[:, sl], s, e, deterministic, generator)
            feats.append(f), depths.append(d), lo.append(dmin), hi.append(dmax)
        # the reference clamps depth to the sample range of the whole batch
        depth = torch.cat(depths, 1).clamp(torch.stack(lo).min(), torch.stack(hi).max())
        return torch.cat(feats, 1), depth

    def _render_rays(self, planes, origins, directions, start, end, deterministic, generator):
        opts = self.rendering
        n, m, _ = origins.shape
        coarse = stratified_depths(n, m, start, end, int(opts["depth_resolution"]), disparity=bool(opts["disparity_space_sampling"]),
                                   deterministic=deterministic, device=origins.device, generator=generator)
        colors, densities = self._query(planes, origins, directions, coarse, deterministic)
        n_fine = int(opts["depth_resolution_importance"])
        if n_fine > 0:
            weights, _, _ = march(densities, coarse)
            with torch.no_grad():
                fine = importance_depths(coarse, weights, n_fine, deterministic=deterministic, generator=generator)
            colors_f, densities_f = self._query(planes, origins, directions, fine, deterministic)
            # sort depths and densities only; the per-sample weights go back to the unsorted samples
            depths = torch.cat([coarse, fine], -2)
            order = depths.argsort(dim=-2)
            depths = torch.gather(depths, -2, order)
            weights, depth, total = march(torch.gather(torch.cat([densities, densities_f], -2), -2, order), depths)
            per_sample = torch.empty_like(depths).scatter_(-2, order, point_weights(weights))
            s = coarse.shape[2]
            rgb = weighted_sum(per_sample[:, :, :s], colors) + weighted_sum(per_sample[:, :, s:], colors_f)
        else:
            depths = coarse
            weights, depth, total = march(densities, depths)
            rgb = weighted_sum(point_weights(weights), colors)
        rgb = OSGDecoder.widen(rgb, total)
        if opts["white_back"]:
            rgb = rgb + 1 - total
        return rgb * 2 - 1, depth, depths.min(), depths.max()

    def _query(self, planes, origins, directions, depths, deterministic):
        """Features [N, C, M, S] (plain sigmoids, see OSGDecoder) and densities [N, M, S, 1] at the samples."""
        n, m, s, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, m * s, 3)
        features, sigma = self.decoder(sample_planes(planes, points, float(self.rendering["box_warp"])))
        noise = float(self.rendering.get("density_noise", 0) or 0)
        if noise > 0 and not deterministic:
            sigma = sigma + torch.randn_like(sigma) * noise
        return features.reshape(n, -1, m, s), sigma.reshape(n, m, s, 1)

    def render_views(self, latents, cameras, neural_rendering_resolution=None, deterministic=True, noise_mode="const"):
        """Render every latent from every camera; yields (view index, output dict) per camera.

        `latents`: W+ [B, n_latent, w_dim] or StyleSpace codes (e.g. a SAT3D edit);
        `cameras`: labels [K, 25].  The tri-planes are computed once for all K views.
        """
        styles = latents if isinstance(latents, dict) else self.styles(self.to_wplus(latents.to(self.device)))
        backbone_styles, sr_styles = self._split_styles(styles)
        planes = self.triplanes(backbone_styles, noise_mode)
        for k in range(cameras.shape[0]):
            yield k, self.render_triplanes(planes, sr_styles, cameras[k : k + 1], neural_rendering_resolution, deterministic)

    # ---- the 2D generator API, rendered from the frontal camera (or `c`)
    def synthesis(self, wp, noise_mode="const", out_resolution=None, c=None):
        return self.synthesis_from_styles(self.styles(wp), noise_mode=noise_mode, out_resolution=out_resolution, c=c)

    def synthesis_from_styles(self, styles, noise_mode="const", out_resolution=None, c=None, deterministic=True):
        """Image [B, 3, H, W] in about [-1, 1] from camera `c` (default: frontal).

        `out_resolution` at or below the neural rendering resolution returns the raw volume
        rendering (no super-resolution: the cheap render CLIP losses need), resized down if
        smaller; above it, the super-resolved image (resized down if smaller than it).
        """
        c = self.camera() if c is None else c
        raw_only = out_resolution is not None and int(out_resolution) <= self.neural_rendering_resolution
        out = self.render_from_styles(styles, c, deterministic=deterministic, noise_mode=noise_mode,
                                      super_resolve=not raw_only)
        img = out["image_raw"] if raw_only else out["image"]
        if out_resolution is not None and int(out_resolution) < img.shape[-1]:
            img = F.interpolate(img, size=(int(out_resolution),) * 2, mode="bilinear", align_corners=False, antialias=True)
        return img

    def forward(self, z, c=None, truncation=1.0, noise_mode="const"):
        c = self.camera().expand(z.shape[0], -1) if c is None else c
        return self.render(self.to_wplus(self.mapping(z, c, truncation=truncation)), c, noise_mode=noise_mode)


def depth_to_image(depth: torch.Tensor) -> torch.Tensor:
    """Depth maps [B, 1, H, W] -> grey images [B, 3, H, W] in [-1, 1], near = bright, per image range."""
    flat = depth.flatten(1)
    lo, hi = flat.min(1).values[:, None, None, None], flat.max(1).values[:, None, None, None]
    near = (hi - depth) / (hi - lo).clamp_min(1e-8)
    return (near * 2 - 1).expand(-1, 3, -1, -1)
