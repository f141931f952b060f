"""`load_generator`: sniff a checkpoint's format and build the generator, never running its code.

Formats (one converter module each in generators/convert/):
  * rosinality `.pt`/`.pth`: {'g_ema': state_dict, 'latent_avg': ...} or a bare state dict
  * e4e / pSp checkpoints: {'state_dict': {'decoder.*': rosinality keys, ...}, 'latent_avg', 'opts'}
  * NVlabs StyleGAN2(-ADA), StyleGAN3 and EG3D network pickles: dict(G_ema=<persistent record>, ...)
  * the original TensorFlow StyleGAN2 pickles: (G, D, Gs) of dnnlib.tflib Networks, read as data
  * our `.safetensors`: our own parameter names, config as JSON in the metadata

Every path reads through `torch.load(weights_only=True)`, the restricted unpickler in
`formats.network_pickle`, or safetensors: none of them can execute code from the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from targetclip_core.devices import default_device
from targetclip_core.errors import CheckpointError, malformed_file
from targetclip_core.formats.checkpoints import build_checked, sniff_format, torch_load_safely
from targetclip_core.generators.convert.eg3d import eg3d_to_internal
from targetclip_core.generators.convert.nvlabs import nvlabs_to_internal
from targetclip_core.generators.convert.rosinality import stylegan2_from_torch_checkpoint
from targetclip_core.generators.convert.stylegan3 import is_stylegan3, stylegan3_to_internal
from targetclip_core.generators.eg3d import EG3DConfig, EG3DGenerator
from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from targetclip_core.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator
from targetclip_core.io.weights import resolve_checkpoint

SAFETENSORS_FORMAT = "targetclip.stylegan2"
EG3D_SAFETENSORS_FORMAT = "targetclip.eg3d"
STYLEGAN3_SAFETENSORS_FORMAT = "targetclip.stylegan3"
_SAFETENSORS_FORMATS = (SAFETENSORS_FORMAT, EG3D_SAFETENSORS_FORMAT, STYLEGAN3_SAFETENSORS_FORMAT)


# --------------------------------------------------------------------------- public entry points


def load_generator(path, device=None) -> StyleGAN2Generator:
    """Load a StyleGAN2 generator from any supported checkpoint (format sniffed) or a manifest name.

    `device=None` picks CUDA, then Apple MPS, then CPU.  The model is returned in eval mode
    with gradients disabled on its parameters (edits optimise latents, not weights).
    """
    file = resolve_checkpoint(path)
    checkpoint = read_generator_checkpoint(file)
    G = build_generator(checkpoint.config, checkpoint.state, checkpoint.has_w_avg, source=file)
    if checkpoint.tuned_from is not None:  # a pivotally tuned copy keeps the network it came from
        G.tuned_from = checkpoint.tuned_from
    return G.to(default_device(device))


class GeneratorCheckpoint(NamedTuple):
    config: object  # StyleGAN2Config / StyleGAN3Config / EG3DConfig
    state: dict  # in our parameter names
    has_w_avg: bool  # the file holds a trained w_avg
    tuned_from: dict | None = None  # our safetensors of a pivotally tuned copy: the network it was tuned from


def read_generator_checkpoint(file: Path) -> GeneratorCheckpoint:
    """Parse a checkpoint into its config, state dict in our names, whether it has a trained w_avg (and lineage)."""
    kind = sniff_format(file)
    with malformed_file(file, "generator checkpoint"):
        if kind == "safetensors":
            return _read_safetensors(file)
        if kind == "torch-zip" or kind == "torch-legacy":
            return GeneratorCheckpoint(*stylegan2_from_torch_checkpoint(torch_load_safely(file), file))
        if kind == "pickle":
            return GeneratorCheckpoint(*_read_network_pickle(file))
    raise CheckpointError(
        f"{file}: unknown checkpoint format (not a PyTorch checkpoint, a network pickle or a "
        "safetensors file). Supported: rosinality .pt/.pth, NVlabs .pkl, e4e .pt, .safetensors."
    )


def build_generator(cfg, state: dict, has_w_avg: bool, source="checkpoint"):
    """Instantiate the network its config names (StyleGAN2, StyleGAN3 or EG3D) and load `state`,
    with a clear error for any mismatch."""
    network = _network_class(cfg)
    G = build_checked(lambda: network(cfg), state, source)
    G.mapping_network.has_w_avg = has_w_avg
    G.eval().requires_grad_(False)
    return G


def save_generator(G: StyleGAN2Generator, path) -> None:
    """Write our `.safetensors` format: weights + config JSON in the metadata (atomic write, same bytes every time)."""
    from targetclip_core.io.safetensors_files import save_safetensors

    meta = {
        "format": _safetensors_format(G.config),
        "format_version": "1",
        "config": json.dumps(G.config.to_json_dict()),
        "has_w_avg": "1" if G.mapping_network.has_w_avg else "0",
    }
    tuned_from = getattr(G, "tuned_from", None)
    if isinstance(tuned_from, dict):  # a pivotally tuned copy keeps the network it came from (SAT3D matrices apply)
        meta["tuned_from"] = json.dumps(tuned_from, sort_keys=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    save_safetensors(tensors, path, metadata=meta)


def _network_class(cfg):
    networks = {StyleGAN2Config: StyleGAN2Generator, StyleGAN3Config: StyleGAN3Generator, EG3DConfig: EG3DGenerator}
    return networks[type(cfg)]


def _safetensors_format(cfg) -> str:
    formats = {StyleGAN2Config: SAFETENSORS_FORMAT, StyleGAN3Config: STYLEGAN3_SAFETENSORS_FORMAT,
               EG3DConfig: EG3D_SAFETENSORS_FORMAT}
    return formats[type(cfg)]


# --------------------------------------------------------------------------- NVlabs network pickles


def _read_network_pickle(file: Path) -> tuple[StyleGAN2Config, dict, bool]:
    from targetclip_core.formats.network_pickle import load_network_pickle
    from targetclip_core.formats.pickle_records import PersistentRecord
    from targetclip_core.generators.convert import tf_stylegan2

    data = load_network_pickle(file)
    if tf_stylegan2.is_tf_network_pickle(data):  # the original TensorFlow release: (G, D, Gs)
        return tf_stylegan2.tf_stylegan2_to_internal(data, file)
    net = data.get("G_ema") if isinstance(data, dict) else data
    if not isinstance(net, PersistentRecord):
        what = ", ".join(map(str, list(data)[:6])) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{file}: a pickle without a 'G_ema' network (found: {what})")
    if net.class_name == "TriPlaneGenerator":
        return eg3d_to_internal(net, file)
    if net.class_name == "Generator" and is_stylegan3(net):
        return stylegan3_to_internal(net, file)
    return nvlabs_to_internal(net, file)


# --------------------------------------------------------------------------- our safetensors


def _read_safetensors(file: Path) -> tuple[StyleGAN2Config, dict, bool]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") not in _SAFETENSORS_FORMATS:
                raise CheckpointError(
                    f"{file}: a safetensors file, but not a TargetCLIP StyleGAN2, StyleGAN3 or EG3D generator "
                    f"(metadata format={meta.get('format')!r})"
                )
            cfg = _config_from_metadata(meta, file)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({e})") from None
    return GeneratorCheckpoint(cfg, state, meta.get("has_w_avg") == "1", _lineage(meta, file))


def _lineage(meta: dict, file: Path) -> dict | None:
    """The `tuned_from` save_generator wrote for a pivotally tuned copy, checked; None for any other generator."""
    from targetclip_core.io.safetensors_files import meta_json

    info = meta_json(meta, "tuned_from", dict, file, "generator", default=None, error=CheckpointError)
    if info is None:
        return None
    if not (isinstance(info.get("fingerprint"), str) and len(info["fingerprint"]) == 64):
        raise CheckpointError(f"{file}: the metadata 'tuned_from' is not what save_generator writes")
    return {"fingerprint": info["fingerprint"], "describe": str(info.get("describe", "")),
            "identity": info.get("identity") if isinstance(info.get("identity"), dict) else {}}


def _config_from_metadata(meta: dict, file: Path):
    """The generator config our metadata's 'config' holds, every field checked."""
    config_class = {SAFETENSORS_FORMAT: StyleGAN2Config, EG3D_SAFETENSORS_FORMAT: EG3DConfig,
                    STYLEGAN3_SAFETENSORS_FORMAT: StyleGAN3Config}[meta["format"]]
    try:
        return config_class.from_json_dict(json.loads(meta.get("config", "")))
    except (ValueError, TypeError, KeyError) as e:
        detail = "not JSON" if isinstance(e, json.JSONDecodeError) else e
        raise CheckpointError(f"{file}: the metadata 'config' is not a valid generator configuration ({detail}); "
                              "the file was not written by save_generator, or was edited") from None
