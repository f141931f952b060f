"""SAT3D: image-driven semantic attribute transfer in StyleSpace (Zhai et al., ACM MM 2024,
Secs. 3-4), on 2D StyleGAN2 generators.

Pieces, in the paper's order:
  Eq. 1  edit:  s_edit = s_src + delta * m_Omega * (s_ref - s_src)   (stylespace.edit_styles),
         on the non-toRGB StyleSpace channels (n of them); toRGB codes stay the source's.
  Eq. 2  meta attribute mask matrix M in R^{(m+1) x n} (m attributes + "others");
         P = softmax over the m+1 rows, per channel; m_Omega = sum_{a in Omega} P_a.
  Eq. 3  QMM: D(I, phi) = softmax_j(tau * cos(CLIP_img(I), CLIP_txt(phi_j))) over one descriptor
         group phi = (phi_1..phi_G).  tau is CLIP's own learned logit scale (exp(logit_scale),
         100 for OpenAI's models), i.e. exactly CLIP's zero-shot classification probabilities.
  Eq. 4  L_ref = mean_{a in Omega} mean_{phi in Phi_a} || D(I_edit, phi) - D(I_ref, phi) ||_1
  Eq. 5  L_src = mean_{a not in Omega} mean_{phi in Phi_a} || D(I_edit, phi) - D(I_src, phi) ||_1
  Eq. 6  L_bg  = sum(B * (I_edit - I_src)^2) / sum(B * 3),  B = 1 - max(R(I_src), R(I_edit)),
         R the parser's soft region of the target attribute (background = outside it)
  Eq. 7  L_prob = mean_c m_Omega(c);  L = L_ref + 3.5 L_src + 40 L_bg + 0.1 L_prob
Training: a bank of pre-sampled latents (6000 by default; their style codes are computed on
the fly from W, which holds the same information in 1/18 of the memory), one attribute per
step (|Omega| = 1), random source/reference pairs, Ranger (pytorch_optimizer) at lr 0.01,
without its gradient centralisation (see _ranger).
Beyond the paper: instant_transfer optimises the mask for one source/reference pair alone (no
training set), and compare_instant_with_trained scores it against a trained matrix on the same
pairs with the same losses (sat3d_losses).

Decisions where the paper leaves room (a researcher reproducing it would expect these):
  - Weights: the paper lists 3.5 / 40 / 0.1 for L_src / L_bg / L_prob with L_ref at weight 1.
  - Means, not sums, over attributes and groups, so the weights do not change meaning when a
    user adds descriptor groups or attributes.
  - L_prob is read as a sparsity term on the control probabilities of the target set (the
    mean of m_Omega): it makes the mask concentrate on the few channels the attribute needs.
  - L_bg is a masked MSE on images in [-1, 1].  It needs a region parser (a callable
    `parser(images, region_name) -> [B, H, W]` in [0, 1]); without one it is off and
    training warns so.  face_parsing.load_face_parser gives one for faces (BiSeNet on
    CelebAMask-HQ classes); a parser with `check_regions` has the descriptor set's region
    names checked before training starts.
  - Initialisation (Sec. 3.2): logits 0 everywhere except the "others" row = 1, i.e. every
    channel starts as "belongs to none of the attributes" (P_a = 1/(e + m)).  For attributes
    marked "complex" in the descriptor file, channel pre-selection sets M[a, c] = 1 and
    M[others, c] = 0 on channels whose gradient maps fall inside the attribute's region:
    per channel c the image change |G(s + eps_c e_c) - G(s)| (a finite-difference gradient
    map) is measured, its in-region fraction averaged over a few samples, and the channels
    with fraction >= d_t (default 0.5), at most top_k of them per region, are selected.
    Without a parser pre-selection is skipped and the matrix records
    "preselection: skipped (no region parser)".
  - Several attributes at inference are applied in sequence (each edit starts from the
    previous result), or summed into one m_Omega with combine=True (the paper's |Omega| > 1).
  - A matrix belongs to one generator: its file stores the layout of the StyleSpace and a
    fingerprint of the weights; loading it for another generator is refused (the channel
    semantics of two networks differ even when their shapes match); strict_weights=False
    allows a fine-tuned relative of the same layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout, as_styles, edit_styles
from targetclip_core.io.files import atomic_path

DESCRIPTOR_FORMAT = "targetclip.sat3d.descriptors"
MATRIX_FORMAT = "targetclip.sat3d.matrix"
CHECKPOINT_FORMAT = "targetclip.sat3d.checkpoint"
BUILTIN_DESCRIPTORS = ("faces", "cats", "cars")
OTHERS = "others"
LOSS_TERMS = ("total", "ref", "src", "bg", "prob")
DELTA_RANGE = (0.0, 3.0)

RegionParser = Callable[[torch.Tensor, str], torch.Tensor]  # (images [B,3,H,W], region) -> [B,H,W] in [0,1]


# --------------------------------------------------------------------------- descriptor groups


@dataclass(frozen=True)
class AttributeDescriptors:
    name: str
    groups: tuple[tuple[str, ...], ...]  # full prompts, template applied
    region: str | None = None  # region name a parser understands (hair, eyes, mouth, ...)
    complex: bool = False  # gets channel pre-selection


@dataclass(frozen=True)
class DescriptorSet:
    domain: str
    attributes: tuple[AttributeDescriptors, ...]
    source: str = ""
    template: str = "{}"  # the default template (an "extends" file without one inherits it)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def __getitem__(self, name: str) -> AttributeDescriptors:
        for a in self.attributes:
            if a.name == name:
                return a
        raise TargetCLIPError(f"no attribute {name!r} in descriptor set {self.domain!r}; known: {', '.join(self.names)}")


def load_descriptors(name_or_path: str | os.PathLike) -> DescriptorSet:
    """A built-in set ("faces", "cats", "cars") or a user JSON file (same layout; may say
    "extends": "faces" to add attributes to, or replace attributes of, another set)."""
    name = str(name_or_path)
    if name in BUILTIN_DESCRIPTORS:
        text = resources.files("targetclip_core").joinpath("data", "sat3d_descriptors", f"{name}.json").read_text("utf-8")
        return descriptors_from_dict(json.loads(text), source=f"builtin:{name}")
    p = Path(name).expanduser()
    if not p.is_file():
        raise TargetCLIPError(f"{p}: no such descriptor file (built-in sets: {', '.join(BUILTIN_DESCRIPTORS)})")
    try:
        data = json.loads(p.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TargetCLIPError(f"{p}: not a readable descriptor JSON file ({e})") from None
    return descriptors_from_dict(data, source=str(p))


def descriptors_from_dict(data: dict, source: str = "") -> DescriptorSet:
    if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
        raise TargetCLIPError(f"{source}: a descriptor file is a JSON object with an 'attributes' object")
    base = load_descriptors(data["extends"]) if data.get("extends") else None
    template = data.get("template", base.template if base else "{}")
    parsed = OrderedDict((a.name, a) for a in (base.attributes if base else ()))
    for name, spec in data["attributes"].items():
        parsed[name] = _parse_attribute(name, spec, template, source)
    if not parsed:
        raise TargetCLIPError(f"{source}: no attributes")
    domain = data.get("domain", base.domain if base else (Path(source).stem or "custom"))
    return DescriptorSet(str(domain), tuple(parsed.values()), source, template)


def _parse_attribute(name, spec, template, source) -> AttributeDescriptors:
    if isinstance(spec, list):  # shorthand: a bare list of groups (or one group of phrases)
        spec = {"groups": spec}
    groups = spec.get("groups")
    if groups and all(isinstance(g, str) for g in groups):
        groups = [groups]
    if not groups:
        raise TargetCLIPError(f"{source}: attribute {name!r} has no descriptor groups")
    tpl = spec.get("template", template)
    if "{}" not in tpl:
        raise TargetCLIPError(f"{source}: template {tpl!r} of {name!r} has no '{{}}' for the phrase")
    out = []
    for g in groups:
        if not isinstance(g, list) or len(g) < 2 or not all(isinstance(x, str) and x.strip() for x in g):
            raise TargetCLIPError(f"{source}: every group of {name!r} needs at least two phrases (softmax over one is always 1): {g!r}")
        if len(set(g)) != len(g):
            raise TargetCLIPError(f"{source}: group of {name!r} repeats a phrase: {g!r}")
        out.append(tuple(tpl.format(x.strip()) for x in g))
    return AttributeDescriptors(name, tuple(out), spec.get("region"), bool(spec.get("complex", False)))


# --------------------------------------------------------------------------- QMM (Eq. 3)


class QMM(nn.Module):
    """Quantitative Measurement Module: images -> {attribute: [D(I, phi) for phi in its groups]}.

    Each D is [B, G], CLIP's zero-shot probabilities over one group.  Anything with the same
    call signature and an `attributes` list can stand in for it (the trainer only calls it).
    """

    def __init__(self, clip, descriptors: DescriptorSet, logit_scale: float | None = None):
        super().__init__()
        self.clip = clip
        self.descriptors = descriptors
        prompts = [p for a in descriptors.attributes for g in a.groups for p in g]
        self.register_buffer("text_codes", clip.encode_text(prompts).detach().clone(), persistent=False)
        self.group_sizes = [len(g) for a in descriptors.attributes for g in a.groups]
        self.groups_per_attribute = [len(a.groups) for a in descriptors.attributes]
        if logit_scale is None:
            logit_scale = float(clip.model.logit_scale.exp()) if hasattr(clip.model, "logit_scale") else 100.0
        self.logit_scale = float(logit_scale)
        self.input_size = getattr(clip, "input_size", 224)

    @property
    def attributes(self) -> list[str]:
        return self.descriptors.names

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        logits = self.logit_scale * self.clip.encode_image(images) @ self.text_codes.T  # [B, T]
        return split_group_distributions(logits, self.group_sizes, self.groups_per_attribute, self.attributes)


def split_group_distributions(logits, group_sizes, groups_per_attribute, attributes) -> dict[str, list[torch.Tensor]]:
    """[B, T] logits over all prompts -> per attribute, per group softmax distributions."""
    per_group = [g.softmax(dim=-1) for g in logits.split(group_sizes, dim=-1)]
    out, start = {}, 0
    for name, k in zip(attributes, groups_per_attribute):
        out[name] = per_group[start : start + k]
        start += k
    return out


# --------------------------------------------------------------------------- losses (Eqs. 4-7)


def attribute_distance(d_a: list[torch.Tensor], d_b: list[torch.Tensor]) -> torch.Tensor:
    """Mean over an attribute's groups of the L1 distance of two distributions: [B]."""
    return torch.stack([(p - q).abs().sum(-1) for p, q in zip(d_a, d_b)]).mean(0)


def loss_ref(d_edit: dict, d_ref: dict, target: list[str]) -> torch.Tensor:
    """Eq. 4: the edit should measure like the reference on the target attributes."""
    return torch.stack([attribute_distance(d_edit[a], d_ref[a]) for a in target]).mean(0).mean()


def loss_src(d_edit: dict, d_src: dict, target: list[str]) -> torch.Tensor:
    """Eq. 5: the edit should measure like the source on every other attribute."""
    others = [a for a in d_edit if a not in target]
    if not others:
        return next(iter(d_edit.values()))[0].new_zeros(())
    return torch.stack([attribute_distance(d_edit[a], d_src[a]) for a in others]).mean(0).mean()


def loss_bg(img_edit: torch.Tensor, img_src: torch.Tensor, background: torch.Tensor, eps: float = 1e-8,
            normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6: mean squared change over background pixels; background [B, H, W] or [B,1,H,W] in [0,1].

    normaliser: what the summed weighted change is divided by, instead of this batch's own
      background weight (+ eps).  Data-parallel training passes (the global batch's weight + eps)
      / processes, so that the processes' mean loss is the global batch's (see train_sat3d).
    """
    weight = background_weight(img_edit, background)
    if normaliser is None:
        normaliser = weight.sum() + eps
    return (weight * (img_edit - img_src) ** 2).sum() / normaliser


def background_weight(img: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The per-pixel weight of Eq. 6: background [B, H, W] or [B,1,H,W] spread over img's channels."""
    if background.dim() == 3:
        background = background[:, None]
    return background.expand_as(img)


def loss_prob(mask: torch.Tensor) -> torch.Tensor:
    """Eq. 7 (regulariser): mean control probability of the target set over the channels."""
    return mask.mean()


def total_loss(terms: dict, lambdas: dict) -> torch.Tensor:
    return sum(lambdas[k] * terms[k] for k in ("ref", "src", "bg", "prob"))


DEFAULT_LAMBDAS = {"ref": 1.0, "src": 3.5, "bg": 40.0, "prob": 0.1}


# --------------------------------------------------------------------------- the mask matrix (Eq. 2)


def initial_logits(attributes: list[str], n_channels: int, preselected: dict | None = None, value: float = 1.0) -> torch.Tensor:
    """[(m+1), n]: "others" = value everywhere, except pre-selected channels owned by their attribute."""
    logits = torch.zeros(len(attributes) + 1, n_channels)
    logits[-1] = value
    for name, channels in (preselected or {}).items():
        idx = torch.as_tensor(channels, dtype=torch.long)
        if idx.numel():
            logits[attributes.index(name), idx] = value
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
        if strict_weights and generator_fingerprint(G) != self.fingerprint:
            raise LatentError(
                "this SAT3D matrix was trained on another generator of the same layout (weights fingerprint "
                f"{self.fingerprint[:12]} != {generator_fingerprint(G)[:12]}): channel meanings differ between networks. "
                "Pass strict_weights=False only for a fine-tuned relative of the original generator."
            )


def _describe(identity: dict, layout: StyleLayout) -> str:
    return f"{identity.get('resolution', '?')}px {identity.get('arch', '?')} ({layout.n_channels} StyleSpace channels)"


def generator_fingerprint(G) -> str:
    """sha256 over the generator's state (names and bytes), so a matrix knows its network."""
    h = hashlib.sha256()
    for name, t in sorted(G.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_sat3d_matrix(path: str | os.PathLike, matrix: SAT3DMatrix) -> Path:
    from safetensors.torch import save_file

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
    }
    with atomic_path(path) as tmp:
        save_file({"logits": matrix.logits.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
    return Path(path)


def load_sat3d_matrix(path: str | os.PathLike, generator=None, strict_weights: bool = True) -> SAT3DMatrix:
    """Read a matrix file; with `generator`, refuse one trained for another generator."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise TargetCLIPError(f"{p}: no such SAT3D matrix file")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != MATRIX_FORMAT:
                raise TargetCLIPError(f"{p}: not a SAT3D matrix file (format={meta.get('format')!r})")
            logits = f.get_tensor("logits").float()
        matrix = SAT3DMatrix(
            logits=logits,
            attributes=json.loads(meta["attributes"]),
            layout=StyleLayout.from_json(json.loads(meta["layout"])),
            generator=json.loads(meta["generator"]),
            fingerprint=meta["fingerprint"],
            descriptors=meta.get("descriptors", ""),
            clip=json.loads(meta.get("clip", "null")),
            steps=int(meta.get("steps", "0")),
            losses=json.loads(meta.get("losses", "{}")),
            preselection=meta.get("preselection", "none"),
        )
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as e:
        raise TargetCLIPError(f"{p}: corrupt or incomplete SAT3D matrix file ({type(e).__name__}: {e})") from None
    except LatentError as e:
        raise LatentError(f"{p}: {e}") from None
    if generator is not None:
        matrix.check_compatible(generator, strict_weights)
    return matrix


# --------------------------------------------------------------------------- inference


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not DELTA_RANGE[0] <= delta <= DELTA_RANGE[1]:
        raise TargetCLIPError(f"delta (editing intensity) must be in [{DELTA_RANGE[0]:g}, {DELTA_RANGE[1]:g}], got {delta:g}")
    return delta


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
    deltas = [_check_delta(d) for d in deltas]
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
             noise_mode: str = "const", out_resolution: int | None = None) -> torch.Tensor:
    """Render the transfer: [B, 3, H, W] in about [-1, 1]."""
    styles = transfer_styles(G, source, reference, matrix, attributes, delta, combine)
    return G.synthesis_from_styles(styles, noise_mode=noise_mode, out_resolution=out_resolution)


# --------------------------------------------------------------------------- training


def sample_latent_bank(G, n: int = 6000, seed: int = 0, truncation: float = 1.0) -> torch.Tensor:
    """n W latents [n, w_dim] from the mapping network (their style codes are computed per step)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen).to(G.device)
    with torch.no_grad():
        return torch.cat([G.mapping(chunk, truncation=truncation) for chunk in z.split(512)]).clone()


def render_resolution(G, measure) -> int | None:
    """The render size the losses use (methods.optimization.smallest_render_for); None (full size) for a
    generator without `output_resolutions`."""
    if not getattr(G, "output_resolutions", None):
        return None
    from targetclip_core.methods.optimization import smallest_render_for

    return smallest_render_for(G, measure)


@dataclass
class SAT3DStep:
    """What the per-step callback receives."""

    step: int
    steps: int
    attributes: list[str]
    losses: dict  # term -> float
    logits: torch.Tensor | None = None  # the matrix after this step (detached, live: copy it to keep it), for previews


class _PairObjective:
    """The SAT3D losses of one batch of (source, reference) pairs for a target attribute set."""

    def __init__(self, G, measure, layout, lambdas, parser, regions, res, world: int = 1):
        self.G, self.measure, self.layout = G, measure, layout
        self.lambdas, self.parser, self.regions, self.res = lambdas, parser, regions, res
        self.world = world  # > 1: this batch is one process's shard of a global batch

    def constants(self, wp_src, wp_ref):
        """Everything that does not depend on the mask, computed without a graph."""
        with torch.no_grad():
            st_src, st_ref = self.G.styles(wp_src), self.G.styles(wp_ref)
            img_src = self.G.synthesis_from_styles(st_src, out_resolution=self.res)
            img_ref = self.G.synthesis_from_styles(st_ref, out_resolution=self.res)
            return {"styles_src": st_src, "flat_src": self.layout.flatten(st_src), "flat_ref": self.layout.flatten(st_ref),
                    "img_src": img_src, "d_src": self.measure(img_src), "d_ref": self.measure(img_ref)}

    def __call__(self, logits, attributes_all, target, c, delta=1.0) -> dict:
        return self.with_mask(attribute_mask(logits, attributes_all, target), target, c, delta)

    def with_mask(self, mask, target, c, delta=1.0) -> dict:
        flat_edit = edit_styles(c["flat_src"], c["flat_ref"], mask, delta)
        img_edit = self.G.synthesis_from_styles(self.layout.unflatten(flat_edit, c["styles_src"]), out_resolution=self.res)
        d_edit = self.measure(img_edit)
        terms = {"ref": loss_ref(d_edit, c["d_ref"], target), "src": loss_src(d_edit, c["d_src"], target),
                 "prob": loss_prob(mask)}
        region = [self.regions.get(a) for a in target if self.regions.get(a)]
        if self.parser is not None and region:
            with torch.no_grad():  # where the attribute lives: never pushed by the loss
                inside = torch.stack([torch.maximum(self.parser(c["img_src"], r), self.parser(img_edit, r)) for r in region]).amax(0)
            background = 1 - inside
            normaliser = None
            if self.world > 1:  # divide by the global batch's background weight, not this shard's
                normaliser = background_weight(img_edit, background).sum()
                torch.distributed.all_reduce(normaliser)
                normaliser = (normaliser + 1e-8) / self.world
            terms["bg"] = loss_bg(img_edit, c["img_src"], background, normaliser=normaliser)
        else:
            terms["bg"] = img_edit.new_zeros(())
        terms["total"] = total_loss(terms, self.lambdas)
        return terms


@torch.no_grad()
def sat3d_losses(G, measure, logits: torch.Tensor, source, reference, attributes, *, delta: float = 1.0,
                 lambdas: dict | None = None, parser: RegionParser | None = None, descriptors=None,
                 out_resolution="auto") -> dict:
    """The SAT3D loss terms (floats) of one matrix (its logits) on given pairs and target set:
    for evaluating a matrix on held-out pairs, or comparing two matrices."""
    target = [attributes] if isinstance(attributes, str) else list(attributes)
    _, regions, _ = _descriptor_info(measure, descriptors)
    layout = StyleLayout.from_generator(G)
    res = render_resolution(G, measure) if out_resolution in ("auto", None) else int(out_resolution)
    objective = _PairObjective(G, measure, layout, {**DEFAULT_LAMBDAS, **(lambdas or {})}, parser, regions, res)
    c = objective.constants(G.to_wplus(as_styles_input(G, source)), G.to_wplus(as_styles_input(G, reference)))
    terms = objective(logits.to(G.device), list(measure.attributes), target, c, delta)
    return {k: float(v) for k, v in terms.items()}


def as_styles_input(G, latent):
    if not torch.is_tensor(latent):
        raise TargetCLIPError("sat3d_losses takes W or W+ latents for source and reference")
    return latent.to(G.device).float()


def _descriptor_info(measure, descriptors):
    descriptors = descriptors or getattr(measure, "descriptors", None)
    regions = {a.name: a.region for a in descriptors.attributes} if descriptors else {}
    complex_ = [a.name for a in descriptors.attributes if a.complex] if descriptors else []
    return descriptors, regions, complex_


def _make_ready(G, measure):
    from targetclip_core.methods.optimization import make_autograd_ready

    make_autograd_ready(G)
    if isinstance(measure, nn.Module):
        make_autograd_ready(measure)


# callers may sit inside no_grad or inference_mode (ComfyUI runs every node in inference mode)
@torch.inference_mode(False)
@torch.enable_grad()
def train_sat3d(
    G,
    measure,
    *,
    steps: int = 10000,
    batch_size: int = 4,
    lr: float = 0.01,
    n_codes: int = 6000,
    latent_bank: torch.Tensor | None = None,
    truncation: float = 1.0,
    seed: int = 0,
    lambdas: dict | None = None,
    parser: RegionParser | None = None,
    descriptors: DescriptorSet | None = None,
    preselect: bool = True,
    preselect_kwargs: dict | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    callback: Callable[[SAT3DStep], bool | None] | None = None,
    out_resolution="auto",
) -> SAT3DMatrix:
    """Learn the meta attribute mask matrix (Sec. 3-4).

    measure: the QMM (or any callable images -> {attribute: [group distributions]} with an
      `attributes` list).  latent_bank: W [N, w_dim] or W+ latents to draw pairs from (default
      n_codes samples of the mapping network with `truncation`, drawn with `seed`).
    checkpoint: a file written every `checkpoint_every` steps and at the end; when it exists
      the run resumes from it (the same arguments give the same result as an uninterrupted run).
    callback: called every step with a SAT3DStep; returning True stops (a checkpoint is written).
    batch_size: the GLOBAL batch of (source, reference) pairs per step, whatever the number of
      processes.
    Scale-out (data parallel): run one process per device under torchrun with torch.distributed
      initialised (gloo on CPU, nccl on GPUs) before calling (`targetclip sat3d-train` does it).
      Every step all processes draw the same global batch of pairs and the same attribute from
      one shared random stream (seeded by `seed`, as a single process draws them); process r
      trains on its contiguous shard, batch_size / processes pairs (batch_size must be divisible
      by the number of processes).  The mask module is wrapped in DistributedDataParallel, which
      averages the gradients; L_bg is divided by the global batch's background weight.  So N
      processes with global batch B learn the matrix one process learns with batch B (equal up to
      the order of float reductions).  The logged losses (and the callback's) are the global
      batch's means on every process.  Process 0 writes the checkpoint; it holds one sampler
      state, so a run can be resumed with another number of processes (same batch_size; a
      checkpoint of a multi-process run of an older version, which drew pairs per process,
      cannot be resumed).
    """
    _make_ready(G, measure)
    attributes = list(measure.attributes)
    descriptors, regions, complex_attrs = _descriptor_info(measure, descriptors)
    lambdas = {**DEFAULT_LAMBDAS, **(lambdas or {})}
    if parser is None and lambdas["bg"]:
        warnings.warn("SAT3D: L_bg is off: no region parser was given (a face parser is needed for the background loss: "
                      "face_parsing.load_face_parser, sat3d-train --parser)",
                      stacklevel=2)
    if parser is not None and hasattr(parser, "check_regions"):  # an unknown region fails now, not mid-run
        parser.check_regions(sorted({r for r in regions.values() if r}))
    rank, world = _distributed_rank_world()
    if batch_size < 1 or batch_size % world:
        raise TargetCLIPError(f"batch_size {batch_size} is the global batch of pairs per step: it must be a positive multiple "
                              f"of the number of processes ({world})")
    shard = slice(rank * batch_size // world, (rank + 1) * batch_size // world)  # this process's pairs of the global batch
    layout = StyleLayout.from_generator(G)
    bank = (latent_bank if latent_bank is not None else sample_latent_bank(G, n_codes, seed, truncation)).to(G.device)
    res = render_resolution(G, measure) if out_resolution in ("auto", None) else int(out_resolution)
    objective = _PairObjective(G, measure, layout, lambdas, parser, regions, res, world)
    if world > 1:  # every process draws its pairs from process 0's bank
        bank = bank.clone(memory_format=torch.contiguous_format)
        torch.distributed.broadcast(bank, 0)
    state = _load_checkpoint(checkpoint, G, attributes, layout) if checkpoint and Path(checkpoint).is_file() else None
    if state is not None and state.get("batch_size", batch_size) != batch_size:
        raise TargetCLIPError(f"{checkpoint}: a run with a global batch of {state['batch_size']} pairs per step; resume it with "
                              f"batch_size {state['batch_size']} (the global batch, whatever the number of processes), not {batch_size}")
    if state is None:
        preselected, how = {}, "none"
        if preselect and complex_attrs:
            if parser is None:
                how = "skipped (no region parser)"
            else:
                preselected = preselect_channels(G, layout, bank, parser, {a: regions[a] for a in complex_attrs if regions.get(a)},
                                                 seed=seed, out_resolution=res, **(preselect_kwargs or {}))
                how = "; ".join(f"{a}: {len(v)} channels" for a, v in preselected.items()) or "none"
        logits = initial_logits(attributes, layout.n_channels, preselected).to(G.device)
        # one stream shared by all processes (each draws the same global batch): what a single process draws
        state = {"logits": logits, "optimizer": None, "step": 0, "rng": torch.Generator().manual_seed(seed).get_state(),
                 "log": {k: [] for k in LOSS_TERMS}, "log_attribute": [], "preselection": how}
    module = MaskMatrixModule(state["logits"].clone().to(G.device), attributes)
    masker = module if world == 1 else _ddp(module)  # DDP also broadcasts process 0's logits
    logits = module.logits
    opt = _ranger([logits], lr)
    if state["optimizer"] is not None:
        opt.load_state_dict(state["optimizer"])
    rng = torch.Generator()
    rng.set_state(state["rng"])
    log, log_attribute = state["log"], state["log_attribute"]

    step = state["step"]
    stopped = False
    while step < steps and not stopped:
        pick = torch.randint(len(bank), (2, batch_size), generator=rng)  # the global batch, the same on every process
        target = [attributes[int(torch.randint(len(attributes), (1,), generator=rng))]]  # |Omega| = 1
        pick = pick[:, shard]
        c = objective.constants(G.to_wplus(bank[pick[0]]), G.to_wplus(bank[pick[1]]))
        terms = objective.with_mask(masker(target), target, c)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()  # under DDP the gradient is averaged over the processes here
        opt.step()
        step += 1
        values = torch.stack([terms[k].detach() for k in LOSS_TERMS])
        if world > 1:  # the global batch's means: the shards are equal, so the mean of the shards' means
            torch.distributed.all_reduce(values)
            values /= world
        for k, v in zip(LOSS_TERMS, values.tolist()):
            log[k].append(v)
        log_attribute.append(target[0])
        if callback is not None and callback(SAT3DStep(step, steps, target, {k: log[k][-1] for k in LOSS_TERMS},
                                                           logits.detach())):
            stopped = True
        if world > 1:  # one process stopping stops all (they must take the same steps)
            stopped = _any_process(stopped)
        if checkpoint and (step % checkpoint_every == 0 or step >= steps or stopped):
            if rank == 0:
                _save_checkpoint(checkpoint, G, attributes, layout, logits, opt, step, rng.get_state(), batch_size, world,
                                 log, log_attribute, state["preselection"])
            if world > 1:
                torch.distributed.barrier()

    return SAT3DMatrix(
        logits=logits.detach().cpu().clone(), attributes=attributes, layout=layout, generator=dict(G.identity),
        fingerprint=generator_fingerprint(G), descriptors=getattr(descriptors, "source", "") if descriptors else "",
        clip=getattr(getattr(measure, "clip", None), "identity", None), steps=step,
        losses={k: list(v) for k, v in log.items()}, preselection=state["preselection"],
    )


class MaskMatrixModule(nn.Module):
    """The trainable logits of M as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, logits: torch.Tensor, attributes: list[str]):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.attributes = list(attributes)

    def forward(self, target: list[str]) -> torch.Tensor:
        return attribute_mask(self.logits, self.attributes, target)


def _distributed_rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _ddp(module: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device = module.logits.device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def _any_process(flag: bool) -> bool:
    t = torch.tensor([1.0 if flag else 0.0])
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _ranger(params, lr):
    from pytorch_optimizer import Ranger

    # no gradient centralisation: it subtracts each attribute row's mean gradient, which is
    # exactly the channel-uniform pull of L_prob (GC is meant for conv/linear weights)
    return Ranger(params, lr=lr, use_gc=False)


def _save_checkpoint(path, G, attributes, layout, logits, opt, step, rng_state, batch_size, world, log, log_attribute,
                     preselection):
    payload = {
        "format": CHECKPOINT_FORMAT, "attributes": attributes, "layout": layout.to_json(), "generator": dict(G.identity),
        "logits": logits.detach().cpu().clone(), "optimizer": opt.state_dict(), "step": step,
        "rng": rng_state,  # the shared sampler (the same on every process)
        "batch_size": batch_size, "processes": world,  # global batch; the number of processes is only a note
        "log": log, "log_attribute": log_attribute, "preselection": preselection,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path, G, attributes, layout) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise TargetCLIPError(f"{path}: unreadable SAT3D checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TargetCLIPError(f"{path}: not a SAT3D training checkpoint")
    if state["attributes"] != attributes or StyleLayout.from_json(state["layout"]) != layout:
        raise TargetCLIPError(f"{path}: checkpoint of another run (attributes {state['attributes']} or another generator layout); "
                              "delete it or pick another checkpoint path")
    if isinstance(state["rng"], list):  # older versions: one sampler state per process
        if len(state["rng"]) != 1:
            raise TargetCLIPError(f"{path}: written by a {len(state['rng'])}-process run of an older version, where each process "
                                  "drew its own pairs; it cannot be resumed under the global-batch sampler: delete it")
        state["rng"] = state["rng"][0]  # a single process's stream is the shared stream
    return state


# --------------------------------------------------------------------------- channel pre-selection


@torch.no_grad()
def preselect_channels(G, layout: StyleLayout, latent_bank: torch.Tensor, parser: RegionParser, regions: dict,
                       n_samples: int = 4, top_k: int = 64, d_t: float = 0.5, fd_scale: float = 0.5,
                       chunk: int = 64, seed: int = 0, out_resolution: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Channels whose gradient maps fall inside each attribute's region: {attribute: LongTensor}.

    For every channel c the finite-difference gradient map |G(s + eps_c e_c) - G(s)| (eps_c =
    fd_scale * std of the channel over the bank) is summed over colour; its fraction inside
    the parser's region, averaged over n_samples codes, scores the channel.  Channels scoring
    >= d_t are kept, the top_k best per region.  Costs n_channels * n_samples renders, so
    `progress(done, total)` is called after every chunk of them (a UI raises from it to cancel).
    """
    pick = torch.randperm(len(latent_bank), generator=torch.Generator().manual_seed(seed))[:n_samples]
    styles = G.styles(G.to_wplus(latent_bank[pick]))
    flat = layout.flatten(styles)
    bank_styles = layout.flatten(G.styles(G.to_wplus(latent_bank[: min(len(latent_bank), 256)])))
    eps = fd_scale * bank_styles.std(0).clamp(min=1e-3)
    names = sorted(set(regions.values()))
    inside = {r: torch.zeros(layout.n_channels, device=flat.device) for r in names}
    for i in range(len(pick)):
        base_styles = OrderedDict((k, v[i : i + 1]) for k, v in styles.items())
        base = G.synthesis_from_styles(base_styles, out_resolution=out_resolution)
        masks = {r: parser(base, r)[0] for r in names}  # [H, W]
        for start in range(0, layout.n_channels, chunk):
            idx = torch.arange(start, min(start + chunk, layout.n_channels), device=flat.device)
            probe = flat[i : i + 1].repeat(len(idx), 1)
            probe[torch.arange(len(idx)), idx] += eps[idx]
            img = G.synthesis_from_styles(layout.unflatten(probe, base_styles), out_resolution=out_resolution)
            change = (img - base).abs().sum(1)  # [k, H, W]
            total = change.sum((1, 2)).clamp(min=1e-12)
            for r in names:
                inside[r][idx] += (change * masks[r]).sum((1, 2)) / total
            if progress is not None:
                progress(i * layout.n_channels + int(idx[-1]) + 1, len(pick) * layout.n_channels)
    out = {}
    for attr, r in regions.items():
        score = inside[r] / len(pick)
        keep = (score >= d_t).nonzero().flatten()
        keep = keep[score[keep].argsort(descending=True)][:top_k]
        out[attr] = keep.sort().values.cpu()
    return out


# --------------------------------------------------------------------------- instant per-pair transfer


@torch.inference_mode(False)
@torch.enable_grad()
def instant_transfer(G, measure, source, reference, attributes, *, steps: int = 300, lr: float = 0.01, delta: float = 1.0,
                     lambdas: dict | None = None, parser: RegionParser | None = None, descriptors=None,
                     init: SAT3DMatrix | None = None, out_resolution="auto",
                     callback: Callable[[SAT3DStep], bool | None] | None = None) -> SAT3DMatrix:
    """Optimise a mask matrix for one source/reference pair with the SAT3D losses (no training set).

    source/reference: W, W+ (batch 1) or StyleSpace codes.  Returns the best matrix seen (by
    total loss, before its step); apply it with `transfer(G, source, reference, m, attributes)`.
    """
    _make_ready(G, measure)
    all_attrs = list(measure.attributes)
    target = [attributes] if isinstance(attributes, str) else list(attributes)
    attribute_mask(torch.zeros(len(all_attrs) + 1, 1), all_attrs, target)  # unknown names fail here
    delta = _check_delta(delta)
    descriptors, regions, _ = _descriptor_info(measure, descriptors)
    lambdas = {**DEFAULT_LAMBDAS, **(lambdas or {})}
    layout = StyleLayout.from_generator(G)
    res = render_resolution(G, measure) if out_resolution in ("auto", None) else int(out_resolution)
    objective = _PairObjective(G, measure, layout, lambdas, parser, regions, res)
    src_styles, ref_styles = as_styles(G, source), as_styles(G, reference)
    with torch.no_grad():
        img_src = G.synthesis_from_styles(src_styles, out_resolution=res)
        img_ref = G.synthesis_from_styles(ref_styles, out_resolution=res)
        c = {"styles_src": src_styles, "flat_src": layout.flatten(src_styles), "flat_ref": layout.flatten(ref_styles),
             "img_src": img_src, "d_src": measure(img_src), "d_ref": measure(img_ref)}
    if init is not None:
        init.check_compatible(G, strict_weights=False)
        start = init.logits.clone()
    else:
        start = initial_logits(all_attrs, layout.n_channels)
    logits = start.to(G.device).requires_grad_(True)
    opt = _ranger([logits], lr)
    log = {k: [] for k in LOSS_TERMS}
    best_loss, best = float("inf"), logits.detach().clone()
    for step in range(steps):
        terms = objective(logits, all_attrs, target, c, delta)
        total = float(terms["total"].detach())
        if total < best_loss:
            best_loss, best = total, logits.detach().clone()
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        for k in LOSS_TERMS:
            log[k].append(float(terms[k].detach()))
        if callback is not None and callback(SAT3DStep(step + 1, steps, target, {k: log[k][-1] for k in LOSS_TERMS},
                                                           logits.detach())):
            break
    return SAT3DMatrix(logits=best.cpu(), attributes=all_attrs, layout=layout, generator=dict(G.identity),
                       fingerprint=generator_fingerprint(G), descriptors=getattr(descriptors, "source", "") if descriptors else "",
                       clip=getattr(getattr(measure, "clip", None), "identity", None), steps=len(log["total"]), losses=log,
                       preselection=f"instant pair transfer of {', '.join(target)}")


@dataclass
class InstantComparison:
    """compare_instant_with_trained's result.

    pairs: one dict per pair: "trained" / "instant" (loss terms, floats, by sat3d_losses),
      "winner" ("instant" when its total is lower, "trained" when higher, "tie"),
      "instant_matrix" (the pair's SAT3DMatrix) and "styles_trained" / "styles_instant"
      (the edited StyleSpace codes of the pair, batch 1, for rendering).
    summary: "pairs", "trained" / "instant" (term -> mean over the pairs), "instant_wins",
      "trained_wins", "ties" (counts by total loss), and the settings used.
    """

    pairs: list[dict]
    summary: dict


def compare_instant_with_trained(G, measure, matrix: SAT3DMatrix, sources, references, attributes, *, steps: int = 300,
                                 lr: float = 0.01, delta: float = 1.0, parser: RegionParser | None = None,
                                 lambdas: dict | None = None, descriptors=None, out_resolution="auto",
                                 init_from_trained: bool = False,
                                 callback: Callable[[int, SAT3DStep], bool | None] | None = None) -> InstantComparison:
    """The trained matrix against an instant (per-pair) matrix, on the same pairs and losses.

    sources: W [N, w_dim] or W+ [N, n_latent, w_dim]; references: the same with N entries (pair
    i = (source i, reference i)) or 1 (used for every source).  attributes: one target set
    (|Omega| >= 1, a summed mask, as train_sat3d and instant_transfer optimise it).  For every
    pair, instant_transfer optimises a matrix (from the usual initialisation, or from the
    trained matrix with init_from_trained=True: then the instant one is never worse on its
    pair, since instant_transfer keeps the best matrix seen, its start included); both are
    scored by sat3d_losses with the same lambdas, parser and render resolution.
    callback(pair_index, step) is instant_transfer's callback (True ends that pair's run).
    """
    target = [attributes] if isinstance(attributes, str) else list(attributes)
    if list(matrix.attributes) != list(measure.attributes):
        raise TargetCLIPError(f"the matrix has attributes {', '.join(matrix.attributes)} but the measure's descriptor set has "
                              f"{', '.join(measure.attributes)}: compare with the descriptor set the matrix was trained with")
    matrix.check_compatible(G, strict_weights=False)  # the layout must fit; weights are checked at load
    sources, references = as_styles_input(G, sources), as_styles_input(G, references)
    n = sources.shape[0]
    if references.shape[0] not in (1, n):
        raise TargetCLIPError(f"{n} sources need 1 or {n} references, got {references.shape[0]}")
    delta = _check_delta(delta)
    lambdas = {**DEFAULT_LAMBDAS, **(lambdas or {})}
    score = dict(delta=delta, lambdas=lambdas, parser=parser, descriptors=descriptors, out_resolution=out_resolution)
    pairs = []
    for i in range(n):
        src, ref = sources[i : i + 1], references[i : i + 1] if references.shape[0] == n else references[:1]
        hook = None if callback is None else (lambda info, i=i: callback(i, info))
        instant = instant_transfer(G, measure, src, ref, target, steps=steps, lr=lr, delta=delta, lambdas=lambdas,
                                   parser=parser, descriptors=descriptors, init=matrix if init_from_trained else None,
                                   out_resolution=out_resolution, callback=hook)
        trained_terms = sat3d_losses(G, measure, matrix.logits, src, ref, target, **score)
        instant_terms = sat3d_losses(G, measure, instant.logits, src, ref, target, **score)
        a, b = instant_terms["total"], trained_terms["total"]
        with torch.no_grad():
            styles = {name: transfer_styles(G, src, ref, m, target, delta, combine=True)
                      for name, m in (("trained", matrix), ("instant", instant))}
        pairs.append({"pair": i, "trained": trained_terms, "instant": instant_terms,
                      "winner": "instant" if a < b else "trained" if a > b else "tie", "instant_matrix": instant,
                      "styles_trained": styles["trained"], "styles_instant": styles["instant"]})
    return InstantComparison(pairs, summarize_comparison(pairs, attributes=target, steps=steps, lr=lr, delta=delta,
                                                         init_from_trained=init_from_trained))


def summarize_comparison(pairs: list[dict], **settings) -> dict:
    """Means of every loss term for both matrices and who wins how often (by total loss)."""
    winners = [p["winner"] for p in pairs]
    mean = {side: {k: sum(p[side][k] for p in pairs) / max(1, len(pairs)) for k in LOSS_TERMS} for side in ("trained", "instant")}
    return {"pairs": len(pairs), **mean, "instant_wins": winners.count("instant"), "trained_wins": winners.count("trained"),
            "ties": winners.count("tie"), **settings}


def images_for_pair(G, source, reference, out_resolution=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders of a source and a reference (for sheets): two [B, 3, H, W]."""
    with torch.no_grad():
        return (G.synthesis_from_styles(as_styles(G, source), out_resolution=out_resolution),
                G.synthesis_from_styles(as_styles(G, reference), out_resolution=out_resolution))


__all__ = [
    "AttributeDescriptors", "DescriptorSet", "InstantComparison", "QMM", "SAT3DMatrix", "SAT3DStep", "attribute_distance", "attribute_mask",
    "MaskMatrixModule", "compare_instant_with_trained", "initial_logits", "instant_transfer", "load_descriptors", "load_sat3d_matrix", "loss_bg", "loss_prob", "loss_ref",
    "loss_src", "preselect_channels", "sat3d_losses", "sample_latent_bank", "save_sat3d_matrix", "summarize_comparison", "total_loss", "train_sat3d", "transfer",
    "transfer_styles",
]
