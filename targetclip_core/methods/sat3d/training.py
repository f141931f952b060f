"""SAT3D training (Zhai et al. 2024, Secs. 3-4): learn the meta attribute mask matrix.

A bank of pre-sampled latents (6000 by default; their style codes are computed on the fly from
W, which holds the same information in 1/18 of the memory), one attribute per step
(|Omega| = 1), random source/reference pairs, Ranger (pytorch_optimizer) at lr 0.01, without
its gradient centralisation (see objective.ranger).  L_bg needs a region parser; without one it
is off and training warns so.  Attributes marked "complex" get channel pre-selection by gradient
statistics (see preselect; kept in the checkpoint, after every image while their pass runs).
Scale-out: data parallel under torchrun (see train_sat3d; helpers in distributed),
resumable from a checkpoint (see checkpoint).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from targetclip_core.errors import TargetCLIPError
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.methods.optimization import check_converged, check_run_settings
from targetclip_core.methods.sat3d.checkpoint import check_objective, load_checkpoint, save_checkpoint
from targetclip_core.methods.sat3d.descriptors import DescriptorSet, descriptor_info
from targetclip_core.methods.sat3d.distributed import any_process, distributed_rank_world, wrap_ddp
from targetclip_core.methods.sat3d.losses import LOSS_TERMS, check_lambdas, objective_info
from targetclip_core.methods.sat3d.matrix import SAT3DMatrix, attribute_mask, generator_fingerprint, initial_logits
from targetclip_core.methods.sat3d.objective import PairObjective, SAT3DStep, make_ready, ranger, render_resolution
from targetclip_core.methods.sat3d.preselect import preselect_channels, preselect_plan, statistics_regions
from targetclip_core.methods.sat3d.regions import RegionParser
from targetclip_core.methods.sat3d.training_set import checkpoint_entry, training_latents


# callers may sit inside no_grad or inference_mode (ComfyUI runs every node in inference mode)
@torch.inference_mode(False)
@torch.enable_grad()
def train_sat3d(
    G,
    measure,
    *,
    steps: int = 10000,
    batch_size: int = 4,
    lr: float = 0.01,
    n_codes: int = 6000,
    latent_bank: torch.Tensor | None = None,
    truncation: float = 1.0,
    seed: int = 0,
    lambdas: dict | None = None,
    reduction: str = "sum",
    parser: RegionParser | None = None,
    descriptors: DescriptorSet | None = None,
    preselect: bool = True,
    preselect_kwargs: dict | None = None,
    preselect_statistics: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    callback: Callable[[SAT3DStep], bool | None] | None = None,
    out_resolution="auto",
    filter_training_set: bool = True,
    training_set_kwargs: dict | None = None,
    precision: str = "fp32",
) -> SAT3DMatrix:
    """Learn the meta attribute mask matrix (Sec. 3-4).

    measure: the QMM (or any callable images -> {attribute: [group distributions]} with an
      `attributes` list).  latent_bank: W [N, w_dim] or W+ latents to draw pairs from (default
      n_codes samples of the mapping network with `truncation`, drawn with `seed`, filtered by the descriptor
      set's training-set rules as the paper, see training_set; a given bank is used as is).
    filter_training_set: False draws the bank unfiltered.  training_set_kwargs: for the filtering
      (training_set.training_latents): "on_batch" callable(done, total) after every scored batch of
      candidates (it may raise to stop), "max_candidates" (default 4 x n_codes), "batch_size", "scorer".
      The matrix records how the bank was drawn (SAT3DMatrix.training_set); the checkpoint keeps a
      filtered bank, so a resumed run does not filter again.
    lambdas: loss weights over the paper's {"attr": 3.5, "bg": 40, "prob": 0.1} (losses.DEFAULT_LAMBDAS);
      reduction: "sum" over attributes and groups (the paper) or "mean" (a variant, see losses).
      The matrix records them (SAT3DMatrix.objective); a checkpoint of other losses is not resumed.
    checkpoint: a file written every `checkpoint_every` steps and at the end; when it exists
      the run resumes from it (the same arguments give the same result as an uninterrupted run).
    callback: called every step with a SAT3DStep; returning True stops (a checkpoint is written).
    precision: the renders' (devices.PRECISIONS; fp32, the paper's, by default); the measure, the losses and
      the matrix stay fp32.
    preselect: channel pre-selection for the complex attributes (needs a parser): a gradient statistics pass over
      images of the bank first (see preselect).  preselect_kwargs: {"n_samples": images of the pass (default 32),
      "progress": callable(done, total) before the first and after every image (it may raise to stop; with a
      checkpoint the statistics so far are kept and the next run resumes the pass)}.  preselect_statistics: a
      statistics file, used when it exists (checked against the generator, regions, seed and settings), else
      written by the pass.
    batch_size: the GLOBAL batch of (source, reference) pairs per step, whatever the number of
      processes.
    Scale-out (data parallel): run one process per device under torchrun with torch.distributed
      initialised (gloo on CPU, nccl on GPUs) before calling (`targetclip sat3d-train` does it).
      Every step all processes draw the same global batch of pairs and the same attribute from
      one shared random stream (seeded by `seed`, as a single process draws them); process r
      trains on its contiguous shard, batch_size / processes pairs (batch_size must be divisible
      by the number of processes).  The mask module is wrapped in DistributedDataParallel, which
      averages the gradients; L_bg is divided by the global batch's background weight.  So N
      processes with global batch B learn the matrix one process learns with batch B (equal up to
      the order of float reductions).  The logged losses (and the callback's) are the global
      batch's means on every process.  Process 0 writes the checkpoint; it holds one sampler
      state, so a run can be resumed with another number of processes (same batch_size; a
      checkpoint of a multi-process run of an older version, which drew pairs per process,
      cannot be resumed).
    """
    check_run_settings(lr=lr, steps=steps, batch_size=batch_size, n_codes=n_codes, checkpoint_every=checkpoint_every)
    make_ready(G, measure)
    attributes = list(measure.attributes)
    descriptors, regions, complex_attrs = descriptor_info(measure, descriptors)
    lambdas = check_lambdas(lambdas, reduction)
    if parser is None and lambdas["bg"]:
        warnings.warn("SAT3D: L_bg is off: no region parser was given (a face parser is needed for the background loss: "
                      "faces.parsing.load_face_parser, sat3d-train --parser)",
                      stacklevel=2)
    if parser is not None and hasattr(parser, "check_regions"):  # an unknown region fails now, not mid-run
        parser.check_regions(sorted({r for r in regions.values() if r}))
    rank, world = distributed_rank_world()
    if batch_size < 1 or batch_size % world:
        raise TargetCLIPError(f"batch_size {batch_size} is the global batch of pairs per step: it must be a positive multiple "
                              f"of the number of processes ({world})")
    shard = slice(rank * batch_size // world, (rank + 1) * batch_size // world)  # this process's pairs of the global batch
    layout = StyleLayout.from_generator(G)
    res = render_resolution(G, measure) if out_resolution in ("auto", None) else int(out_resolution)
    objective = PairObjective(G, measure, layout, lambdas, parser, regions, res, world, reduction, precision=precision)
    losses_info = objective_info(lambdas, reduction, background=parser is not None)
    state = load_checkpoint(checkpoint, G, attributes, layout) if checkpoint and Path(checkpoint).is_file() else None
    if state is not None:
        check_objective(checkpoint, state, losses_info)
    if state is not None and state.get("batch_size", batch_size) != batch_size:
        raise TargetCLIPError(f"{checkpoint}: a run with a global batch of {state['batch_size']} pairs per step; resume it with "
                              f"batch_size {state['batch_size']} (the global batch, whatever the number of processes), not {batch_size}")
    bank, training_set = training_latents(G, measure, descriptors, n=n_codes, seed=seed, truncation=truncation,
                                          latent_bank=latent_bank, filter_training_set=filter_training_set, out_resolution=res,
                                          state=state, checkpoint=checkpoint, **(training_set_kwargs or {}))
    kept_training_set = checkpoint_entry(bank, training_set)
    if world > 1:  # every process draws its pairs from process 0's bank
        bank = bank.clone(memory_format=torch.contiguous_format)
        torch.distributed.broadcast(bank, 0)
    if state is None or state["logits"] is None:  # a new run, or one stopped in the pre-selection statistics pass
        preselected, strengths, how, statistics = {}, {}, "none", None
        # one stream shared by all processes (each draws the same global batch): what a single process draws
        fresh_rng = torch.Generator().manual_seed(seed).get_state()
        plan = preselect_plan(descriptors)
        if preselect and complex_attrs and parser is None:
            how = "skipped (no region parser)"
        elif preselect and plan:
            def keep_partial(stats):  # after every image of the pass: a run stopped in it resumes it
                if checkpoint and rank == 0:
                    save_checkpoint(checkpoint, G, attributes, layout, None, None, 0, fresh_rng, batch_size, world,
                                    {k: [] for k in LOSS_TERMS}, [], f"statistics pass, {stats.done} of {stats.n_samples} "
                                    "images", statistics=stats.to_state(),
                                    training_set=kept_training_set, objective=losses_info)

            picked = preselect_channels(G, layout, bank, parser, plan, statistics_regions(descriptors), seed=seed,
                                        out_resolution=res, resume=state and state["preselect_statistics"],
                                        statistics_file=preselect_statistics, write_file=rank == 0,
                                        on_image=keep_partial, **(preselect_kwargs or {}))
            preselected, strengths, how = picked.channels, picked.strengths, picked.summary
            statistics = picked.statistics.to_state()
        logits = initial_logits(attributes, layout.n_channels, preselected, strengths=strengths).to(G.device)
        state = {"logits": logits, "optimizer": None, "step": 0, "rng": fresh_rng,
                 "log": {k: [] for k in LOSS_TERMS}, "log_attribute": [], "preselection": how,
                 "preselect_statistics": statistics}
    module = MaskMatrixModule(state["logits"].clone().to(G.device), attributes)
    masker = module if world == 1 else wrap_ddp(module)  # DDP also broadcasts process 0's logits
    logits = module.logits
    opt = ranger([logits], lr)
    if state["optimizer"] is not None:
        opt.load_state_dict(state["optimizer"])
    rng = torch.Generator()
    rng.set_state(state["rng"])
    log, log_attribute = state["log"], state["log_attribute"]

    step = state["step"]
    stopped = False
    while step < steps and not stopped:
        pick = torch.randint(len(bank), (2, batch_size), generator=rng)  # the global batch, the same on every process
        target = [attributes[int(torch.randint(len(attributes), (1,), generator=rng))]]  # |Omega| = 1
        pick = pick[:, shard]
        c = objective.constants(G.to_wplus(bank[pick[0]]), G.to_wplus(bank[pick[1]]))
        terms = objective.with_mask(masker(target), target, c, logits=logits)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()  # under DDP the gradient is averaged over the processes here
        opt.step()
        step += 1
        values = torch.stack([terms[k].detach() for k in LOSS_TERMS])
        if world > 1:  # the global batch's means: the shards are equal, so the mean of the shards' means
            torch.distributed.all_reduce(values)
            values /= world
        for k, v in zip(LOSS_TERMS, values.tolist()):
            log[k].append(v)
        check_converged(log["total"][-1], f"SAT3D training (step {step})")  # before a NaN matrix is saved
        log_attribute.append(target[0])
        if callback is not None and callback(SAT3DStep(step, steps, target, {k: log[k][-1] for k in LOSS_TERMS},
                                                           logits.detach())):
            stopped = True
        if world > 1:  # one process stopping stops all (they must take the same steps)
            stopped = any_process(stopped)
        if checkpoint and (step % checkpoint_every == 0 or step >= steps or stopped):
            if rank == 0:
                save_checkpoint(checkpoint, G, attributes, layout, logits, opt, step, rng.get_state(), batch_size, world,
                                log, log_attribute, state["preselection"], statistics=state.get("preselect_statistics"),
                                training_set=kept_training_set, objective=losses_info)
            if world > 1:
                torch.distributed.barrier()

    return SAT3DMatrix(
        logits=logits.detach().cpu().clone(), attributes=attributes, layout=layout, generator=dict(G.identity),
        fingerprint=generator_fingerprint(G), descriptors=getattr(descriptors, "source", "") if descriptors else "",
        clip=getattr(getattr(measure, "clip", None), "identity", None), steps=step,
        losses={k: list(v) for k, v in log.items()}, preselection=state["preselection"], objective=losses_info,
        training_set=training_set,
    )


class MaskMatrixModule(nn.Module):
    """The trainable logits of M as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, logits: torch.Tensor, attributes: list[str]):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.attributes = list(attributes)

    def forward(self, target: list[str]) -> torch.Tensor:
        return attribute_mask(self.logits, self.attributes, target)
