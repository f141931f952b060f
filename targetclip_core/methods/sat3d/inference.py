"""Applying a SAT3D matrix: attribute transfer in StyleSpace (Zhai et al. 2024, Eq. 1), and
which reference goes with which source.

  Eq. 1  edit:  s_edit = s_src + delta * m_Omega * (s_ref - s_src)   (stylespace.edit_styles),
         on the non-toRGB StyleSpace channels (n of them); toRGB codes stay the source's.

Several attributes are applied in sequence (each edit starts from the previous result), or
summed into one m_Omega with combine=True (the paper's |Omega| > 1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from targetclip_core.devices import autocast, widened
from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import as_styles, edit_styles
from targetclip_core.methods.sat3d.matrix import SAT3DMatrix, attribute_mask, check_delta

PAIRINGS = ["first reference", "pairwise", "every pair"]


def transfer_styles(G, source, reference, matrix: SAT3DMatrix, attributes, delta=1.0, combine: bool = False,
                    check: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """Edited StyleSpace codes: the reference's `attributes` moved onto the source.

    source/reference: W [B, w_dim], W+ [B, n_latent, w_dim] or StyleSpace codes (a reference
    batch of 1 is used for every source).  attributes: names, applied in sequence (each edit
    starts from the last), or as one summed mask with combine=True.  delta: one intensity
    in [0, 3] or one per attribute.
    """
    attributes = [attributes] if isinstance(attributes, str) else list(attributes)
    if not attributes:
        raise TargetCLIPError("name at least one attribute to transfer")
    deltas = list(delta) if isinstance(delta, (list, tuple)) else [delta] * len(attributes)
    if len(deltas) != len(attributes):
        raise TargetCLIPError(f"{len(attributes)} attributes but {len(deltas)} delta values")
    deltas = [check_delta(d) for d in deltas]
    if check:
        matrix.check_compatible(G, strict_weights=False)  # the layout must fit; weights checked at load
    src_styles, ref_styles = as_styles(G, source), as_styles(G, reference)
    layout = matrix.layout
    flat, flat_ref = layout.flatten(src_styles), layout.flatten(ref_styles).to(src_styles[next(iter(src_styles))].device)
    logits = matrix.logits.to(flat.device)
    if combine:
        if len(set(deltas)) != 1:
            raise TargetCLIPError("combine=True applies one mask: give one delta")
        flat = edit_styles(flat, flat_ref, attribute_mask(logits, matrix.attributes, attributes), deltas[0])
    else:
        for name, d in zip(attributes, deltas):
            flat = edit_styles(flat, flat_ref, attribute_mask(logits, matrix.attributes, [name]), d)
    return layout.unflatten(flat, src_styles)


def transfer(G, source, reference, matrix: SAT3DMatrix, attributes, delta=1.0, combine: bool = False,
             noise_mode: str = "const", out_resolution: int | None = None, precision: str = "fp32") -> torch.Tensor:
    """Render the transfer: [B, 3, H, W] in about [-1, 1] (fp32, rendered in `precision`, devices.PRECISIONS)."""
    styles = transfer_styles(G, source, reference, matrix, attributes, delta, combine)
    with autocast(precision, G.device):
        return widened(G.synthesis_from_styles(styles, noise_mode=noise_mode, out_resolution=out_resolution))


def images_for_pair(G, source, reference, out_resolution=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders of a source and a reference (for sheets): two [B, 3, H, W]."""
    with torch.no_grad():
        return (G.synthesis_from_styles(as_styles(G, source), out_resolution=out_resolution),
                G.synthesis_from_styles(as_styles(G, reference), out_resolution=out_resolution))


# --------------------------------------------------------------------------- pairing and batches of style codes


def pair_sources_with_references(n_sources: int, n_references: int, pairing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Which source goes with which reference: (source_index, reference_index), two LongTensors
    of one entry per edit (pair k = source source_index[k] with reference reference_index[k]).

    pairing (one of PAIRINGS): "first reference": the first reference for every source;
    "pairwise": source i with reference i, or a single reference for every source; "every pair":
    each source with each reference, source-major: (s0, r0), (s0, r1), (s1, r0) ...
    """
    sources = torch.arange(n_sources)
    if pairing == "first reference":
        return sources, torch.zeros(n_sources, dtype=torch.long)
    if pairing == "pairwise":
        if n_references not in (1, n_sources):
            raise TargetCLIPError(f"pairwise pairing needs one reference per source: {n_sources} source(s), "
                                  f"{n_references} references")
        return sources, sources if n_references == n_sources else torch.zeros(n_sources, dtype=torch.long)
    if pairing == "every pair":
        return sources.repeat_interleave(n_references), torch.arange(n_references).repeat(n_sources)
    raise TargetCLIPError(f"unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")


def style_batch_size(styles) -> int:
    """How many codes a batch of StyleSpace codes ({layer: [B, C]}) holds."""
    return len(next(iter(styles.values())))


def select_styles(styles, index) -> "OrderedDict[str, torch.Tensor]":
    """The codes at `index` (a slice, an int list or a LongTensor) of every layer."""
    return OrderedDict((k, v[index]) for k, v in styles.items())


def render_styles(G, styles, batch_size: int = 4, out_resolution=None,
                  on_batch: Callable[[int, int, torch.Tensor], None] | None = None, precision: str = "fp32") -> torch.Tensor:
    """Render style codes batch_size at a time: [B, 3, H, W] (fp32, rendered in `precision`, devices.PRECISIONS).

    on_batch(done, total, images) is called after each batch with its renders (a UI shows
    progress and a preview there, and may raise from it to cancel)."""
    n = style_batch_size(styles)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = select_styles(styles, slice(start, start + batch_size))
            with autocast(precision, G.device):
                img = widened(G.synthesis_from_styles(batch, out_resolution=out_resolution))
            out.append(img)
            if on_batch is not None:
                on_batch(min(start + batch_size, n), n, img)
    return torch.cat(out)
