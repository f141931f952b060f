"""ComfyUI glue shared by the node families: model folders, devices, image layout, caching.

The only place (with its sibling node modules) that imports ComfyUI. Images cross the
border here and nowhere else: ComfyUI IMAGE is [B,H,W,3] in 0..1, the engine works on
[B,3,H,W] in [-1,1].
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

PACK_ROOT = Path(__file__).resolve().parents[1]
CATEGORY = "TargetCLIP"

# our folders under ComfyUI/models, with the files each lists
MODEL_FOLDERS = {
    "stylegan": {".pt", ".pth", ".pkl", ".safetensors"},
    "eg3d": {".pkl", ".pt", ".pth", ".safetensors"},  # EG3D network pickles (ffhq512-128.pkl, ...)
    "e4e": {".pt", ".pth", ".safetensors", ".dat"},  # .dat: dlib's 68-point landmark predictor
    "targetclip": {".safetensors", ".npy"},
    "sat3d": {".safetensors"},  # SAT3D attribute x channel mask matrices (sat3d.save_sat3d_matrix)
    # face parsers (BiSeNet 79999_iter.pth = facexlib's parsing_bisenet.pth), in the folder other face packs use
    "facedetection": {".pth", ".pt"},
    # StyleSpace channel statistics of StyleCLIP's global directions (Directions from Text), one per generator + CLIP
    "targetclip_directions": {".safetensors"},
}


def register_model_folders() -> None:
    """Add our folders without dropping paths a user set in extra_model_paths.yaml."""
    for name, exts in MODEL_FOLDERS.items():
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(exts))
    # the pack's own weights/ store (targetclip download) is a fallback for generators
    store = str(PACK_ROOT / "weights")
    for name in ("stylegan", "eg3d", "facedetection"):  # facedetection: targetclip download bisenet-face-parsing-79999
        paths, _ = folder_paths.folder_names_and_paths[name]
        if store not in paths:
            paths.append(store)


def list_files(folder: str) -> list[str]:
    return sorted(folder_paths.get_filename_list(folder))


def full_path(folder: str, name: str) -> str:
    return folder_paths.get_full_path_or_raise(folder, name)


def file_signature(folder: str, name: str) -> str:
    """For IS_CHANGED: a file replaced on disk re-runs the node."""
    path = folder_paths.get_full_path(folder, name)
    if not path or not os.path.exists(path):
        return f"missing:{name}"
    st = os.stat(path)
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


def compute_device() -> torch.device:
    return mm.get_torch_device()


def make_room(device: torch.device, nbytes: int) -> None:
    """Let ComfyUI unload its own models before one of ours lands on the GPU (x2: weights + work)."""
    if device.type != "cpu":
        mm.free_memory(2 * nbytes, device)


def check_interrupted() -> None:
    mm.throw_exception_if_processing_interrupted()


# ---------------------------------------------------------------- images at the border


def image_to_core(image: torch.Tensor, device=None) -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] 0..1 -> engine [B,3,H,W] in [-1,1] (alpha dropped, grey expanded)."""
    if not torch.is_tensor(image) or image.dim() not in (3, 4):
        raise ValueError(f"expected an IMAGE tensor [B,H,W,C], got {getattr(image, 'shape', type(image).__name__)}")
    if image.dim() == 3:
        image = image[None]
    c = image.shape[-1]
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c == 4:
        image = image[..., :3]
    elif c != 3:
        raise ValueError(f"IMAGE has {c} channels; expected 1, 3 or 4")
    if not torch.isfinite(image).all():
        raise ValueError("IMAGE contains NaN or infinite values")
    x = image.permute(0, 3, 1, 2).float() * 2 - 1
    return x.to(device or compute_device())


def image_from_core(img: torch.Tensor) -> torch.Tensor:
    """Engine [B,3,H,W] in [-1,1] -> ComfyUI IMAGE [B,H,W,3] 0..1 on ComfyUI's intermediate device."""
    x = ((img.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).contiguous()
    return x.to(mm.intermediate_device())


def preview(img: torch.Tensor, max_size: int = 512):
    """A ('JPEG', PIL image, max_size) tuple for ProgressBar.update_absolute."""
    from PIL import Image

    from targetclip_core.io.images import to_uint8

    return ("JPEG", Image.fromarray(to_uint8(img[:1])[0]), max_size)


class Progress:
    """ComfyUI's progress bar plus a cancel point on every update."""

    def __init__(self, total: int):
        self.total = total
        self.bar = comfy.utils.ProgressBar(total)

    def update(self, step: int, image: torch.Tensor | None = None) -> None:
        check_interrupted()
        self.bar.update_absolute(step, self.total, preview(image) if image is not None else None)

    def on_batch(self, done: int, total: int, images: torch.Tensor | None = None) -> None:
        """The engine's on_batch(done, total, images) callback: progress, a preview of the batch, a cancel point."""
        self.total = total  # the engine counts what it renders
        self.update(done, images)


# ---------------------------------------------------------------- values passed between nodes


@dataclass
class WPlus:
    """WPLUS: W+ latents [B, n_latent, w_dim] tagged with the generator they belong to."""

    latents: torch.Tensor
    generator: dict  # StyleGAN2Generator.identity

    def check_for(self, G) -> torch.Tensor:
        if self.generator != G.identity:
            raise ValueError(
                f"these latents were made for a {self.generator.get('resolution')}px generator "
                f"({self.generator.get('n_latent')} W+ entries); this one is {G.resolution}px ({G.n_latent})"
            )
        return self.latents.to(G.device)


@dataclass
class StyleCodes:
    """STYLESPACE: per-layer StyleSpace codes {layer: [B, C]} tagged with their generator.

    What SAT3D edits produce: a per-channel mix of two faces' style codes has in general no
    W+ latent (each layer's affine maps w_dim values to its channels), so the edit travels on
    as style codes, rendered with G.synthesis_from_styles.
    """

    styles: OrderedDict
    generator: dict  # G.identity

    def __len__(self) -> int:
        return int(next(iter(self.styles.values())).shape[0])

    def check_for(self, G) -> "OrderedDict[str, torch.Tensor]":
        if self.generator != G.identity:
            raise ValueError(
                f"these style codes were made with a {self.generator.get('resolution')}px generator "
                f"({self.generator.get('arch', '?')}); this one is {G.identity.get('resolution')}px ({G.identity.get('arch', '?')})"
            )
        from targetclip_core.generators.stylespace import StyleLayout

        mine, theirs = StyleLayout.from_styles(self.styles), StyleLayout.from_generator(G)
        if mine != theirs:
            raise ValueError(f"these style codes have {mine.n_channels} StyleSpace channels in {len(mine.layers)} layers; "
                             f"this generator has {theirs.n_channels} in {len(theirs.layers)}: they belong to another generator")
        return OrderedDict((k, v.to(G.device)) for k, v in self.styles.items())


_MODEL_CACHE: dict = {}


def cached(key, load):
    """Keep loaded models across runs (same file, same mtime, same device): loading is the slow part."""
    if key not in _MODEL_CACHE:
        if len(_MODEL_CACHE) >= 8:  # evict the oldest
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = load()
    return _MODEL_CACHE[key]


def cached_generator(folder: str, ckpt_name: str, check=None):
    """Load a generator file from a model folder onto ComfyUI's device, once per file version.

    `check(G)` may refuse what was loaded (it raises); a refused file is not cached.
    """
    from targetclip_core.generators.load import load_generator

    path = full_path(folder, ckpt_name)
    device = compute_device()

    def load():
        make_room(device, os.path.getsize(path))
        G = load_generator(path, device=device)
        if check is not None:
            check(G)
        return G

    return cached((folder, file_signature(folder, ckpt_name), str(device)), load)


def clear_cache() -> None:
    _MODEL_CACHE.clear()
    mm.soft_empty_cache()
