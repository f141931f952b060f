"""StyleGAN2 generator (Karras et al. 2020) in plain PyTorch: no custom ops, no compilation.

One implementation serves every checkpoint layout (rosinality, NVlabs StyleGAN2-ADA,
our own safetensors): the loaders translate parameter names into this module's and
hand it a `StyleGAN2Config`.  Parameters are stored unscaled and the equalised
learning-rate gains are applied at run time, exactly as both reference codebases
do, so checkpoints load without any rescaling.

Synthesis order (also the order of the StyleSpace codes, see `StyleGAN2Generator.styles`):

    b4.conv1, b4.torgb, b8.conv0, b8.conv1, b8.torgb, ..., b{R}.conv0, b{R}.conv1, b{R}.torgb

Layer `bN.conv0` upsamples (transposed conv + [1,3,3,1] FIR), `bN.torgb` is the 1x1
unmodulated-output skip branch.  W+ index of each layer: b4.conv1 -> 0, b4.torgb -> 1,
and for block k = log2(N) >= 3: conv0 -> 2k-5, conv1 -> 2k-4, torgb -> 2k-3.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from targetclip_core.devices import active_autocast_dtype, full_precision, widened
from targetclip_core.errors import LatentError
from targetclip_core.generators.fir import depthwise_fir, fir_kernel_2d, upsample_fir  # noqa: F401 (re-exported)
from targetclip_core.generators.limits import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_FILTER_TAPS,
    MAX_IMAGE_CHANNELS,
    MAX_LATENT_DIM,
    MAX_MAPPING_LAYERS,
    MAX_RESOLUTION,
    checked_float,
    checked_int,
    checked_mapping,
)
from targetclip_core.generators.mapped import MappedGenerator
from targetclip_core.generators.synthesis_grad import frozen_weight, synthesis_layer

SQRT2 = math.sqrt(2.0)
NOISE_MODES = ("const", "random", "none")
# "unfused" uses the hand-written backward of synthesis_grad when the weights are frozen;
# "unfused-autograd" is the same computation left to autograd (kept for comparison)
MODCONV_IMPLS = ("auto", "fused", "unfused", "unfused-autograd")


@dataclass(frozen=True)
class StyleGAN2Config:
    """Everything needed to build the network; stored verbatim in our safetensors files."""

    resolution: int
    channels: dict[int, int]  # feature maps per resolution, 4 .. resolution
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0  # class conditioning (NVlabs conditional pickles)
    n_mlp: int = 8
    mapping_lr_mul: float = 0.01
    conv_clamp: float | None = None  # NVlabs ADA configs clamp activations to +-256
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    img_channels: int = 3
    source_format: str = "unknown"  # where the weights came from, for diagnostics

    def __post_init__(self):
        # every number is checked against generators.limits before a layer is built from it
        res = checked_int("resolution", self.resolution, 4, MAX_RESOLUTION)
        if res & (res - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {res}")
        channels = {checked_int("a channels key", k, 1, MAX_RESOLUTION): checked_int(f"channels[{k}]", v, 1, MAX_CHANNELS)
                    for k, v in checked_mapping("channels", self.channels).items()}
        missing = [r for r in self.resolutions if r not in channels]
        if missing:
            raise ValueError(f"channels missing for resolutions {missing}")
        blur = self.blur_kernel
        if isinstance(blur, (str, bytes)) or not hasattr(blur, "__len__") or not 1 <= len(blur) <= MAX_FILTER_TAPS:
            raise ValueError(f"blur_kernel must be a list of 1 to {MAX_FILTER_TAPS} integers")
        blur = tuple(checked_int("a blur_kernel tap", v, 0, 1 << 16) for v in blur)
        if not sum(blur):
            raise ValueError("blur_kernel must not be all zeros")
        checks = {
            "channels": channels,
            "blur_kernel": blur,
            "z_dim": checked_int("z_dim", self.z_dim, 1, MAX_LATENT_DIM),
            "w_dim": checked_int("w_dim", self.w_dim, 1, MAX_LATENT_DIM),
            "c_dim": checked_int("c_dim", self.c_dim, 0, MAX_CLASSES),
            "n_mlp": checked_int("n_mlp", self.n_mlp, 1, MAX_MAPPING_LAYERS),
            "mapping_lr_mul": checked_float("mapping_lr_mul", self.mapping_lr_mul, positive=True),
            "conv_clamp": None if self.conv_clamp is None else checked_float("conv_clamp", self.conv_clamp, positive=True),
            "img_channels": checked_int("img_channels", self.img_channels, 1, MAX_IMAGE_CHANNELS),
            "source_format": str(self.source_format),
        }
        for name, value in checks.items():
            object.__setattr__(self, name, value)

    @property
    def resolutions(self) -> list[int]:
        return [2**k for k in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def n_latent(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    @staticmethod
    def rosinality_channels(resolution: int, channel_multiplier: int = 2) -> dict[int, int]:
        """Channel plan of rosinality's Generator(size, 512, n_mlp, channel_multiplier)."""
        base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
        plan = {}
        for r in [2**k for k in range(2, int(math.log2(resolution)) + 1)]:
            plan[r] = base[r] if r <= 32 else base[r] * channel_multiplier
        return plan

    def to_json_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {str(k): v for k, v in self.channels.items()}
        d["blur_kernel"] = list(self.blur_kernel)
        return d

    @classmethod
    def from_json_dict(cls, d: dict) -> "StyleGAN2Config":
        """The config a to_json_dict() wrote (ValueError naming the field when a value is wrong)."""
        d = dict(checked_mapping("the generator config", d))
        if "channels" not in d or "resolution" not in d:
            raise ValueError("the generator config needs 'resolution' and 'channels'")
        # JSON object keys are strings: '4' -> 4 (anything else is refused by __post_init__)
        d["channels"] = {int(k) if isinstance(k, str) and k.isdigit() else k: v
                         for k, v in checked_mapping("channels", d["channels"]).items()}
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------- building blocks


class ScaledLinear(nn.Module):
    """Fully connected layer with equalised learning rate (weights scaled at run time)."""

    def __init__(self, in_features, out_features, *, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.activation = activation

    def forward(self, x):
        x = torch.addmm(self.bias * self.bias_gain, x, (self.weight * self.weight_gain).t())
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2) * SQRT2
        return x


def is_nhwc(t: torch.Tensor) -> bool:
    """Channels-last (and not also plain contiguous, as a single pixel or channel is)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class ModulatedConv(nn.Module):
    """Modulated convolution of the synthesis network, optionally upsampling by 2.

    Two equivalent ways to compute it (`impl`):
      fused   - one grouped convolution with a per-sample modulated weight (the papers' form)
      unfused - scale the input channels by the style, convolve with the shared weight,
                scale the output channels by the demodulation coefficients
    The unfused form keeps a single weight for the whole batch, which lets the
    convolution use dense kernels and makes its backward pass much cheaper.
    """

    def __init__(self, in_ch, out_ch, kernel_size, w_dim, *, demodulate=True, up=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.demodulate, self.up = demodulate, up
        self.affine = ScaledLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        if up:
            # after the stride-2 transposed conv the FIR restores the 2x grid: gain 4 keeps the DC level
            self.register_buffer("blur", fir_kernel_2d(blur_kernel) * 4, persistent=False)
            taps = len(blur_kernel)
            extra = taps - 2 - (kernel_size - 1)
            self.blur_pad = ((extra + 1) // 2 + 1, extra // 2 + 1)

    def demod_coefficients(self, weight, style, weight_squares=None):
        # sum_{i,k} (w_oik s_i)^2 = sum_i s_i^2 * sum_k w_oik^2 : a [B,I]x[I,O] product instead of a [B,O,I,k,k] tensor
        if weight_squares is None:
            weight_squares = weight.square().sum(dim=(2, 3))
        return torch.rsqrt(style.square() @ weight_squares.t() + 1e-8)

    def forward(self, x, style, impl="unfused"):
        """x: [B, in_ch, H, W]; style: [B, in_ch] (the StyleSpace code of this layer).

        Returns (y, out_coef): the caller multiplies y by out_coef [B, out_ch] (the
        demodulation coefficients still to apply), or uses y as is when it is None.
        Handing the last scaling to the caller lets it fuse scale, gain, bias and
        noise into a single pass over the activations.
        """
        weight = self.weight * self.weight_gain
        if self.kernel_size == 1:
            # a 1x1 modulated conv (toRGB) is a per-sample [out, in] matrix product: folding the
            # style into that small matrix skips a full pass over the activations, both ways
            mat = weight[None, :, :, 0, 0] * style[:, None, :]
            if self.demodulate:
                mat = mat * self.demod_coefficients(weight, style)[:, :, None]
            if is_nhwc(x):
                # NHWC: a plain [B, HW, in] x [B, in, out] product whose backward lands in the
                # same layout as the gradient it is summed with (no copy, no format mismatch)
                b, _, h, w = x.shape
                y = torch.bmm(x.permute(0, 2, 3, 1).reshape(b, h * w, -1), mat.transpose(1, 2))
                return y.view(b, h, w, -1).permute(0, 3, 1, 2), None
            return torch.einsum("bihw,boi->bohw", x, mat), None
        if impl == "fused":
            return self._forward_fused(x, style, weight), None
        y = self._conv(x * style[:, :, None, None], weight, groups=1)
        return y, (self.demod_coefficients(weight, style) if self.demodulate else None)

    def _forward_fused(self, x, style, weight):
        b, _, h, w = x.shape
        wmod = weight[None] * style[:, None, :, None, None]  # [B, O, I, k, k]
        if self.demodulate:
            wmod = wmod * self.demod_coefficients(weight, style)[:, :, None, None, None]
        x = x.reshape(1, b * self.in_ch, h, w)
        if self.up:  # transposed conv wants [in, out/groups, k, k]
            wmod = wmod.transpose(1, 2).reshape(b * self.in_ch, self.out_ch, *weight.shape[2:])
        else:
            wmod = wmod.reshape(b * self.out_ch, self.in_ch, *weight.shape[2:])
        x = self._conv(x, wmod, groups=b, weight_in_out=self.up)
        return x.reshape(b, self.out_ch, *x.shape[2:])

    def _conv(self, x, weight, groups, weight_in_out=False):
        if not self.up:
            return F.conv2d(x, weight, padding=self.kernel_size // 2, groups=groups)
        if not weight_in_out:  # [out, in, k, k] -> the [in, out, k, k] a transposed conv wants
            weight = weight.transpose(0, 1)
        x = F.conv_transpose2d(x, weight, stride=2, groups=groups)
        return depthwise_fir(x, self.blur, self.blur_pad)


class SynthesisLayer(nn.Module):
    """Modulated conv + noise + bias + leaky ReLU (+ optional clamp)."""

    def __init__(self, in_ch, out_ch, w_dim, resolution, *, up, blur_kernel, conv_clamp):
        super().__init__()
        self.conv = ModulatedConv(in_ch, out_ch, 3, w_dim, up=up, blur_kernel=blur_kernel)
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.conv_clamp = conv_clamp
        self.resolution = resolution

    @property
    def affine(self):
        return self.conv.affine

    def trainable(self) -> bool:
        return self.conv.weight.requires_grad or self.bias.requires_grad or self.noise_strength.requires_grad

    def _offset(self, like, noise_mode):
        # leaky_relu(t) * sqrt2 == leaky_relu(sqrt2 * t): fold the gain into the affine part
        # so demodulation, noise, bias and gain are one addcmul and the activation is in place
        bias = self.bias[None, :, None, None] * SQRT2
        if noise_mode == "none":
            return bias
        if noise_mode == "const":
            noise = self.noise_const.to(like.dtype)[None, None]
        else:
            noise = torch.randn(like.shape[0], 1, self.resolution, self.resolution, device=like.device, dtype=like.dtype)
        # in the activations' memory format, or the addcmul that adds it reads across layouts
        layout = torch.channels_last if is_nhwc(like) else torch.contiguous_format
        if torch.is_grad_enabled() and (self.bias.requires_grad or self.noise_strength.requires_grad):
            return torch.addcmul(bias, noise, self.noise_strength * SQRT2).contiguous(memory_format=layout)
        offset = torch.empty(noise.shape[0], bias.shape[1], *noise.shape[2:], device=like.device, dtype=like.dtype, memory_format=layout)
        return torch.addcmul(bias, noise, self.noise_strength * SQRT2, out=offset)

    def forward(self, x, style, noise_mode="const", impl="unfused"):
        if impl == "unfused" and not self.trainable():
            # frozen weights (every latent optimisation): one pass with a hand-written backward. Under autocast
            # it runs its own low-precision path: activations and weights in the reduced type, styles and
            # demodulation in fp32 (the sums of squares and rsqrt are what bf16 gets wrong)
            dtype = active_autocast_dtype(x.device.type) or x.dtype
            with full_precision(x.device.type):
                style = widened(style)  # a style computed under autocast (EG3D's) comes in bf16
                weight, weight_squares = frozen_weight(self.conv, dtype)
                coef = self.conv.demod_coefficients(None, style, weight_squares) * SQRT2
                x = x.to(dtype)
                return synthesis_layer(x, style, coef, self._offset(x, noise_mode), weight, self.conv, self.conv_clamp)
        y, coef = self.conv(x, style, impl)
        offset = self._offset(y, noise_mode)
        if coef is None:
            x = torch.add(offset, y, alpha=SQRT2)
        else:
            x = torch.addcmul(offset, y, (coef * SQRT2)[:, :, None, None])
        x = F.leaky_relu_(x, 0.2)
        if self.conv_clamp is not None:  # not in place: leaky_relu_'s backward needs its output
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class ToRGBLayer(nn.Module):
    """1x1 modulated conv without demodulation, producing the skip image of a block."""

    def __init__(self, in_ch, out_ch, w_dim, *, conv_clamp):
        super().__init__()
        self.conv = ModulatedConv(in_ch, out_ch, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.conv_clamp = conv_clamp

    @property
    def affine(self):
        return self.conv.affine

    def forward(self, x, style, impl="unfused"):
        y, _ = self.conv(x, style, impl)  # no demodulation: nothing left to apply
        x = widened(y) + self.bias[None, :, None, None]  # the RGB skip sums stay fp32 under autocast
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class SynthesisBlock(nn.Module):
    def __init__(self, in_ch, out_ch, resolution, cfg: StyleGAN2Config):
        super().__init__()
        self.resolution = resolution
        kw = dict(blur_kernel=cfg.blur_kernel, conv_clamp=cfg.conv_clamp)
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_ch, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, cfg.w_dim, resolution, up=True, **kw)
            self.register_buffer("skip_filter", fir_kernel_2d(cfg.blur_kernel), persistent=False)
        self.conv1 = SynthesisLayer(out_ch, out_ch, cfg.w_dim, resolution, up=False, **kw)
        self.torgb = ToRGBLayer(out_ch, cfg.img_channels, cfg.w_dim, conv_clamp=cfg.conv_clamp)

    def layer_names(self) -> list[str]:
        return (["conv1"] if self.resolution == 4 else ["conv0", "conv1"]) + ["torgb"]

    def forward(self, x, img, styles, noise_mode, impl, memory_format=torch.contiguous_format):
        if self.resolution == 4:
            x = self.const[None].expand(styles[0].shape[0], -1, -1, -1).contiguous(memory_format=memory_format)
        else:
            x = self.conv0(x, styles.pop(0), noise_mode, impl)
        x = self.conv1(x, styles.pop(0), noise_mode, impl)
        y = self.torgb(x, styles.pop(0), impl)
        if img is not None:
            with full_precision(y.device.type):
                y = upsample_fir(img, self.skip_filter) + y
        return x, y


class MappingNetwork(nn.Module):
    """z (+ optional class label c) -> w, with the tracked average w_avg for truncation."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        embed = cfg.w_dim if cfg.c_dim else 0
        if cfg.c_dim:
            self.embed = ScaledLinear(cfg.c_dim, embed)
        dims = [cfg.z_dim + embed] + [cfg.w_dim] * cfg.n_mlp
        for i in range(cfg.n_mlp):
            setattr(self, f"fc{i}", ScaledLinear(dims[i], dims[i + 1], lr_mul=cfg.mapping_lr_mul, activation="lrelu"))
        self.n_mlp = cfg.n_mlp
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))
        self.has_w_avg = False  # loaders set it when the checkpoint carries a trained average
        self._mean_cache: dict = {}

    def forward(self, z, c=None, truncation=1.0, truncation_latent=None):
        """z [B, z_dim] (+ c [B, c_dim]) -> w [B, w_dim], truncated toward `truncation_latent`
        (default: the checkpoint's w_avg when it has one, else a sampled mean)."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise LatentError(f"expected z of shape [B, {self.z_dim}], got {list(z.shape)}")
        w = self._map(z, c)
        if truncation != 1.0:
            if truncation_latent is None:
                truncation_latent = self.truncation_latent()
            w = truncation_latent + truncation * (w - truncation_latent)
        return w

    def truncation_latent(self) -> torch.Tensor:
        if self.has_w_avg:
            return self.w_avg[None].clone()
        return self.mean(4096, 0)

    def mean(self, n: int, seed: int) -> torch.Tensor:
        """Mean of `n` mapped samples, deterministic for a seed and cached: [1, w_dim]."""
        key = (n, seed, self.w_avg.device)
        if key not in self._mean_cache:
            z = torch.randn(n, self.z_dim, generator=torch.Generator().manual_seed(seed)).to(self.w_avg.device)
            c = torch.zeros(n, self.c_dim, device=z.device) if self.c_dim else None
            with torch.no_grad():
                self._mean_cache[key] = self._map(z, c).mean(0, keepdim=True)
        return self._mean_cache[key].clone()

    def _map(self, z, c=None):
        x = _normalize_2nd_moment(z)
        if self.c_dim:
            if c is None:
                raise LatentError(f"this generator is class-conditional (c_dim={self.c_dim}): pass a class label c of shape [B, {self.c_dim}]")
            if c.shape[-1] != self.c_dim:
                raise LatentError(f"class label c has {c.shape[-1]} entries, the generator expects {self.c_dim}")
            x = torch.cat([x, _normalize_2nd_moment(self.embed(c.to(x.dtype)))], dim=1)
        elif c is not None and c.numel():
            raise LatentError("this generator is unconditional: it takes no class label c")
        for i in range(self.n_mlp):
            x = getattr(self, f"fc{i}")(x)
        return x


def _normalize_2nd_moment(x, eps=1e-8):
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


# --------------------------------------------------------------------------- the generator


class StyleGAN2Generator(MappedGenerator, nn.Module):
    """StyleGAN2 generator with the engine's generator protocol (generators.protocol.Generator).

    Images come out as float tensors [B, 3, H, W], range about [-1, 1], not clamped.
    """

    is_3d = False

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.config = cfg
        self.mapping = MappingNetwork(cfg)
        blocks = []
        prev = 0
        for res in cfg.resolutions:
            blocks.append((f"b{res}", SynthesisBlock(prev, cfg.channels[res], res, cfg)))
            prev = cfg.channels[res]
        self.synthesis_blocks = nn.ModuleDict(OrderedDict(blocks))
        self.modconv_impl = "auto"

    @property
    def identity(self) -> dict:
        """What makes two generators' latents interchangeable (checked by essence files)."""
        return {"arch": "stylegan2", "resolution": self.resolution, "n_latent": self.n_latent, "w_dim": self.w_dim}

    def describe(self) -> str:
        return f"{self.resolution}px StyleGAN2"

    @property
    def output_resolutions(self) -> list[int]:
        """Sizes `synthesis(out_resolution=...)` can stop at."""
        return self.config.resolutions

    # ---- StyleSpace
    def layer_names(self) -> list[str]:
        """Names of the modulated convs in synthesis order (the StyleSpace order)."""
        return [f"{bn}.{ln}" for bn, blk in self.synthesis_blocks.items() for ln in blk.layer_names()]

    def layer_wplus_index(self) -> dict[str, int]:
        """Which W+ entry drives each layer (see the module docstring)."""
        return {name: _wplus_index(name) for name in self.layer_names()}

    def _layers(self):
        for bn, blk in self.synthesis_blocks.items():
            for ln in blk.layer_names():
                yield f"{bn}.{ln}", getattr(blk, ln)

    def styles(self, wp: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """StyleSpace codes (Wu et al. 2021): the affine output of every modulated conv.

        Returns an OrderedDict layer name -> [B, in_channels] in synthesis order
        (toRGB layers included; SAT3D drops them).  This is the style before the
        equalised-lr gain, i.e. the `modulation(w)` output of rosinality's code and
        the `affine(w)` output of NVlabs' code.
        """
        self.check_wplus(wp)
        with full_precision(wp.device.type):  # styles stay fp32 under autocast: they are what gradients reach
            return OrderedDict((name, layer.affine(wp[:, _wplus_index(name)])) for name, layer in self._layers())

    def synthesis(self, wp: torch.Tensor, noise_mode: str = "const", out_resolution: int | None = None) -> torch.Tensor:
        return self.synthesis_from_styles(self.styles(wp), noise_mode=noise_mode, out_resolution=out_resolution)

    def synthesis_from_styles(self, styles, noise_mode: str = "const", out_resolution: int | None = None) -> torch.Tensor:
        """Render from StyleSpace codes (an OrderedDict as returned by `styles`, or a list in that order)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        stop = self.resolution if out_resolution is None else int(out_resolution)
        if stop not in self.config.resolutions:
            raise ValueError(f"out_resolution must be a power of two between 4 and {self.resolution}, got {out_resolution}")
        style_list = self._style_list(styles)
        impl = self._pick_impl(style_list[0].shape[0], style_list[0].device)
        # oneDNN convolutions run 10-20% faster on NHWC activations (bench generator)
        memory_format = torch.channels_last if style_list[0].device.type == "cpu" else torch.contiguous_format
        x = img = None
        for bn, blk in self.synthesis_blocks.items():
            n = len(blk.layer_names())
            x, img = blk(x, img, style_list[:n], noise_mode, impl, memory_format)
            style_list = style_list[n:]
            if blk.resolution == stop:
                break
        return img.contiguous()

    def _style_list(self, styles) -> list[torch.Tensor]:
        return self.ordered_style_codes(styles, [layer.conv.in_ch for _, layer in self._layers()])

    def _pick_impl(self, batch: int, device: torch.device) -> str:
        if self.modconv_impl not in MODCONV_IMPLS:
            raise ValueError(f"modconv_impl must be one of {MODCONV_IMPLS}, got {self.modconv_impl!r}")
        if self.modconv_impl != "auto":
            return self.modconv_impl
        # `targetclip bench generator` measured unfused faster on CPU at batch 1 and 4 (fused
        # 1.1-1.4x slower forward, 1.6-2.1x slower forward+backward). On CUDA, NVlabs' own
        # choice (grouped conv for inference) is kept for single samples; not yet measured here.
        if device.type == "cuda" and batch == 1 and not torch.is_grad_enabled():
            return "fused"
        return "unfused"


def _wplus_index(layer_name: str) -> int:
    block, layer = layer_name.split(".")
    k = int(math.log2(int(block[1:])))
    if k == 2:
        return {"conv1": 0, "torgb": 1}[layer]
    return {"conv0": 2 * k - 5, "conv1": 2 * k - 4, "torgb": 2 * k - 3}[layer]
