"""SAT3D descriptor groups and their measurement (Zhai et al. 2024, Sec. 3.1, Eq. 3).

A descriptor set names the attributes a matrix learns (hairstyle, eyeglasses, ...); each
attribute holds descriptor groups, phrases CLIP tells apart (a softmax over one group), the
region name a parser understands (for L_bg and channel pre-selection) and whether it is
"complex" (gets channel pre-selection).  Built-in sets ship as JSON (faces, cats, cars); a user
file has the same layout and may extend one.

QMM (Eq. 3): D(I, phi) = softmax_j(tau * cos(CLIP_img(I), CLIP_txt(phi_j))) over one descriptor
group phi = (phi_1..phi_G).  tau is CLIP's own learned logit scale (exp(logit_scale), 100 for
OpenAI's models), i.e. exactly CLIP's zero-shot classification probabilities.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from targetclip_core.errors import TargetCLIPError

DESCRIPTOR_FORMAT = "targetclip.sat3d.descriptors"
BUILTIN_DESCRIPTORS = ("faces", "cats", "cars")
OTHERS = "others"


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


def descriptor_info(measure, descriptors):
    """(descriptor set, {attribute: region}, [complex attributes]): the given set, else the measure's
    own (`measure.descriptors`); empty without either."""
    descriptors = descriptors or getattr(measure, "descriptors", None)
    regions = {a.name: a.region for a in descriptors.attributes} if descriptors else {}
    complex_ = [a.name for a in descriptors.attributes if a.complex] if descriptors else []
    return descriptors, regions, complex_


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
