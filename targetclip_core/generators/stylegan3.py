"""StyleGAN3 generator (Karras et al. 2021, "Alias-Free Generative Adversarial Networks") in plain
PyTorch: configs T and R of NVlabs/stylegan3, no custom ops, no compilation, CPU and Apple included.

The network is NVlabs' `training.networks_stylegan3.Generator`, layer for layer:

* `mapping`: z -> w (the StyleGAN2 mapping network of this engine, 2 layers in the official configs).
* `input`: Fourier features.  `affine(w[0])` gives a rotation and a translation (r_c, r_s, t_x, t_y)
  that, composed with the user transform (`transform`, identity in published files), moves the
  frequencies and phases of a fixed bank of sinusoids; out-of-band frequencies fade out.
* `layers`: `num_layers` modulated 3x3 (T) or 1x1 (R) convolutions, each followed by the filtered
  leaky ReLU (generators.alias_free): upsample 2x with a low-pass filter, leaky ReLU, clamp,
  low-pass and downsample.  Each scales its input by `magnitude_ema ** -0.5` (a buffer training
  leaves far from 1).  The last layer is ToRGB (1x1, not demodulated, clamped, no activation).
* The image is the ToRGB output times `output_scale` (0.25).

W+ has `num_layers + 2` entries: w[0] drives the input's transform, w[i + 1] layer i.  StyleSpace
(`styles`) is the affine output of every layer: "input" (the 4 transform numbers, kept from the
source by SAT3D like the toRGB codes: they move the picture, they do not describe it), the feature
layers by their NVlabs names (`L0_36_512`, ...), and "torgb".

On CUDA NVlabs runs its top layers in float16; here every layer computes in float32 (what its own
code does on CPU, and what the conformance fixtures were computed with).  The style normalisation
before demodulation is taken per sample instead of over the batch: demodulation cancels that factor
(only its 1e-8 epsilon differs), and a sample renders the same whatever else is in its batch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.alias_free import design_lowpass_filter, filtered_lrelu
from targetclip_core.generators.limits import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_IMAGE_CHANNELS,
    MAX_LATENT_DIM,
    MAX_MAPPING_LAYERS,
    MAX_RESOLUTION,
    checked_float,
    checked_int,
)
from targetclip_core.generators.mapped import MappedGenerator
from targetclip_core.generators.stylegan2 import NOISE_MODES, MappingNetwork, ScaledLinear

SQRT2 = math.sqrt(2.0)
MAX_SYNTHESIS_LAYERS = 64  # 14 in every published config
MAX_FILTER_SIZE = 32  # filter_size (6 in every published config), taps = filter_size * factor
MAX_MARGIN = 256  # margin_size (10)


@dataclass(frozen=True)
class StyleGAN3Config:
    """NVlabs' Generator / SynthesisNetwork / SynthesisLayer arguments; stored verbatim in our safetensors.

    Defaults are NVlabs' (config T); config R is `conv_kernel=1, use_radial_filters=True` with
    doubled `channel_base` and `channel_max` (train.py).
    """

    resolution: int
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0
    n_mlp: int = 2
    mapping_lr_mul: float = 0.01
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    num_layers: int = 14
    num_critical: int = 2
    first_cutoff: float = 2.0
    first_stopband: float = 2**2.1
    last_stopband_rel: float = 2**0.3
    margin_size: int = 10
    output_scale: float = 0.25
    conv_kernel: int = 3
    filter_size: int = 6
    lrelu_upsampling: int = 2
    use_radial_filters: bool = False
    conv_clamp: float | None = 256.0
    source_format: str = "unknown"

    def __post_init__(self):
        res = checked_int("resolution", self.resolution, 4, MAX_RESOLUTION)
        if res & (res - 1):
            raise ValueError(f"resolution must be a power of two, got {res}")
        layers = checked_int("num_layers", self.num_layers, 1, MAX_SYNTHESIS_LAYERS)
        checks = {
            "z_dim": checked_int("z_dim", self.z_dim, 1, MAX_LATENT_DIM),
            "w_dim": checked_int("w_dim", self.w_dim, 1, MAX_LATENT_DIM),
            "c_dim": checked_int("c_dim", self.c_dim, 0, MAX_CLASSES),
            "n_mlp": checked_int("n_mlp", self.n_mlp, 1, MAX_MAPPING_LAYERS),
            "mapping_lr_mul": checked_float("mapping_lr_mul", self.mapping_lr_mul, positive=True),
            "img_channels": checked_int("img_channels", self.img_channels, 1, MAX_IMAGE_CHANNELS),
            "channel_base": checked_int("channel_base", self.channel_base, 1, MAX_CHANNELS * MAX_RESOLUTION),
            "channel_max": checked_int("channel_max", self.channel_max, 1, MAX_CHANNELS),
            "num_critical": checked_int("num_critical", self.num_critical, 0, layers - 1),
            "first_cutoff": checked_float("first_cutoff", self.first_cutoff, positive=True),
            "first_stopband": checked_float("first_stopband", self.first_stopband, positive=True),
            "last_stopband_rel": checked_float("last_stopband_rel", self.last_stopband_rel, positive=True),
            "margin_size": checked_int("margin_size", self.margin_size, 0, MAX_MARGIN),
            "output_scale": checked_float("output_scale", self.output_scale),
            "conv_kernel": checked_int("conv_kernel", self.conv_kernel, 1, 7),
            "filter_size": checked_int("filter_size", self.filter_size, 1, MAX_FILTER_SIZE),
            "lrelu_upsampling": checked_int("lrelu_upsampling", self.lrelu_upsampling, 1, 4),
            "use_radial_filters": bool(self.use_radial_filters),
            "conv_clamp": None if self.conv_clamp is None else checked_float("conv_clamp", self.conv_clamp, positive=True),
            "source_format": str(self.source_format),
        }
        if not isinstance(self.use_radial_filters, (bool, np.bool_)):
            raise ValueError(f"use_radial_filters must be a boolean, got {self.use_radial_filters!r:.40}")
        for name, value in checks.items():
            object.__setattr__(self, name, value)
        synthesis_plan(self)  # refuses a config whose sampling rates do not divide (before any layer is built)

    @property
    def n_latent(self) -> int:
        return self.num_layers + 2

    @property
    def variant(self) -> str:
        """'T' (translation equivariant) or 'R' (rotation equivariant: 1x1 convs, radial filters)."""
        return "R" if self.conv_kernel == 1 and self.use_radial_filters else "T"

    def to_json_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json_dict(cls, d: dict) -> "StyleGAN3Config":
        if not isinstance(d, dict) or "resolution" not in d:
            raise ValueError("the generator config needs 'resolution'")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------- the layer plan


@dataclass(frozen=True)
class LayerSpec:
    """One SynthesisLayer's derived numbers, computed as NVlabs' SynthesisNetwork does (float64)."""

    name: str
    is_torgb: bool
    is_critically_sampled: bool
    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    in_sampling_rate: int
    out_sampling_rate: int
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float
    conv_kernel: int
    up_factor: int
    down_factor: int
    up_taps: int
    down_taps: int
    down_radial: bool
    tmp_sampling_rate: int
    padding: tuple[int, int, int, int]


@dataclass(frozen=True)
class InputSpec:
    channels: int
    size: int
    sampling_rate: float
    bandwidth: float


def synthesis_plan(cfg: StyleGAN3Config) -> tuple[InputSpec, list[LayerSpec]]:
    """Cutoffs, stop bands, sampling rates, sizes, channels and padding of every layer (NVlabs' formulas)."""
    n, res = cfg.num_layers, cfg.resolution
    last_cutoff = res / 2
    last_stopband = last_cutoff * cfg.last_stopband_rel
    exponents = np.minimum(np.arange(n + 1) / max(n - cfg.num_critical, 1e-300), 1)
    cutoffs = cfg.first_cutoff * (last_cutoff / cfg.first_cutoff) ** exponents
    stopbands = cfg.first_stopband * (last_stopband / cfg.first_stopband) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + cfg.margin_size * 2
    sizes[-2:] = res
    channels = np.rint(np.minimum((cfg.channel_base / 2) / cutoffs, cfg.channel_max))
    channels[-1] = cfg.img_channels
    if not np.isfinite(channels).all() or channels.min() < 1 or channels.max() > MAX_CHANNELS:
        raise ValueError(f"channel_base {cfg.channel_base} / channel_max {cfg.channel_max} give layer widths outside [1, {MAX_CHANNELS}]")

    first = InputSpec(int(channels[0]), int(sizes[0]), float(sampling_rates[0]), float(cutoffs[0]))
    layers = []
    for idx in range(n + 1):
        prev = max(idx - 1, 0)
        is_torgb = idx == n
        in_rate, out_rate = int(sampling_rates[prev]), int(sampling_rates[idx])
        tmp_rate = max(in_rate, out_rate) * (1 if is_torgb else cfg.lrelu_upsampling)
        up, down = round(tmp_rate / in_rate), round(tmp_rate / out_rate)
        if in_rate * up != tmp_rate or out_rate * down != tmp_rate:
            raise ValueError(f"layer {idx}: sampling rates {in_rate} -> {out_rate} do not divide {tmp_rate}")
        up_taps = cfg.filter_size * up if up > 1 and not is_torgb else 1
        down_taps = cfg.filter_size * down if down > 1 and not is_torgb else 1
        kernel = 1 if is_torgb else cfg.conv_kernel
        in_size, out_size = int(sizes[prev]), int(sizes[idx])
        pad_total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
        pad_lo = (pad_total + up) // 2  # the symmetric interpretation of sample locations (paper, App. C.3)
        pad_hi = pad_total - pad_lo
        is_critical = idx >= n - cfg.num_critical
        out_channels = int(channels[idx])
        layers.append(LayerSpec(
            name=f"L{idx}_{out_size}_{out_channels}", is_torgb=is_torgb, is_critically_sampled=is_critical,
            in_channels=int(channels[prev]), out_channels=out_channels, in_size=in_size, out_size=out_size,
            in_sampling_rate=in_rate, out_sampling_rate=out_rate, in_cutoff=float(cutoffs[prev]),
            out_cutoff=float(cutoffs[idx]), in_half_width=float(half_widths[prev]),
            out_half_width=float(half_widths[idx]), conv_kernel=kernel, up_factor=up, down_factor=down,
            up_taps=up_taps, down_taps=down_taps, down_radial=cfg.use_radial_filters and not is_critical,
            tmp_sampling_rate=tmp_rate, padding=(pad_lo, pad_hi, pad_lo, pad_hi),
        ))
    return first, layers


# --------------------------------------------------------------------------- layers


class SynthesisInput(nn.Module):
    """Fourier features transformed by affine(w[0]) and the user transform, then a channel mix."""

    def __init__(self, spec: InputSpec, w_dim: int):
        super().__init__()
        self.spec = spec
        c = spec.channels
        freqs = torch.randn(c, 2)  # a fresh network draws frequencies from a disc, as NVlabs does
        radii = freqs.square().sum(1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * spec.bandwidth
        self.weight = nn.Parameter(torch.randn(c, c))
        self.affine = ScaledLinear(w_dim, 4)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(c) - 0.5)

    def forward(self, t: torch.Tensor, transform: torch.Tensor | None = None) -> torch.Tensor:
        """t: affine(w[0]) [B, 4] = (r_c, r_s, t_x, t_y) -> features [B, C, size, size]."""
        user = (self.transform if transform is None else transform.to(self.freqs)).unsqueeze(0)
        b = t.shape[0]
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3, device=t.device, dtype=t.dtype).repeat(b, 1, 1)  # inverse rotation of the image
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = torch.eye(3, device=t.device, dtype=t.dtype).repeat(b, 1, 1)  # inverse translation
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ user  # rotate the image, then translate, then the user's transform
        freqs = self.freqs.unsqueeze(0)
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        spec = self.spec
        amplitudes = (1 - (freqs.norm(dim=2) - spec.bandwidth) / (spec.sampling_rate / 2 - spec.bandwidth)).clamp(0, 1)
        theta = torch.zeros(1, 2, 3, device=t.device, dtype=t.dtype)
        theta[0, 0, 0] = theta[0, 1, 1] = 0.5 * spec.size / spec.sampling_rate
        grid = F.affine_grid(theta, [1, 1, spec.size, spec.size], align_corners=False)  # [1, H, W, 2]
        x = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [B, H, W, C]
        x = torch.sin((x + phases[:, None, None]) * (2 * math.pi)) * amplitudes[:, None, None]
        x = x @ (self.weight / math.sqrt(spec.channels)).t()
        return x.permute(0, 3, 1, 2).contiguous()


class SynthesisLayer(nn.Module):
    """Modulated conv (input scaled by magnitude_ema^-1/2) + filtered leaky ReLU; ToRGB when `spec.is_torgb`."""

    def __init__(self, spec: LayerSpec, w_dim: int, conv_clamp: float | None):
        super().__init__()
        self.spec = spec
        self.conv_clamp = conv_clamp
        k = spec.conv_kernel
        self.affine = ScaledLinear(w_dim, spec.in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(spec.out_channels, spec.in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.register_buffer("up_filter", design_lowpass_filter(
            spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, spec.tmp_sampling_rate))
        self.register_buffer("down_filter", design_lowpass_filter(
            spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, spec.tmp_sampling_rate, radial=spec.down_radial))

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        w = self.weight
        if spec.is_torgb:
            s = style / math.sqrt(spec.in_channels * spec.conv_kernel**2)
            dcoefs = None
        else:
            w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
            s = style * style.square().mean(1, keepdim=True).rsqrt()
            dcoefs = ((s.square() @ w.square().sum([2, 3]).t()) + 1e-8).rsqrt()  # [B, O]
        # modulation on the input channels, demodulation on the output ones: the same numbers as NVlabs'
        # per-sample weights, with one shared convolution
        x = x * (s * self.magnitude_ema.rsqrt()).to(x.dtype)[:, :, None, None]
        x = F.conv2d(x, w.to(x.dtype), padding=spec.conv_kernel - 1)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype)[:, :, None, None]
        if torch.is_grad_enabled() and (x.requires_grad or self.bias.requires_grad):
            # the up-sampled activations are 4-16x the layer's output: keep only the conv output for the
            # backward and recompute the resampling there (peak 8.8 -> 3.1 GB for one 256 px image)
            return checkpoint(self.activation, x, use_reentrant=False, preserve_rng_state=False)
        return self.activation(x)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """Bias, filtered leaky ReLU and clamp of the conv output `x` (ToRGB: bias and clamp only)."""
        spec = self.spec
        gain, slope = (1.0, 1.0) if spec.is_torgb else (SQRT2, 0.2)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, up=spec.up_factor, down=spec.down_factor,
                              padding=spec.padding, gain=gain, slope=slope, clamp=self.conv_clamp)


# --------------------------------------------------------------------------- the generator


def user_transform(translate: tuple[float, float] = (0.0, 0.0), rotate: float = 0.0) -> torch.Tensor:
    """The `transform` that NVlabs' gen_images.py sets for `--translate tx,ty --rotate deg`: the inverse
    of make_transform (a rotation by `rotate` degrees and a translation, in units of the image half-size)."""
    a = math.radians(float(rotate))
    m = np.eye(3)
    m[0, :] = [math.cos(a), math.sin(a), float(translate[0])]
    m[1, :] = [-math.sin(a), math.cos(a), float(translate[1])]
    return torch.from_numpy(np.linalg.inv(m)).to(torch.float32)


def transform_for(G, translate: tuple[float, float] | None = None, rotate: float | None = None) -> torch.Tensor | None:
    """`user_transform(translate, rotate)` for a StyleGAN3 `G`; None when nothing moves (the checkpoint's
    own transform stays).  Any other generator has no Fourier features to move: refused by name."""
    moved = any(float(v) != 0 for v in (translate or ())) or float(rotate or 0) != 0
    if not moved:
        return None
    if not isinstance(G, StyleGAN3Generator):
        raise TargetCLIPError(f"translate/rotate move StyleGAN3's Fourier features; this is a {G.describe()}")
    return user_transform(translate or (0.0, 0.0), rotate or 0.0)


class StyleGAN3Generator(MappedGenerator, nn.Module):
    """StyleGAN3 (T or R) with the engine's generator protocol (generators.protocol.Generator)."""

    is_3d = False

    def __init__(self, cfg: StyleGAN3Config):
        super().__init__()
        self.config = cfg
        self.mapping = MappingNetwork(cfg)
        first, plan = synthesis_plan(cfg)
        self.input = SynthesisInput(first, cfg.w_dim)
        self.layers = nn.ModuleDict(OrderedDict((spec.name, SynthesisLayer(spec, cfg.w_dim, cfg.conv_clamp)) for spec in plan))

    @property
    def identity(self) -> dict:
        return {"arch": f"stylegan3-{self.config.variant.lower()}", "resolution": self.resolution,
                "n_latent": self.n_latent, "w_dim": self.w_dim}

    @property
    def output_resolutions(self) -> list[int]:
        return [self.resolution]  # every layer works near the output's sampling rate: no early stop

    @property
    def stored_transform(self) -> torch.Tensor:
        """The user transform the checkpoint holds ([3, 3], identity in published files)."""
        return self.input.transform.detach().clone()

    def describe(self) -> str:
        return f"{self.resolution}px StyleGAN3-{self.config.variant}"

    # ---- StyleSpace
    def layer_names(self) -> list[str]:
        """StyleSpace layers in synthesis order: "input", the feature layers, "torgb"."""
        names = list(self.layers)
        return ["input", *names[:-1], "torgb"]

    def styles(self, wp: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """The affine output of every layer for W+ `wp` (w[0] -> input, w[i + 1] -> layer i)."""
        self.check_wplus(wp)
        out = OrderedDict(input=self.input.affine(wp[:, 0]))
        for i, (name, layer) in enumerate(zip(self.layer_names()[1:], self.layers.values())):
            out[name] = layer.affine(wp[:, i + 1])
        return out

    def synthesis(self, wp: torch.Tensor, noise_mode: str = "const", out_resolution: int | None = None,
                  transform: torch.Tensor | None = None) -> torch.Tensor:
        """W+ [B, n_latent, w_dim] -> images [B, C, H, W]; `transform` [3, 3] replaces the stored user
        transform (see `user_transform`).  StyleGAN3 has no noise inputs: `noise_mode` is only checked."""
        return self.synthesis_from_styles(self.styles(wp), noise_mode, out_resolution, transform)

    def synthesis_from_styles(self, styles, noise_mode: str = "const", out_resolution: int | None = None,
                              transform: torch.Tensor | None = None) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if out_resolution is not None and int(out_resolution) != self.resolution:
            raise ValueError(f"a StyleGAN3 generator renders at {self.resolution} px only, not {out_resolution}")
        if transform is not None:
            transform = torch.as_tensor(transform, dtype=torch.float32)
            if transform.shape != (3, 3) or not torch.isfinite(transform).all():
                raise ValueError(f"transform must be a finite 3x3 matrix, got shape {list(transform.shape)}")
        style_list = self._style_list(styles)
        x = self.input(style_list[0], transform)
        for layer, s in zip(self.layers.values(), style_list[1:]):
            x = layer(x, s)
        return x * self.config.output_scale if self.config.output_scale != 1 else x

    def _style_list(self, styles) -> list[torch.Tensor]:
        return self.ordered_style_codes(styles, [4] + [layer.in_channels for layer in self.layers.values()])
