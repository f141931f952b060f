"""StyleCLIP global directions, part 1 (Patashnik et al., ICCV 2021, Sec. 6): what each StyleSpace channel does
in CLIP space, measured once per generator and CLIP and kept in a file.

As the StyleCLIP code computes it (global_directions/GetCode.py, SingleChannel.py, MapTS.GetFs):
  - the mean and std of every style channel over `n_stat_samples` (10^5) W drawn with truncation 0.7;
  - for each channel c of the feature convs up to 128 px (`max_resolution`; toRGB channels are never edited)
    and each of `n_images` (100) of those W: set s_c to mean_c -/+ alpha * std_c (alpha 5), render both,
    embed with CLIP; delta_i(c) = normalised mean over the images of
    normalised(CLIP(+) - CLIP(-)), the CLIP embeddings themselves normalised first.
Channels left out (finer than max_resolution) keep a zero delta, so no text ever selects them.

Renders are made at the smallest size the generator renders that CLIP's input fits in (the project's
convention for CLIP losses, methods.optimization.loss_resolution; `out_resolution=G.resolution` renders at
full size as the original code did).

The file (`.safetensors`, written through io.files.atomic_path every `save_every` channels, when stopped and
at the end) records the generator identity and weights fingerprint and the CLIP identity and fingerprint;
it is refused for another pair, and resumed where it stopped when the same settings are asked again.
`on_progress(done, total)` is called after every group of channels and may raise to stop.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

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
from targetclip_core.methods.directions.common import iter_w, sample_w
from targetclip_core.methods.optimization import loss_resolution

STATISTICS_FORMAT = "targetclip.styleclip-global-statistics"
WHAT = "global-direction statistics file"
STAT_ALPHA = 5.0  # SingleChannel.py: M.alpha = [-5, 5] (in stds)
N_IMAGES = 100
N_STAT_SAMPLES = 100_000
TRUNCATION = 0.7  # GetCode.py: truncation_psi 0.7
MAX_RESOLUTION = 128  # SingleChannel.py: layers "below or equal to 128 resolution"
SETTING_KEYS = ("alpha", "n_images", "seed", "truncation", "n_stat_samples", "max_resolution", "render_resolution",
                "preprocess")


@dataclass
class GlobalStatistics:
    """Per-channel CLIP directions of one generator under one CLIP (complete when done == len(channels))."""

    layout: StyleLayout
    mean: torch.Tensor  # [n] per flat channel (the layout's order)
    std: torch.Tensor  # [n]
    channels: torch.Tensor  # [m] int64: the flat channels measured, in the order they are measured
    deltas: torch.Tensor  # [n, D] delta_i(c), unit rows; zero rows for channels not (yet) measured
    done: int  # how many of `channels` are measured
    generator: dict  # G.identity
    fingerprint: str  # the generator's weights (sat3d.matrix.generator_fingerprint)
    clip: dict  # C.identity
    clip_fingerprint: str
    settings: dict  # SETTING_KEYS -> value

    @property
    def total(self) -> int:
        return len(self.channels)

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    def check_pair(self, G=None, C=None, where: str = "these statistics") -> None:
        """Refuse a generator or CLIP other than the ones the statistics were measured with, naming both."""
        if G is not None:
            theirs = cached_fingerprint(G)
            if theirs != self.fingerprint or StyleLayout.from_generator(G) != self.layout:
                raise TargetCLIPError(f"{where} were measured on another generator ({_describe(self.generator)}, "
                                      f"weights {self.fingerprint[:12]}; this one: {_describe(G.identity)}, weights "
                                      f"{theirs[:12]}): channel meanings differ between networks")
        if C is not None:
            theirs = cached_fingerprint(C)
            if dict(C.identity) != self.clip or theirs != self.clip_fingerprint:
                raise TargetCLIPError(f"{where} were measured with another CLIP ({_clip_name(self.clip)}, weights "
                                      f"{self.clip_fingerprint[:12]}; this one: {_clip_name(C.identity)}, weights "
                                      f"{theirs[:12]})")


def _describe(identity: dict) -> str:
    return f"{identity.get('arch', '?')} {identity.get('resolution', '?')}px"


def _clip_name(identity: dict) -> str:
    return f"{identity.get('name', '?')}/{identity.get('pretrained') or 'random weights'}"


# --------------------------------------------------------------------------- the measurements


def layer_resolution(name: str) -> int | None:
    """The feature-map size of a synthesis layer named 'b<res>.<layer>' (None for any other name)."""
    m = re.match(r"^b(\d+)\.", name)
    return int(m.group(1)) if m else None


def measured_channels(layout: StyleLayout, max_resolution: int | None = MAX_RESOLUTION) -> torch.Tensor:
    """The flat channels of the layers up to `max_resolution` (all with None), in layout order."""
    picked, start = [], 0
    for name, width in layout.layers:
        res = layer_resolution(name)
        if max_resolution is None or res is None or res <= max_resolution:
            picked.extend(range(start, start + width))
        start += width
    if not picked:
        raise TargetCLIPError(f"no StyleSpace layer is at or below {max_resolution} px")
    return torch.tensor(picked, dtype=torch.long)


def style_moments(G, layout: StyleLayout, n: int, seed: int, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [n_channels], std [n_channels]) of the flat style codes of `n` truncated W (population std, as the
    StyleCLIP code's numpy .std)."""
    shift = s1 = s2 = None
    count = 0
    with torch.no_grad():
        for w in iter_w(G, n, seed, truncation):
            flat = layout.flatten(G.styles(G.to_wplus(w)))
            if shift is None:  # sums shifted by the first batch's mean: no cancellation in float32
                shift, s1, s2 = flat.mean(0), torch.zeros_like(flat[0]), torch.zeros_like(flat[0])
            x = flat - shift
            s1 += x.sum(0)
            s2 += x.square().sum(0)
            count += len(x)
    var = (s2 - s1.square() / count) / count
    return (shift + s1 / count).cpu(), var.clamp(min=0).sqrt().cpu()


def channel_deltas(G, C, base_styles, layout: StyleLayout, channels, mean, std, alpha: float = STAT_ALPHA,
                   resolution: int | None = None, preprocess: str | None = None, batch_size: int = 32) -> torch.Tensor:
    """[len(channels), D]: delta_i(c) of each flat channel over the images of `base_styles` ({layer: [n, C]}):
    s_c set to mean_c -/+ alpha * std_c (other codes unchanged), both rendered, CLIP-embedded, and reduced as
    MapTS.GetFs does."""
    base_flat = layout.flatten(base_styles)
    n, k = base_flat.shape[0], len(channels)
    device = base_flat.device
    channels = torch.as_tensor(channels, dtype=torch.long, device=device)
    mean, std = mean.to(device), std.to(device)
    rows = 2 * n * k  # row r: channel r // 2n, sign (r // n) % 2 (0: minus, 1: plus), image r % n
    codes = []
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            r = torch.arange(start, min(rows, start + batch_size), device=device)
            ch, sign, image = channels[r // (2 * n)], ((r // n) % 2) * 2 - 1, r % n
            flat = base_flat[image].clone()
            flat[torch.arange(len(r), device=device), ch] = mean[ch] + sign * alpha * std[ch]
            like = OrderedDict((name, s[image]) for name, s in base_styles.items())
            images = G.synthesis_from_styles(layout.unflatten(flat, like), out_resolution=resolution)
            codes.append(C.encode_image(images, preprocess).float())
    e = F.normalize(torch.cat(codes), dim=-1).view(k, 2, n, -1)
    per_image = F.normalize(e[:, 1] - e[:, 0], dim=-1)
    return F.normalize(per_image.mean(1), dim=-1).cpu()


def compute_global_statistics(G, C, path: str | os.PathLike | None = None, *, n_images: int = N_IMAGES,
                              alpha: float = STAT_ALPHA, seed: int = 0, truncation: float = TRUNCATION,
                              n_stat_samples: int = N_STAT_SAMPLES, max_resolution: int | None = MAX_RESOLUTION,
                              out_resolution="auto", preprocess: str | None = None, batch_size: int = 32,
                              save_every: int = 64, on_progress: Callable[[int, int], None] | None = None
                              ) -> GlobalStatistics:
    """Measure (or, with `path` holding a partial run of the same settings, finish) the statistics.

    path: the `.safetensors` file kept up to date while measuring (None: nothing is written). A complete file
    of the same generator, CLIP and settings is returned without measuring anything.
    n_images / alpha / truncation / n_stat_samples / max_resolution: the StyleCLIP code's 100, 5, 0.7, 10^5,
    128 px. batch_size: images per render. on_progress(done, total): after each group of channels.
    """
    for what, value in (("n_images", n_images), ("n_stat_samples", n_stat_samples), ("batch_size", batch_size),
                        ("save_every", save_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TargetCLIPError(f"{what} must be a positive integer, got {value!r}")
    settings = {"alpha": float(alpha), "n_images": n_images, "seed": int(seed), "truncation": float(truncation),
                "n_stat_samples": n_stat_samples, "max_resolution": max_resolution,
                "render_resolution": loss_resolution(G, C, out_resolution),
                "preprocess": preprocess or getattr(C, "preprocess", "default")}
    layout = StyleLayout.from_generator(G)
    stats = None
    if path is not None and Path(path).is_file():
        stats = load_global_statistics(path, G, C)
        if stats.settings != settings:
            differ = ", ".join(f"{k} {stats.settings.get(k)!r} (asked: {settings[k]!r})" for k in SETTING_KEYS
                               if stats.settings.get(k) != settings[k])
            raise TargetCLIPError(f"{path}: statistics measured with other settings ({differ}): delete the file, "
                                  "pick another or ask for its settings")
        if stats.complete:
            return stats
    base = G.styles(G.to_wplus(sample_w(G, n_images, seed, truncation)))  # the first images of the moments' draw
    if stats is None:
        mean, std = style_moments(G, layout, n_stat_samples, seed, truncation)
        dim = _embedding_dim(G, C, base, settings)
        stats = GlobalStatistics(layout, mean, std, measured_channels(layout, max_resolution),
                                 torch.zeros(layout.n_channels, dim), 0, dict(G.identity), cached_fingerprint(G),
                                 dict(C.identity), cached_fingerprint(C), settings)
    group = max(1, batch_size // (2 * n_images))  # channels per step: a step renders about batch_size images
    saved = stats.done
    try:
        while not stats.complete:
            todo = stats.channels[stats.done:stats.done + group]
            stats.deltas[todo] = channel_deltas(G, C, base, layout, todo, stats.mean, stats.std, alpha,
                                                settings["render_resolution"], settings["preprocess"], batch_size)
            stats.done += len(todo)
            if path is not None and (stats.done - saved >= save_every or stats.complete):
                save_global_statistics(path, stats)
                saved = stats.done
            if on_progress is not None:
                on_progress(stats.done, stats.total)
    finally:  # stopped (a raising callback, Ctrl-C): keep what was measured, so a rerun resumes here
        if path is not None and stats.done > saved:
            save_global_statistics(path, stats)
    return stats


def _embedding_dim(G, C, base, settings) -> int:
    one = OrderedDict((name, s[:1]) for name, s in base.items())
    with torch.no_grad():
        image = G.synthesis_from_styles(one, out_resolution=settings["render_resolution"])
        return int(C.encode_image(image, settings["preprocess"]).shape[-1])


def time_global_statistics(G, C, n_images: int = N_IMAGES, channels: int = 4, batch_size: int = 32,
                           out_resolution="auto", max_resolution: int | None = MAX_RESOLUTION, seed: int = 0) -> dict:
    """What the measurement costs on this machine, without running it: the seconds per channel over `channels`
    channels (after one untimed warm-up channel) and that times the channels a full run measures.

    The cost is linear in the channels measured and in n_images (2 * n_images renders + CLIP per channel); at
    1024 px with max_resolution 128 an FFHQ StyleGAN2 has 5,376 such channels (6,048 with None)."""
    layout = StyleLayout.from_generator(G)
    wanted = measured_channels(layout, max_resolution)
    res = loss_resolution(G, C, out_resolution)
    base = G.styles(G.to_wplus(sample_w(G, n_images, seed, TRUNCATION)))
    mean, std = style_moments(G, layout, 1024, seed, TRUNCATION)  # enough for timing; a run uses n_stat_samples
    picked = wanted[: channels + 1]
    channel_deltas(G, C, base, layout, picked[:1], mean, std, resolution=res, batch_size=batch_size)  # warm-up
    _sync(G.device)
    start = time.perf_counter()
    for c in picked[1:]:
        channel_deltas(G, C, base, layout, c[None], mean, std, resolution=res, batch_size=batch_size)
    _sync(G.device)
    per_channel = (time.perf_counter() - start) / max(len(picked) - 1, 1)
    return {"seconds_per_channel": per_channel, "channels": len(wanted), "n_images": n_images,
            "render_resolution": res, "estimated_seconds": per_channel * len(wanted)}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the file


def save_global_statistics(path: str | os.PathLike, stats: GlobalStatistics) -> Path:
    """Write the statistics atomically (io.files.atomic_path through save_safetensors)."""
    tensors = {"deltas": stats.deltas.float().contiguous(), "mean": stats.mean.float().contiguous(),
               "std": stats.std.float().contiguous(), "channels": stats.channels.long().contiguous()}
    meta = {"format": STATISTICS_FORMAT, "format_version": "1", "generator": json.dumps(stats.generator),
            "fingerprint": stats.fingerprint, "clip": json.dumps(stats.clip),
            "clip_fingerprint": stats.clip_fingerprint,
            "layout": json.dumps(stats.layout.to_json()), "settings": json.dumps(stats.settings, sort_keys=True),
            "done": str(int(stats.done))}
    return save_safetensors(tensors, path, meta)


def load_global_statistics(path: str | os.PathLike, G=None, C=None) -> GlobalStatistics:
    """Read a statistics file, every entry checked; with G / C, refuse it for another generator / CLIP."""
    p = Path(path)
    if not p.is_file():
        raise TargetCLIPError(f"{p}: no such {WHAT}")
    tensors, meta = read_safetensors(p, WHAT)
    if meta.get("format") != STATISTICS_FORMAT:
        raise TargetCLIPError(f"{p}: a safetensors file, but not {WHAT} (format={meta.get('format')!r})")
    try:
        layout = StyleLayout.from_json(meta_json(meta, "layout", list, p, WHAT))
    except (TypeError, ValueError) as e:
        raise TargetCLIPError(f"{p}: the {WHAT}'s layout is not a list of [layer, channels] ({e})") from None
    n = layout.n_channels
    deltas = require_tensor(tensors, "deltas", p, WHAT, floating=True, ndim=2)
    mean = require_tensor(tensors, "mean", p, WHAT, floating=True, ndim=1)
    std = require_tensor(tensors, "std", p, WHAT, floating=True, ndim=1)
    channels = require_tensor(tensors, "channels", p, WHAT, dtype=torch.int64, ndim=1)
    if deltas.shape[0] != n or mean.shape[0] != n or std.shape[0] != n:
        raise TargetCLIPError(f"{p}: the {WHAT} holds {deltas.shape[0]} deltas, {mean.shape[0]} means and "
                              f"{std.shape[0]} stds for a layout of {n} channels")
    if len(channels) and (int(channels.min()) < 0 or int(channels.max()) >= n):
        raise TargetCLIPError(f"{p}: the {WHAT} names channels outside [0, {n})")
    done = meta_int(meta, "done", p, WHAT, minimum=0)
    if done > len(channels):
        raise TargetCLIPError(f"{p}: the {WHAT} claims {done} channels measured of {len(channels)}")
    settings = meta_json(meta, "settings", dict, p, WHAT)
    missing = [k for k in SETTING_KEYS if k not in settings]
    if missing:
        raise TargetCLIPError(f"{p}: the {WHAT}'s settings lack {', '.join(missing)}")
    stats = GlobalStatistics(layout, mean.float(), std.float(), channels, deltas.float(), done,
                             meta_json(meta, "generator", dict, p, WHAT), meta_str(meta, "fingerprint", p, WHAT),
                             meta_json(meta, "clip", dict, p, WHAT), meta_str(meta, "clip_fingerprint", p, WHAT),
                             settings)
    stats.check_pair(G, C, str(p))
    return stats
