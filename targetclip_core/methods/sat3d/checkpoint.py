"""The SAT3D training checkpoint (CHECKPOINT_FORMAT): the logits, the optimiser, the shared sampler
state and the loss log of a run, so that an interrupted run resumes where it stopped."""

from __future__ import annotations

import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.io.files import atomic_path

CHECKPOINT_FORMAT = "targetclip.sat3d.checkpoint"


def save_checkpoint(path, G, attributes, layout, logits, opt, step, rng_state, batch_size, world, log, log_attribute,
                    preselection):
    """Write a training checkpoint atomically (process 0 of a data-parallel run)."""
    payload = {
        "format": CHECKPOINT_FORMAT, "attributes": attributes, "layout": layout.to_json(), "generator": dict(G.identity),
        "logits": logits.detach().cpu().clone(), "optimizer": opt.state_dict(), "step": step,
        "rng": rng_state,  # the shared sampler (the same on every process)
        "batch_size": batch_size, "processes": world,  # global batch; the number of processes is only a note
        "log": log, "log_attribute": log_attribute, "preselection": preselection,
    }
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
    return state
