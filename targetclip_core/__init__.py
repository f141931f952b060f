"""TargetCLIP engine: StyleGAN2, StyleGAN3 and EG3D generators, essence transfer, SAT3D, photo reconstruction, video.  Plain PyTorch, no ComfyUI.

The public API: the stable names scripts and tools import from `targetclip_core`. The code behind
them is layered in subpackages (io, formats, generators, encoders, faces, methods, metrics, cli,
bench): docs/ARCHITECTURE.md says what each holds and where new code goes.
"""

from targetclip_core.encoders.arcface import ArcFace, load_arcface
from targetclip_core.encoders.clip import CLIPEncoder, load_clip
from targetclip_core.encoders.inversion import Inverter, load_inverter
from targetclip_core.encoders.perceptual import load_lpips
from targetclip_core.errors import (
    CheckpointError,
    LatentError,
    TargetCLIPError,
    UnsafePickleError,
    WeightsUnavailableError,
)
from targetclip_core.faces.alignment import AlignedFace, PasteResult, align_face, face_mask, paste_back
from targetclip_core.faces.landmarks import detect_faces, detect_landmarks
from targetclip_core.faces.parsing import FaceParser, load_face_parser
from targetclip_core.generators.latents import load_latents, save_latents, wplus_from_seeds, z_from_seeds
from targetclip_core.generators.load import load_generator, save_generator
from targetclip_core.generators.protocol import Generator
from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from targetclip_core.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator, user_transform
from targetclip_core.io.video import read_clip, write_clip
from targetclip_core.methods.directions import (
    Direction,
    GlobalDirection,
    apply_global_direction,
    compute_global_statistics,
    ganspace_directions,
    global_direction,
    global_direction_essence,
    load_direction,
    load_global_statistics,
    save_direction,
    sefa_directions,
    text_constraint,
)
from targetclip_core.methods.reconstruction import (
    load_tuned_generator,
    pivotal_tuning,
    reconstruct_photo,
    refine_inversion,
    save_tuned_generator,
)
from targetclip_core.methods.targetclip.essence import (
    Essence,
    apply_essence,
    edit_latents,
    load_essence,
    mix_essences,
    save_essence,
)
from targetclip_core.methods.targetclip.essence_encoder import EssenceEncoder, load_essence_encoder
from targetclip_core.methods.video import edit_clip, essence_ramp, turntable
from targetclip_core.methods.targetclip.optimize import optimize_essence

__version__ = "0.1.0"

__all__ = [
    "AlignedFace",
    "ArcFace",
    "EssenceEncoder",
    "FaceParser",
    "Inverter",
    "PasteResult",
    "align_face",
    "detect_faces",
    "detect_landmarks",
    "face_mask",
    "load_arcface",
    "load_essence_encoder",
    "load_face_parser",
    "load_inverter",
    "paste_back",
    "CLIPEncoder",
    "Essence",
    "apply_essence",
    "edit_latents",
    "load_clip",
    "load_essence",
    "mix_essences",
    "optimize_essence",
    "save_essence",
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
    "Generator",
    "wplus_from_seeds",
    "Direction",
    "GlobalDirection",
    "apply_global_direction",
    "compute_global_statistics",
    "ganspace_directions",
    "global_direction",
    "global_direction_essence",
    "load_direction",
    "load_global_statistics",
    "save_direction",
    "sefa_directions",
    "text_constraint",
    "StyleGAN3Config",
    "StyleGAN3Generator",
    "user_transform",
    "load_lpips",
    "refine_inversion",
    "pivotal_tuning",
    "reconstruct_photo",
    "save_tuned_generator",
    "load_tuned_generator",
    "read_clip",
    "write_clip",
    "edit_clip",
    "essence_ramp",
    "turntable",
]
