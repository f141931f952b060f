"""SAT3D: image-driven semantic attribute transfer in StyleSpace (Zhai et al., ACM MM 2024,
Secs. 3-4), on 2D StyleGAN2 generators.

Pieces, in the paper's order (each module's docstring has the details and the decisions taken
where the paper leaves room):
  Eq. 1  edit:  s_edit = s_src + delta * m_Omega * (s_ref - s_src)   (stylespace.edit_styles),
         on the non-toRGB StyleSpace channels (n of them); toRGB codes stay the source's.   inference
  Eq. 2  meta attribute mask matrix M in R^{(m+1) x n} (m attributes + "others");
         P = softmax over the m+1 rows, per channel; m_Omega = sum_{a in Omega} P_a.          matrix
  Eq. 3  QMM: D(I, phi) = softmax_j(tau * cos(CLIP_img(I), CLIP_txt(phi_j))) over one descriptor
         group phi = (phi_1..phi_G), tau CLIP's own logit scale.                             descriptors
  Sec. 3.2  L_ref = sum_{t in Omega} sum_{phi in Phi_t} | D(I_edit, phi) - D(I_ref, phi) |_1,     losses
         L_src the same over t not in Omega and the source, L_attr = L_ref + L_src;
         L_bg = (1 / sum B) sum | I_edit B - I_src B |, B = (not B_src) and (not B_edit) (binary parse);
         L_prob = (1/n) sum_i | 1 - max_rows softmax(M)^i |;  L = 3.5 L_attr + 40 L_bg + 0.1 L_prob
  Sec. 3.2  channel pre-selection for "complex" attributes, with a region parser           preselect
         (gradient statistics: one backward per region per image; top k_t per attribute, M[t] = d_t)
Training (training): a bank of pre-sampled latents (filtered by CLIP zero-shot rules as the paper:
training_set), one attribute per step (|Omega| = 1),
random source/reference pairs, Ranger at lr 0.01 (objective: the losses of a mask on a batch of
pairs, shared with instant transfer); data parallel under torchrun (distributed), resumable
(checkpoint).
Beyond the paper (instant): instant_transfer optimises the mask for one source/reference pair
alone (no training set), and compare_instant_with_trained scores it against a trained matrix
on the same pairs with the same losses (sat3d_losses).

This package re-exports the public names of its modules: `from targetclip_core.methods import
sat3d; sat3d.train_sat3d(...)`.
"""

from targetclip_core.methods.sat3d.checkpoint import CHECKPOINT_FORMAT
from targetclip_core.methods.sat3d.descriptors import (
    BUILTIN_DESCRIPTORS,
    DESCRIPTOR_FORMAT,
    OTHERS,
    QMM,
    AttributeDescriptors,
    DescriptorSet,
    TrainingSetRules,
    ZeroShotRule,
    descriptors_from_dict,
    load_descriptors,
    split_group_distributions,
)
from targetclip_core.methods.sat3d.inference import (
    PAIRINGS,
    images_for_pair,
    pair_sources_with_references,
    render_styles,
    select_styles,
    style_batch_size,
    transfer,
    transfer_styles,
)
from targetclip_core.methods.sat3d.instant import (
    InstantComparison,
    compare_instant_with_trained,
    instant_transfer,
    summarize_comparison,
)
from targetclip_core.methods.sat3d.losses import (
    DEFAULT_LAMBDAS,
    LOSS_TERMS,
    attribute_distance,
    background_loss,
    background_mask,
    loss_ref,
    loss_src,
    objective_info,
    probability_loss,
    total_loss,
)
from targetclip_core.methods.sat3d.matrix import (
    DELTA_RANGE,
    MATRIX_FORMAT,
    SAT3DMatrix,
    attribute_mask,
    cached_fingerprint,
    check_attributes,
    check_matrix,
    describe_matrix,
    generator_fingerprint,
    initial_logits,
    load_sat3d_matrix,
    save_sat3d_matrix,
)
from targetclip_core.methods.sat3d.objective import SAT3DStep, as_styles_input, render_resolution, sat3d_losses
from targetclip_core.methods.sat3d.preselect import (
    PAPER_CHANNELS,
    PreselectStatistics,
    gradient_statistics,
    load_preselect_statistics,
    preselect_channels,
    save_preselect_statistics,
)
from targetclip_core.methods.sat3d.regions import RegionParser
from targetclip_core.methods.sat3d.training import MaskMatrixModule, train_sat3d
from targetclip_core.methods.sat3d.training_set import (
    CANDIDATE_FACTOR,
    filtered_latent_bank,
    sample_latent_bank,
    training_latents,
    zero_shot_scorer,
)

__all__ = [
    # descriptors and QMM
    "AttributeDescriptors", "BUILTIN_DESCRIPTORS", "DESCRIPTOR_FORMAT", "DescriptorSet", "OTHERS", "QMM",
    "TrainingSetRules", "ZeroShotRule", "descriptors_from_dict", "load_descriptors", "split_group_distributions",
    # losses
    "DEFAULT_LAMBDAS", "LOSS_TERMS", "attribute_distance", "background_loss", "background_mask", "loss_ref",
    "loss_src", "objective_info", "probability_loss", "total_loss",
    # the matrix and its file
    "DELTA_RANGE", "MATRIX_FORMAT", "SAT3DMatrix", "attribute_mask", "cached_fingerprint", "check_attributes",
    "check_matrix", "describe_matrix", "generator_fingerprint", "initial_logits", "load_sat3d_matrix",
    "save_sat3d_matrix",
    # transfer
    "PAIRINGS", "images_for_pair", "pair_sources_with_references", "render_styles", "select_styles", "style_batch_size",
    "transfer", "transfer_styles",
    # training
    "CHECKPOINT_FORMAT", "MaskMatrixModule", "RegionParser", "SAT3DStep", "as_styles_input", "preselect_channels",
    "render_resolution", "sample_latent_bank", "sat3d_losses", "train_sat3d",
    # channel pre-selection (gradient statistics)
    "PAPER_CHANNELS", "PreselectStatistics", "gradient_statistics", "load_preselect_statistics",
    "save_preselect_statistics",
    # the training set (filtered as the paper)
    "CANDIDATE_FACTOR", "filtered_latent_bank", "training_latents", "zero_shot_scorer",
    # instant transfer
    "InstantComparison", "compare_instant_with_trained", "instant_transfer", "summarize_comparison",
]
