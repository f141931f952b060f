"""SAT3D channel pre-selection for "complex" attributes (Zhai et al. 2024, Sec. 3.2), by gradient statistics.

The statistics pass (gradient_statistics).  For each of n_samples images drawn from the training latent bank
with the run's seed: its flat StyleSpace codes s (`layout.flatten(G.styles(wp))`; toRGB and super-resolution
codes are left out, as everywhere in SAT3D) are a leaf requiring grad.  R copies of s, R = the distinct regions
the descriptor set names (faces: hair, eyes, face, lower_face, glasses, mouth), are rendered in one batch at the
training render size; copy r's gradient map (grad_output) is region r's BINARY mask on the image
(regions.binary_region; the same mask on the 3 colour channels), so one backward of the batch gives
d<mask_r, I>/ds for every channel and every region: the paper's "one backward per region", in one call.  (R copies
rather than retain_graph: the hand-written backward of the synthesis layers, generators.synthesis_grad, allows one
backward per graph.)  |gradient| per (region, channel) is divided by the mask's pixel count.  A region absent from
an image (empty mask) does not count for that image: the mean per region is over the images where it was present
(0 where it never was).  Those means are then normalised along the region dimension: per channel, divided by their
sum over the regions (0 for a channel no region's gradient reaches), so a channel's R values say which share of its
size-normalised influence falls in each region.

Selection (select_channels): attribute t tied to region r takes the k_t channels with the largest value for r.
Ties (e.g. with a single region, where every reached channel's value is 1) are broken by the un-normalised mean for
r, then by channel index.  k_t and d_t come from the descriptor file ("preselect": {"k": ..., "d": ...}; defaults
3500 / 1.8, the paper's Hairstyle).  The paper's k is a count for its generator (PAPER_CHANNELS); a generator with
fewer channels gets it scaled (scaled_k).  M's initialisation from the selection is matrix.initial_logits: zeros,
M[t, i] = d_t on the channels pre-selected for t, M[others, i] = 1 on the rest.

Persistence: PreselectStatistics holds the per-region sums and counts, the images done, and what they were computed
for (regions, n_samples, seed, render size, generator fingerprint).  train_sat3d keeps them in its checkpoint (written
after every image of the pass, so an interrupted pass resumes where it stopped) and can reuse a statistics file
(save_preselect_statistics / load_preselect_statistics: safetensors with JSON metadata, written atomically).

Decisions where the paper is silent:
  - DEFAULT_SAMPLES = 32 images: the pass averages |gradient| per region over images; each image costs one render
    and one backward of R copies (6 for faces), about one training step of batch 4 (4 edits rendered with their
    backward).  32 images give every common face region 32 samples (a rarer one such as glasses a few) for a few
    dozen steps' time, small beside a run's thousands of steps (the paper trains 300k).
  - The mask is the parser's hard parse of the rendered image itself (copy 0), taken as a constant: no gradient
    flows through the parser.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.fingerprint import cached_fingerprint
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.io.safetensors_files import (
    meta_int,
    meta_json,
    meta_str,
    read_safetensors,
    require_tensor,
    save_safetensors,
)
from targetclip_core.methods.sat3d.descriptors import DEFAULT_PRESELECT_D, DEFAULT_PRESELECT_K
from targetclip_core.methods.sat3d.regions import RegionParser, binary_region

DEFAULT_SAMPLES = 32
# The StyleSpace channel count of the paper's generator, which its k_t (3500 for Hairstyle) is a count of: EG3D FFHQ
# 512's tri-plane backbone without its toRGB codes and the super-resolution module's codes, i.e.
# StyleLayout.from_generator(EG3DGenerator(bench.benchmarks.ffhq512_eg3d_config())).n_channels.
PAPER_CHANNELS = 5760
STATISTICS_FORMAT = "targetclip.sat3d.preselect-statistics"


@dataclass
class PreselectStatistics:
    """The gradient statistics of a pass (complete when done == n_samples) and what they were computed for."""

    regions: list[str]
    sums: torch.Tensor  # [R, n] float64: sum over the images where region r was present of |d/ds| / mask size
    counts: torch.Tensor  # [R] int64: images where region r was present
    done: int  # images accumulated so far (the first `done` of the pass's draw)
    n_samples: int
    seed: int
    resolution: int | None  # the render size of the masks and gradients (None: the generator's full size)
    fingerprint: str  # matrix.generator_fingerprint of the generator

    @classmethod
    def empty(cls, regions, n_channels: int, n_samples: int, seed: int, resolution, fingerprint: str):
        """Statistics of no image yet."""
        return cls(list(regions), torch.zeros(len(regions), n_channels, dtype=torch.float64),
                   torch.zeros(len(regions), dtype=torch.long), 0, int(n_samples), int(seed),
                   None if resolution is None else int(resolution), fingerprint)

    @property
    def complete(self) -> bool:
        return self.done >= self.n_samples

    def means(self) -> torch.Tensor:
        """[R, n]: the mean size-normalised |gradient| per region over the images where it was present (0 if none)."""
        return self.sums / self.counts.clamp(min=1)[:, None].double()

    def values(self) -> torch.Tensor:
        """[R, n]: the means normalised along the region dimension (per channel divided by the sum over regions;
        0 for a channel with no gradient in any region)."""
        means = self.means()
        total = means.sum(0, keepdim=True)
        return torch.where(total > 0, means / total.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(means))

    def to_state(self) -> dict:
        """Plain values and tensors (what a checkpoint stores)."""
        return {"regions": list(self.regions), "sums": self.sums.clone(), "counts": self.counts.clone(),
                "done": self.done, "n_samples": self.n_samples, "seed": self.seed, "resolution": self.resolution,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_state(cls, state: dict) -> PreselectStatistics:
        return cls(list(state["regions"]), state["sums"].double().cpu(), state["counts"].long().cpu(),
                   int(state["done"]), int(state["n_samples"]), int(state["seed"]), state["resolution"],
                   str(state["fingerprint"]))

    def check_same_pass(self, wanted: PreselectStatistics, where) -> None:
        """Refuse statistics of another pass than `wanted` describes (generator, regions, seed, images, render size)."""
        if self.fingerprint != wanted.fingerprint or self.sums.shape[1] != wanted.sums.shape[1]:
            raise TargetCLIPError(f"{where}: pre-selection statistics of another generator (weights fingerprint "
                                  f"{self.fingerprint[:12]}, {self.sums.shape[1]} channels; this one is "
                                  f"{wanted.fingerprint[:12]}, {wanted.sums.shape[1]} channels): delete it or pick "
                                  "another file")
        if (self.regions, self.seed, self.n_samples, self.resolution) != (
                wanted.regions, wanted.seed, wanted.n_samples, wanted.resolution):
            raise TargetCLIPError(f"{where}: pre-selection statistics of another pass ({self.settings()}) than this "
                                  f"run's ({wanted.settings()}): delete it, pick another file or use that pass's "
                                  "settings")

    def settings(self) -> str:
        """What the pass was run with, as text."""
        return (f"regions {', '.join(self.regions)}; seed {self.seed}; {self.n_samples} images; "
                f"render size {self.resolution or 'full'}")


def statistics_regions(descriptors) -> list[str]:
    """The distinct regions a descriptor set names, in the order of its attributes."""
    return list(dict.fromkeys(a.region for a in descriptors.attributes if a.region)) if descriptors else []


def preselect_plan(descriptors) -> dict[str, tuple[str, int, float]]:
    """{complex attribute with a region: (region, k_t, d_t)} of a descriptor set."""
    if not descriptors:
        return {}
    return {a.name: (a.region, int(getattr(a, "preselect_k", DEFAULT_PRESELECT_K)),
                     float(getattr(a, "preselect_d", DEFAULT_PRESELECT_D)))
            for a in descriptors.attributes if a.complex and a.region}


def scaled_k(k: int, n_channels: int) -> int:
    """k_t for a generator of n_channels: the paper's k (a count of PAPER_CHANNELS) scaled down to a generator with
    fewer channels, round(k * n / PAPER_CHANNELS); never more than n."""
    if n_channels < PAPER_CHANNELS:
        k = round(k * n_channels / PAPER_CHANNELS)
    return max(0, min(int(k), n_channels))


def statistics_image(G, layout: StyleLayout, parser: RegionParser, regions: list[str], wp: torch.Tensor,
                     out_resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's (|d/ds| / mask size [R, n] float64 on the CPU, region present [R] bool) for W+ latents wp [1, ...].

    One render of R copies of the codes and one backward with the R binary masks as grad_outputs."""
    with torch.no_grad():
        styles = G.styles(wp)
    codes = layout.flatten(styles).detach().repeat(len(regions), 1).requires_grad_(True)  # [R, n], copy r for region r
    images = G.synthesis_from_styles(layout.unflatten(codes, styles), out_resolution=out_resolution)
    image = images[:1].detach()
    masks = torch.stack([binary_region(parser, image, r)[0].to(images.device) for r in regions])  # [R, H, W] bool
    grad_maps = masks[:, None].to(images.dtype).expand_as(images)  # the same mask on the 3 colour channels
    (grad,) = torch.autograd.grad(images, codes, grad_maps)
    sizes = masks.flatten(1).sum(1)
    per_pixel = grad.detach().abs().double().cpu() / sizes.clamp(min=1).double().cpu()[:, None]
    return per_pixel, (sizes > 0).cpu()


# callers may sit inside no_grad or inference_mode (ComfyUI runs every node in inference mode)
@torch.inference_mode(False)
@torch.enable_grad()
def gradient_statistics(G, layout: StyleLayout, latent_bank: torch.Tensor, parser: RegionParser, regions: list[str],
                        n_samples: int = DEFAULT_SAMPLES, seed: int = 0, out_resolution: int | None = None,
                        resume: PreselectStatistics | None = None,
                        on_image: Callable[[PreselectStatistics], None] | None = None) -> PreselectStatistics:
    """The statistics pass over min(n_samples, len(latent_bank)) images of the bank (drawn with `seed`).

    resume: statistics of the same pass stopped early (they are checked and continued; complete ones are returned
    without a generator call).  on_image(statistics) is called after every image (a caller saves them there, and may
    raise to stop: what was accumulated before stays valid)."""
    n = min(int(n_samples), len(latent_bank))
    stats = PreselectStatistics.empty(regions, layout.n_channels, n, seed, out_resolution, cached_fingerprint(G))
    if resume is not None:
        resume.check_same_pass(stats, "resumed pre-selection")
        stats = resume
    pick = torch.randperm(len(latent_bank), generator=torch.Generator().manual_seed(seed))[:n]
    while not stats.complete:
        wp = G.to_wplus(latent_bank[pick[stats.done : stats.done + 1]])
        per_pixel, present = statistics_image(G, layout, parser, stats.regions, wp, out_resolution)
        stats.sums[present] += per_pixel[present]
        stats.counts += present.long()
        stats.done += 1
        if on_image is not None:
            on_image(stats)
    return stats


def select_channels(stats: PreselectStatistics, plan: dict[str, tuple[str, int, float]]) -> dict[str, torch.Tensor]:
    """{attribute: the scaled k_t channels with the largest normalised value for its region (sorted indices)}; none for
    an attribute whose region was in none of the images."""
    values, means = stats.values(), stats.means()
    n = stats.sums.shape[1]
    out = {}
    for attr, (region, k, _) in plan.items():
        r = stats.regions.index(region)
        if not int(stats.counts[r]):
            out[attr] = torch.zeros(0, dtype=torch.long)
            continue
        order = torch.argsort(means[r], descending=True, stable=True)  # ties of the value: the larger mean first
        order = order[torch.argsort(values[r][order], descending=True, stable=True)]
        out[attr] = order[: scaled_k(k, n)].sort().values
    return out


def describe_preselection(stats: PreselectStatistics, plan: dict, channels: dict, source: str = "") -> str:
    """The matrix's `preselection` text: per attribute its channels, k and d, then how the statistics were made."""
    n = stats.sums.shape[1]
    images = f"{stats.done} image" + ("" if stats.done == 1 else "s")
    parts = []
    for attr, (region, k, d) in plan.items():
        got = len(channels[attr])
        if not int(stats.counts[stats.regions.index(region)]):
            parts.append(f"{attr}: {got} channels (region {region} in none of the {images})")
            continue
        if n < PAPER_CHANNELS:
            how = f" (k {k} scaled by this generator's {n} / the paper's {PAPER_CHANNELS} channels)"
        elif k > n:
            how = f" (k {k} capped at the generator's {n} channels)"
        else:
            how = ""
        parts.append(f"{attr}: {got} channels{how}, d {d:g}")
    size = f" at {stats.resolution} px" if stats.resolution else ""
    parts.append(f"gradient statistics over {images}{size} (regions {', '.join(stats.regions)})"
                 + (f" from {source}" if source else ""))
    return "; ".join(parts)


@dataclass
class Preselection:
    """What pre-selection gives training: the channels and d_t per attribute, the statistics and a summary."""

    channels: dict  # attribute -> LongTensor of flat channel indices
    strengths: dict  # attribute -> d_t
    statistics: PreselectStatistics
    summary: str


def preselect_channels(G, layout: StyleLayout, latent_bank: torch.Tensor, parser: RegionParser, plan: dict,
                       regions: list[str], *, n_samples: int = DEFAULT_SAMPLES, seed: int = 0,
                       out_resolution: int | None = None, resume: dict | None = None,
                       statistics_file: str | os.PathLike | None = None, write_file: bool = True,
                       on_image: Callable[[PreselectStatistics], None] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> Preselection:
    """Pre-select channels for the attributes of `plan` ({attribute: (region, k_t, d_t)}, see preselect_plan) from the
    gradient statistics over `regions`.

    statistics_file: when it exists, its statistics are used (checked against this generator, the regions, seed,
      n_samples and render size; no generator call); otherwise the pass runs and (with write_file) writes it.
    resume: a checkpoint's statistics state (PreselectStatistics.to_state) of the same pass, continued.
    on_image(statistics) after every image (train_sat3d writes its checkpoint there), then progress(done, total);
      progress is also called once before the first image.  Either may raise to stop the pass.
    """
    if int(n_samples) < 1:
        raise TargetCLIPError(f"pre-selection needs at least 1 image for its gradient statistics, got n_samples "
                              f"{n_samples}")
    wanted = PreselectStatistics.empty(regions, layout.n_channels, min(int(n_samples), len(latent_bank)), seed,
                                       out_resolution, cached_fingerprint(G))
    source = ""
    if statistics_file is not None and Path(statistics_file).is_file():
        stats = load_preselect_statistics(statistics_file)
        stats.check_same_pass(wanted, statistics_file)
        source = str(statistics_file)
    else:
        def after_image(stats):
            if on_image is not None:
                on_image(stats)
            if progress is not None:
                progress(stats.done, stats.n_samples)

        resumed = PreselectStatistics.from_state(resume) if resume else None
        if resumed is not None:
            resumed.check_same_pass(wanted, "the training checkpoint")
        if progress is not None:
            progress(resumed.done if resumed else 0, wanted.n_samples)
        stats = gradient_statistics(G, layout, latent_bank, parser, regions, n_samples, seed, out_resolution,
                                    resume=resumed, on_image=after_image)
        if statistics_file is not None and write_file:
            save_preselect_statistics(statistics_file, stats)
    channels = select_channels(stats, plan)
    strengths = {attr: d for attr, (_, _, d) in plan.items()}
    return Preselection(channels, strengths, stats, describe_preselection(stats, plan, channels, source))


def save_preselect_statistics(path: str | os.PathLike, stats: PreselectStatistics) -> Path:
    """Write statistics as safetensors (sums, counts) with JSON metadata, atomically and the same bytes for the same
    statistics."""
    meta = {"format": STATISTICS_FORMAT, "format_version": "1", "regions": json.dumps(stats.regions),
            "done": str(stats.done), "n_samples": str(stats.n_samples), "seed": str(stats.seed),
            "resolution": json.dumps(stats.resolution), "fingerprint": stats.fingerprint}
    tensors = {"sums": stats.sums.double().contiguous(), "counts": stats.counts.long().contiguous()}
    return save_safetensors(tensors, path, meta)


def load_preselect_statistics(path: str | os.PathLike) -> PreselectStatistics:
    """Read a statistics file written by save_preselect_statistics (header checked, sums finite, every entry of its
    type and the tensors of the shapes the regions give)."""
    p = Path(path)
    what = "SAT3D pre-selection statistics"
    tensors, meta = read_safetensors(p, what)
    if meta.get("format") != STATISTICS_FORMAT:
        raise TargetCLIPError(f"{p}: not a SAT3D pre-selection statistics file (format={meta.get('format')!r})")
    state = {"sums": require_tensor(tensors, "sums", p, what, dtype=torch.float64, ndim=2),
             "counts": require_tensor(tensors, "counts", p, what, dtype=torch.int64, ndim=1),
             "regions": meta_json(meta, "regions", list, p, what), "done": meta_int(meta, "done", p, what, minimum=0),
             "n_samples": meta_int(meta, "n_samples", p, what, minimum=1), "seed": meta_int(meta, "seed", p, what),
             "resolution": meta_json(meta, "resolution", (int, type(None)), p, what),
             "fingerprint": meta_str(meta, "fingerprint", p, what)}
    return PreselectStatistics.from_state(check_statistics_state(state, p))


def check_statistics_state(state, where) -> dict:
    """Refuse statistics (a file's or a checkpoint's PreselectStatistics.to_state) whose fields are not of their types
    and shapes: distinct region names, sums [R, n] float >= 0 and finite, counts [R] whole numbers in 0..done,
    0 <= done <= n_samples, a render size > 0 or None, a fingerprint string."""
    def bad(why: str):
        return TargetCLIPError(f"{where}: unusable pre-selection statistics ({why}): delete them to run the pass again")

    if not isinstance(state, dict):
        raise bad(f"{type(state).__name__}, not a dict of statistics")
    missing = [k for k in ("regions", "sums", "counts", "done", "n_samples", "seed", "resolution", "fingerprint")
               if k not in state]
    if missing:
        raise bad(f"no {', '.join(missing)}")
    regions, sums, counts = state["regions"], state["sums"], state["counts"]
    whole = {k: state[k] for k in ("done", "n_samples", "seed")}
    if not isinstance(regions, list) or not all(isinstance(r, str) and r for r in regions) or len(set(regions)) != len(regions):
        raise bad(f"regions {str(regions)[:80]} are not distinct names")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in whole.values()):
        raise bad(f"done / n_samples / seed must be whole numbers, got {whole}")
    if not 0 <= whole["done"] <= whole["n_samples"]:
        raise bad(f"{whole['done']} of {whole['n_samples']} images done")
    resolution = state["resolution"]
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise bad(f"render size {resolution!r}")
    if not isinstance(state["fingerprint"], str):
        raise bad("the generator fingerprint is not a string")
    if not torch.is_tensor(sums) or not sums.is_floating_point() or sums.shape[:1] != (len(regions),) or sums.dim() != 2:
        raise bad(f"sums must be a float tensor [{len(regions)} regions, channels], got "
                  f"{list(sums.shape) if torch.is_tensor(sums) else type(sums).__name__}")
    if not bool(torch.isfinite(sums).all()) or bool((sums < 0).any()):
        raise bad("sums of |gradient| hold NaN, infinite or negative values")
    if not torch.is_tensor(counts) or counts.is_floating_point() or counts.shape != (len(regions),):
        raise bad(f"counts must be whole numbers [{len(regions)} regions], got "
                  f"{list(counts.shape) if torch.is_tensor(counts) else type(counts).__name__}")
    if bool((counts < 0).any()) or bool((counts > whole["done"]).any()):
        raise bad(f"image counts {counts.tolist()} outside 0..{whole['done']}")
    return state
