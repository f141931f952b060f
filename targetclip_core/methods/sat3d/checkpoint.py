"""The SAT3D training checkpoint (CHECKPOINT_FORMAT): the logits, the optimiser, the shared sampler
state and the loss log of a run, so that an interrupted run resumes where it stopped.

It also holds the channel pre-selection's gradient statistics ("preselect_statistics", see
preselect.PreselectStatistics.to_state; None without pre-selection).  While the statistics pass runs
the checkpoint is written after every image with step 0 and no logits or optimiser yet ("logits":
None), so a run stopped in the pass resumes it; once training starts the statistics stay in it.

A checkpoint is read as data (formats.checkpoints.torch_load_safely) and every field is checked before a resumed
run uses it (check_checkpoint_fields): one of another run, another format or a damaged one is refused by name."""

from __future__ import annotations

from pathlib import Path

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.formats.checkpoints import torch_load_safely
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.io.files import atomic_path
from targetclip_core.methods.sat3d.losses import LOSS_TERMS
from targetclip_core.methods.sat3d.matrix import style_layout_from_json
from targetclip_core.methods.sat3d.preselect import check_statistics_state

CHECKPOINT_FORMAT = "targetclip.sat3d.checkpoint"


def save_checkpoint(path, G, attributes, layout, logits, opt, step, rng_state, batch_size, world, log, log_attribute,
                    preselection, training_set=None, statistics=None, objective=None):
    """Write a training checkpoint atomically (process 0 of a data-parallel run).  training_set: how the bank was
    drawn (training_set.checkpoint_entry: its report, and the bank itself when filtered), so a resumed run keeps it.
    statistics: the pre-selection's PreselectStatistics.to_state(); logits and opt are None while its pass runs.
    objective: the losses' description (losses.objective_info); a run of other losses is not resumed from it."""
    payload = {
        "format": CHECKPOINT_FORMAT, "attributes": attributes, "layout": layout.to_json(), "generator": dict(G.identity),
        "logits": None if logits is None else logits.detach().cpu().clone(),
        "optimizer": None if opt is None else opt.state_dict(), "step": step,
        "rng": rng_state,  # the shared sampler (the same on every process)
        "batch_size": batch_size, "processes": world,  # global batch; the number of processes is only a note
        "log": log, "log_attribute": log_attribute, "preselection": preselection, "preselect_statistics": statistics,
    }
    if training_set is not None:  # absent in older checkpoints: their bank was drawn unfiltered
        payload["training_set"] = training_set
    if objective is not None:  # absent in older checkpoints: written by the pre-paper losses
        payload["objective"] = objective
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, G, attributes, layout) -> dict:
    """A training checkpoint's state, read as data (formats.checkpoints.torch_load_safely), refused when it belongs
    to another run (attributes, layout) or when a field is not of the type and shape training needs."""
    try:
        state = torch_load_safely(Path(path))
    except TargetCLIPError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise TargetCLIPError(f"{path}: unreadable SAT3D checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TargetCLIPError(f"{path}: not a SAT3D training checkpoint")
    missing = [k for k in ("attributes", "layout", "logits", "optimizer", "step", "rng", "log", "log_attribute",
                           "preselection") if k not in state]
    if missing:
        raise TargetCLIPError(f"{path}: incomplete SAT3D training checkpoint (no {', '.join(missing)}): delete it or "
                              "pick another checkpoint path")
    saved_layout = style_layout_from_json(state["layout"], path)
    if not isinstance(state["attributes"], list) or state["attributes"] != list(attributes) or saved_layout != layout:
        raise TargetCLIPError(f"{path}: checkpoint of another run (attributes {str(state['attributes'])[:200]} or another "
                              "generator layout); delete it or pick another checkpoint path")
    if isinstance(state["rng"], list):  # older versions: one sampler state per process
        if len(state["rng"]) != 1:
            raise TargetCLIPError(f"{path}: written by a {len(state['rng'])}-process run of an older version, where each process "
                                  "drew its own pairs; it cannot be resumed under the global-batch sampler: delete it")
        state["rng"] = state["rng"][0]  # a single process's stream is the shared stream
    state.setdefault("preselect_statistics", None)  # older versions kept none
    check_checkpoint_fields(state, path, attributes, layout)
    return state


def check_checkpoint_fields(state: dict, path, attributes: list[str], layout: StyleLayout) -> None:
    """Refuse a checkpoint whose fields would fail (or mislead) a resumed run: logits [(m+1), n] finite or None, an
    optimiser state for them, a step count, the sampler's state, a loss log of one entry per step, the pre-selection
    statistics and training set of their types."""
    def bad(why: str):
        return TargetCLIPError(f"{path}: damaged SAT3D training checkpoint ({why}): delete it or pick another "
                               "checkpoint path")

    step, logits, opt = state["step"], state["logits"], state["optimizer"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"step {step!r} is not a whole number >= 0")
    shape = (len(attributes) + 1, layout.n_channels)
    if logits is not None:
        if not torch.is_tensor(logits) or not logits.is_floating_point() or tuple(logits.shape) != shape:
            raise bad(f"logits must be a float tensor {list(shape)}, got "
                      f"{list(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
        if not bool(torch.isfinite(logits).all()):
            raise bad("logits hold NaN or infinite values")
    if (logits is None) != (opt is None):
        raise bad("logits and optimizer state must be stored together")
    if opt is not None:
        check_optimizer_state(opt, shape, bad)
    batch = state.get("batch_size", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise bad(f"batch_size {batch!r}")
    try:  # the sampler state as torch.Generator takes it
        torch.Generator().set_state(state["rng"])
    except (TypeError, RuntimeError, ValueError):
        raise bad("the sampler state is not a CPU random generator state") from None
    log, log_attribute = state["log"], state["log_attribute"]
    if (not isinstance(log, dict) or not set(LOSS_TERMS) <= set(log)
            or not all(isinstance(v, list) and len(v) == step and all(_number(x) for x in v) for v in log.values())):
        raise bad(f"the loss log must hold {', '.join(LOSS_TERMS)}, {step} numbers each")
    if not isinstance(log_attribute, list) or len(log_attribute) != step or not all(a in attributes for a in log_attribute):
        raise bad(f"the attribute log must name one of {', '.join(attributes)} per step ({step})")
    if not isinstance(state["preselection"], str):
        raise bad("the pre-selection summary is not text")
    if state["preselect_statistics"] is not None:
        check_statistics_state(state["preselect_statistics"], path)
    for key in ("objective", "training_set"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise bad(f"{key} is {type(state[key]).__name__}, not a dict")
    kept = state.get("training_set")
    if kept is not None:
        bank = kept.get("bank")
        if not isinstance(kept.get("report"), dict):
            raise bad("the training set has no report")
        if bank is not None and (not torch.is_tensor(bank) or not bank.is_floating_point() or bank.dim() not in (2, 3)
                                 or not len(bank) or not bool(torch.isfinite(bank).all())):
            raise bad("the training set's latent bank is not a finite float tensor [N, ...] of W or W+ latents")


def check_optimizer_state(opt, shape: tuple, bad) -> None:
    """Refuse an optimiser state_dict that is not one of a single parameter of `shape` (its buffers of that shape or
    scalars)."""
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        raise bad("the optimizer state is not an optimizer state_dict")
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"]):
        raise bad("the optimizer's parameter groups are malformed")
    for per_param in opt["state"].values():
        if not isinstance(per_param, dict):
            raise bad("the optimizer state of the logits is malformed")
        for name, value in per_param.items():
            if torch.is_tensor(value) and value.numel() > 1 and tuple(value.shape) != shape:
                raise bad(f"the optimizer's {name!r} has shape {list(value.shape)}, not the logits' {list(shape)}")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_objective(path, state: dict, objective: dict) -> None:
    """Refuse to resume a checkpoint written by other losses than `objective` (an older checkpoint carries none: the
    losses before they followed the paper), naming both."""
    saved = state.get("objective")
    if saved is None or saved.get("lambdas") != objective.get("lambdas") or saved.get("reduction") != objective.get("reduction"):
        was = saved.get("summary") if saved else "the losses before SAT3D followed its paper (no objective recorded)"
        raise TargetCLIPError(f"{path}: a checkpoint of other losses ({was}); this run uses {objective['summary']}. "
                              "Resume it with its own settings, or delete it to start over")
