"""NVlabs StyleGAN3 networks (`stylegan3-t-ffhqu-1024x1024.pkl`, `stylegan3-r-afhqv2-512x512.pkl`, ...):
a persistent `Generator` record of `training.networks_stylegan3` from the safe pickle reader, translated
into our StyleGAN3Config and parameter names.

The config comes from the record's init_kwargs (the synthesis arguments sit flat beside z_dim & co, as
that code base's Generator takes them); the layer plan our network derives from it must name the same
layers as the file's `synthesis.layer_names`, and the checked load compares every tensor's shape.
Filters, Fourier frequencies and phases, `magnitude_ema` and the user transform are loaded as stored.
"""

from __future__ import annotations

from targetclip_core.errors import CheckpointError
from targetclip_core.formats.checkpoints import TranslatedState, require_keys
from targetclip_core.generators.stylegan3 import StyleGAN3Config, synthesis_plan

_TOP_LEVEL = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs"}
# SynthesisNetwork / SynthesisLayer arguments -> our config field (None: no effect on the computation here)
_SYNTHESIS_ARGS = {
    "channel_base": "channel_base", "channel_max": "channel_max", "num_layers": "num_layers",
    "num_critical": "num_critical", "first_cutoff": "first_cutoff", "first_stopband": "first_stopband",
    "last_stopband_rel": "last_stopband_rel", "margin_size": "margin_size", "output_scale": "output_scale",
    "conv_kernel": "conv_kernel", "filter_size": "filter_size", "lrelu_upsampling": "lrelu_upsampling",
    "use_radial_filters": "use_radial_filters", "conv_clamp": "conv_clamp",
    "num_fp16_res": None,  # float16 on CUDA only; we compute in float32
    "magnitude_ema_beta": None,  # training only: the trained magnitude_ema buffers are loaded
}
_MAPPING_ARGS = {"num_layers": "n_mlp", "lr_multiplier": "mapping_lr_mul", "w_avg_beta": None,
                 "freeze_layers": None, "freeze_embed": None}


def is_stylegan3(net) -> bool:
    """A StyleGAN3 Generator record: Fourier-feature input (StyleGAN3 calls its network Generator too)."""
    return any(k.startswith("synthesis.input.") for k in net.state_dict())


def stylegan3_to_internal(net, file) -> tuple[StyleGAN3Config, dict, bool]:
    """Translate an NVlabs StyleGAN3 `Generator` record into (config, state dict in our names, has w_avg)."""
    kw = dict(net.init_kwargs)
    sd = net.state_dict()
    require_keys(sd, ["mapping.fc0.weight", "synthesis.input.weight", "mapping.w_avg"], file, "NVlabs StyleGAN3")
    unknown = sorted(k for k in kw if k not in _TOP_LEVEL and k not in _SYNTHESIS_ARGS)
    map_kw = dict(kw.get("mapping_kwargs") or {})
    unknown += sorted(f"mapping_kwargs.{k}" for k in map_kw if k not in _MAPPING_ARGS)
    if unknown:
        raise CheckpointError(f"{file}: StyleGAN3 init_kwargs {unknown} are not part of NVlabs' StyleGAN3 "
                              "(a modified network this loader would compute differently)")
    fields = {field: kw[arg] for arg, field in _SYNTHESIS_ARGS.items() if field and arg in kw}
    fields.update({field: map_kw[arg] for arg, field in _MAPPING_ARGS.items() if field and arg in map_kw})
    try:
        cfg = StyleGAN3Config(
            resolution=kw.get("img_resolution"), z_dim=kw.get("z_dim", 512), w_dim=kw.get("w_dim", 512),
            c_dim=kw.get("c_dim", 0), img_channels=kw.get("img_channels", 3), source_format="nvlabs-stylegan3-pkl",
            **fields,
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: StyleGAN3 init_kwargs are not a valid configuration: {e}") from None
    _check_layer_names(net, cfg, file)
    return cfg, _our_names(sd), True


def _check_layer_names(net, cfg: StyleGAN3Config, file) -> None:
    synthesis = net.state.get("_modules", {}).get("synthesis")
    stored = getattr(synthesis, "state", {}).get("layer_names")
    ours = [spec.name for spec in synthesis_plan(cfg)[1]]
    if stored is not None and list(stored) != ours:
        raise CheckpointError(f"{file}: the file's synthesis layers {list(stored)[:3]}... are not the ones its "
                              f"init_kwargs imply ({ours[:3]}...)")


def _our_names(sd) -> TranslatedState:
    out = TranslatedState(file_key=_file_key)
    for key, value in sd.items():
        if key.startswith("synthesis.input."):
            ours = "input." + key[len("synthesis.input."):]
        elif key.startswith("synthesis."):
            ours = "layers." + key[len("synthesis."):]
        else:
            ours = key  # mapping.*; anything else is reported as unexpected by the checked load
        out[ours] = value
        out.origin[ours] = key
    return out


def _file_key(ours: str) -> str:
    """NVlabs' name of one of our keys (for keys a file lacks)."""
    if ours.startswith("input."):
        return "synthesis." + ours
    if ours.startswith("layers."):
        return "synthesis." + ours[len("layers."):]
    return ours
