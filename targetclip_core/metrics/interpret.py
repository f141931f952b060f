"""Essence interpretation (TargetCLIP Sec. 5, Fig. 7 style): which words describe what an essence does.

The essence's direction in CLIP space:
    d = normalise( mean_i normalise(C(G(w_i + s b)) - C(G(w_i))) )
Each source's delta is normalised before the mean so every face counts the same, however far
its code moved; the final normalisation only fixes the scale (ranking is by cosine).

A phrase p is scored by the cosine between d and its text direction
    t_p = normalise( T(template.format(p)) - T(neutral) ),  template "a face with {}", neutral "a face".
Why a difference and not T(p) itself: d is a difference of two image codes of faces, so the
"face" content and CLIP's image-text modality gap cancel in it; T(p) alone still holds both,
and ranking by it would favour phrases that describe faces in general.  The text difference
cancels the same parts, leaving the attribute (the directional-CLIP practice of StyleGAN-NADA
and StyleCLIP's global directions).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.text import MiB, read_text

VOCABULARY_FILE = Path(__file__).resolve().parents[1] / "data" / "essence_vocabulary.txt"
DEFAULT_TEMPLATE = "a face with {}"
NEUTRAL_PROMPT = "a face"
MAX_VOCABULARY_BYTES = 4 * MiB  # the shipped one is 7 KB; every phrase is encoded by CLIP, so more is a wrong file


def parse_phrases(text: str) -> list[str]:
    """Phrases of a vocabulary text: one per line, `#` starts a comment, blank lines skipped."""
    return [phrase for line in text.splitlines() if (phrase := line.split("#", 1)[0].strip())]


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """Phrases of a UTF-8 vocabulary file of at most MAX_VOCABULARY_BYTES (see parse_phrases, io.text.read_text)."""
    return parse_phrases(read_text(Path(path).expanduser(), "vocabulary", max_bytes=MAX_VOCABULARY_BYTES))


def load_vocabulary(files=(), phrases=(), include_default: bool = True) -> list[str]:
    """The shipped vocabulary, plus the phrases of `files` and the `phrases` given, duplicates dropped in order.

    Files and phrases are separate arguments on purpose: a phrase is never opened as a path.
    """
    found = read_vocabulary(VOCABULARY_FILE) if include_default else []
    for path in files:
        found += read_vocabulary(path)
    found += [str(p).strip() for p in phrases]
    unique = list(dict.fromkeys(p for p in found if p))
    if not unique:
        raise TargetCLIPError("the vocabulary is empty")
    return unique


@torch.no_grad()
def text_directions(C, phrases, template: str = DEFAULT_TEMPLATE, neutral: str = NEUTRAL_PROMPT, batch_size: int = 256) -> torch.Tensor:
    """Unit text directions [P, D]: normalise(T(template.format(p)) - T(neutral))."""
    if "{}" not in template:
        raise TargetCLIPError(f"the template must hold '{{}}' where the phrase goes, got {template!r}")
    base = C.encode_text([neutral])
    prompts = [template.format(p) for p in phrases]
    codes = torch.cat([C.encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)])
    return F.normalize(codes - base, dim=-1)


def mean_normalised_delta(source_codes: torch.Tensor, edit_codes: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """normalise(mean_i normalise(edit_i - source_i)): the essence's unit direction in CLIP space [D]."""
    if source_codes.shape != edit_codes.shape or source_codes.dim() != 2:
        raise TargetCLIPError(f"need paired codes [N, D], got {list(source_codes.shape)} and {list(edit_codes.shape)}")
    deltas = F.normalize(edit_codes.float() - source_codes.float(), dim=-1, eps=eps)
    mean = deltas.mean(0)
    if float(mean.norm()) < eps:
        raise TargetCLIPError("the edits do not move the CLIP codes: this essence has no direction to interpret")
    return F.normalize(mean, dim=-1)


def rank_phrases(direction: torch.Tensor, phrase_directions: torch.Tensor, phrases, top_k: int = 10) -> list[tuple[str, float]]:
    """The top_k (phrase, cosine) pairs, best first."""
    phrases = list(phrases)
    if phrase_directions.shape[0] != len(phrases):
        raise TargetCLIPError(f"{phrase_directions.shape[0]} directions for {len(phrases)} phrases")
    scores = F.normalize(phrase_directions.float(), dim=-1) @ F.normalize(direction.float().to(phrase_directions.device), dim=-1)
    k = max(1, min(int(top_k), len(phrases)))
    top = torch.topk(scores, k)
    return [(phrases[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]


@torch.no_grad()
def essence_direction(G, C, essence, sources: torch.Tensor, strength: float | None = None, batch_size: int = 8) -> torch.Tensor:
    """The essence's unit CLIP direction [D] over W+ sources [N, n_latent, w_dim]."""
    from targetclip_core.methods.targetclip.essence import edit_latents
    from targetclip_core.metrics.scores import clip_codes

    essence.check_compatible(G)
    sources = G.to_wplus(sources.to(G.device).float())
    strength = essence.strength if strength is None else float(strength)
    e = essence.to(G.device)
    source_codes, edit_codes = [], []
    for start in range(0, sources.shape[0], batch_size):
        wp = sources[start : start + batch_size]
        source_codes.append(clip_codes(C, G.synthesis(wp)))
        edit_codes.append(clip_codes(C, G.synthesis(edit_latents(wp, e, strength))))
    return mean_normalised_delta(torch.cat(source_codes), torch.cat(edit_codes))


def interpret_essence(G, C, essence, sources: torch.Tensor | None = None, *, vocabulary=None, top_k: int = 10,
                      strength: float | None = None, n_sources: int = 8, truncation: float = 0.7,
                      template: str = DEFAULT_TEMPLATE, neutral: str = NEUTRAL_PROMPT) -> list[tuple[str, float]]:
    """Top phrases describing an essence: [(phrase, cosine)], best first.

    sources: W+ latents (default: seeds 0 .. n_sources-1 at `truncation`, as the Sample Latents node
    draws them).  vocabulary: a list of phrases (default: the shipped vocabulary, see load_vocabulary).
    """
    if sources is None:
        from targetclip_core.metrics.evaluation import sources_from_seeds

        sources = sources_from_seeds(G, range(n_sources), truncation)
    phrases = load_vocabulary() if vocabulary is None else list(vocabulary)
    direction = essence_direction(G, C, essence, sources, strength)
    return rank_phrases(direction, text_directions(C, phrases, template, neutral), phrases, top_k)
