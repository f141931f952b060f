"""Tiny e4e/pSp encoders and official-layout checkpoint files for tests."""

from __future__ import annotations

import torch

from targetclip_core.encoders.e4e import EncoderConfig, StyleEncoder

TINY_STAGES = ((8, 8, 1), (8, 16, 2), (16, 24, 2), (24, 32, 1))  # stage widths must differ (see encoders)


def official_checkpoint(path, encoder_state, latent_avg=None, decoder_state=None, **opts):
    """An e4e/pSp checkpoint file in the official layout: torch.save({'state_dict', 'latent_avg', 'opts'})."""
    sd = {f"encoder.{k}": v for k, v in encoder_state.items()}
    if decoder_state is not None:
        sd.update({f"decoder.{k}": v for k, v in decoder_state.items()})
    ckpt = {"state_dict": sd, "opts": {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True, **opts}}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    torch.save(ckpt, path)
    return path


def tiny_encoder(kind="e4e", n_styles=8, w_dim=32, input_size=64, seed=0) -> StyleEncoder:
    torch.manual_seed(seed)
    enc = StyleEncoder(EncoderConfig(kind, n_styles, w_dim, TINY_STAGES, input_size)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for name, buf in enc.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return enc
