"""What a generator configuration may declare: types and the sizes of the networks people have.

A configuration comes from a file (our safetensors metadata, an NVlabs pickle's `init_kwargs`,
shapes of a state dict), so every number in it is checked here before a network is built:
a wrong type is named instead of surfacing as a TypeError deep in a constructor, and absurd
sizes (a 7 KB file declaring 60000 channels or a billion mapping layers) are refused before
any memory or work is spent on them.  The bounds are generous: several times the largest
published StyleGAN2 / EG3D configurations.
"""

from __future__ import annotations

import math
import numbers

MAX_RESOLUTION = 4096  # StyleGAN2 configs reach 1024, StyleGAN-XL 1024, EG3D 512
MAX_CHANNELS = 4096  # feature maps per layer (config-f: 512; StyleGAN-XL: 1024)
MAX_LATENT_DIM = 4096  # z_dim / w_dim (512 everywhere in practice)
MAX_CLASSES = 1 << 16  # c_dim: class labels or EG3D's 25 camera numbers
MAX_MAPPING_LAYERS = 64  # n_mlp (8 for FFHQ, 2 for EG3D)
MAX_IMAGE_CHANNELS = 1024  # 3 for images, 96 for EG3D's tri-planes
MAX_FILTER_TAPS = 16  # FIR kernels ([1, 3, 3, 1] in every published config)
MAX_RAY_SAMPLES = 1024  # EG3D samples per ray (48 + 48 in the official configs)


def checked_int(name: str, value, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi]; ValueError naming `name` otherwise (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r:.40}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside the supported range [{lo}, {hi}]")
    return value


def checked_float(name: str, value, lo: float = -math.inf, hi: float = math.inf, *, positive: bool = False) -> float:
    """`value` as a finite float in [lo, hi] (and > 0 with `positive`); ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r:.40}")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi or (positive and value <= 0):
        bound = "a positive finite number" if positive else f"a finite number in [{lo}, {hi}]"
        raise ValueError(f"{name} = {value} must be {bound}")
    return value


def checked_mapping(name: str, value) -> dict:
    """`value` if it is a dict; ValueError naming `name` otherwise."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    return value
