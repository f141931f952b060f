"""Latent files: W+ codes (and plain W) read from the formats people have, written as safetensors.

Accepted for reading: our `.safetensors` (tensor `wplus`, or `w`; header checked against the file
before reading, io.safetensors_files), `.npy` (the official TargetCLIP / e4e dumps), and
`.pt`/`.pth` tensors or dicts of one tensor (formats.checkpoints.torch_load_safely, weights only).
Everything comes back as float32 on CPU, finite; shape checks against a generator happen in
`StyleGAN2Generator.to_wplus`.  Files are written the same byte for byte by identical runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.formats.checkpoints import torch_load_safely
from targetclip_core.formats.npy import read_npy
from targetclip_core.io.safetensors_files import read_safetensors, save_safetensors

LATENT_FORMAT = "targetclip.latents"


def load_latents(path: str | os.PathLike) -> torch.Tensor:
    """Read W ([B, w_dim]) or W+ ([B, n_latent, w_dim]) latents from a file."""
    p = Path(path)
    if not p.is_file():
        raise LatentError(f"{p}: no such latent file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            t = torch.from_numpy(read_npy(p, "latent file", check_shape=_latent_shape_problem, kinds="f",
                                          error=LatentError))
        elif suffix == ".safetensors":
            tensors, _ = read_safetensors(p, "latent file", error=LatentError)
            t = _pick_tensor(tensors, p)
        elif suffix in (".pt", ".pth"):
            obj = torch_load_safely(p)
            t = obj if torch.is_tensor(obj) else _pick_tensor(obj, p)
        else:
            raise LatentError(f"{p}: unsupported latent file type {suffix!r} (use .safetensors, .npy or .pt)")
    except LatentError:
        raise
    except TargetCLIPError as e:  # the checkpoint reader's message already names the file
        raise LatentError(str(e)) from None
    except Exception as e:  # numpy/safetensors/torch each raise their own types for corrupt files
        raise LatentError(f"{p}: cannot read latents ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not torch.is_tensor(t) or not t.is_floating_point():
        raise LatentError(f"{p}: latents must be a floating-point tensor")
    if t.dim() == 1:
        t = t[None]
    if t.dim() not in (2, 3):
        raise LatentError(f"{p}: latents of shape {list(t.shape)}; expected [B, w_dim] or [B, n_latent, w_dim]")
    if not torch.isfinite(t).all():
        raise LatentError(f"{p}: latents contain NaN or infinite values")
    return t.float()


def _latent_shape_problem(shape: tuple) -> str | None:
    if len(shape) not in (1, 2, 3):
        return f"latents of shape {list(shape)}; expected [B, w_dim] or [B, n_latent, w_dim]"
    return None


def save_latents(path: str | os.PathLike, wplus: torch.Tensor, generator_identity: dict | None = None) -> Path:
    """Write W+ latents as safetensors (tensor `wplus`), with the generator identity as metadata, atomically
    and the same bytes for the same latents."""
    meta = {"format": LATENT_FORMAT, "format_version": "1"}
    if generator_identity:
        meta["generator"] = json.dumps(generator_identity)
    return save_safetensors({"wplus": wplus.detach().float().cpu().contiguous()}, path, meta)


def wplus_from_z(G, z, c=None, truncation: float = 1.0, truncation_cutoff: int | None = None) -> torch.Tensor:
    """W+ [B, n_latent, w_dim] of z [B, z_dim] (a fresh tensor); with `truncation_cutoff` only the first
    that many entries are truncated, as the NVlabs / EG3D mapping networks do."""
    if truncation_cutoff is None:
        return G.to_wplus(G.mapping(z, c, truncation=truncation)).clone()
    wp = G.to_wplus(G.mapping(z, c)).clone()
    if truncation != 1.0:
        cut = int(truncation_cutoff)
        wp[:, :cut] = G.truncation_latent()[:, None].lerp(wp[:, :cut], truncation)
    return wp


def wplus_from_seeds(G, seeds, truncation: float = 1.0, class_idx: int | None = None) -> torch.Tensor:
    """W+ latents [N, n_latent, w_dim] of `seeds` on G's device, z drawn as NVlabs' generate.py
    (`z_from_seeds`). A class-conditional 2D generator needs `class_idx` (its one-hot label);
    3D-aware generators map under their frontal camera."""
    seeds = list(seeds)
    c = None
    if G.c_dim and not G.is_3d:  # EG3D's label is a camera, not a class
        if class_idx is None:
            raise LatentError(f"this generator is class-conditional ({G.c_dim} classes): give a class index")
        if not 0 <= int(class_idx) < G.c_dim:
            raise LatentError(f"class index {class_idx} is out of range for {G.c_dim} classes")
        c = torch.zeros(len(seeds), G.c_dim, device=G.device)
        c[:, int(class_idx)] = 1
    with torch.no_grad():
        return wplus_from_z(G, z_from_seeds(seeds, G.z_dim).to(G.device), c, truncation)


def z_from_seeds(seeds, z_dim: int) -> torch.Tensor:
    """One z per seed, drawn as NVlabs' generate.py does (numpy RandomState(seed).randn), so
    "seed 85" shows the same face here as in the official scripts for the same network."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def _pick_tensor(obj, p) -> torch.Tensor:
    if not isinstance(obj, dict):
        raise LatentError(f"{p}: expected a tensor or a dict of tensors, found {type(obj).__name__}")
    for key in ("wplus", "latents", "w", "latent"):
        if key in obj and torch.is_tensor(obj[key]):
            return obj[key]
    tensors = [v for v in obj.values() if torch.is_tensor(v)]
    if len(tensors) == 1:
        return tensors[0]
    raise LatentError(f"{p}: cannot tell which tensor holds the latents (keys: {', '.join(map(str, list(obj)[:6]))})")
