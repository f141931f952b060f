"""The SAT3D training set (Zhai et al. 2024, Sec. 4): the pre-sampled latents training draws its
(source, reference) pairs from, filtered as the paper filters it.

The paper pre-samples 6000 [z, camera] pairs, drops faces with hats and keeps faces with glasses
above 40% of the set, a CLIP zero-shot check serving for both.  Here the bank holds W latents
[n, w_dim] (their style codes are computed per step); the camera is the one the losses render
with (EG3D's frontal camera), so the check sees what training sees.

Rules: a descriptor file's top-level "training_set" entry (parsed and validated in descriptors,
descriptors.TrainingSetRules; faces.json has the paper's two, cats and cars none):

    "training_set": {
      "exclude":   [{"name": "hat", "phrases": ["a face wearing a hat", "a face without a hat"]}],
      "min_share": [{"name": "glasses",
                     "phrases": ["a face wearing eyeglasses", "a face wearing sunglasses", "a face without glasses"],
                     "match": ["a face wearing eyeglasses", "a face wearing sunglasses"], "share": 0.4}]
    }

  name       names the rule in the report (unique within the entry)
  phrases    at least two full prompts (no template is applied); CLIP's zero-shot probabilities over them
             are QMM's D(I, phi) (softmax of the image-text cosine times CLIP's logit scale)
  match      the phrases that make the rule's class (default: the first); a latent is of the class when
             their summed probability exceeds
  threshold  (default 0.5: the class is more likely than not; for two phrases, CLIP's zero-shot argmax)
  share      min_share rules only: the class's least share of the bank, in (0, 1] (the shares add up to <= 1)
A file that "extends" another inherits its rules unless it has its own entry ({} means none).

The filtered bank (filtered_latent_bank): candidates come from one seeded stream in rounds of n z's
(the first round is exactly sample_latent_bank's bank), are mapped with `truncation`, rendered at
the losses' size (objective.render_resolution: the smallest CLIP needs) and scored in batches.
A candidate of an exclude class is dropped.  ceil(share * n) slots are reserved for each min_share
class: a candidate is taken while a class it belongs to still needs members, or while the free
slots exceed what the classes still need; others are held back.  The work is bounded by a cap on
the candidates scored (max_candidates, default CANDIDATE_FACTOR x n = 24000 for the paper's 6000:
enough for a 40% share of a class about 12% of random faces have).  If the cap comes first, the
held-back candidates fill the free slots in stream order, the run warns and the report gives the
achieved shares (a bank short of n, when nearly everything was excluded, is kept and reported;
an empty one is refused).  The bank keeps the stream's order; the same seed gives the same bank.

training_latents is what train_sat3d calls: a given bank is used as is, a set without rules (or
filter_training_set=False) draws the plain bank, a resumed run takes the bank its checkpoint holds
(checkpoint_entry) instead of filtering again.  Under torchrun process 0 filters and broadcasts the
bank with its report (broadcast_object_list, so every process learns the bank's shape).

Decisions where the paper is silent: the phrases (above), the 0.5 threshold, "above 40%" read as
at least ceil(0.4 n) of the n latents, and the candidate cap.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods.sat3d.descriptors import QMM, AttributeDescriptors, DescriptorSet, TrainingSetRules
from targetclip_core.methods.sat3d.distributed import distributed_rank_world
from targetclip_core.methods.sat3d.objective import render_resolution

CANDIDATE_FACTOR = 4  # default cap on the candidates scored: this many times the bank's size
SCORE_BATCH = 16  # candidates rendered and scored at once

Scorer = Callable[[torch.Tensor], dict]  # images -> {rule name: probabilities [B, len(phrases)] (or [that])}


def sample_latent_bank(G, n: int = 6000, seed: int = 0, truncation: float = 1.0) -> torch.Tensor:
    """n W latents [n, w_dim] from the mapping network (their style codes are computed per step)."""
    return draw_latents(G, n, torch.Generator().manual_seed(seed), truncation)


def draw_latents(G, n: int, gen: torch.Generator, truncation: float = 1.0) -> torch.Tensor:
    """The next n W latents [n, w_dim] of the seeded stream `gen` (z on the CPU, mapped in chunks, no graph)."""
    z = torch.randn(n, G.z_dim, generator=gen).to(G.device)
    with torch.no_grad():
        return torch.cat([G.mapping(chunk, truncation=truncation) for chunk in z.split(512)]).clone()


def zero_shot_scorer(clip, rules: TrainingSetRules, logit_scale: float | None = None) -> QMM:
    """A QMM over the rules' phrase groups (one "attribute" per rule): CLIP's zero-shot probabilities, {name: [[B, G]]}."""
    groups = DescriptorSet("training_set", tuple(AttributeDescriptors(r.name, (r.phrases,)) for r in rules.rules))
    return QMM(clip, groups, logit_scale)


def class_probabilities(scorer: Scorer, rules: TrainingSetRules, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """{rule name: [B]} the probability of each rule's class (its `match` phrases summed), on the CPU."""
    scores = scorer(images)
    out = {}
    for rule in rules.rules:
        probs = scores[rule.name]
        probs = probs[0] if isinstance(probs, (list, tuple)) else probs  # a QMM gives a list of one group
        if probs.shape[-1] != len(rule.phrases):
            raise TargetCLIPError(f"training-set scorer gave {probs.shape[-1]} probabilities for rule {rule.name!r}, "
                                  f"which has {len(rule.phrases)} phrases")
        columns = [rule.phrases.index(p) for p in rule.match]
        out[rule.name] = probs[:, columns].sum(-1).float().cpu()
    return out


@torch.no_grad()
def filtered_latent_bank(G, scorer: Scorer, rules: TrainingSetRules, n: int = 6000, seed: int = 0, truncation: float = 1.0,
                         *, max_candidates: int | None = None, batch_size: int = SCORE_BATCH, out_resolution="auto",
                         on_batch: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, dict]:
    """The bank of n W latents the rules allow, and its report (see the module docstring).

    scorer: images -> {rule name: zero-shot probabilities over its phrases} (zero_shot_scorer, or a stand-in).
    max_candidates: the cap on the candidates scored (default CANDIDATE_FACTOR * n).  on_batch(done, total):
    after every scored batch, `done` candidates of at most `total` (the cap; filtering usually ends before it);
    a UI raises from it to cancel.  Returns (W [m, w_dim] on G's device, m = n unless nearly all were excluded;
    the report dict: mode, rules, n, seed, truncation, max_candidates, size, candidates (looked at until the
    bank was complete), scored (rendered: whole batches), excluded (candidates per exclude rule), shares
    ({class: target, count, achieved}), complete (n latents, every share met), summary).
    """
    cap = CANDIDATE_FACTOR * n if max_candidates is None else int(max_candidates)
    if n < 1 or cap < n:
        raise TargetCLIPError(f"a filtered training set of {n} latents needs a candidate cap of at least {n}, got {cap}")
    res = render_resolution(G, scorer) if out_resolution in ("auto", None) else out_resolution
    needed = {r.name: math.ceil(r.share * n - 1e-9) for r in rules.min_share}  # reserved slots per class
    counts = dict.fromkeys(needed, 0)
    excluded = {r.name: 0 for r in rules.exclude}
    taken, held = [], []  # (stream index, w, classes)
    gen = torch.Generator().manual_seed(seed)
    drawn = examined = 0  # candidates rendered and scored / looked at until the bank was complete (whatever the batch)
    while drawn < cap and len(taken) < n:
        w_round = draw_latents(G, n, gen, truncation)[: cap - drawn]  # one round: the first is sample_latent_bank's
        for start in range(0, len(w_round), batch_size):
            w = w_round[start : start + batch_size]
            images = G.synthesis_from_styles(G.styles(G.to_wplus(w)), out_resolution=res)
            probs = {k: v.tolist() for k, v in class_probabilities(scorer, rules, images).items()}  # floats: a fast loop
            for i in range(len(w)):
                if len(taken) == n:
                    break
                index, examined = drawn + i, examined + 1
                hits = [r.name for r in rules.exclude if probs[r.name][i] > r.threshold]
                for name in hits:
                    excluded[name] += 1
                if hits:
                    continue
                classes = [r.name for r in rules.min_share if probs[r.name][i] > r.threshold]
                missing = {k: max(0, needed[k] - counts[k]) for k in needed}
                if any(missing[c] for c in classes) or n - len(taken) > sum(missing.values()):
                    taken.append((index, w[i].clone(), classes))
                    for c in classes:
                        counts[c] += 1
                else:
                    held.append((index, w[i].clone(), classes))
            drawn += len(w)
            if on_batch is not None:
                on_batch(drawn, cap)
            if len(taken) == n:
                break
    for item in held[: n - len(taken)]:  # the cap came first: the held-back candidates fill the free slots
        taken.append(item)
        for c in item[2]:
            counts[c] += 1
    if not taken:
        raise TargetCLIPError(f"training set: every one of the {examined} candidates was excluded ("
                              f"{_counts_text(excluded)}); loosen the descriptor set's training_set rules")
    taken.sort(key=lambda item: item[0])
    bank = torch.stack([w for _, w, _ in taken])
    report = _filtered_report(rules, n, seed, truncation, cap, len(bank), examined, excluded, counts, needed)
    report["scored"] = drawn
    if not report["complete"]:
        warnings.warn(f"SAT3D training set: {report['summary']}", stacklevel=2)
    return bank, report


def _counts_text(excluded: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in excluded.items()) or "no exclude rules"


def _filtered_report(rules, n, seed, truncation, cap, size, drawn, excluded, counts, needed) -> dict:
    shares = {k: {"target": r.share, "count": counts[k], "achieved": counts[k] / size}
              for k, r in ((r.name, r) for r in rules.min_share)}
    complete = size == n and all(counts[k] >= needed[k] for k in needed)
    parts = [f"excluded {k} {v}" for k, v in excluded.items()]
    parts += [f"{k} {s['achieved']:.1%} (target >= {s['target']:.0%})" for k, s in shares.items()]
    short = "" if complete else f"; candidate cap {cap} reached before the rules were met"
    size_text = f"{size} latents" if size == n else f"{size} of {n} latents (too many excluded)"
    summary = (f"filtered: {size_text} from {drawn} candidates (seed {seed}, truncation {truncation:g}), "
               f"CLIP zero-shot: {'; '.join(parts) or 'no rules'}{short}")
    return {"mode": "filtered", "rules": rules.to_json(), "n": n, "seed": seed, "truncation": truncation,
            "max_candidates": cap, "size": size, "candidates": drawn, "excluded": excluded, "shares": shares,
            "complete": complete, "summary": summary}


# --------------------------------------------------------------------------- what train_sat3d calls


REQUEST_KEYS = ("mode", "rules", "n", "seed", "truncation", "max_candidates")  # what makes a filtered bank


def _request(report: dict) -> dict:
    """What drew a bank (from its report): two filtered runs with the same request draw the same bank."""
    return {k: report.get(k) for k in REQUEST_KEYS} if report.get("mode") == "filtered" else {"mode": report.get("mode")}


def checkpoint_entry(bank: torch.Tensor, report: dict) -> dict:
    """What a training checkpoint keeps of the training set: the report, and a filtered bank itself (filtering
    again would cost thousands of renders; the other banks are re-drawn or given again)."""
    return {"report": report, "bank": bank.detach().cpu().clone() if report.get("mode") == "filtered" else None}


def training_latents(G, measure, descriptors, *, n: int, seed: int, truncation: float, latent_bank=None,
                     filter_training_set: bool = True, out_resolution=None, state: dict | None = None, checkpoint="",
                     scorer: Scorer | None = None, max_candidates: int | None = None, **filter_kwargs) -> tuple[torch.Tensor, dict]:
    """(bank on G's device, report) for train_sat3d: a given bank as is, else the plain bank (no rules, or
    filtering off), else the filtered bank (scorer: default zero_shot_scorer on the measure's CLIP).
    state: a resumed checkpoint's state, whose stored bank is taken instead of filtering again (a checkpoint
    of another training set is refused).  filter_kwargs go to filtered_latent_bank (on_batch, batch_size)."""
    rules = getattr(descriptors, "training_set", None)
    cap = CANDIDATE_FACTOR * n if max_candidates is None else int(max_candidates)
    why = ""
    if latent_bank is not None:
        mode = "given"
    elif not filter_training_set or rules is None:
        mode, why = "unfiltered", ("filtering switched off" if rules is not None else "the descriptor set has no rules")
    elif scorer is None and getattr(measure, "clip", None) is None:
        mode, why = "unfiltered", "no CLIP to check the rules with (the measure has no `clip`; pass a scorer)"
        warnings.warn(f"SAT3D training set drawn unfiltered: {why}", stacklevel=3)
    else:
        mode = "filtered"
    stored = state.get("training_set") if state is not None else None
    if state is not None and stored is None and mode == "filtered":  # an older version's checkpoint: drawn unfiltered
        mode, why = "unfiltered", "resumed from a checkpoint drawn before training-set filtering"
    if stored is not None:
        request = _request({"mode": mode, "rules": rules.to_json() if rules else None, "n": n, "seed": seed,
                            "truncation": truncation, "max_candidates": cap})
        was = _request(stored["report"])
        if "filtered" in (request["mode"], was["mode"]) and request != was:
            raise TargetCLIPError(f"{checkpoint}: its training set was drawn with {was}, this run asks for {request}; "
                                  "resume with the same settings, or delete the checkpoint")
        if stored.get("bank") is not None:
            return stored["bank"].to(G.device), dict(stored["report"])
    if mode == "given":
        return latent_bank.to(G.device), {"mode": "given", "size": len(latent_bank),
                                          "summary": f"given: a latent bank of {len(latent_bank)} latents, used as is"}
    if mode == "unfiltered":
        bank = sample_latent_bank(G, n, seed, truncation).to(G.device)
        return bank, {"mode": "unfiltered", "n": n, "seed": seed, "truncation": truncation, "size": len(bank),
                      "summary": f"unfiltered: {n} latents sampled (seed {seed}, truncation {truncation:g}; {why})"}
    rank, world = distributed_rank_world()
    payload = [None, None]
    if rank == 0:
        if scorer is None:
            scorer = zero_shot_scorer(measure.clip, rules, getattr(measure, "logit_scale", None))
        bank, report = filtered_latent_bank(G, scorer, rules, n, seed, truncation, max_candidates=cap,
                                            out_resolution=out_resolution, **filter_kwargs)
        payload = [bank.cpu(), report]
    if world > 1:  # the others wait for process 0's bank: its shape (and report) travel with it
        torch.distributed.broadcast_object_list(payload, src=0)
    return payload[0].to(G.device), payload[1]
