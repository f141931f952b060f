"""Essences: the W+ offset b that carries a target's look, how to apply, combine and store it.

An essence is applied as G(w + strength * b) (TargetCLIP, Sec. 4), optionally only on a
range of W+ entries.  Files are `.safetensors` (vector, optional target thumbnail and
per-source coefficients; metadata: generator identity, CLIP model, losses, steps,
recommended strength).  The official TargetCLIP directions (`.npy`, (1, 18, 512)) import
directly.  Files are written the same byte for byte for the same essence and read through
io.safetensors_files (header checked against the file, tensors finite, metadata typed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.formats.npy import read_npy
from targetclip_core.io.safetensors_files import (
    check_finite,
    meta_float,
    meta_int,
    meta_json,
    meta_number_lists,
    meta_str,
    read_safetensors,
    require_tensor,
    save_safetensors,
)

ESSENCE_FORMAT = "targetclip.essence"
LAYER_RANGES = ("all", "coarse", "middle", "fine")
MAX_LAYER_INDEX = 1023  # far above any W+ (18 entries at 1024 px)
MAX_ESSENCE_NPY_BYTES = 64 << 20  # an official direction of a 1024px generator is 18 x 512 floats (74 KB as float64)


@dataclass
class Essence:
    vector: torch.Tensor  # b, [1, n_latent, w_dim]
    generator: dict  # identity of the generator it was made for (StyleGAN2Generator.identity)
    clip: dict | None = None  # CLIP model used to find it
    thumbnail: torch.Tensor | None = None  # target image, uint8 [H, W, 3]
    losses: dict = field(default_factory=dict)  # term -> per-step history
    steps: int = 0
    strength: float = 1.0  # recommended strength
    name: str = ""
    source: str = "optimized"  # optimized | official-npy | encoder | mix
    coefficients: torch.Tensor | None = None  # learned per-source coefficients, if any

    def __post_init__(self):
        v = self.vector
        if not torch.is_tensor(v) or v.dim() != 3 or v.shape[0] != 1:
            raise LatentError(f"an essence vector has shape [1, n_latent, w_dim], got {list(getattr(v, 'shape', []))}")
        if not torch.isfinite(v).all():
            raise LatentError("essence vector contains NaN or infinite values")

    @property
    def n_latent(self) -> int:
        return self.vector.shape[1]

    @property
    def w_dim(self) -> int:
        return self.vector.shape[2]

    def to(self, device) -> "Essence":
        return replace(self, vector=self.vector.to(device))

    def check_compatible(self, G) -> None:
        """Refuse an essence made for another generator layout, with both layouts named."""
        mine, theirs = self.generator or {}, G.identity
        shape_ok = (self.n_latent, self.w_dim) == (theirs["n_latent"], theirs["w_dim"])
        res_ok = mine.get("resolution") in (None, theirs["resolution"])
        if not (shape_ok and res_ok):
            raise LatentError(
                f"essence {self.name or ''} was made for a {_describe(mine, self)} generator; this one is "
                f"{_describe(theirs)}: W+ offsets do not carry over between generator layouts"
            )

    # arithmetic: weighted sums and negation stay essences of the same generator
    def __mul__(self, k: float) -> "Essence":
        return replace(self, vector=self.vector * float(k), source="mix", name=f"{k:g}*{self.name}")

    __rmul__ = __mul__

    def __neg__(self) -> "Essence":
        return self * -1.0

    def __add__(self, other: "Essence") -> "Essence":
        return mix_essences([self, other])


def target_thumbnails(targets: torch.Tensor, size: int = 64) -> np.ndarray:
    """The small uint8 [T, size, size, 3] previews of target images that essence files carry."""
    from targetclip_core.io.images import to_uint8

    small = F.interpolate(targets.detach().float().cpu(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return to_uint8(small)


def _describe(identity: dict, essence: Essence | None = None) -> str:
    res = identity.get("resolution", "?")
    n = identity.get("n_latent", essence.n_latent if essence else "?")
    w = identity.get("w_dim", essence.w_dim if essence else "?")
    return f"{res}px, {n}x{w} W+"


def mix_essences(essences, weights=None) -> Essence:
    """Weighted sum of essences made for the same generator (weights default to 1 each)."""
    essences = list(essences)
    if not essences:
        raise TargetCLIPError("mix_essences needs at least one essence")
    weights = [1.0] * len(essences) if weights is None else [float(w) for w in weights]
    if len(weights) != len(essences):
        raise TargetCLIPError(f"{len(essences)} essences but {len(weights)} weights")
    first = essences[0]
    for e in essences[1:]:
        if e.vector.shape != first.vector.shape or e.generator.get("resolution") != first.generator.get("resolution"):
            raise LatentError(f"cannot mix essences of different generators ({_describe(first.generator, first)} vs {_describe(e.generator, e)})")
    vector = sum(w * e.vector.to(first.vector.device) for w, e in zip(weights, essences))
    name = " + ".join(f"{w:g}*{e.name or '?'}" for w, e in zip(weights, essences))
    strength = sum(abs(w) * e.strength for w, e in zip(weights, essences)) / max(sum(abs(w) for w in weights), 1e-8)
    return Essence(vector=vector, generator=dict(first.generator), clip=first.clip, name=name, source="mix", strength=strength)


def parse_layer_range(text) -> str | list[int]:
    """A layer range as a user types it: "" or "all"; range names, comma separated ("coarse", "middle,fine");
    or W+ indices and closed ranges ("0-5", "0-3,8"). Returns "all", the names, or sorted unique indices
    (checked against a generator later, by wplus_entries). Names and indices do not mix."""
    text = str(text or "").strip().lower()
    if not text:
        return "all"
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if any(c.isalpha() for c in text):
        unknown = [p for p in parts if p not in LAYER_RANGES]
        if unknown:
            raise TargetCLIPError(f"cannot read layers {text!r}: {', '.join(map(repr, unknown))} is not one of "
                                  f"{', '.join(LAYER_RANGES)}; give names or W+ indices like 0-5")
        return "all" if "all" in parts else ",".join(parts)
    out: set[int] = set()
    for part in parts:
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise TargetCLIPError(f"cannot read layers {text!r}: {part!r} is not an index or a range like 0-5 "
                                  "(no negative numbers)") from None
        if b < a:
            raise TargetCLIPError(f"cannot read layers {text!r}: {part!r} runs backwards (write {b}-{a})")
        if b > MAX_LAYER_INDEX:  # W+ has at most a few dozen entries: '0-99999999' is a typo, not a range
            raise TargetCLIPError(f"cannot read layers {text!r}: index {b} is beyond any generator's W+ entries")
        out.update(range(a, b + 1))
    return sorted(out)


def layer_mask(n_latent: int, layers=None) -> torch.Tensor:
    """[n_latent] 0/1 mask of the W+ entries an edit touches.

    layers: None or "all"; "coarse" (entries 0-3: pose, face shape), "middle" (4-7:
    features, hair style), "fine" (8+: colour, texture) — the StyleGAN convention for
    18 entries, kept by index for smaller generators; or explicit indices / a range.
    """
    mask = torch.zeros(n_latent)
    if layers is None or layers == "all":
        mask[:] = 1
    elif isinstance(layers, str):
        spans = {"coarse": (0, 4), "middle": (4, 8), "fine": (8, n_latent)}
        names = [p.strip() for p in layers.split(",") if p.strip()]
        for name in names:
            if name not in spans:
                raise TargetCLIPError(f"unknown layer range {name!r}: use {', '.join(LAYER_RANGES)} or indices")
            lo, hi = spans[name]
            mask[lo:min(hi, n_latent)] = 1
        if not mask.any():
            raise TargetCLIPError(f"layer range {layers!r} selects no W+ entry of a generator with {n_latent} entries")
    else:
        idx = list(layers)
        bad = [i for i in idx if not 0 <= int(i) < n_latent]
        if bad:
            raise TargetCLIPError(f"layer indices {bad} out of range for {n_latent} W+ entries")
        mask[[int(i) for i in idx]] = 1
    return mask


def edit_latents(wp: torch.Tensor, essence: Essence, strength: float = 1.0, layers=None) -> torch.Tensor:
    """w + strength * b (on the chosen W+ entries): [B, n_latent, w_dim]."""
    if wp.dim() != 3 or wp.shape[1:] != essence.vector.shape[1:]:
        raise LatentError(
            f"latents of shape {list(wp.shape)} do not fit essence {essence.name!r} "
            f"made for {_describe(essence.generator, essence)}"
        )
    b = essence.vector.to(wp.device, wp.dtype)
    if layers is not None and layers != "all":
        b = b * layer_mask(wp.shape[1], layers).to(wp.device, wp.dtype)[None, :, None]
    return wp + float(strength) * b


def apply_essence(G, wp: torch.Tensor, essence: Essence, strength: float = 1.0, layers=None, noise_mode="const", out_resolution=None):
    """Render G(w + strength * b): [B, 3, H, W]."""
    essence.check_compatible(G)
    G.check_wplus(wp)
    return G.synthesis(edit_latents(wp, essence, strength, layers), noise_mode=noise_mode, out_resolution=out_resolution)


def essence_sheet(G, essence: Essence, sources: torch.Tensor, target: torch.Tensor, source_images=None) -> torch.Tensor:
    """The result grid: [target | sources] over [blank | edits], as one [1, 3, 2H, (N+1)W] image.

    sources: W+ latents [N, n_latent, w_dim]; target: [1, 3, h, w] in [-1, 1]; pass the
    renders of the sources as `source_images` when several essences share them.
    """
    from targetclip_core.io.images import grid

    with torch.no_grad():
        if source_images is None:
            source_images = G.synthesis(sources)
        edits = G.synthesis(edit_latents(sources, essence))
        tgt = F.interpolate(target.to(source_images.device).float(), size=source_images.shape[-2:], mode="bilinear",
                            antialias=True, align_corners=False)
        cells = torch.cat([tgt, source_images, torch.full_like(tgt, -1), edits])
    return grid(cells, cols=len(sources) + 1)


def essence_grid_latents(wp: torch.Tensor, essences, strength: float = 1.0, layers=None) -> torch.Tensor:
    """Each source followed by its edit with every essence: [N * (K + 1), n_latent, w_dim].

    Row i of the grid (cols = K + 1) is [w_i, w_i + s b_1, ..., w_i + s b_K], the layout of
    an essences x sources comparison sheet.
    """
    essences = list(essences)
    if not essences:
        raise TargetCLIPError("an essence grid needs at least one essence")
    cells = [wp] + [edit_latents(wp, e, strength, layers) for e in essences]  # each [N, ...]
    return torch.stack(cells, dim=1).reshape(-1, *wp.shape[1:])


def target_thumbnail_row(essences, height: int, width: int, device=None) -> torch.Tensor:
    """The row above an essence grid: [K + 1, 3, height, width] in [-1, 1], a blank (black) cell over
    the source column, then each essence's target thumbnail resized to the cell (blank when it has none)."""
    blank = torch.full((1, 3, height, width), -1.0, device=device)
    row = [blank]
    for e in essences:
        if e.thumbnail is None:
            row.append(blank)
        else:
            x = e.thumbnail.to(device).float().permute(2, 0, 1)[None] / 127.5 - 1
            row.append(F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(row)


def essence_grid_sheet(images: torch.Tensor, essences, captions: bool = True) -> torch.Tensor:
    """The essence x sources comparison as one image [1, 3, H', (K + 1) W].

    images: the renders of `essence_grid_latents` [N * (K + 1), 3, H, W] in [-1, 1], a row per source; above
    them a row of the essences' target thumbnails when any carries one, and with `captions` the column
    names ("source", then each essence's name) on top.
    """
    from targetclip_core.io.images import captioned_grid

    essences = list(essences)
    cols = len(essences) + 1
    cells = images
    if any(e.thumbnail is not None for e in essences):  # a row of targets above the edits
        row = target_thumbnail_row(essences, *images.shape[-2:], device=images.device).to(images.dtype)
        cells = torch.cat([row, images])
    labels = ["source"] + [e.name or f"essence {i + 1}" for i, e in enumerate(essences)] if captions else None
    return captioned_grid(cells, cols, labels)


# --------------------------------------------------------------------------- files


def save_essence(path: str | os.PathLike, essence: Essence) -> Path:
    """Write `.safetensors` atomically (the same bytes for the same essence); the loss history is stored as JSON
    metadata."""
    tensors = {"essence": essence.vector.detach().float().cpu().contiguous()}
    if essence.thumbnail is not None:
        tensors["thumbnail"] = essence.thumbnail.detach().to(torch.uint8).cpu().contiguous()
    if essence.coefficients is not None:
        tensors["coefficients"] = essence.coefficients.detach().float().cpu().contiguous()
    meta = {
        "format": ESSENCE_FORMAT,
        "format_version": "1",
        "generator": json.dumps(essence.generator),
        "clip": json.dumps(essence.clip),
        "losses": json.dumps({k: [float(x) for x in v] for k, v in essence.losses.items()}),
        "steps": str(int(essence.steps)),
        "strength": repr(float(essence.strength)),
        "name": essence.name,
        "source": essence.source,
    }
    return save_safetensors(tensors, path, meta)


def load_essence(path: str | os.PathLike, generator=None) -> Essence:
    """Read our `.safetensors` or an official TargetCLIP `.npy` direction.

    With `generator`, an essence made for another layout is refused right away.
    """
    p = Path(path)
    if not p.is_file():
        raise TargetCLIPError(f"{p}: no such essence file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        essence = _load_official_npy(p)
    elif suffix == ".safetensors":
        essence = _load_safetensors(p)
    else:
        raise TargetCLIPError(f"{p}: unsupported essence file type {suffix!r} (use .safetensors or an official .npy)")
    if generator is not None:
        essence.check_compatible(generator)
    return essence


def _load_official_npy(p: Path) -> Essence:
    def shape_problem(shape):
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] != 1):
            return f"an official direction is a float array of shape (1, n_latent, w_dim), got {shape}"
        return None

    arr = read_npy(p, ".npy essence", check_shape=shape_problem, max_bytes=MAX_ESSENCE_NPY_BYTES, error=LatentError)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise LatentError(f"{p}: an official direction is a float array of shape (1, n_latent, w_dim), got {arr.shape} {arr.dtype}")
    n_latent = arr.shape[1]
    resolution = 2 ** ((n_latent + 2) // 2) if n_latent % 2 == 0 else None
    return _named(p, lambda: Essence(
        vector=torch.from_numpy(arr.astype(np.float32)),
        generator={"arch": "stylegan2", "resolution": resolution, "n_latent": n_latent, "w_dim": arr.shape[2]},
        name=p.stem,
        source="official-npy",
        strength=1.0,  # the official README: 0.5-1 (Joker 0.9-1.3); its evaluation used 1.2
    ))


def _named(path: Path, build):
    """Build an Essence, prefixing the file name to any error about its contents."""
    try:
        return build()
    except LatentError as e:
        raise LatentError(f"{path}: {e}") from None


def _load_safetensors(p: Path) -> Essence:
    """Our essence file: header checked, tensors finite, every metadata entry of its expected type."""
    what = "essence file"
    tensors, meta = read_safetensors(p, what, finite=False)
    if meta.get("format") != ESSENCE_FORMAT:
        raise TargetCLIPError(f"{p}: a safetensors file, but not a TargetCLIP essence (format={meta.get('format')!r})")
    for name, t in tensors.items():  # a NaN vector is a LatentError, as the Essence check raises it
        check_finite(t, p, name, what, LatentError)
    vector = require_tensor(tensors, "essence", p, what, floating=True)
    thumbnail = require_tensor(tensors, "thumbnail", p, what, dtype=torch.uint8, ndim=3, optional=True)
    if thumbnail is not None and thumbnail.shape[-1] != 3:
        raise TargetCLIPError(f"{p}: the essence's thumbnail is an RGB image [H, W, 3], got {list(thumbnail.shape)}")
    coefficients = require_tensor(tensors, "coefficients", p, what, floating=True, optional=True)
    essence = _named(p, lambda: Essence(
        vector=vector.float(),
        generator=meta_json(meta, "generator", dict, p, what, default={}),
        clip=meta_json(meta, "clip", (dict, type(None)), p, what, default=None),
        thumbnail=thumbnail,
        coefficients=coefficients,
        losses=meta_number_lists(meta, "losses", p, what, default={}),
        steps=meta_int(meta, "steps", p, what, default=0, minimum=0),
        strength=meta_float(meta, "strength", p, what, default=1.0),
        name=meta_str(meta, "name", p, what, default=p.stem),
        source=meta_str(meta, "source", p, what, default="optimized"),
    ))
    return essence
