"""ComfyUI glue shared by the node families: model folders, devices, image layout, caching.

The only place (with its sibling node modules) that imports ComfyUI. Images cross the
border here and nowhere else: ComfyUI IMAGE is [B,H,W,3] in 0..1, the engine works on
[B,3,H,W] in [-1,1].
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

from targetclip_core.devices import PRECISIONS

PACK_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)
CATEGORY = "TargetCLIP"
# W+ ranges the nodes offer (methods.targetclip.essence.parse_layer_range reads them)
LAYER_CHOICES = ["all", "coarse", "middle", "fine", "coarse,middle", "middle,fine"]


def precision_input(default: str = "fp32") -> dict:
    """The optional `precision` input of the nodes that render or optimise much (devices.PRECISIONS)."""
    return {"precision": (list(PRECISIONS), {
        "default": default, "tooltip": "Compute precision of the renders and networks: bf16 is about 2x faster on CPUs "
                                       "with bf16 units and recent GPUs (images within about 1%); fp16 for older GPUs; "
                                       "auto: bf16 where the device has bf16 units, fp16 on older GPUs, else fp32."})}

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
    """Add our folders without dropping paths a user set in extra_model_paths.yaml, then create them."""
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
    create_model_folders()


def create_model_folders() -> list[str]:
    """Create each of our folders at its default place, ComfyUI's models/<name>, so a new user sees
    where files go. Only the default path is created (a path from extra_model_paths.yaml is the
    user's to make), only when ComfyUI's models folder exists, and a failure (a read-only install)
    is logged, never raised: start-up goes on. Returns the folders created."""
    models = folder_paths.models_dir
    if not os.path.isdir(models):
        return []
    made = []
    for name in MODEL_FOLDERS:
        default = os.path.join(models, name)
        if default not in folder_paths.folder_names_and_paths[name][0] or os.path.isdir(default):
            continue
        try:
            os.makedirs(default, exist_ok=True)
            made.append(default)
        except OSError as exc:
            logger.warning("TargetCLIP: could not create the model folder %s (%s); create it by hand", default, exc)
    return made


def list_files(folder: str) -> list[str]:
    return sorted(folder_paths.get_filename_list(folder))


# ---------------------------------------------------------------- missing model files

# which of our folders a manifest entry's file goes into, by its kind (weights/manifest.json)
KIND_FOLDERS = {
    "stylegan2": "stylegan",
    "stylegan3": "stylegan",
    "eg3d": "eg3d",
    "e4e": "e4e",
    "psp": "e4e",
    "essence-encoder": "e4e",
    "arcface": "e4e",
    "perceptual": "e4e",
    "face-parsing": "facedetection",
}


class ModelFileMissing(FileNotFoundError):
    """A loader's file is not in its model folder; the message says which file to get, from where, to where."""


def _known_files(folder: str, kinds=None) -> list:
    """The manifest's entries whose files belong in `folder` (optionally only these kinds)."""
    from targetclip_core.io.weights import ManifestError, load_manifest

    try:
        manifest = load_manifest()
    except (ManifestError, OSError) as exc:  # a broken manifest must not hide the real problem: the missing file
        logger.warning("TargetCLIP: weights manifest unreadable (%s)", exc)
        return []
    return [e for e in manifest.values() if KIND_FOLDERS.get(e.kind) == folder and (kinds is None or e.kind in kinds)]


def _how_to_get(entry, dest: str) -> str:
    what = f"{entry.filename} ({entry.description.rstrip('.')})"
    if entry.urls:
        return f"{what}: run `targetclip download {entry.name} --dest \"{dest}\"` or download {' or '.join(entry.urls)}"
    return (f"{what}: download it in a browser from {entry.manual_url or entry.source_page} "
            f"(`targetclip download {entry.name}` cannot fetch it)")


def missing_file_message(folder: str, name, kinds=None, choices=None) -> str:
    """Why `name` cannot be loaded from `folder` and what to do: the files the manifest offers for
    this folder (those of `kinds` only, if given), where to get each, and where to put it."""
    where = folder_paths.get_folder_paths(folder)
    dest = where[0] if where else os.path.join(folder_paths.models_dir, folder)
    have = list_files(folder) if choices is None else list(choices)
    if not have:
        head = f"models/{folder} has no model file yet (looked in: {', '.join(where)})"
    elif not name:
        head = f"no file chosen from models/{folder}"
    else:
        shown = ", ".join(have[:5]) + (f", ... ({len(have)} in all)" if len(have) > 5 else "")
        head = f"{name!r} is not in models/{folder} (it holds {shown})"
    known = _known_files(folder, kinds)
    wanted = next((e for e in known if e.filename == name), None)
    if wanted is not None:  # a template asks for a file the manifest knows: say how to get exactly that one
        others = [e.filename for e in known if e is not wanted]
        tail = "Get " + _how_to_get(wanted, dest) + "." + (f" (Also known for this folder: {', '.join(others)}.)" if others else "")
    elif known:
        tail = "Get one of these files: " + "; ".join(_how_to_get(e, dest) for e in known) + "."
    else:
        tail = ("The weights manifest lists no download for this folder: its files are made by this pack's nodes "
                "or the targetclip command line.")
    return f"{head}. {tail} Put the file into {dest}, keep its name, and refresh ComfyUI (press R)."


def validate_model_file(folder: str, name, kinds=None, choices=None):
    """For a loader's VALIDATE_INPUTS(cls, <file input>): True when `name` is in the folder's list,
    else the message saying which file to get from where. ComfyUI skips its own "Value not in list"
    check for an input its node's VALIDATE_INPUTS takes, and shows the string this returns."""
    have = list_files(folder) if choices is None else choices
    if name and name in have:
        return True
    return missing_file_message(folder, name, kinds, have)


def full_path(folder: str, name: str, kinds=None) -> str:
    path = folder_paths.get_full_path(folder, name) if name else None
    if not path:
        raise ModelFileMissing(missing_file_message(folder, name, kinds))
    return path


def numbered_path(folder: str, filename_prefix: str, default: str, suffix: str = ".safetensors") -> tuple[str, str]:
    """Where a saver writes: ComfyUI's numbering (folder_paths.get_save_image_path) inside `folder`.

    '<prefix>_00001_<suffix>', the counter one past the highest of that prefix's files (as Save
    Image numbers PNGs); a prefix may name subfolders ('faces/joker') and use %year%, %month%,
    %day%, %hour%, %minute%, %second%. Characters outside [A-Za-z0-9_.%-] become '_' and '..' is
    dropped, so the file stays inside `folder`. Returns (path, the name as the folder's dropdown lists it).
    """
    parts = [re.sub(r"[^A-Za-z0-9_.%-]", "_", part).strip(".") for part in re.split(r"[\\/]+", filename_prefix or "")]
    prefix = "/".join(part for part in parts if part) or default
    root = os.path.abspath(folder)
    os.makedirs(root, exist_ok=True)
    where, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, root)
    while os.path.exists(os.path.join(where, f"{name}_{counter:05}_{suffix}")):  # a file the counter does not read
        counter += 1
    file = f"{name}_{counter:05}_{suffix}"
    return os.path.join(where, file), os.path.join(subfolder, file) if subfolder else file


def file_signature(folder: str, name: str) -> str:
    """For IS_CHANGED: a file replaced on disk re-runs the node."""
    path = folder_paths.get_full_path(folder, name)
    if not path or not os.path.exists(path):
        return f"missing:{name}"
    st = os.stat(path)
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


def compute_device() -> torch.device:
    return mm.get_torch_device()


def offload_device() -> torch.device:
    """Where ComfyUI keeps a model it is not running (the CPU unless --highvram); ours load there first."""
    return mm.unet_offload_device()


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


# ---------------------------------------------------------------- ComfyUI's model management

_PATCHER = "_targetclip_patcher"  # the attribute of an engine model that holds its ModelPatcher


class TargetCLIPModel(torch.nn.Module):
    """What ComfyUI's ModelPatcher holds for one of our models: the engine's nn.Module as its only
    submodule, plus the plain `device` attribute the patcher writes (our models derive theirs from
    their weights, read-only). Moving this module moves the engine's model; the engine is untouched."""

    def __init__(self, inner: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner = inner
        self.device = device


@functools.cache
def _patcher_class():
    import comfy.model_patcher

    class WholeModelPatcher(comfy.model_patcher.ModelPatcher):
        """ComfyUI's patcher for a network that runs whole on one device: ComfyUI's partial
        unloading moves single layers (fine for its cast-capable layers, not for ours), so a
        request to free part of our model frees none and ComfyUI unloads it whole instead."""

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
            return 0

    return WholeModelPatcher


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def patcher_of(model):
    """The ModelPatcher `managed` registered for `model` (None if it never was)."""
    return getattr(model, _PATCHER, None)


def _patcher(model):
    patcher = patcher_of(model)
    if patcher is None:
        load_device, parked = compute_device(), offload_device()
        first = next((t.device for t in (*model.parameters(), *model.buffers())), parked)
        holder = TargetCLIPModel(model, first)
        patcher = _patcher_class()(holder, load_device=load_device, offload_device=parked, size=_weight_bytes(model))
        # the model keeps its patcher alive (ComfyUI's list holds patchers weakly); cycle freed with the model
        object.__setattr__(model, _PATCHER, patcher)
    return patcher


def _on(model, device: torch.device) -> bool:
    """All of the model's weights on `device` (cuda and cuda:0 are the same device here)."""
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else None)
    return all(t.device.type == device.type and (index is None or t.device.index in (None, index))
               for t in (*model.parameters(), *model.buffers()))


def managed(*models):
    """Our models on the compute device, registered with ComfyUI's model management.

    Each engine model gets a ModelPatcher once (load device: ComfyUI's compute device; offload
    device: unet_offload_device(), the CPU unless --highvram; size: the bytes of its weights), and
    comfy.model_management.load_models_gpu loads them, freeing other models first if memory is
    short. ComfyUI can then unload ours when a later node (Stable Diffusion) needs the memory, so
    call this at the start of every node that runs one of our models, with all the models it runs
    (one call: loading one must not unload another). Returns the model, or the models in order.
    On a CPU-only machine both devices are the CPU: nothing moves, the bookkeeping still works.
    """
    patchers = [_patcher(m) for m in models]
    mm.load_models_gpu(patchers, force_full_load=True)
    for model, patcher in zip(models, patchers):
        if not _on(model, patcher.load_device):
            # a shim that tracks but does not move, or a view of a cached model with its own tables
            patcher.model.to(patcher.load_device)
            if model is not patcher.model.inner:
                model.to(patcher.load_device)
            patcher.model.device = patcher.load_device
    return models[0] if len(models) == 1 else models


def cached_model(key, load, nbytes: int = 0):
    """`cached(key, load)` for a model: loaded on ComfyUI's offload device (made room for when that is
    a GPU), kept in our cache, handed out through `managed` (on the compute device, known to ComfyUI)."""
    device = offload_device()

    def load_offloaded():
        make_room(device, nbytes)
        return load(device)

    return managed(cached(key, load_offloaded))


def cached_generator(folder: str, ckpt_name: str, check=None):
    """Load a generator file from a model folder, once per file version, managed by ComfyUI (`managed`).

    `check(G)` may refuse what was loaded (it raises); a refused file is not cached.
    """
    from targetclip_core.generators.load import load_generator

    path = full_path(folder, ckpt_name)

    def load(device):
        G = load_generator(path, device=device)
        if check is not None:
            check(G)
        return G

    return cached_model((folder, file_signature(folder, ckpt_name), str(compute_device())), load, os.path.getsize(path))


def clear_cache() -> None:
    _MODEL_CACHE.clear()
    mm.soft_empty_cache()
