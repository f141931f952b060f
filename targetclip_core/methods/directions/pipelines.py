"""The target-free methods in one call each, as a node graph or a script runs them.

  latent_direction      one GANSpace / SeFa component as a Direction scaled to a strength; with a `cache`
                        mapping, the PCA (one per generator, sample count and seed, whatever the layers) and
                        the SeFa directions (one list per generator, layers and seed) are computed once
  statistics_file_name  the file a generator / CLIP pair's channel statistics are kept in: named by both
                        identities and weights fingerprints and by a hash of the measurement settings
  folder_statistics     compute_global_statistics into that file in a folder (resumes a partial one,
                        returns a complete one without measuring)
  text_edit             a text -> its StyleSpace edit at strength alpha, the W+ essence of that edit (scaled so
                        strength 1 is the edit) and, for given latents, the edited style codes
  sweep_sheet / text_edit_sheet   the preview sheets: a direction at -s, 0, +s; source | StyleSpace | W+

Every renderer takes `on_batch(done, total, images)` (generators.render's callback), which may raise to stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.fingerprint import cached_fingerprint
from targetclip_core.generators.render import render_latents
from targetclip_core.io.images import captioned_grid
from targetclip_core.methods.directions.common import Direction, span_name, wplus_entries
from targetclip_core.methods.directions.ganspace import DEFAULT_SAMPLES, ganspace_directions, w_pca
from targetclip_core.methods.directions.global_directions import (
    ALPHA,
    BETA,
    GlobalDirection,
    apply_global_direction,
    global_direction,
    global_direction_essence,
)
from targetclip_core.methods.directions.global_statistics import (
    MAX_RESOLUTION,
    N_IMAGES,
    N_STAT_SAMPLES,
    STAT_ALPHA,
    TRUNCATION,
    GlobalStatistics,
    compute_global_statistics,
)
from targetclip_core.methods.directions.prompts import DEFAULT_NEUTRAL
from targetclip_core.methods.directions.sefa import sefa_directions
from targetclip_core.methods.targetclip.essence import Essence, edit_latents

METHODS = ("ganspace", "sefa")
SEFA_AT_ONCE = 16  # SeFa directions computed per cache fill: the next components cost nothing more
OnBatch = Callable[[int, int, torch.Tensor], None]


# --------------------------------------------------------------------------- GANSpace / SeFa


def latent_direction(G, method: str, component: int, layers=None, *, n_samples: int = DEFAULT_SAMPLES, seed: int = 0,
                     strength: float = 1.0, cache: MutableMapping | None = None) -> Direction:
    """Component `component` (0-based) of GANSpace or SeFa on the W+ entries of `layers`, its essence times
    `strength` (1: one standard deviation of sampled W along the direction, both methods' unit).

    The same essence as ganspace_directions(G, k, n_samples, seed, layers)[component] (n_samples: its W
    samples) or sefa_directions(G, k, layers, seed=seed)[component] (SeFa's scale uses its own sample count)
    times strength. `cache`: any mapping kept between calls (keys name the generator by its weights).
    """
    if method not in METHODS:
        raise TargetCLIPError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(component, bool) or not isinstance(component, int) or not 0 <= component < G.w_dim:
        raise TargetCLIPError(f"component {component!r} is out of range: this generator's W has {G.w_dim} "
                              f"dimensions (components 0-{G.w_dim - 1})")
    entries = wplus_entries(G, layers)
    cache = {} if cache is None else cache
    if method == "ganspace":
        key = (cached_fingerprint(G), "ganspace", int(n_samples), int(seed))  # the PCA is the same for every range
        if key not in cache:
            cache[key] = w_pca(G, n_samples, seed)
        found = ganspace_directions(G, k=component + 1, n_samples=n_samples, seed=seed, layers=entries,
                                    pca=cache[key])
    else:
        key = (cached_fingerprint(G), "sefa", tuple(entries), int(seed))
        found = cache.get(key)
        if found is None or len(found) <= component:
            k = min(G.w_dim, max(component + 1, SEFA_AT_ONCE, 2 * len(found or ())))
            found = cache[key] = sefa_directions(G, k=k, layers=entries, seed=seed)
    return scaled(found[component], strength)


def scaled(direction: Direction, strength: float) -> Direction:
    """The direction with its essence times `strength` (name and info say so; the recommended strength stays 1)."""
    strength = float(strength)
    if strength == 1.0:
        return direction
    e = direction.essence
    essence = replace(e, vector=e.vector * strength, name=f"{e.name}_x{strength:g}")
    return Direction(essence, {**direction.info, "strength": strength})


def describe_direction(direction: Direction, n_latent: int) -> str:
    """One line about a direction from its info: method, component, W+ entries and what the method measured."""
    info = direction.info
    span = span_name(list(info.get("layers", [])), n_latent) if info.get("layers") else "no W+ entry"
    text = f"{info.get('method', '?')} component {info.get('component', '?')} on W+ {span}"
    if "explained_variance" in info:
        text += (f": {100 * info['explained_variance']:.2f}% of the W variance (std {info['std']:.4g}; "
                 f"{info['n_samples']} samples, seed {info['seed']})")
    elif "eigenvalue_ratio" in info:
        text += (f": eigenvalue {info['eigenvalue']:.4g} ({100 * info['eigenvalue_ratio']:.2f}% of the trace), "
                 f"scale {info['scale']:.4g}")
    if "strength" in info:
        text += f", x{info['strength']:g}"
    return text


# --------------------------------------------------------------------------- text -> global direction


def statistics_settings(C, *, n_images: int = N_IMAGES, max_resolution: int | None = MAX_RESOLUTION,
                        preprocess: str | None = None) -> dict:
    """The keyword settings of compute_global_statistics a node or script varies, with the engine's other
    defaults written out (so they are part of the file name): pass them on as **settings."""
    return {"n_images": int(n_images), "alpha": STAT_ALPHA, "seed": 0, "truncation": TRUNCATION,
            "n_stat_samples": N_STAT_SAMPLES, "max_resolution": max_resolution, "out_resolution": "auto",
            "preprocess": preprocess or getattr(C, "preprocess", "default")}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-.")[:48] or "x"


def statistics_file_name(G, C, settings: dict) -> str:
    """`<generator>-<weights>_<clip>-<weights>_n<images>-<settings hash>.safetensors`: one file per
    generator / CLIP pair (both by their weights, not only their names) and measurement settings."""
    g, c = G.identity, C.identity
    pretrained = c.get("pretrained") or "random"
    pretrained = Path(pretrained).stem if os.sep in pretrained or "." in pretrained else pretrained
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return (f"{_slug(g.get('arch', 'generator'))}-{g.get('resolution', '?')}px-{cached_fingerprint(G)[:10]}_"
            f"{_slug(c.get('name', 'clip'))}-{_slug(pretrained)}-{cached_fingerprint(C)[:10]}_"
            f"n{settings.get('n_images')}-{digest}.safetensors")


def folder_statistics(G, C, folder: str | os.PathLike, *, n_images: int = N_IMAGES,
                      max_resolution: int | None = MAX_RESOLUTION, batch_size: int = 32,
                      on_progress: Callable[[int, int], None] | None = None) -> tuple[GlobalStatistics, Path]:
    """The pair's statistics kept in `folder` under statistics_file_name: measured (or resumed where a
    stopped run left it) with on_progress(done, total) after every group of channels (it may raise to stop:
    what was measured is kept), or read when complete. Returns (statistics, the file)."""
    settings = statistics_settings(C, n_images=n_images, max_resolution=max_resolution)
    path = Path(folder) / statistics_file_name(G, C, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = compute_global_statistics(G, C, path, batch_size=batch_size, on_progress=on_progress, **settings)
    return stats, path


@dataclass
class TextEdit:
    """A text's edit: the StyleSpace direction, its W+ essence (strength 1 = the edit at alpha) and the
    edited style codes of the latents it was applied to (None without latents)."""

    direction: GlobalDirection
    essence: Direction
    alpha: float
    styles: OrderedDict | None = None

    def describe(self, n_latent: int) -> str:
        info = self.essence.info
        span = span_name(info["layers"], n_latent) if info["layers"] else "no entry"
        return (f"{self.direction.target!r} from {self.direction.neutral!r}: {info['channels']} StyleSpace channels "
                f"(beta {self.direction.beta:g}) at alpha {self.alpha:g}; W+ essence on {span}, least-squares "
                f"residual {info['residual']:.3f}")


def text_edit(G, C, stats: GlobalStatistics, target: str, neutral: str = DEFAULT_NEUTRAL, alpha: float = ALPHA,
              beta: float = BETA, latents: torch.Tensor | None = None) -> TextEdit:
    """global_direction + global_direction_essence (+ apply_global_direction on `latents` W+ [B, n, d]).

    The essence's vector is the least-squares offset times alpha and its recommended strength 1, so applying
    it at strength 1 (Apply Essence, Mix Essences) approximates the StyleSpace edit at alpha."""
    alpha = float(alpha)
    stats.check_pair(G, C)
    direction = global_direction(stats, C, target, neutral, beta=beta, alpha=alpha)
    found = global_direction_essence(G, direction)
    e = found.essence
    essence = replace(e, vector=e.vector * alpha, strength=1.0)
    styles = None
    if latents is not None:
        with torch.no_grad():
            edited = apply_global_direction(G, latents, direction, alpha)
            styles = OrderedDict((k, v.detach()) for k, v in edited.items())
    return TextEdit(direction, Direction(essence, {**found.info, "scaled_by_alpha": True}), alpha, styles)


# --------------------------------------------------------------------------- preview sheets


def sweep_sheet(G, wp: torch.Tensor, essence: Essence, strengths=(-1.0, 0.0, 1.0), labels=None,
                on_batch: OnBatch | None = None) -> torch.Tensor:
    """One captioned image [1, 3, H', len(strengths) * W]: a row per latent of `wp`, a column per strength."""
    strengths = [float(s) for s in strengths]
    essence.check_compatible(G)
    b = essence.to(wp.device)
    cells = torch.stack([edit_latents(wp, b, s) for s in strengths], dim=1).reshape(-1, *wp.shape[1:])
    images = render_latents(G, cells, on_batch=on_batch)
    return captioned_grid(images, len(strengths), labels or [f"{s:+g}" for s in strengths])


def text_edit_sheet(G, wp: torch.Tensor, edit: TextEdit, on_batch: OnBatch | None = None) -> torch.Tensor:
    """Per latent of `wp`: the source, the exact StyleSpace edit, the W+ essence's edit, as one captioned image."""
    cells = []
    with torch.no_grad():
        for i in range(len(wp)):
            w = wp[i : i + 1]
            styles = apply_global_direction(G, w, edit.direction, edit.alpha)
            row = torch.cat([G.synthesis(w), G.synthesis_from_styles(styles),
                             G.synthesis(edit_latents(w, edit.essence.essence.to(w.device), 1.0))])
            cells.append(row)
            if on_batch is not None:
                on_batch(i + 1, len(wp), row)
    return captioned_grid(torch.cat(cells), 3, ["source", "StyleSpace edit", "W+ essence"])
