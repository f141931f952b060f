"""The SAT3D training checkpoint (CHECKPOINT_FORMAT): the logits, the optimiser, the shared sampler
state and the loss log of a run, so that an interrupted run resumes where it stopped.

It also holds the channel pre-selection's gradient statistics ("preselect_statistics", see
preselect.PreselectStatistics.to_state; None without pre-selection).  While the statistics pass runs
the checkpoint is written after every image with step 0 and no logits or optimiser yet ("logits":
None), so a run stopped in the pass resumes it; once training starts the statistics stay in it."""

from __future__ import annotations

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.io.files import atomic_path

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
    """A training checkpoint's state, refused when it belongs to another run (attributes, layout)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise TargetCLIPError(f"{path}: unreadable SAT3D checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TargetCLIPError(f"{path}: not a SAT3D training checkpoint")
    if state["attributes"] != attributes or StyleLayout.from_json(state["layout"]) != layout:
        raise TargetCLIPError(f"{path}: checkpoint of another run (attributes {state['attributes']} or another generator layout); "
                              "delete it or pick another checkpoint path")
    if isinstance(state["rng"], list):  # older versions: one sampler state per process
        if len(state["rng"]) != 1:
            raise TargetCLIPError(f"{path}: written by a {len(state['rng'])}-process run of an older version, where each process "
                                  "drew its own pairs; it cannot be resumed under the global-batch sampler: delete it")
        state["rng"] = state["rng"][0]  # a single process's stream is the shared stream
    state.setdefault("preselect_statistics", None)  # older versions kept none
    return state


def check_objective(path, state: dict, objective: dict) -> None:
    """Refuse to resume a checkpoint written by other losses than `objective` (an older checkpoint carries none: the
    losses before they followed the paper), naming both."""
    saved = state.get("objective")
    if saved is None or saved.get("lambdas") != objective.get("lambdas") or saved.get("reduction") != objective.get("reduction"):
        was = saved.get("summary") if saved else "the losses before SAT3D followed its paper (no objective recorded)"
        raise TargetCLIPError(f"{path}: a checkpoint of other losses ({was}); this run uses {objective['summary']}. "
                              "Resume it with its own settings, or delete it to start over")
