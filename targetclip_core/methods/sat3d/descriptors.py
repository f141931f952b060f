"""SAT3D descriptor groups and their measurement (Zhai et al. 2024, Sec. 3.1, Eq. 3).

A descriptor set names the attributes a matrix learns (hairstyle, eyeglasses, ...); each
attribute holds descriptor groups, phrases CLIP tells apart (a softmax over one group), the
region name a parser understands (for L_bg and channel pre-selection) and whether it is
"complex" (gets channel pre-selection, with its k_t and d_t in "preselect": {"k": 3500, "d": 1.8},
the paper's Hairstyle values and the defaults of a complex attribute that gives none).  Built-in
sets ship as JSON (faces, cats, cars); a user file has the same layout and may extend one.

QMM (Eq. 3): D(I, phi) = softmax_j(tau * cos(CLIP_img(I), CLIP_txt(phi_j))) over one descriptor
group phi = (phi_1..phi_G).  tau is CLIP's own learned logit scale (exp(logit_scale), 100 for
OpenAI's models), i.e. exactly CLIP's zero-shot classification probabilities.

A descriptor file may also hold the rules its training set is drawn by (a top-level "training_set"
entry: CLIP zero-shot checks that exclude latents or give a class a least share of the bank); they
are parsed here (TrainingSetRules) and applied in methods.sat3d.training_set, whose docstring
describes the entry.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.text import MiB, read_json, type_name

DESCRIPTOR_FORMAT = "targetclip.sat3d.descriptors"
BUILTIN_DESCRIPTORS = ("faces", "cats", "cars")
OTHERS = "others"
# channel pre-selection of a complex attribute (Sec. 3.2): k_t channels, M[t, i] = d_t (the paper's Hairstyle values)
DEFAULT_PRESELECT_K = 3500
DEFAULT_PRESELECT_D = 1.8
MAX_DESCRIPTOR_BYTES = 4 * MiB  # the built-in sets are a few KB
MAX_EXTENDS = 16  # a chain of "extends" deeper than this is refused (no set needs more)


# --------------------------------------------------------------------------- descriptor groups


@dataclass(frozen=True)
class AttributeDescriptors:
    name: str
    groups: tuple[tuple[str, ...], ...]  # full prompts, template applied
    region: str | None = None  # region name a parser understands (hair, eyes, mouth, ...)
    complex: bool = False  # gets channel pre-selection
    preselect_k: int = DEFAULT_PRESELECT_K  # channels pre-selected (a count for the paper's generator, see preselect)
    preselect_d: float = DEFAULT_PRESELECT_D  # their initial logit M[t, i]


@dataclass(frozen=True)
class ZeroShotRule:
    """One training-set rule: CLIP's zero-shot probabilities over `phrases` (full prompts, no template);
    a latent is of the rule's class when the summed probability of `match` exceeds `threshold`."""

    name: str
    phrases: tuple[str, ...]
    match: tuple[str, ...]
    threshold: float = 0.5
    share: float | None = None  # min_share rules: the class's least share of the bank

    def to_json(self) -> dict:
        """The rule as the descriptor file writes it (every field explicit)."""
        out = {"name": self.name, "phrases": list(self.phrases), "match": list(self.match), "threshold": self.threshold}
        return out if self.share is None else {**out, "share": self.share}


@dataclass(frozen=True)
class TrainingSetRules:
    """A descriptor set's training-set rules: latents of an `exclude` class are dropped; each `min_share`
    class makes at least its share of the bank (methods.sat3d.training_set)."""

    exclude: tuple[ZeroShotRule, ...] = ()
    min_share: tuple[ZeroShotRule, ...] = ()

    @property
    def rules(self) -> tuple[ZeroShotRule, ...]:
        return self.exclude + self.min_share

    def to_json(self) -> dict:
        return {"exclude": [r.to_json() for r in self.exclude], "min_share": [r.to_json() for r in self.min_share]}


@dataclass(frozen=True)
class DescriptorSet:
    domain: str
    attributes: tuple[AttributeDescriptors, ...]
    source: str = ""
    template: str = "{}"  # the default template (an "extends" file without one inherits it)
    training_set: TrainingSetRules | None = None  # None: the bank is drawn unfiltered

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
    "extends": "faces" to add attributes to, or replace attributes of, another set; it inherits the
    set's "training_set" rules unless it has its own, where {} means none).  A file that extends
    itself, a cycle of "extends" or a chain deeper than MAX_EXTENDS is refused."""
    return _load_descriptors(name_or_path, ())


def _load_descriptors(name_or_path, chain: tuple[str, ...]) -> DescriptorSet:
    """load_descriptors, `chain` holding the sets (built-in names, resolved paths) that extend this one."""
    name = str(name_or_path)
    if name in BUILTIN_DESCRIPTORS:
        key, source = f"builtin:{name}", f"builtin:{name}"
    else:
        p = Path(name).expanduser()
        key, source = str(p.resolve()), str(p)
    if key in chain:
        cycle = " -> ".join((*chain[chain.index(key):], key))
        raise TargetCLIPError(f"{chain[-1]}: 'extends' makes a cycle ({cycle}): a descriptor set cannot extend itself")
    if len(chain) >= MAX_EXTENDS:
        raise TargetCLIPError(f"{chain[0]}: a chain of more than {MAX_EXTENDS} 'extends' ({' -> '.join(chain)} -> ...)")
    if name in BUILTIN_DESCRIPTORS:
        text = resources.files("targetclip_core").joinpath("data", "sat3d_descriptors", f"{name}.json").read_text("utf-8")
        return _descriptors_from_dict(json.loads(text), source, (*chain, key))
    if not p.is_file():
        raise TargetCLIPError(f"{p}: no such descriptor file (built-in sets: {', '.join(BUILTIN_DESCRIPTORS)})")
    data = read_json(p, "descriptor file", max_bytes=MAX_DESCRIPTOR_BYTES)
    return _descriptors_from_dict(data, source, (*chain, key))


def descriptors_from_dict(data: dict, source: str = "") -> DescriptorSet:
    """A descriptor set from its JSON layout (see load_descriptors); `source` names it in messages."""
    return _descriptors_from_dict(data, source, ())


def _descriptors_from_dict(data, source: str, chain: tuple[str, ...]) -> DescriptorSet:
    if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
        raise TargetCLIPError(f"{source}: a descriptor file is a JSON object with an 'attributes' object")
    extends = data.get("extends")
    if extends and not isinstance(extends, str):
        raise TargetCLIPError(f"{source}: 'extends' names a built-in set ({', '.join(BUILTIN_DESCRIPTORS)}) or a "
                              f"descriptor file, got {type_name(extends)}")
    base = _load_descriptors(extends, chain or (source,)) if extends else None
    template = _text(data.get("template", base.template if base else "{}"), "template", source)
    parsed = OrderedDict((a.name, a) for a in (base.attributes if base else ()))
    for name, spec in data["attributes"].items():
        parsed[name] = _parse_attribute(name, spec, template, source)
    if not parsed:
        raise TargetCLIPError(f"{source}: no attributes")
    domain = _text(data.get("domain", base.domain if base else (Path(source).stem or "custom")), "domain", source)
    rules = _parse_training_set(data["training_set"], source) if "training_set" in data else (base.training_set if base else None)
    return DescriptorSet(domain, tuple(parsed.values()), source, template, rules)


def _text(value, key: str, source, where: str = "") -> str:
    if not isinstance(value, str):
        raise TargetCLIPError(f"{source}: {where}'{key}' must be a string, got {type_name(value)}")
    return value


def _parse_attribute(name, spec, template, source) -> AttributeDescriptors:
    if isinstance(spec, list):  # shorthand: a bare list of groups (or one group of phrases)
        spec = {"groups": spec}
    if not isinstance(spec, dict):
        raise TargetCLIPError(f"{source}: attribute {name!r} must be an object with 'groups' (or a list of groups), "
                              f"got {type_name(spec)}")
    groups = spec.get("groups")
    if groups is not None and not isinstance(groups, list):
        raise TargetCLIPError(f"{source}: 'groups' of {name!r} must be a list of groups of phrases, got {type_name(groups)}")
    if groups and all(isinstance(g, str) for g in groups):
        groups = [groups]
    if not groups:
        raise TargetCLIPError(f"{source}: attribute {name!r} has no descriptor groups")
    tpl = _text(spec.get("template", template), "template", source, f"attribute {name!r}: ")
    if "{}" not in tpl:
        raise TargetCLIPError(f"{source}: template {tpl!r} of {name!r} has no '{{}}' for the phrase")
    try:
        tpl.format("phrase")
    except (IndexError, KeyError, ValueError) as e:
        raise TargetCLIPError(f"{source}: template {tpl!r} of {name!r} must hold one '{{}}' and no other braces "
                              f"(write '{{{{' and '}}}}' for literal ones): {type(e).__name__} {e}") from None
    region = spec.get("region")
    if region is not None and not (isinstance(region, str) and region):
        raise TargetCLIPError(f"{source}: 'region' of {name!r} must be a region name, got {type_name(region)}")
    complex_ = spec.get("complex", False)
    if not isinstance(complex_, bool):
        raise TargetCLIPError(f"{source}: 'complex' of {name!r} must be true or false, got {type_name(complex_)}")
    out = []
    for g in groups:
        if not isinstance(g, list) or len(g) < 2 or not all(isinstance(x, str) and x.strip() for x in g):
            raise TargetCLIPError(f"{source}: every group of {name!r} needs at least two phrases (softmax over one is always 1): {g!r}")
        if len(set(g)) != len(g):
            raise TargetCLIPError(f"{source}: group of {name!r} repeats a phrase: {g!r}")
        out.append(tuple(tpl.format(x.strip()) for x in g))
    return AttributeDescriptors(name, tuple(out), region, complex_, *_parse_preselect(name, spec, source))


def _parse_preselect(name, spec, source) -> tuple[int, float]:
    """(k_t, d_t) of an attribute's optional "preselect": {"k": int >= 0, "d": number}; only a complex one has it."""
    given = spec.get("preselect")
    if given is None:
        return DEFAULT_PRESELECT_K, DEFAULT_PRESELECT_D
    if not spec.get("complex", False):
        raise TargetCLIPError(f"{source}: attribute {name!r} has 'preselect' but is not 'complex' (only complex "
                              "attributes get channel pre-selection): add \"complex\": true or remove it")
    if not isinstance(given, dict) or set(given) - {"k", "d"}:
        raise TargetCLIPError(f"{source}: 'preselect' of {name!r} is an object with 'k' (channels) and/or 'd' (initial "
                              f"logit), got {given!r}")
    k, d = given.get("k", DEFAULT_PRESELECT_K), given.get("d", DEFAULT_PRESELECT_D)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise TargetCLIPError(f"{source}: 'preselect' k of {name!r} must be a whole number of channels >= 0, got {k!r}")
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
        raise TargetCLIPError(f"{source}: 'preselect' d of {name!r} must be a number, got {d!r}")
    return k, float(d)


RULE_KINDS = ("exclude", "min_share")


def _parse_training_set(spec, source) -> TrainingSetRules | None:
    """The "training_set" entry of a descriptor file (see methods.sat3d.training_set); None when it has no rules."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise TargetCLIPError(f"{source}: 'training_set' must be an object with 'exclude' and/or 'min_share' lists of rules")
    unknown = sorted(set(spec) - set(RULE_KINDS))
    if unknown:
        raise TargetCLIPError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))} in 'training_set' "
                              f"(known: {', '.join(RULE_KINDS)})")
    parsed = {}
    for kind in RULE_KINDS:
        items = spec.get(kind, [])
        if not isinstance(items, list):
            raise TargetCLIPError(f"{source}: training_set.{kind} must be a list of rules")
        parsed[kind] = tuple(_parse_rule(item, f"training_set.{kind}[{i}]", kind, source) for i, item in enumerate(items))
    names = [r.name for kind in RULE_KINDS for r in parsed[kind]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TargetCLIPError(f"{source}: training_set rule name(s) {', '.join(map(repr, twice))} used more than once")
    total = sum(r.share for r in parsed["min_share"])
    if total > 1 + 1e-9:
        raise TargetCLIPError(f"{source}: the min_share shares of training_set add up to {total:g}, more than the whole bank (1)")
    return TrainingSetRules(parsed["exclude"], parsed["min_share"]) if names else None


def _parse_rule(item, where, kind, source) -> ZeroShotRule:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
        raise TargetCLIPError(f"{source}: {where} must be an object with a 'name' and 'phrases'")
    name = item["name"].strip()
    known = {"name", "phrases", "match", "threshold"} | ({"share"} if kind == "min_share" else set())
    unknown = sorted(set(item) - known)
    if unknown:
        raise TargetCLIPError(f"{source}: {where} ({name!r}) has unknown key(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(sorted(known))})")
    phrases = item.get("phrases")
    if not isinstance(phrases, list) or len(phrases) < 2 or not all(isinstance(x, str) and x.strip() for x in phrases):
        raise TargetCLIPError(f"{source}: {where} ({name!r}) needs 'phrases', at least two (CLIP's zero-shot softmax "
                              f"is over them): {phrases!r}")
    phrases = tuple(x.strip() for x in phrases)
    if len(set(phrases)) != len(phrases):
        raise TargetCLIPError(f"{source}: {where} ({name!r}) repeats a phrase: {list(phrases)!r}")
    match = item.get("match", [phrases[0]])
    if isinstance(match, str):
        match = [match]
    if (not isinstance(match, list) or not match or not all(isinstance(x, str) and x.strip() in phrases for x in match)
            or len(set(match)) == len(phrases)):
        raise TargetCLIPError(f"{source}: {where} ({name!r}): 'match' must list some, not all, of its phrases: {match!r}")
    threshold = _number(item.get("threshold", 0.5), where, name, "threshold", source)
    if not 0 < threshold < 1:
        raise TargetCLIPError(f"{source}: {where} ({name!r}): threshold must be in (0, 1), got {threshold:g}")
    share = None
    if kind == "min_share":
        if "share" not in item:
            raise TargetCLIPError(f"{source}: {where} ({name!r}) needs a 'share', the class's least part of the bank in (0, 1]")
        share = _number(item["share"], where, name, "share", source)
        if not 0 < share <= 1:
            raise TargetCLIPError(f"{source}: {where} ({name!r}): share must be in (0, 1], got {share:g}")
    return ZeroShotRule(name, phrases, tuple(dict.fromkeys(x.strip() for x in match)), threshold, share)


def _number(value, where, name, key, source) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TargetCLIPError(f"{source}: {where} ({name!r}): {key} must be a number, got {value!r}")
    return float(value)


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
