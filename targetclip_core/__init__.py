"""TargetCLIP engine: StyleGAN2 generators, essence transfer, SAT3D.  Plain PyTorch, no ComfyUI.

Public API (see DESIGN.md); names appear here as their capability lands.
"""

from .errors import CheckpointError, LatentError, TargetCLIPError, UnsafePickleError, WeightsUnavailableError
from .latents import load_latents, save_latents, z_from_seeds
from .loaders import load_generator, save_generator
from .stylegan2 import StyleGAN2Config, StyleGAN2Generator

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "LatentError",
    "StyleGAN2Config",
    "StyleGAN2Generator",
    "TargetCLIPError",
    "UnsafePickleError",
    "WeightsUnavailableError",
    "load_generator",
    "load_latents",
    "save_generator",
    "save_latents",
    "z_from_seeds",
]
