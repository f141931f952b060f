"""`load_generator`: sniff a checkpoint's format and build the generator, never running its code.

Formats (see REFERENCES.md for where each layout is defined):
  * rosinality `.pt`/`.pth`: {'g_ema': state_dict, 'latent_avg': ...} or a bare state dict
  * e4e / pSp checkpoints: {'state_dict': {'decoder.*': rosinality keys, ...}, 'latent_avg', 'opts'}
  * NVlabs StyleGAN2(-ADA) network pickles: dict(G_ema=<persistent record>, ...)
  * our `.safetensors`: our own parameter names, config as JSON in the metadata

Every path reads through `torch.load(weights_only=True)`, the restricted unpickler in
`safe_pickle`, or safetensors: none of them can execute code from the file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from targetclip_core.errors import CheckpointError, UnsafePickleError
from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator, fir_kernel_2d

SAFETENSORS_FORMAT = "targetclip.stylegan2"
EG3D_SAFETENSORS_FORMAT = "targetclip.eg3d"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# --------------------------------------------------------------------------- public entry points


def load_generator(path, device=None) -> StyleGAN2Generator:
    """Load a StyleGAN2 generator from any supported checkpoint (format sniffed) or a manifest name.

    `device=None` picks CUDA, then Apple MPS, then CPU.  The model is returned in eval mode
    with gradients disabled on its parameters (edits optimise latents, not weights).
    """
    file = _resolve_path(path)
    cfg, state, has_w_avg = read_generator_checkpoint(file)
    G = build_generator(cfg, state, has_w_avg, source=file)
    return G.to(default_device(device))


def read_generator_checkpoint(file: Path) -> tuple[StyleGAN2Config, dict, bool]:
    """Parse a checkpoint into (config, state dict in our names, has trained w_avg)."""
    kind = sniff_format(file)
    if kind == "safetensors":
        return _read_safetensors(file)
    if kind == "torch-zip" or kind == "torch-legacy":
        return _from_torch_checkpoint(torch_load_safely(file), file)
    if kind == "pickle":
        return _read_network_pickle(file)
    raise CheckpointError(
        f"{file}: unknown checkpoint format (not a PyTorch checkpoint, a network pickle or a "
        "safetensors file). Supported: rosinality .pt/.pth, NVlabs .pkl, e4e .pt, .safetensors."
    )


def build_generator(cfg, state: dict, has_w_avg: bool, source="checkpoint"):
    """Instantiate the network (StyleGAN2, or EG3D for an EG3DConfig) and load `state`,
    with a clear error for any mismatch."""
    from targetclip_core.generators.eg3d import EG3DConfig, EG3DGenerator

    G = EG3DGenerator(cfg) if isinstance(cfg, EG3DConfig) else StyleGAN2Generator(cfg)
    load_state_checked(G, state, source)
    mapping = G.backbone.mapping if isinstance(G, EG3DGenerator) else G.mapping
    mapping.has_w_avg = has_w_avg
    G.eval().requires_grad_(False)
    return G


def save_generator(G: StyleGAN2Generator, path) -> None:
    """Write our `.safetensors` format: weights + config JSON in the metadata (atomic write)."""
    from safetensors.torch import save_file

    from targetclip_core.io.files import atomic_path

    is_3d = getattr(G, "is_3d", False)
    meta = {
        "format": EG3D_SAFETENSORS_FORMAT if is_3d else SAFETENSORS_FORMAT,
        "format_version": "1",
        "config": json.dumps(G.config.to_json_dict()),
        "has_w_avg": "1" if (G.backbone.mapping if is_3d else G.mapping).has_w_avg else "0",
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


# --------------------------------------------------------------------------- sniffing


def sniff_format(file: Path) -> str:
    """'safetensors', 'torch-zip', 'torch-legacy', 'pickle' or 'unknown', from the first bytes."""
    try:
        with open(file, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e.strerror or e})") from None
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 0 < header_len < os.path.getsize(file):
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol >= 2
        # torch's legacy format starts with a pickled magic number (a LONG1 opcode)
        if head[2:3] == b"\x8a" and int.from_bytes(head[4 : 4 + head[3]], "little") == _TORCH_LEGACY_MAGIC:
            return "torch-legacy"
        return "pickle"
    return "unknown"


def _resolve_path(path) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if p.exists():
        if p.is_dir():
            raise CheckpointError(f"{p} is a directory, not a checkpoint file")
        return p
    from targetclip_core.io import weights  # manifest names ("stylegan2-ffhq-config-f") resolve through the store

    return weights.resolve(str(path))


def default_device(device):
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --------------------------------------------------------------------------- torch.save files


def torch_load_safely(file: Path):
    """torch.load with weights_only=True (plus argparse.Namespace, which training scripts save)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"(?:Unsupported global|GLOBAL)[: ]+(?:GLOBAL )?([\w.]+)", msg)
        if m or "weights_only" in msg:
            what = m.group(1) if m else "a non-tensor object"
            raise UnsafePickleError(
                f"{file}: the checkpoint asks to import {what}, which is not on the allow-list "
                "of a weights file; nothing from it was executed. If you trust this file, "
                "re-save its state dict with torch.save(model.state_dict())."
            ) from None
        raise CheckpointError(f"{file}: corrupt or truncated PyTorch checkpoint ({msg.splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: corrupt or truncated PyTorch checkpoint ({str(e).splitlines()[0]})") from None


def _from_torch_checkpoint(ckpt, file) -> tuple[StyleGAN2Config, dict, bool]:
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{file}: expected a dict of tensors, found {type(ckpt).__name__}")
    latent_avg = ckpt.get("latent_avg")
    if "g_ema" in ckpt:
        sd = ckpt["g_ema"]
    elif "state_dict" in ckpt and any(k.startswith("decoder.") for k in ckpt["state_dict"]):
        # e4e / pSp: the generator lives under the 'decoder.' prefix
        sd = {k[len("decoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("decoder.")}
    elif any(k.startswith("synthesis_blocks.") for k in ckpt):
        raise CheckpointError(f"{file}: this looks like a raw state dict of our own model; save it with save_generator")
    elif any(k.startswith(("style.", "conv1.", "input.")) for k in ckpt):
        sd = ckpt
    else:
        keys = ", ".join(list(ckpt)[:6])
        raise CheckpointError(f"{file}: no StyleGAN2 generator found (top-level keys: {keys})")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{file}: 'g_ema' is a {type(sd).__name__}, expected a state dict")
    if latent_avg is not None and torch.is_tensor(latent_avg) and latent_avg.dim() == 2:
        latent_avg = latent_avg[0]  # e4e stores the average repeated over the W+ entries
    return rosinality_to_internal(sd, latent_avg, file)


def rosinality_to_internal(sd: dict, latent_avg, file) -> tuple[StyleGAN2Config, dict, bool]:
    """Translate rosinality/stylegan2-pytorch parameter names into ours (shapes squeezed to ours)."""
    not_tensors = [str(k) for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if not_tensors:
        raise CheckpointError(f"{file}: the generator state dict holds non-tensor entries: {_few(not_tensors)}")
    _require(sd, ["style.1.weight", "input.input", "conv1.conv.weight", "to_rgb1.conv.weight"], file, "rosinality StyleGAN2")
    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    n_rgbs = len([k for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    resolution = 2 ** (n_rgbs + 2)
    for key, dims in [("style.1.weight", 2), ("input.input", 4)] + [(f"convs.{2 * j}.conv.weight", 5) for j in range(n_rgbs)]:
        _require(sd, [key], file, "rosinality StyleGAN2")
        if sd[key].dim() != dims:
            raise CheckpointError(f"{file}: {key} has shape {list(sd[key].shape)}; a rosinality StyleGAN2 has {dims} dimensions there")
    w_dim = sd["style.1.weight"].shape[0]
    channels = {4: sd["input.input"].shape[1]}
    for j in range(n_rgbs):
        channels[2 ** (j + 3)] = sd[f"convs.{2 * j}.conv.weight"].shape[1]
    cfg = StyleGAN2Config(
        resolution=resolution, channels=channels, z_dim=sd["style.1.weight"].shape[1], w_dim=w_dim,
        n_mlp=n_mlp, source_format="rosinality",
    )
    kernel = fir_kernel_2d(cfg.blur_kernel)
    out = _TranslatedState()
    used = set()

    def take(src, dst, reshape=None):
        out.origin[dst] = src  # errors about `dst` name the key the user's file has
        if src not in sd:
            return
        t = sd[src]
        try:
            out[dst] = t.reshape(reshape) if reshape is not None else t
        except RuntimeError:
            raise CheckpointError(f"{file}: shape mismatch for {src}: file has {list(t.shape)}, "
                                  f"which does not fit {list(reshape)}") from None
        used.add(src)

    for i in range(n_mlp):
        take(f"style.{i + 1}.weight", f"mapping.fc{i}.weight")
        take(f"style.{i + 1}.bias", f"mapping.fc{i}.bias")
    take("input.input", "synthesis_blocks.b4.const", sd["input.input"].shape[1:])

    def layer(src, dst, noise_idx=None, rgb=False):
        w = sd.get(f"{src}.conv.weight")
        take(f"{src}.conv.weight", f"{dst}.conv.weight", None if w is None else w.shape[1:])
        take(f"{src}.conv.modulation.weight", f"{dst}.conv.affine.weight")
        take(f"{src}.conv.modulation.bias", f"{dst}.conv.affine.bias")
        if rgb:
            take(f"{src}.bias", f"{dst}.bias", [-1])
            _check_fir(sd, f"{src}.upsample.kernel", kernel * 4, used, file)
        else:
            take(f"{src}.noise.weight", f"{dst}.noise_strength", [])
            take(f"{src}.activate.bias", f"{dst}.bias")
            n = sd.get(f"noises.noise_{noise_idx}")
            take(f"noises.noise_{noise_idx}", f"{dst}.noise_const", None if n is None else n.shape[-2:])
            _check_fir(sd, f"{src}.conv.blur.kernel", kernel * 4, used, file)

    layer("conv1", "synthesis_blocks.b4.conv1", noise_idx=0)
    layer("to_rgb1", "synthesis_blocks.b4.torgb", rgb=True)
    for j in range(n_rgbs):
        blk = f"synthesis_blocks.b{2 ** (j + 3)}"
        layer(f"convs.{2 * j}", f"{blk}.conv0", noise_idx=2 * j + 1)
        layer(f"convs.{2 * j + 1}", f"{blk}.conv1", noise_idx=2 * j + 2)
        layer(f"to_rgbs.{j}", f"{blk}.torgb", rgb=True)
    _fill_missing_noise(out, cfg, file)
    unexpected = [k for k in sd if k not in used]
    if unexpected:
        raise CheckpointError(f"{file}: unexpected keys for a {resolution}px rosinality StyleGAN2: {_few(unexpected)}")
    has_w_avg = latent_avg is not None
    # without a trained average, truncation falls back to a sampled mean (see MappingNetwork)
    out["mapping.w_avg"] = torch.as_tensor(latent_avg).reshape(-1) if has_w_avg else torch.zeros(w_dim)
    return cfg, out, has_w_avg


def _check_fir(sd, key, expected, used, file):
    if key in sd:
        used.add(key)
        _require_fir(sd[key], expected, key, file)


def _require_fir(kernel, expected, key, file):
    """The resampling filter stored in a checkpoint must be the one the network is built with."""
    if kernel.shape != expected.shape or not torch.allclose(kernel.float(), expected, atol=1e-6):
        raise CheckpointError(f"{file}: {key} is not the [1,3,3,1] FIR kernel this implementation supports")


def _fill_missing_noise(out, cfg, file):
    """Older rosinality checkpoints carry no noise buffers: use seeded ones, and say so."""
    missing = []
    gen = torch.Generator().manual_seed(0)
    for res in cfg.resolutions:
        for ln in (["conv1"] if res == 4 else ["conv0", "conv1"]):
            key = f"synthesis_blocks.b{res}.{ln}.noise_const"
            if key not in out:
                out[key] = torch.randn(res, res, generator=gen)
                missing.append(key)
    if missing:
        warnings.warn(f"{file}: no stored noise buffers; noise_mode='const' uses seeded noise instead", stacklevel=3)


# --------------------------------------------------------------------------- NVlabs network pickles


def _read_network_pickle(file: Path) -> tuple[StyleGAN2Config, dict, bool]:
    from targetclip_core.formats.network_pickle import PersistentRecord, load_network_pickle

    try:
        data = load_network_pickle(file)
    except UnsafePickleError as e:
        if "dnnlib.tflib" in str(e):
            raise CheckpointError(
                f"{file}: a TensorFlow-era StyleGAN2 pickle (dnnlib.tflib). Use the PyTorch release of the "
                "same model (StyleGAN2-ADA-PyTorch .pkl or rosinality .pt; see weights/manifest.json)."
            ) from None
        raise
    net = data.get("G_ema") if isinstance(data, dict) else data
    if not isinstance(net, PersistentRecord):
        what = ", ".join(map(str, list(data)[:6])) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{file}: a pickle without a 'G_ema' network (found: {what})")
    return nvlabs_to_internal(net, file)


def nvlabs_to_internal(net, file) -> tuple[StyleGAN2Config, dict, bool]:
    """Translate an NVlabs StyleGAN2-ADA `Generator` record into our config and parameter names."""
    if net.class_name == "TriPlaneGenerator":
        from targetclip_core.generators.convert.eg3d import eg3d_to_internal

        return eg3d_to_internal(net, file)
    if net.class_name != "Generator":
        raise CheckpointError(f"{file}: G_ema is a {net.class_name}, not a StyleGAN2 Generator")
    sd = net.state_dict()
    # StyleGAN3 calls its network Generator too; its synthesis starts from Fourier features
    if "filtered_lrelu" in (net.module_src or "") or any(k.startswith("synthesis.input.") for k in sd):
        raise CheckpointError(f"{file}: a StyleGAN3 generator; only StyleGAN2 / StyleGAN2-ADA networks are supported")
    kw = net.init_kwargs
    syn_kw = dict(kw.get("synthesis_kwargs") or {})
    cfg = nvlabs_stylegan2_config(sd, kw, syn_kw, file, resolution=int(kw.get("img_resolution") or 0),
                                  img_channels=int(kw.get("img_channels", 3)))
    return cfg, nvlabs_stylegan2_state(sd, cfg, file), "mapping.w_avg" in sd


def nvlabs_stylegan2_config(sd, kw, syn_kw, file, *, resolution, img_channels, what="NVlabs StyleGAN2") -> StyleGAN2Config:
    """Config of an NVlabs `Generator` (StyleGAN2-ADA, or EG3D's backbone) from its init_kwargs and shapes."""
    map_kw = dict(kw.get("mapping_kwargs") or {})
    if syn_kw.get("architecture", "skip") != "skip":
        raise CheckpointError(f"{file}: synthesis architecture {syn_kw['architecture']!r} is not supported (only 'skip', used by every official model)")
    _require(sd, ["mapping.fc0.weight", "synthesis.b4.const"], file, what)
    res_list = [2**k for k in range(2, int(math.log2(max(resolution, 4))) + 1)]
    channels = {}
    for r in res_list:
        key = "synthesis.b4.const" if r == 4 else f"synthesis.b{r}.conv0.weight"
        _require(sd, [key], file, f"{resolution}px {what}")
        channels[r] = sd[key].shape[0]
    return StyleGAN2Config(
        resolution=resolution, channels=channels, z_dim=int(kw.get("z_dim", 512)), w_dim=int(kw.get("w_dim", 512)),
        c_dim=int(kw.get("c_dim", 0)), n_mlp=int(map_kw.get("num_layers", 8)),
        mapping_lr_mul=float(map_kw.get("lr_multiplier", 0.01)), conv_clamp=syn_kw.get("conv_clamp"),
        img_channels=img_channels, source_format="nvlabs-pkl",
    )


def nvlabs_stylegan2_state(sd, cfg: StyleGAN2Config, file) -> dict:
    """NVlabs `Generator` parameter names -> ours (FIR buffers checked and dropped)."""
    expected_filter = fir_kernel_2d(cfg.blur_kernel)
    out: dict = OrderedDict()
    for k, v in sd.items():
        if k.endswith("resample_filter"):
            _require_fir(v, expected_filter, k, file)
            continue
        if k.startswith("mapping."):
            out[k] = v
            continue
        m = re.fullmatch(r"synthesis\.(b\d+)\.(const|conv0|conv1|torgb)(?:\.(.+))?", k)
        if not m:
            out[k] = v  # reported as unexpected by the checked load
            continue
        blk, layer, rest = m.groups()
        if layer == "const":
            out[f"synthesis_blocks.{blk}.const"] = v
        else:
            out[nvlabs_layer_key(f"synthesis_blocks.{blk}.{layer}", rest)] = v
    return out


def nvlabs_layer_key(base: str, rest: str) -> str:
    """Our name of an NVlabs SynthesisLayer/ToRGBLayer entry: conv weight and affine live under `.conv`."""
    if rest in ("weight", "affine.weight", "affine.bias"):
        return f"{base}.conv.{rest}"
    return f"{base}.{rest}"  # bias, noise_strength, noise_const


# --------------------------------------------------------------------------- our safetensors


def _read_safetensors(file: Path) -> tuple[StyleGAN2Config, dict, bool]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") not in (SAFETENSORS_FORMAT, EG3D_SAFETENSORS_FORMAT):
                raise CheckpointError(
                    f"{file}: a safetensors file, but not a TargetCLIP StyleGAN2 or EG3D generator "
                    f"(metadata format={meta.get('format')!r})"
                )
            if meta["format"] == EG3D_SAFETENSORS_FORMAT:
                from targetclip_core.generators.eg3d import EG3DConfig

                cfg = EG3DConfig.from_json_dict(json.loads(meta["config"]))
            else:
                cfg = StyleGAN2Config.from_json_dict(json.loads(meta["config"]))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({e})") from None
    return cfg, state, meta.get("has_w_avg") == "1"


# --------------------------------------------------------------------------- checked state loading


class _TranslatedState(OrderedDict):
    """A state dict in our names that remembers each entry's key in the checkpoint file."""

    def __init__(self):
        super().__init__()
        self.origin: dict[str, str] = {}


def load_state_checked(model: torch.nn.Module, state: dict, source) -> None:
    """Load `state` into `model`, naming every mismatch clearly (by the file's own key names)."""
    origin = getattr(state, "origin", {})

    def name(k):
        return f"{origin[k]} (our {k})" if k in origin and origin[k] != k else k

    expected = model.state_dict()
    missing = [name(k) for k in expected if k not in state]
    unexpected = [name(k) for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not match the architecture ({'; '.join(parts)})")
    for k, ref in expected.items():
        t = state[k]
        if not torch.is_tensor(t):
            raise CheckpointError(f"{source}: {name(k)} is a {type(t).__name__}, expected a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: shape mismatch for {name(k)}: file has {list(t.shape)}, model expects {list(ref.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{source}: {name(k)} contains NaN or infinite values")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _require(sd, keys, file, what):
    missing = [k for k in keys if k not in sd]
    if missing:
        present = _few(list(sd))
        raise CheckpointError(f"{file}: not a {what} checkpoint: missing {_few(missing)} (it has {present})")


def _few(keys, n=5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
