"""Real photos that stay themselves: after an encoder's inversion, refine the latent (`refine_inversion`) and
tune the generator around it (`pivotal_tuning`, PTI), measured with pixel L2, LPIPS and ArcFace identity."""

from targetclip_core.methods.reconstruction.losses import ReconstructionLoss, ReconstructionTerms
from targetclip_core.methods.reconstruction.pivotal import (
    Locality,
    TunedResult,
    load_tuned_generator,
    pivotal_tuning,
    save_tuned_generator,
)
from targetclip_core.methods.reconstruction.pipeline import Reconstruction, Stage, reconstruct_photo, reconstruction_metrics
from targetclip_core.methods.reconstruction.refine import FitResult, FitStep, refine_inversion

__all__ = [
    "FitResult",
    "FitStep",
    "Locality",
    "Reconstruction",
    "ReconstructionLoss",
    "ReconstructionTerms",
    "Stage",
    "TunedResult",
    "load_tuned_generator",
    "pivotal_tuning",
    "reconstruct_photo",
    "reconstruction_metrics",
    "refine_inversion",
    "save_tuned_generator",
]
