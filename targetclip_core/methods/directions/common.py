"""What the target-free direction methods share: W drawn from the mapping network, the StyleSpace affines
read off any generator, layer ranges of W+, and `Direction` (an essence plus what found it) with its file.

A direction is stored as an ordinary essence file (methods.targetclip.essence: `load_essence` reads it
and `apply_essence` applies it), with one extra metadata entry, "direction", holding the method's own
facts as JSON (method, component, layers, explained variance, ...).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.generators.stylespace import is_edited
from targetclip_core.io.files import atomic_path
from targetclip_core.io.safetensors_files import (
    meta_json,
    read_safetensors,
    read_safetensors_header,
    save_safetensors,
)
from targetclip_core.methods.targetclip.essence import (
    Essence,
    layer_mask,
    load_essence,
    save_essence,
)

DIRECTION_KEY = "direction"  # the essence-file metadata entry holding Direction.info
Z_BLOCK = 1024  # z is drawn in blocks of this many rows, so a seed gives the same W whatever the sample count


@dataclass
class Direction:
    """One edit direction: an essence (the W+ offset of strength 1) and what the method knows about it."""

    essence: Essence
    info: dict = field(default_factory=dict)  # method, component index, layers, variance, ... (JSON-able)

    @property
    def name(self) -> str:
        return self.essence.name

    @property
    def vector(self) -> torch.Tensor:
        return self.essence.vector


# --------------------------------------------------------------------------- W samples


def iter_w(G, n: int, seed: int = 0, truncation: float = 1.0, class_idx: int | None = None):
    """Yield W [b, w_dim] batches (float32, on G's device) of `n` mapped samples, z ~ N(0, I) drawn on the
    CPU from `seed` in blocks of Z_BLOCK rows: the first m samples of any n >= m are the same."""
    n = _count("the number of samples", n)
    c = None
    if G.c_dim and not G.is_3d:  # EG3D's label is a camera (mapping picks the frontal one), not a class
        if class_idx is None or not 0 <= int(class_idx) < G.c_dim:
            raise LatentError(f"this generator is class-conditional ({G.c_dim} classes): give a class index "
                              f"in [0, {G.c_dim})")
        c = torch.zeros(Z_BLOCK, G.c_dim, device=G.device)
        c[:, int(class_idx)] = 1
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for start in range(0, n, Z_BLOCK):
            rows = min(Z_BLOCK, n - start)
            z = torch.randn(rows, G.z_dim, generator=gen).to(G.device)
            kw = {} if c is None else {"c": c[:rows]}
            yield G.mapping(z, truncation=truncation, **kw).float()


def sample_w(G, n: int, seed: int = 0, truncation: float = 1.0, class_idx: int | None = None) -> torch.Tensor:
    """All of iter_w at once: W [n, w_dim] on G's device."""
    return torch.cat(list(iter_w(G, n, seed, truncation, class_idx)))


def _count(what: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TargetCLIPError(f"{what} must be a positive integer, got {n!r}")
    return n


# --------------------------------------------------------------------------- W+ layers and StyleSpace affines


def wplus_entries(G, layers=None) -> list[int]:
    """The W+ indices a layer range names (essence.layer_mask's forms: None/"all", "coarse", "middle", "fine",
    or explicit indices / a range)."""
    if isinstance(layers, range):
        layers = list(layers)
    return [int(i) for i in layer_mask(G.n_latent, layers).nonzero().flatten()]


def wplus_offset(G, w_direction: torch.Tensor, entries) -> torch.Tensor:
    """[1, n_latent, w_dim]: `w_direction` [w_dim] on the W+ `entries`, zeros elsewhere (float32, CPU)."""
    v = torch.zeros(1, G.n_latent, G.w_dim)
    v[0, list(entries)] = w_direction.detach().float().cpu()
    return v


def span_name(entries: list[int], n_latent: int) -> str:
    """"all", "L3-7" for a run of entries, else "L0,2,5"."""
    if entries == list(range(n_latent)):
        return "all"
    if entries == list(range(entries[0], entries[-1] + 1)):
        return f"L{entries[0]}-{entries[-1]}"
    return "L" + ",".join(map(str, entries))


@dataclass(frozen=True)
class StyleAffine:
    """The linear map W -> style code of one StyleSpace layer: s = matrix @ w[entry] + bias."""

    entry: int  # the W+ index the layer reads
    matrix: torch.Tensor  # [channels, w_dim], float32 on the CPU, the equalised-lr gain applied
    bias: torch.Tensor  # [channels]


def stylespace_affines(G) -> OrderedDict[str, StyleAffine]:
    """Every StyleSpace layer's affine map, read off the generator by probing `G.styles` (so it holds for any
    generator of the protocol, with the gains exactly as the network applies them): one probe per W+ entry
    tells which entry a layer reads, one per W axis gives the matrix columns (the affines are linear in w)."""
    n, d = G.n_latent, G.w_dim
    with torch.no_grad():
        zero = G.styles(torch.zeros(1, n, d, device=G.device))
        # entry probe: row k carries a fixed non-zero vector on W+ entry k only
        u = torch.linspace(0.5, 1.5, d, device=G.device)
        probe = torch.zeros(n, n, d, device=G.device)
        probe[torch.arange(n), torch.arange(n)] = u
        moved = G.styles(probe)
        # axis probe: row i is e_i on every entry, so every layer sees e_i
        axes = G.styles(torch.eye(d, device=G.device)[:, None, :].expand(d, n, d).contiguous())
    out = OrderedDict()
    for name, s0 in zero.items():
        change = (moved[name] - s0).abs().amax(dim=1)  # [n]: how much entry k moves this layer
        readers = (change > 1e-6 * max(float(change.max()), 1e-30)).nonzero().flatten().tolist()
        if len(readers) != 1:
            raise TargetCLIPError(f"StyleSpace layer {name} reads W+ entries {readers}: the target-free methods need "
                                  "each layer to read exactly one entry")
        matrix = (axes[name] - s0).t().float().cpu()
        out[name] = StyleAffine(readers[0], matrix.contiguous(), s0[0].float().cpu())
    return out


def affines_on_entries(affines, entries, include_torgb: bool = False) -> OrderedDict[str, StyleAffine]:
    """The affines of the layers that read one of the W+ `entries` (feature convs only unless `include_torgb`:
    toRGB and super-resolution codes are left out as stylespace.is_edited says)."""
    wanted = {int(e) for e in entries}
    picked = OrderedDict((name, a) for name, a in affines.items()
                         if a.entry in wanted and (include_torgb or is_edited(name)))
    if not picked:
        raise TargetCLIPError(f"W+ entries {sorted(wanted)} drive no StyleSpace layer to factorise")
    return picked


def fix_sign(vectors: torch.Tensor) -> torch.Tensor:
    """Rows flipped so each one's largest-magnitude coordinate is positive: eigenvectors come out of a solver with
    an arbitrary sign, this makes "component 3, +2 sigma" mean the same on every machine."""
    idx = vectors.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(vectors.gather(1, idx))
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def projected_std(G, directions: torch.Tensor, n_samples: int = 10_000, seed: int = 0) -> torch.Tensor:
    """[K]: the standard deviation of sampled W (no truncation) along each unit row of `directions` [K, w_dim]."""
    d = directions.to(G.device).float()
    total, total_sq, count = torch.zeros(len(d), device=G.device), torch.zeros(len(d), device=G.device), 0
    shift = None
    for w in iter_w(G, n_samples, seed):
        p = w @ d.t()  # [b, K]
        shift = p[:1].mean(0) if shift is None else shift  # shifted sums: no cancellation in float32
        p = p - shift
        total += p.sum(0)
        total_sq += p.square().sum(0)
        count += len(p)
    var = (total_sq - total.square() / count) / max(count - 1, 1)
    return var.clamp(min=0).sqrt().cpu()


# --------------------------------------------------------------------------- files


def direction_essence(G, vector: torch.Tensor, name: str, method: str, strength: float = 1.0, clip=None) -> Essence:
    """The essence of a direction: made for G, with `method` as its source."""
    return Essence(vector=vector, generator=dict(G.identity), clip=clip, name=name, source=method,
                   strength=float(strength))


def save_direction(path: str | os.PathLike, direction: Direction) -> Path:
    """Write a direction as an essence file (load_essence reads it) with its info as the "direction" metadata
    entry; atomic as every writer: the finished file appears at once or not at all."""
    info = json.dumps(direction.info, sort_keys=True)
    final = Path(path)
    with atomic_path(final) as tmp:
        save_essence(tmp, direction.essence)  # the essence format exactly as save_essence writes it
        tensors, meta = read_safetensors(tmp, "essence file")
        save_safetensors(tensors, tmp, {**meta, DIRECTION_KEY: info})
    return final


def load_direction(path: str | os.PathLike, generator=None) -> Direction:
    """Read a direction file (any essence file: one without direction info gives info {})."""
    essence = load_essence(path, generator)
    if Path(path).suffix.lower() != ".safetensors":  # an official .npy direction carries no info
        return Direction(essence, {})
    _, meta = read_safetensors_header(path, "essence file")
    info = meta_json(meta, DIRECTION_KEY, dict, path, "essence file", default={})
    return Direction(essence, info)
