"""The files of an essence-encoder training run: what `best_model.pt` and `last.pt` hold, and reading
`last.pt` back for a resume (see encoder_training for the run itself).

Both are the official e4e layout (`{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}`) plus the
run's step, best validation loss and sources; `last.pt` adds the optimizer state.  The optimizer's buffers are
fp32, as an exact resume needs, except those equal bit for bit to the saved weights (Ranger's Lookahead slow
weights right after a sync) or to the init's weights (before the first sync): those are named in
`optimizer_copies` and rebuilt on resume instead of stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from targetclip_core.errors import CheckpointError, TargetCLIPError
from targetclip_core.formats.checkpoints import torch_load_safely
from targetclip_core.io.files import atomic_path
from targetclip_core.methods.targetclip.essence_encoder import (
    ESSENCE_FORMAT,
    EssenceEncoder,
)

CHECKPOINT_FORMAT = ESSENCE_FORMAT  # opts.format of both files


@dataclass
class RunFiles:
    """What every checkpoint of the run repeats besides the encoder weights."""

    decoder_state: dict | None  # rosinality-layout generator weights, when the generator came from such a file
    latent_avg: torch.Tensor | None
    opts: dict
    sources: torch.Tensor


def checkpoint_dict(encoder: EssenceEncoder, run: RunFiles, step: int, best, best_step, optimizer=None, init_params=None) -> dict:
    state = {f"encoder.{k}": v.detach().cpu() for k, v in encoder.net.encoder.state_dict().items()}
    if run.decoder_state:
        state.update({f"decoder.{k}": v for k, v in run.decoder_state.items()})
    ckpt = {"state_dict": state, "opts": run.opts, "global_step": step, "best_val_loss": best, "best_step": best_step,
            "sources": run.sources}
    if run.latent_avg is not None:
        ckpt["latent_avg"] = run.latent_avg
    if optimizer is not None:
        ckpt["optimizer"], ckpt["optimizer_copies"] = without_copies(optimizer.state_dict(), list(encoder.parameters()),
                                                                      init_params)
    return ckpt


COPY_SOURCES = ("param", "init")  # what an elided optimizer buffer equals: the saved weights, or the init's


def without_copies(state: dict, params: list, init_params: list | None) -> tuple[dict, list]:
    """(optimizer state_dict without the buffers that equal, bit for bit, their parameter or its init value;
    [[param index, buffer name, 'param' | 'init'], ...] naming them). The live state is left untouched."""
    kept, copies = {}, []
    for index, buffers in state["state"].items():
        p, p0 = params[index].detach(), None if init_params is None else init_params[index]
        own = {}
        for name, value in buffers.items():
            same = torch.is_tensor(value) and value.shape == p.shape and value.dtype == p.dtype and value.numel() > 1
            if same and torch.equal(value, p):
                copies.append([index, name, "param"])
            elif same and p0 is not None and torch.equal(value, p0.to(value.device, value.dtype)):
                copies.append([index, name, "init"])
            else:
                own[name] = value
        kept[index] = own
    return {**state, "state": kept}, copies


def with_copies(state: dict, copies: list, params: list, init_params: list, path) -> dict:
    """The optimizer state_dict of a last.pt with its elided buffers rebuilt (see without_copies)."""
    full = {index: dict(buffers) for index, buffers in state["state"].items()}
    for index, name, source in copies:
        if index not in full:
            raise CheckpointError(f"{path}: damaged essence-encoder training checkpoint (optimizer_copies names "
                                  f"parameter {index}, which has no optimizer state)")
        if index >= len(params):
            raise CheckpointError(f"{path}: its optimizer_copies name parameter {index}; this encoder has {len(params)}")
        value = params[index] if source == "param" else init_params[index]
        full[index][name] = value.detach().to(params[index].device, params[index].dtype).clone()
    return {**state, "state": full}


def save_checkpoint(path: Path, ckpt: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def read_resume(path: Path) -> dict:
    """last.pt of a run, read as data and its fields checked (types and shapes) before any is used."""
    if not path.is_file():
        raise TargetCLIPError(f"{path}: nothing to resume (no last.pt in the output folder)")
    ckpt = torch_load_safely(path)
    opts = ckpt.get("opts") if isinstance(ckpt, dict) else None
    if not isinstance(opts, dict) or opts.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ckpt:
        raise CheckpointError(f"{path}: not a resumable essence-encoder training checkpoint")
    check_resume_fields(ckpt, path)
    return ckpt


def check_resume_fields(ckpt: dict, path) -> None:
    """Refuse a last.pt whose fields would fail (or mislead) a resumed run, naming the field."""
    def bad(why: str):
        return CheckpointError(f"{path}: damaged essence-encoder training checkpoint ({why}): resume from a good copy "
                               "or use a new output folder")

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    opts, state, sources = ckpt["opts"], ckpt.get("state_dict"), ckpt.get("sources")
    settings = opts.get("targetclip_train")
    if (not isinstance(settings, dict) or not isinstance(opts.get("sources"), str)
            or not all(isinstance(v, (type(None), bool, int, float, str, list, tuple)) for v in settings.values())):
        raise bad("its opts lack the run's settings ('targetclip_train') or sources")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise bad("'state_dict' is not a dict of tensors")
    if not isinstance(ckpt["optimizer"], dict) or not isinstance(ckpt["optimizer"].get("state"), dict):
        raise bad("'optimizer' is not an optimizer state_dict")
    step, best, best_step = ckpt.get("global_step"), ckpt.get("best_val_loss"), ckpt.get("best_step")
    if not whole(step):
        raise bad(f"global_step {step!r} is not a whole number >= 0")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float)) or not math.isfinite(best)):
        raise bad(f"best_val_loss {best!r} is not a finite number")
    if best_step is not None and (not whole(best_step) or best_step > step) or (best is None) != (best_step is None):
        raise bad(f"best_step {best_step!r} does not go with best_val_loss {best!r} at step {step}")
    if (not torch.is_tensor(sources) or not sources.is_floating_point() or sources.dim() != 3 or not len(sources)
            or not bool(torch.isfinite(sources).all())):
        raise bad("'sources' are not finite W+ latents [N, n_latent, w_dim]")
    copies = ckpt.get("optimizer_copies", [])
    if not isinstance(copies, list) or not all(
            isinstance(c, list) and len(c) == 3 and whole(c[0]) and isinstance(c[1], str) and c[2] in COPY_SOURCES
            for c in copies):
        raise bad("'optimizer_copies' is not a list of [parameter index, buffer name, 'param' | 'init']")


def load_optimizer_state(optimizer, state: dict, path) -> None:
    """optimizer.load_state_dict(state), refused (CheckpointError naming the file) when the state does not fit the
    optimizer's parameters: other groups, or buffers of other shapes than their parameters."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its optimizer state does not fit this encoder ({type(e).__name__}: {e})") from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.numel() > 1 and value.shape != param.shape:
                    raise CheckpointError(f"{path}: its optimizer's {name!r} has shape {list(value.shape)} for a "
                                          f"parameter of shape {list(param.shape)}: damaged or of another encoder")
