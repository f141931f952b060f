"""Beyond the paper: instant (per-pair) SAT3D transfer and its comparison with a trained matrix.

instant_transfer optimises the mask for one source/reference pair alone (no training set), and
compare_instant_with_trained scores it against a trained matrix on the same pairs with the same
losses (sat3d_losses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout, as_styles
from targetclip_core.methods.sat3d.descriptors import descriptor_info
from targetclip_core.methods.sat3d.inference import transfer_styles
from targetclip_core.methods.sat3d.losses import LOSS_TERMS, check_lambdas, objective_info
from targetclip_core.methods.sat3d.matrix import (
    SAT3DMatrix,
    attribute_mask,
    check_delta,
    generator_fingerprint,
    initial_logits,
)
from targetclip_core.methods.sat3d.objective import (
    PairObjective,
    SAT3DStep,
    as_styles_input,
    make_ready,
    ranger,
    render_resolution,
    sat3d_losses,
)
from targetclip_core.methods.sat3d.regions import RegionParser


@torch.inference_mode(False)
@torch.enable_grad()
def instant_transfer(G, measure, source, reference, attributes, *, steps: int = 300, lr: float = 0.01, delta: float = 1.0,
                     lambdas: dict | None = None, parser: RegionParser | None = None, descriptors=None,
                     init: SAT3DMatrix | None = None, out_resolution="auto",
                     callback: Callable[[SAT3DStep], bool | None] | None = None, precision: str = "fp32") -> SAT3DMatrix:
    """Optimise a mask matrix for one source/reference pair with the SAT3D losses (no training set).

    source/reference: W, W+ (batch 1) or StyleSpace codes.  Returns the best matrix seen (by
    total loss, before its step); apply it with `transfer(G, source, reference, m, attributes)`.
    precision: the renders' (devices.PRECISIONS); the measure, the losses and the matrix stay fp32.
    """
    make_ready(G, measure)
    all_attrs = list(measure.attributes)
    target = [attributes] if isinstance(attributes, str) else list(attributes)
    attribute_mask(torch.zeros(len(all_attrs) + 1, 1), all_attrs, target)  # unknown names fail here
    delta = check_delta(delta)
    descriptors, regions, _ = descriptor_info(measure, descriptors)
    lambdas = check_lambdas(lambdas)
    layout = StyleLayout.from_generator(G)
    res = render_resolution(G, measure) if out_resolution in ("auto", None) else int(out_resolution)
    objective = PairObjective(G, measure, layout, lambdas, parser, regions, res, precision=precision)
    src_styles, ref_styles = as_styles(G, source), as_styles(G, reference)
    with torch.no_grad():
        img_src, img_ref = objective.render(src_styles), objective.render(ref_styles)
        c = {"styles_src": src_styles, "flat_src": layout.flatten(src_styles), "flat_ref": layout.flatten(ref_styles),
             "img_src": img_src, "d_src": measure(img_src), "d_ref": measure(img_ref)}
    if init is not None:
        init.check_compatible(G, strict_weights=False)
        start = init.logits.clone()
    else:
        start = initial_logits(all_attrs, layout.n_channels)
    logits = start.to(G.device).requires_grad_(True)
    opt = ranger([logits], lr)
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
                       preselection=f"instant pair transfer of {', '.join(target)}",
                       objective=objective_info(lambdas, background=parser is not None))


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

    def mean_terms_table(self) -> list[str]:
        """The Markdown table of both matrices' mean loss terms over the pairs (compare.md's, the node's report)."""
        s = self.summary
        return (["| loss term | trained (mean) | instant (mean) |", "|---|---|---|"]
                + [f"| {k} | {s['trained'][k]:.6g} | {s['instant'][k]:.6g} |" for k in LOSS_TERMS])


def compare_instant_with_trained(G, measure, matrix: SAT3DMatrix, sources, references, attributes, *, steps: int = 300,
                                 lr: float = 0.01, delta: float = 1.0, parser: RegionParser | None = None,
                                 lambdas: dict | None = None, descriptors=None, out_resolution="auto",
                                 init_from_trained: bool = False,
                                 callback: Callable[[int, SAT3DStep], bool | None] | None = None,
                                 precision: str = "fp32") -> InstantComparison:
    """The trained matrix against an instant (per-pair) matrix, on the same pairs and losses.

    sources: W [N, w_dim] or W+ [N, n_latent, w_dim]; references: the same with N entries (pair
    i = (source i, reference i)) or 1 (used for every source).  attributes: one target set
    (|Omega| >= 1, a summed mask, as train_sat3d and instant_transfer optimise it).  For every
    pair, instant_transfer optimises a matrix (from the usual initialisation, or from the
    trained matrix with init_from_trained=True: then the instant one is never worse on its
    pair, since instant_transfer keeps the best matrix seen, its start included); both are
    scored by sat3d_losses with the same lambdas, parser and render resolution.
    callback(pair_index, step) is instant_transfer's callback (True ends that pair's run). precision: the
    instant optimisation's renders; both matrices are scored in fp32.
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
    delta = check_delta(delta)
    lambdas = check_lambdas(lambdas)
    score = dict(delta=delta, lambdas=lambdas, parser=parser, descriptors=descriptors, out_resolution=out_resolution)
    pairs = []
    for i in range(n):
        src, ref = sources[i : i + 1], references[i : i + 1] if references.shape[0] == n else references[:1]
        hook = None if callback is None else (lambda info, i=i: callback(i, info))
        instant = instant_transfer(G, measure, src, ref, target, steps=steps, lr=lr, delta=delta, lambdas=lambdas,
                                   parser=parser, descriptors=descriptors, init=matrix if init_from_trained else None,
                                   out_resolution=out_resolution, callback=hook, precision=precision)
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
