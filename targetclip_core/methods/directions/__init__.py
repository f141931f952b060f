"""Directions without a target photo: edit directions found from the generator (and CLIP) alone.

  ganspace            GANSpace (Härkönen et al. 2020): principal components of sampled W, on a W+ layer range
  sefa                SeFa (Shen & Zhou 2021): eigenvectors of A^T A of the modulation weights of chosen layers
  global_statistics   StyleCLIP global directions (Patashnik et al. 2021, Sec. 6), part 1: each StyleSpace
                      channel's CLIP direction, measured once per generator/CLIP pair (resumable file)
  global_directions   part 2: a text -> the channels it moves -> a StyleSpace edit (and its least-squares essence)
  prompts             prompt templates and text directions as the StyleCLIP code forms them
  text_constraints    avoid / keep texts: a CLIP term to add to the TargetCLIP essence objective
  common              W samples, StyleSpace affines read off a generator, `Direction` and its file

Every W+ direction is a `Direction`: an `Essence` (methods.targetclip.essence: apply_essence, mix_essences,
the essence file) plus `info`, what the method knows about it; `save_direction` writes an ordinary essence
file that also keeps the info. This package re-exports the public names of its modules.
"""

from targetclip_core.methods.directions.common import (
    Direction,
    StyleAffine,
    iter_w,
    load_direction,
    projected_std,
    sample_w,
    save_direction,
    stylespace_affines,
    wplus_entries,
)
from targetclip_core.methods.directions.ganspace import WPCA, ganspace_directions, w_pca
from targetclip_core.methods.directions.global_directions import (
    GlobalDirection,
    apply_global_direction,
    channel_relevance,
    global_direction,
    global_direction_essence,
)
from targetclip_core.methods.directions.global_statistics import (
    STATISTICS_FORMAT,
    GlobalStatistics,
    channel_deltas,
    compute_global_statistics,
    load_global_statistics,
    measured_channels,
    save_global_statistics,
    style_moments,
    time_global_statistics,
)
from targetclip_core.methods.directions.prompts import (
    DEFAULT_NEUTRAL,
    IMAGENET_TEMPLATES,
    PLAIN,
    text_direction,
    text_embedding,
)
from targetclip_core.methods.directions.sefa import (
    sefa_directions,
    sefa_factorization,
    stacked_affines,
)
from targetclip_core.methods.directions.text_constraints import (
    TextConstraint,
    text_constraint,
    text_constraint_loss,
)

__all__ = [
    "DEFAULT_NEUTRAL", "IMAGENET_TEMPLATES", "PLAIN", "STATISTICS_FORMAT", "WPCA", "Direction", "GlobalDirection",
    "GlobalStatistics", "StyleAffine", "TextConstraint", "apply_global_direction", "channel_deltas",
    "channel_relevance", "compute_global_statistics", "ganspace_directions", "global_direction",
    "global_direction_essence", "iter_w", "load_direction", "load_global_statistics", "measured_channels",
    "projected_std", "sample_w", "save_direction", "save_global_statistics", "sefa_directions", "sefa_factorization",
    "stacked_affines", "style_moments", "stylespace_affines", "text_constraint", "text_constraint_loss",
    "text_direction", "text_embedding", "time_global_statistics", "w_pca", "wplus_entries",
]
