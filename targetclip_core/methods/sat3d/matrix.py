"""The SAT3D meta attribute mask matrix (Zhai et al. 2024, Eq. 2) and its file.

  Eq. 2  meta attribute mask matrix M in R^{(m+1) x n} (m attributes + "others");
         P = softmax over the m+1 rows, per channel; m_Omega = sum_{a in Omega} P_a.

Initialisation (Sec. 3.2): logits 0 everywhere except the "others" row = 1, i.e. every channel
starts as "belongs to none of the attributes" (P_a = 1/(e + m)); a channel pre-selected for a
"complex" attribute t starts with M[t, c] = d_t (paper: d_Hairstyle = 1.8) and M[others, c] = 0
(see preselect).

A matrix belongs to one generator: its file stores the layout of the StyleSpace and a
fingerprint of the weights; loading it for another generator is refused (the channel semantics
of two networks differ even when their shapes match); strict_weights=False allows a fine-tuned
relative of the same layout.  The file is written the same byte for byte for the same matrix
and read through io.safetensors_files (header checked, logits finite, every metadata entry typed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.generators.fingerprint import (  # noqa: F401 (generator_fingerprint re-exported)
    cached_fingerprint,
    generator_fingerprint,
    lineage_fingerprints,
)
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.io.safetensors_files import (
    meta_int,
    meta_json,
    meta_number_lists,
    meta_str,
    read_safetensors,
    require_tensor,
    save_safetensors,
)

MATRIX_FORMAT = "targetclip.sat3d.matrix"
# What a matrix file without an "objective" entry was trained with: the losses before they followed the paper
LEGACY_OBJECTIVE = {
    "name": "pre-paper",
    "summary": "L_ref + 3.5 L_src as means over attributes and groups, 40 L_bg as a soft-mask MSE, "
               "0.1 L_prob as the mean target mask (sparsity)",
}
DELTA_RANGE = (0.0, 3.0)


def check_delta(delta: float) -> float:
    """The editing intensity as a float, refused outside DELTA_RANGE."""
    delta = float(delta)
    if not DELTA_RANGE[0] <= delta <= DELTA_RANGE[1]:
        raise TargetCLIPError(f"delta (editing intensity) must be in [{DELTA_RANGE[0]:g}, {DELTA_RANGE[1]:g}], got {delta:g}")
    return delta


def initial_logits(attributes: list[str], n_channels: int, preselected: dict | None = None, value: float = 1.0,
                   strengths: dict | None = None) -> torch.Tensor:
    """[(m+1), n] as the paper: zeros; M[t, i] = d_t (strengths[t], default `value`) on the channels pre-selected for
    attribute t, M[others, i] = `value` (1) on every channel pre-selected for none."""
    logits = torch.zeros(len(attributes) + 1, n_channels)
    logits[-1] = value
    for name, channels in (preselected or {}).items():
        idx = torch.as_tensor(channels, dtype=torch.long)
        if idx.numel():
            logits[attributes.index(name), idx] = float((strengths or {}).get(name, value))
            logits[-1, idx] = 0.0
    return logits


def attribute_mask(logits: torch.Tensor, attributes: list[str], chosen: list[str]) -> torch.Tensor:
    """m_Omega: summed softmax probabilities (over the rows) of the chosen attributes: [n]."""
    unknown = [a for a in chosen if a not in attributes]
    if unknown:
        raise TargetCLIPError(f"unknown attribute(s) {unknown}; this matrix knows {', '.join(attributes)}")
    probs = logits.softmax(dim=0)
    return probs[[attributes.index(a) for a in chosen]].sum(0)


@dataclass
class SAT3DMatrix:
    """A trained meta attribute mask matrix and what it belongs to."""

    logits: torch.Tensor  # [(m+1), n]; row m is "others"
    attributes: list[str]
    layout: StyleLayout
    generator: dict  # G.identity
    fingerprint: str  # hash of the generator's weights
    descriptors: str = ""  # where the descriptor groups came from
    clip: dict | None = None
    steps: int = 0
    losses: dict = field(default_factory=dict)  # term -> per-step values
    preselection: str = "none"
    objective: dict = field(default_factory=dict)  # which losses made it (losses.objective_info; older files: LEGACY_OBJECTIVE)
    training_set: dict = field(default_factory=dict)  # how the training latents were drawn and filtered

    def __post_init__(self):
        if self.logits.shape != (len(self.attributes) + 1, self.layout.n_channels):
            raise LatentError(f"mask matrix of shape {list(self.logits.shape)} does not fit {len(self.attributes)} attributes "
                              f"+ others x {self.layout.n_channels} channels")

    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=0)

    def mask(self, attributes: list[str]) -> torch.Tensor:
        return attribute_mask(self.logits, self.attributes, list(attributes))

    def top_channels(self, attribute: str, k: int = 10) -> list[tuple[str, int, float]]:
        """The k channels an attribute controls most: (layer, channel, probability)."""
        p = self.mask([attribute])
        vals, idx = p.topk(min(k, p.numel()))
        return [(*self.layout.channel_of(int(i)), float(v)) for v, i in zip(vals, idx)]

    def check_compatible(self, G, strict_weights: bool = True) -> None:
        layout = StyleLayout.from_generator(G)
        if layout != self.layout or self.generator.get("resolution") != G.identity.get("resolution"):
            raise LatentError(
                f"this SAT3D matrix was trained for a {_describe(self.generator, self.layout)} generator; this one is "
                f"{_describe(G.identity, layout)}: a mask matrix only fits the generator it was trained on"
            )
        if strict_weights and self.fingerprint not in lineage_fingerprints(G):
            raise LatentError(
                "this SAT3D matrix was trained on another generator of the same layout (weights fingerprint "
                f"{self.fingerprint[:12]} != {cached_fingerprint(G)[:12]}): channel meanings differ between networks. "
                "Pass strict_weights=False only for a fine-tuned relative of the original generator."
            )


def _describe(identity: dict, layout: StyleLayout) -> str:
    return f"{identity.get('resolution', '?')}px {identity.get('arch', '?')} ({layout.n_channels} StyleSpace channels)"


def check_matrix(matrix: SAT3DMatrix, G, allow_other_weights: bool = False) -> None:
    """Refuse a matrix trained for another generator, naming both (the weights fingerprint is
    hashed once per generator object, so a UI can check on every run)."""
    matrix.check_compatible(G, strict_weights=False)  # layout and resolution
    if not allow_other_weights and matrix.fingerprint not in lineage_fingerprints(G):  # a PTI copy counts as its base
        raise LatentError(
            f"this SAT3D matrix was trained on another generator of the same layout (weights fingerprint "
            f"{matrix.fingerprint[:12]} != {cached_fingerprint(G)[:12]}): channel meanings differ between networks. "
            "Load the generator it was trained on, or switch on allow_other_weights only for a fine-tuned relative "
            "of it."
        )


def check_attributes(matrix: SAT3DMatrix, names: list[str], hint: str = "") -> None:
    """Refuse attribute names the matrix does not know, listing those it knows; hint: what the
    caller can do instead, in parentheses after the list."""
    unknown = [n for n in names if n not in matrix.attributes]
    if unknown:
        raise TargetCLIPError(f"unknown attribute(s) {', '.join(map(repr, unknown))}: this SAT3D matrix knows "
                              f"{', '.join(matrix.attributes)}" + (f" ({hint})" if hint else ""))


def describe_matrix(matrix: SAT3DMatrix, name: str = "") -> str:
    """A few lines of text: attributes, generator, training and the 3 strongest channels per attribute."""
    gen = matrix.generator
    lines = [
        f"{name or 'SAT3D matrix'}: {len(matrix.attributes)} attributes x {matrix.layout.n_channels} "
        "StyleSpace channels",
        f"  attributes: {', '.join(matrix.attributes)}",
        f"  generator: {gen.get('resolution', '?')}px {gen.get('arch', '?')} (weights {matrix.fingerprint[:12]})",
        f"  training: {matrix.steps} steps; descriptors {matrix.descriptors or '?'}; "
        f"pre-selection {matrix.preselection}",
    ]
    if matrix.objective:
        lines.append(f"  losses: {matrix.objective.get('summary') or matrix.objective.get('name', '?')}")
    if matrix.training_set:
        lines.append(f"  training set: {matrix.training_set.get('summary', matrix.training_set)}")
    for attr in matrix.attributes:
        top = ", ".join(f"{layer}[{ch}] {p:.2f}" for layer, ch, p in matrix.top_channels(attr, 3))
        lines.append(f"  {attr}: {top}")
    return "\n".join(lines)


def save_sat3d_matrix(path: str | os.PathLike, matrix: SAT3DMatrix) -> Path:
    """Write a matrix file atomically, the same bytes for the same matrix."""
    meta = {
        "format": MATRIX_FORMAT,
        "format_version": "1",
        "attributes": json.dumps(matrix.attributes),
        "layout": json.dumps(matrix.layout.to_json()),
        "generator": json.dumps(matrix.generator),
        "fingerprint": matrix.fingerprint,
        "descriptors": matrix.descriptors,
        "clip": json.dumps(matrix.clip),
        "steps": str(int(matrix.steps)),
        "losses": json.dumps({k: [float(x) for x in v] for k, v in matrix.losses.items()}),
        "preselection": matrix.preselection,
        "objective": json.dumps(matrix.objective),
        "training_set": json.dumps(matrix.training_set),
    }
    return save_safetensors({"logits": matrix.logits.detach().float().cpu().contiguous()}, path, meta)


def style_layout_from_json(data, source, error: type[TargetCLIPError] = TargetCLIPError) -> StyleLayout:
    """A StyleLayout from its JSON form [[layer name, channels], ...] as a file stores it; anything else is refused
    naming `source`."""
    def pair(entry) -> bool:
        return (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] > 0)

    if not isinstance(data, (list, tuple)) or not data or not all(pair(e) for e in data):
        raise error(f"{source}: the StyleSpace layout must be a list of [layer name, channel count] pairs, got "
                    f"{str(data)[:80]}")
    return StyleLayout.from_json(data)


def attribute_names(data, source, error: type[TargetCLIPError] = TargetCLIPError) -> list[str]:
    """A file's attribute list: distinct non-empty strings, or refused naming `source`."""
    if (not isinstance(data, list) or not data or not all(isinstance(a, str) and a for a in data)
            or len(set(data)) != len(data)):
        raise error(f"{source}: the attributes must be a list of distinct names, got {str(data)[:80]}")
    return list(data)


def load_sat3d_matrix(path: str | os.PathLike, generator=None, strict_weights: bool = True) -> SAT3DMatrix:
    """Read a matrix file (header checked, logits finite, every metadata entry of its type); with `generator`, refuse
    one trained for another generator."""
    p = Path(path)
    what = "SAT3D matrix file"
    if not p.is_file():
        raise TargetCLIPError(f"{p}: no such SAT3D matrix file")
    tensors, meta = read_safetensors(p, what)
    if meta.get("format") != MATRIX_FORMAT:
        raise TargetCLIPError(f"{p}: not a SAT3D matrix file (format={meta.get('format')!r})")
    logits = require_tensor(tensors, "logits", p, what, floating=True, ndim=2)
    try:
        matrix = SAT3DMatrix(
            logits=logits.float(),
            attributes=attribute_names(meta_json(meta, "attributes", list, p, what), p),
            layout=style_layout_from_json(meta_json(meta, "layout", list, p, what), p),
            generator=meta_json(meta, "generator", dict, p, what),
            fingerprint=meta_str(meta, "fingerprint", p, what),
            descriptors=meta_str(meta, "descriptors", p, what, default=""),
            clip=meta_json(meta, "clip", (dict, type(None)), p, what, default=None),
            steps=meta_int(meta, "steps", p, what, default=0, minimum=0),
            losses=meta_number_lists(meta, "losses", p, what, default={}),
            preselection=meta_str(meta, "preselection", p, what, default="none"),
            objective=meta_json(meta, "objective", dict, p, what, default=dict(LEGACY_OBJECTIVE)),
            training_set=meta_json(meta, "training_set", dict, p, what, default={}),
        )
    except LatentError as e:
        raise LatentError(f"{p}: {e}") from None
    if generator is not None:
        matrix.check_compatible(generator, strict_weights)
    return matrix
