"""e4e (`Encoder4Editing`) and pSp (`GradualStyleEncoder`) image -> W+ encoders, and their checkpoints.

Both share one architecture: the IR-SE50 body, an FPN over three of its stages and one
`GradualStyleBlock` head per W+ entry (entries 0-2 read the coarsest features, 3-6 the
middle, 7+ the finest).  They differ only in how the heads combine: pSp predicts every
entry on its own; e4e predicts one w from head 0 and adds each other head's output to it
as a delta (so its codes stay near W, which is what makes them editable).

Official checkpoints (`e4e_ffhq_encode.pt`, `psp_ffhq_encode.pt`, TargetCLIP's essence
encoder) are `{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}`; they are
read with `torch.load(weights_only=True)` only.  Everything the network needs is inferred
from the keys, so tiny test networks use the same code.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from targetclip_core.encoders import irse
from targetclip_core.encoders.irse import stages_from_state
from targetclip_core.errors import CheckpointError, malformed_file
from targetclip_core.formats.checkpoints import build_checked, few_keys, require_keys, torch_load_safely

COARSE_END, MIDDLE_END = 3, 7  # W+ entries [0,3) coarse, [3,7) middle, [7,n) fine
ENCODER_KINDS = {"Encoder4Editing": "e4e", "GradualStyleEncoder": "psp"}


@dataclass(frozen=True)
class EncoderConfig:
    kind: str = "e4e"  # "e4e" (w + deltas) or "psp" (independent entries)
    n_styles: int = 18  # W+ entries: 2 * log2(generator resolution) - 2
    w_dim: int = 512
    stages: tuple = irse.STAGES_50
    input_size: int = 256  # the resolution the encoder was trained at

    def __post_init__(self):
        if self.kind not in ("e4e", "psp"):
            raise ValueError(f"encoder kind must be 'e4e' or 'psp', got {self.kind!r}")
        object.__setattr__(self, "stages", tuple(tuple(s) for s in self.stages))

    def to_dict(self) -> dict:
        return asdict(self)


class EqualLinear(nn.Module):
    """rosinality's equalised-lr linear layer (lr_mul 1): the weight is scaled by 1/sqrt(in) at run time."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1 / math.sqrt(in_dim)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """Strided 3x3 convs down to 1x1 (log2(spatial) of them, LeakyReLU 0.01), then an EqualLinear."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int):
        super().__init__()
        layers, c = [], in_channels
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(c, out_channels, 3, 2, 1), nn.LeakyReLU()]
            c = out_channels
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)

    def forward(self, x):
        return self.linear(self.convs(x).flatten(1))


class StyleEncoder(nn.Module):
    """Image [B,3,S,S] (S = cfg.input_size, [-1,1]) -> W+ codes [B, n_styles, w_dim], before latent_avg."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.input_layer = irse.input_layer(cfg.stages[0][0])
        self.body = irse.body(cfg.stages)
        ends = irse.stage_ends(cfg.stages)
        self.taps = (ends[1], ends[2], ends[3])  # fine (1/4), middle (1/8), coarse (1/16) features
        c_fine, c_mid, c_coarse = (cfg.stages[i][1] for i in (1, 2, 3))
        coarse_spatial = cfg.input_size // 16
        self.styles = nn.ModuleList(
            GradualStyleBlock(c_coarse, cfg.w_dim, coarse_spatial * (1 if i < COARSE_END else 2 if i < MIDDLE_END else 4))
            for i in range(cfg.n_styles)
        )
        self.latlayer1 = nn.Conv2d(c_mid, c_coarse, 1)
        self.latlayer2 = nn.Conv2d(c_fine, c_coarse, 1)

    def features(self, x):
        x = self.input_layer(x)
        taps = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                taps[i] = x
        fine, mid, coarse = (taps[i] for i in self.taps)
        return fine, mid, coarse

    def forward(self, x):
        fine, mid, coarse = self.features(x)
        n = self.cfg.n_styles
        p_mid = _upsample_add(coarse, self.latlayer1(mid)) if n > COARSE_END else None
        p_fine = _upsample_add(p_mid, self.latlayer2(fine)) if n > MIDDLE_END else None
        feats = [coarse if i < COARSE_END else p_mid if i < MIDDLE_END else p_fine for i in range(n)]
        codes = [head(f) for head, f in zip(self.styles, feats)]
        if self.cfg.kind == "psp":
            return torch.stack(codes, dim=1)
        w0 = codes[0]
        return torch.stack([w0] + [w0 + d for d in codes[1:]], dim=1)


def _upsample_add(x, y):
    # the FPN merge of the reference: bilinear with align_corners=True to y's size, then add
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


# --------------------------------------------------------------------------- checkpoints


@dataclass
class EncoderCheckpoint:
    cfg: EncoderConfig
    state: dict  # encoder parameters, without the 'encoder.' prefix
    latent_avg: torch.Tensor | None  # [w_dim]
    opts: dict
    raw: dict  # the whole checkpoint (the decoder, training state, ...)


def read_encoder_checkpoint(path) -> EncoderCheckpoint:
    """Read an e4e / pSp / TargetCLIP-encoder checkpoint (official layout) without running any code."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such file")
    ckpt = torch_load_safely(file)
    with malformed_file(file, "e4e/pSp checkpoint"):
        return _encoder_checkpoint(ckpt, file)


def _encoder_checkpoint(ckpt, file: Path) -> EncoderCheckpoint:
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        found = ", ".join(map(str, list(ckpt)[:6])) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{file}: not an e4e/pSp checkpoint: expected a dict with 'state_dict' (found {found})")
    sd = ckpt["state_dict"]
    state = {k[len("encoder.") :]: v for k, v in sd.items() if isinstance(k, str) and k.startswith("encoder.")}
    if not state:
        raise CheckpointError(f"{file}: the checkpoint has no 'encoder.*' weights (it has {few_keys(sd)})")
    opts = _plain_opts(ckpt.get("opts"))
    if not isinstance(opts.get("start_from_latent_avg", True), bool):
        raise CheckpointError(f"{file}: opts.start_from_latent_avg is {opts['start_from_latent_avg']!r:.40}, expected true or false")
    cfg = infer_encoder_config(state, opts, file)
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        if not torch.is_tensor(latent_avg) or latent_avg.dim() == 0 or latent_avg.shape[-1] != cfg.w_dim:
            raise CheckpointError(f"{file}: latent_avg has shape {list(getattr(latent_avg, 'shape', []))}, expected [..., {cfg.w_dim}]")
        latent_avg = latent_avg.reshape(-1, cfg.w_dim)[0].float()  # e4e repeats it over the W+ entries
        if not torch.isfinite(latent_avg).all():
            raise CheckpointError(f"{file}: latent_avg contains NaN or infinite values")
    return EncoderCheckpoint(cfg, state, latent_avg, opts, ckpt)


def infer_encoder_config(state: dict, opts: dict, file) -> EncoderConfig:
    require_keys(state, ["input_layer.0.weight", "styles.0.linear.weight", "latlayer1.weight"], file, "e4e/pSp encoder")
    encoder_type = opts.get("encoder_type", "Encoder4Editing")
    if encoder_type not in ENCODER_KINDS:
        raise CheckpointError(
            f"{file}: encoder_type {encoder_type!r} is not supported (supported: {', '.join(ENCODER_KINDS)})"
        )
    n_styles = len({int(m.group(1)) for k in state if (m := re.match(r"styles\.(\d+)\.linear\.weight$", k))})
    w_dim = state["styles.0.linear.weight"].shape[0]
    n_convs = len([k for k in state if re.fullmatch(r"styles\.0\.convs\.\d+\.weight", k)])
    stages = stages_from_state(state, file)
    return EncoderConfig(ENCODER_KINDS[encoder_type], n_styles, w_dim, stages, input_size=16 * 2**n_convs)


def _plain_opts(opts) -> dict:
    """Training options as a plain dict (they are saved as vars(Namespace), or a Namespace)."""
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        opts = vars(opts) if hasattr(opts, "__dict__") else {}
    return dict(opts)


def build_encoder(ckpt: EncoderCheckpoint, file) -> StyleEncoder:
    enc = build_checked(lambda: StyleEncoder(ckpt.cfg), ckpt.state, f"{file} (encoder)")
    return enc.eval().requires_grad_(False)
