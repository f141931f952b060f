"""The SAT3D objective on (source, reference) pairs, shared by training and instant transfer:
the loss terms of a mask on a batch of pairs (PairObjective, sat3d_losses), the render size they
use, the optimiser (Ranger) and what a per-step callback receives (SAT3DStep).

The optimiser is Ranger (pytorch_optimizer) at lr 0.01, as the paper, without its gradient
centralisation (see ranger).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from targetclip_core.devices import autocast, resolve_precision, widened
from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout, edit_styles
from targetclip_core.methods.sat3d.descriptors import descriptor_info
from targetclip_core.methods.sat3d.losses import (
    background_loss,
    background_mask,
    check_lambdas,
    loss_ref,
    loss_src,
    probability_loss,
    total_loss,
)
from targetclip_core.methods.sat3d.matrix import attribute_mask
from targetclip_core.methods.sat3d.regions import RegionParser, binary_region


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


class PairObjective:
    """The SAT3D losses of one batch of (source, reference) pairs for a target attribute set.

    reduction: "sum" over attributes and groups (the paper) or "mean" (a variant, see losses).
    """

    def __init__(self, G, measure, layout, lambdas, parser, regions, res, world: int = 1, reduction: str = "sum",
                 precision: str = "fp32"):
        self.G, self.measure, self.layout = G, measure, layout
        self.lambdas, self.parser, self.regions, self.res = lambdas, parser, regions, res
        self.world = world  # > 1: this batch is one process's shard of a global batch
        self.reduction = reduction
        self.precision = precision  # the renders' (devices.PRECISIONS); the measure and the losses stay fp32
        resolve_precision(precision, G.device)

    def render(self, styles) -> torch.Tensor:
        with autocast(self.precision, self.G.device):
            return widened(self.G.synthesis_from_styles(styles, out_resolution=self.res))

    def constants(self, wp_src, wp_ref):
        """Everything that does not depend on the mask, computed without a graph."""
        with torch.no_grad():
            st_src, st_ref = self.G.styles(wp_src), self.G.styles(wp_ref)
            img_src, img_ref = self.render(st_src), self.render(st_ref)
            return {"styles_src": st_src, "flat_src": self.layout.flatten(st_src), "flat_ref": self.layout.flatten(st_ref),
                    "img_src": img_src, "d_src": self.measure(img_src), "d_ref": self.measure(img_ref),
                    "regions_src": {}}  # binary regions of the source, parsed when a target first needs them

    def __call__(self, logits, attributes_all, target, c, delta=1.0) -> dict:
        return self.with_mask(attribute_mask(logits, attributes_all, target), target, c, delta, logits=logits)

    def with_mask(self, mask, target, c, delta=1.0, *, logits) -> dict:
        """The loss terms of the edit by `mask` (m_Omega of `logits`, the whole matrix, which L_prob reads)."""
        flat_edit = edit_styles(c["flat_src"], c["flat_ref"], mask, delta)
        img_edit = self.render(self.layout.unflatten(flat_edit, c["styles_src"]))
        d_edit = self.measure(img_edit)
        terms = {"ref": loss_ref(d_edit, c["d_ref"], target, self.reduction),
                 "src": loss_src(d_edit, c["d_src"], target, self.reduction),
                 "prob": probability_loss(logits)}
        regions = sorted({self.regions[a] for a in target if self.regions.get(a)})
        if self.parser is not None and regions and self.lambdas["bg"]:
            region_src, region_edit = self._regions(c, regions, img_edit)
            normaliser = None
            if self.world > 1:  # divide by the global batch's background pixel count, not this shard's
                normaliser = background_mask(region_src, region_edit).sum()
                torch.distributed.all_reduce(normaliser)
                normaliser = normaliser / self.world
            terms["bg"] = background_loss(img_edit, c["img_src"], region_src, region_edit, normaliser=normaliser)
        else:
            terms["bg"] = img_edit.new_zeros(())
        terms["total"] = total_loss(terms, self.lambdas)
        return terms

    def _regions(self, c, regions, img_edit):
        """Binary masks [B, H, W] of the target attributes' region (their union) on the source and on the edit;
        parsed without a graph: where the attribute lives is never pushed by the loss."""
        with torch.no_grad():
            parsed = c.setdefault("regions_src", {})
            for r in regions:
                if r not in parsed:
                    parsed[r] = binary_region(self.parser, c["img_src"], r)
            region_src = torch.stack([parsed[r] for r in regions]).any(0)
            region_edit = torch.stack([binary_region(self.parser, img_edit, r) for r in regions]).any(0)
        return region_src, region_edit


@torch.no_grad()
def sat3d_losses(G, measure, logits: torch.Tensor, source, reference, attributes, *, delta: float = 1.0,
                 lambdas: dict | None = None, parser: RegionParser | None = None, descriptors=None,
                 out_resolution="auto", reduction: str = "sum") -> dict:
    """The SAT3D loss terms (floats) of one matrix (its logits) on given pairs and target set:
    for evaluating a matrix on held-out pairs, or comparing two matrices."""
    target = [attributes] if isinstance(attributes, str) else list(attributes)
    _, regions, _ = descriptor_info(measure, descriptors)
    layout = StyleLayout.from_generator(G)
    res = render_resolution(G, measure) if out_resolution in ("auto", None) else int(out_resolution)
    objective = PairObjective(G, measure, layout, check_lambdas(lambdas, reduction), parser, regions, res,
                              reduction=reduction)
    c = objective.constants(G.to_wplus(as_styles_input(G, source)), G.to_wplus(as_styles_input(G, reference)))
    terms = objective(logits.to(G.device), list(measure.attributes), target, c, delta)
    return {k: float(v) for k, v in terms.items()}


def as_styles_input(G, latent):
    """W or W+ latents as float on the generator's device (anything else is refused)."""
    if not torch.is_tensor(latent):
        raise TargetCLIPError("sat3d_losses takes W or W+ latents for source and reference")
    return latent.to(G.device).float()


def make_ready(G, measure):
    """Generator and measure (when a module) ready for autograd through them (methods.optimization)."""
    from targetclip_core.methods.optimization import make_autograd_ready

    make_autograd_ready(G)
    if isinstance(measure, nn.Module):
        make_autograd_ready(measure)


def ranger(params, lr):
    """The SAT3D optimiser: Ranger (pytorch_optimizer) at `lr`, without gradient centralisation."""
    from pytorch_optimizer import Ranger

    # no gradient centralisation: it subtracts each attribute row's mean gradient, which is
    # exactly the channel-uniform pull of L_prob (GC is meant for conv/linear weights)
    return Ranger(params, lr=lr, use_gc=False)
