"""Training the TargetCLIP essence encoder (paper Sec. 4, "Essence Encoder").

An e4e network is fine-tuned so that its output for a target image I_t is the essence b_t
of that target, used as G(w + b_t) for any source w.  The objective per target is the
optimiser's own (`optimize.essence_losses`), with the encoder's output as b:

    L = L_similarity + 0.5 L_consistency + 0.003 ||b||   over N = 5 fixed sources,

averaged over the batch; Ranger, lr 1e-4, constant, 3000 steps (the official coach).

Choices, and where they differ from TargetCLIP's `training/coach.py`:
* The encoder output is b itself: `start_from_latent_avg` is False, the default of the
  official option (its pSp wrapper adds latent_avg only when the option is set).  It is
  recorded in the checkpoint's opts, which `load_essence_encoder` reads.  At the start
  b = e4e's inversion of the target minus latent_avg: the target's offset from the mean
  face, the encoder's analogue of the optimiser's inverted-target initialisation.
* lambda_consistency 0.5 as in the paper (the coach's option defaults to 0.6).
* Edits render at the reduced resolution CLIP needs and the sources' CLIP codes are
  computed once (the coach renders 1024 px and re-encodes the sources every step).
* Target photos get CLIP's own preprocessing, as in `optimize_essence`.
* The L2 term is ||b_t|| per target; the coach adds the norm of the whole batch for every
  target (batch_size times heavier).
* Ranger keeps the SGD warm-up of the Ranger the coach used (`degenerated_to_sgd=True`):
  pytorch_optimizer's default would step uphill in the first steps.
* Batch order and flips are functions of (seed, step), so resuming from `last.pt` replays
  the uninterrupted run exactly with no generator state to carry.
* Validation runs at step 0 (the e4e starting point), every `val_every` steps and at the
  end; `global_step` counts finished steps (the coach saves it one lower).

Files in `out_dir`: `best_model.pt` (lowest validation loss), `last.pt` (every
`save_every` steps, at the end, and when stopped), `loss_log.csv`.  Both checkpoints use
the official e4e layout and load with `torch.load(weights_only=True)`; `best_model.pt`
carries no optimizer state (it is for inference, `last.pt` is for resuming).

Sizes: the encoder is the bulk (a real e4e: 267M parameters, 1.07 GB in fp32; the generator copy
of the official layout adds ~0.12 GB).  `last.pt` adds the optimizer's state, fp32 as a resume
replays it exactly: Ranger keeps two moments and its Lookahead slow weights per parameter.  An
optimizer buffer that equals the current weights (Ranger's slow weights right after a Lookahead
sync, every 6th step) or the init's weights (before the first sync) is not stored but named in
`optimizer_copies` and rebuilt on resume, bit for bit.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from targetclip_core.devices import default_device
from targetclip_core.encoders.e4e import EncoderCheckpoint, read_encoder_checkpoint
from targetclip_core.encoders.inversion import inverter_from_checkpoint
from targetclip_core.errors import CheckpointError, LatentError, TargetCLIPError
from targetclip_core.formats.checkpoints import (
    load_state_checked,
    sniff_format,
    torch_load_safely,
)
from targetclip_core.io.files import atomic_path
from targetclip_core.io.text import MiB, read_text
from targetclip_core.io.weights import resolve_checkpoint
from targetclip_core.methods.optimization import (
    check_converged,
    check_run_settings,
    loss_resolution,
    make_autograd_ready,
)
from targetclip_core.methods.targetclip.encoder_checkpoints import (  # noqa: F401  (re-exported)
    CHECKPOINT_FORMAT,
    RunFiles,
    check_resume_fields,
    checkpoint_dict,
    load_optimizer_state,
    read_resume,
    save_checkpoint,
    with_copies,
)
from targetclip_core.methods.targetclip.essence_encoder import EssenceEncoder
from targetclip_core.methods.targetclip.optimize import (
    LOSS_TERMS,
    essence_losses,
    sample_sources,
)
from targetclip_core.methods.targetclip.training_data import (
    batch_indices,
    flip_mask,
    prepare_data,
    read_training_image,
)

BEST_NAME, LAST_NAME, LOG_NAME = "best_model.pt", "last.pt", "loss_log.csv"
RESUMABLE_CHANGES = ("steps", "val_every", "save_every")  # may differ on resume: they do not change the updates
MAX_LOG_BYTES = 256 * MiB  # a row is ~80 bytes: millions of steps


@dataclass(frozen=True)
class EncoderTrainingConfig:
    steps: int = 3000
    lr: float = 1e-4
    batch_size: int = 4  # the coach's default; every step renders batch_size * n_sources edits
    n_sources: int = 5  # when sources are sampled from the generator
    truncation: float = 0.7  # of sampled sources
    lambdas: tuple = (1.0, 0.5, 0.003)  # similarity, consistency, l2
    optimizer: str = "ranger"  # or "adam"
    out_resolution: int | str = "auto"  # render resolution of the loss; auto = what CLIP needs
    val_fraction: float = 0.05  # held out of the training folder when no val_images are given
    max_val_images: int = 50  # the coach validates on at most ~50 batches
    val_every: int = 250
    save_every: int = 500
    flip: bool = True  # random horizontal flips of training images (e4e's transforms)
    start_from_latent_avg: bool = False
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "lambdas", tuple(float(x) for x in self.lambdas))
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.n_sources >= 1, "n_sources must be >= 1"),
            (len(self.lambdas) == 3, "lambdas are (similarity, consistency, l2)"),
            (self.optimizer in ("ranger", "adam"), f"optimizer must be 'ranger' or 'adam', got {self.optimizer!r}"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.max_val_images >= 1, "max_val_images must be >= 1"),
            (self.val_every >= 1 and self.save_every >= 1, "val_every and save_every must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise TargetCLIPError(message)


@dataclass
class TrainProgress:
    """What the callback receives after every training step."""

    step: int  # finished steps (1..steps)
    steps: int
    losses: dict  # term -> float, this step's batch mean
    val_losses: dict | None  # term -> float when this step validated
    best_val_loss: float | None
    best_step: int | None
    seconds: float  # wall time of this step (validation and saving included)


@dataclass
class TrainResult:
    encoder: EssenceEncoder  # the weights of the last finished step, in eval mode
    out_dir: Path
    best_path: Path
    last_path: Path
    log_path: Path
    global_step: int
    best_val_loss: float | None
    best_step: int | None
    stopped: bool  # True when the callback stopped the run early


# --------------------------------------------------------------------------- objective


class EssenceObjective:
    """The per-target essence loss of (target, b) pairs against fixed sources (paper Eqs. 5-7)."""

    def __init__(self, G, C, sources: torch.Tensor, lambdas, out_resolution="auto"):
        self.G, self.C, self.lambdas = G, C, lambdas
        self.resolution = loss_resolution(G, C, out_resolution)
        self.sources = sources
        with torch.no_grad():  # constant through the run
            self.source_codes = C.encode_image(G.synthesis(sources, out_resolution=self.resolution))

    @torch.no_grad()
    def target_codes(self, targets: torch.Tensor) -> torch.Tensor:
        return self.C.encode_image(targets, preprocess="default")  # photos: CLIP's own preprocessing

    def __call__(self, vectors: torch.Tensor, target_codes: torch.Tensor) -> dict:
        """vectors b [T, n_latent, w_dim] -> term -> [T] (differentiable in b)."""
        n_targets, n = vectors.shape[0], self.sources.shape[0]
        edits = self.sources[None] + vectors[:, None]  # G(w_s + b_t) for every pair
        images = self.G.synthesis(edits.flatten(0, 1), out_resolution=self.resolution)
        edit_codes = self.C.encode_image(images).view(n_targets, n, -1)
        return essence_losses(target_codes, self.source_codes, edit_codes, vectors, self.lambdas)


@torch.no_grad()
def evaluate(encoder: EssenceEncoder, objective: EssenceObjective, images, target_codes, batch_size) -> dict:
    """Mean loss terms over `images` in eval mode (no flips): the validation loss."""
    was_training = encoder.training
    encoder.eval()
    per_target = {k: [] for k in LOSS_TERMS}
    for i in range(0, images.shape[0], batch_size):
        losses = objective(encoder(images[i : i + batch_size]), target_codes[i : i + batch_size])
        for k in LOSS_TERMS:
            per_target[k].append(losses[k])
    encoder.train(was_training)
    return {k: float(torch.cat(v).mean()) for k, v in per_target.items()}


# --------------------------------------------------------------------------- log and checkpoints


class LossLog:
    """loss_log.csv: step, split, total, similarity, consistency, l2 — one row per train step and validation."""

    COLUMNS = ("step", "split") + LOSS_TERMS

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None or not path.is_file():
            with open(path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(self.COLUMNS)
        else:  # rows a stopped run wrote after its last save are replayed: drop them
            rows = [r for r in read_loss_log(path) if r["step"] <= resume_step]
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(self.COLUMNS)
                writer.writerows(log_row(r["step"], r["split"], r) for r in rows)

    def append(self, step: int, split: str, losses: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(log_row(step, split, losses))


def log_row(step: int, split: str, losses: dict) -> list:
    """One loss_log.csv row as it is written: the step, the split, then each loss term to 8 significant digits."""
    return [step, split] + [f"{losses[k]:.8g}" for k in LOSS_TERMS]


def read_loss_log(path) -> list[dict]:
    """The rows of a loss_log.csv, numbers as int/float; a file that is not such a log (not UTF-8, other columns, a
    row that does not parse) is refused naming the file and the line."""
    text = read_text(path, "training loss log", max_bytes=MAX_LOG_BYTES)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in LossLog.COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TargetCLIPError(f"{path}: not a training loss log (no column {', '.join(missing)}; it needs "
                              f"{', '.join(LossLog.COLUMNS)}): move it away to start a new log")
    rows = []
    for r in reader:
        try:
            if None in r or any(r[k] is None for k in LossLog.COLUMNS) or r["split"] not in ("train", "val"):
                raise ValueError("not a row of the log's columns")
            rows.append({"step": int(r["step"]), "split": r["split"], **{k: float(r[k]) for k in LOSS_TERMS}})
        except ValueError as e:
            raise TargetCLIPError(f"{path}: line {reader.line_num} of the training loss log does not parse ({e}): "
                                  "fix or remove that line, or move the log away to start a new one") from None
    return rows


# --------------------------------------------------------------------------- setup


def _generator_and_decoder(generator, init: EncoderCheckpoint, init_file: Path, device):
    """(G, rosinality decoder weights or None, where G came from); device None = the default device
    (a loaded generator module then stays where it is)."""
    from targetclip_core.generators.convert.rosinality import (
        stylegan2_from_torch_checkpoint,
    )
    from targetclip_core.generators.load import build_generator, load_generator

    if generator is None:
        decoder = _decoder_entries(init.raw["state_dict"])
        if not decoder:
            raise CheckpointError(f"{init_file}: the checkpoint holds no generator ('decoder.*'); pass the generator explicitly")
        # what load_generator(init_file) does, from the checkpoint already in memory (e4e files are ~1 GB)
        G = build_generator(*stylegan2_from_torch_checkpoint(init.raw, init_file), source=init_file)
        return G.to(default_device(device)), decoder, str(init_file)
    if isinstance(generator, torch.nn.Module):
        return (generator.to(device) if device is not None else generator), None, ""
    file = resolve_checkpoint(generator)
    return load_generator(file, device=device), _rosinality_state_of(file), str(file)


def _decoder_entries(state: dict) -> dict:
    return {k[len("decoder.") :]: v for k, v in state.items() if isinstance(k, str) and k.startswith("decoder.")}


def _rosinality_state_of(file: Path) -> dict | None:
    """The generator weights of a rosinality / e4e file, as stored (None for other formats)."""
    if sniff_format(file) not in ("torch-zip", "torch-legacy"):
        return None  # NVlabs pickles and our safetensors would need converting: the opts name the generator instead
    ckpt = torch_load_safely(file)
    if not isinstance(ckpt, dict):
        return None
    if isinstance(ckpt.get("g_ema"), dict):
        return dict(ckpt["g_ema"])
    if isinstance(ckpt.get("state_dict"), dict):
        return _decoder_entries(ckpt["state_dict"]) or None
    return dict(ckpt) if any(isinstance(k, str) and k.startswith("style.") for k in ckpt) else None


def _check_fits(cfg, G, init_file) -> None:
    if (cfg.n_styles, cfg.w_dim) != (G.n_latent, G.w_dim):
        raise TargetCLIPError(
            f"{init_file}: the encoder predicts {cfg.n_styles}x{cfg.w_dim} W+ codes, but the generator has "
            f"{G.n_latent}x{G.w_dim} ({G.resolution}px): use the e4e trained for this generator"
        )


def _training_sources(sources, G, cfg: EncoderTrainingConfig) -> tuple[torch.Tensor, str]:
    """(W+ sources [N, n_latent, w_dim] on G's device, how they were chosen)."""
    if sources is None:
        return sample_sources(G, cfg.n_sources, cfg.truncation, cfg.seed), f"sampled(n={cfg.n_sources}, truncation={cfg.truncation}, seed={cfg.seed})"
    described = ""
    if not torch.is_tensor(sources):
        from targetclip_core.generators.latents import (
            load_latents,  # the official file was saved on CUDA: read to CPU, weights only
        )

        described = str(sources)
        sources = load_latents(sources)
    return G.to_wplus(sources.detach().to(G.device).float().clone()), described or "tensor"


def _make_optimizer(name: str, params, lr: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    from pytorch_optimizer import Ranger

    # the Ranger of the coach (lessw2020's): SGD steps until the variance estimate is usable
    return Ranger(params, lr=lr, degenerated_to_sgd=True)


def _check_same_run(saved: dict, cfg: EncoderTrainingConfig, digest: str, models: dict, path: Path) -> None:
    """Refuse to resume with settings, data or models that would make a different run."""
    mine = asdict(cfg)
    theirs = saved["opts"]["targetclip_train"]
    changed = [f"{k}: {theirs.get(k)!r} -> {v!r}" for k, v in mine.items()
               if k not in RESUMABLE_CHANGES and _plain(theirs.get(k)) != _plain(v)]
    if changed:
        raise TargetCLIPError(f"{path}: resume with the run's own settings (changed: {'; '.join(changed)}), or use a new output folder")
    if saved["opts"].get("data_digest") != digest:
        raise TargetCLIPError(f"{path}: the training or validation images differ from the run being resumed")
    for what, identity in models.items():
        if saved["opts"].get(what) != identity:
            raise TargetCLIPError(f"{path}: the run used {what} {saved['opts'].get(what)}, not {identity}")


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _run_opts(init: EncoderCheckpoint, init_file, cfg, G, C, batch_size, n_sources, sources_from, generator_from, data) -> dict:
    """The checkpoint's opts: the official option names the e4e/TargetCLIP code reads, plus ours."""
    official = {
        "encoder_type": {"e4e": "Encoder4Editing", "psp": "GradualStyleEncoder"}[init.cfg.kind],
        "stylegan_size": G.resolution,
        "start_from_latent_avg": cfg.start_from_latent_avg,
        "learning_rate": cfg.lr,
        "optim_name": cfg.optimizer,
        "batch_size": batch_size,
        "max_steps": cfg.steps,
        "num_consistency": int(n_sources),
        "lambda_consistency": cfg.lambdas[1],
        "lambda_reg": cfg.lambdas[2],
        "val_interval": cfg.val_every,
        "save_interval": cfg.save_every,
        "checkpoint_path": str(init_file),
        "stylegan_weights": generator_from,
        "sources": sources_from,
        "train_decoder": False,
    }
    ours = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "lambda_similarity": cfg.lambdas[0],
        "generator": dict(G.identity),
        "clip": dict(C.identity),
        "loss_resolution": loss_resolution(G, C, cfg.out_resolution),
        "targetclip_train": asdict(cfg),
        **data,
    }
    return {**init.opts, **official, **ours}


# --------------------------------------------------------------------------- training


# callers may sit inside no_grad or inference_mode (ComfyUI runs every node in inference mode)
@torch.inference_mode(False)
@torch.enable_grad()
def train_essence_encoder(
    init,
    images,
    out_dir,
    *,
    generator=None,
    clip=None,
    sources=None,
    val_images=None,
    config: EncoderTrainingConfig | None = None,
    resume: bool = False,
    device=None,
    callback: Callable[[TrainProgress], bool | None] | None = None,
    **overrides,
) -> TrainResult:
    """Fine-tune an e4e checkpoint into a TargetCLIP essence encoder.

    init: an e4e checkpoint (official layout, e.g. e4e_ffhq_encode.pt) or a manifest name;
      the encoder starts from its weights, the generator defaults to the decoder stored in it.
    images: a folder (every .jpg/.jpeg/.png/.webp under it) or a list of image files.
    out_dir: where best_model.pt, last.pt and loss_log.csv go.
    generator: a checkpoint path or a loaded generator (default: the one in `init`).
    clip: a CLIPEncoder (default: ViT-B-32 openai).
    sources: W+ latents [N, n_latent, w_dim] or a latent file (e.g. the official
      encoder_sources_5.pt); default: config.n_sources truncated samples of the generator.
    val_images: a folder or list for validation; default: config.val_fraction held out of
      `images` (the training images themselves when too few to hold any out).
    config / **overrides: EncoderTrainingConfig, or its fields as keywords (steps=..., lr=...).
    resume: continue the run in out_dir from last.pt (same settings; `steps` may grow).
    callback: called after every step with a TrainProgress; returning False stops the run
      (last.pt is written first); an exception raised in it also writes last.pt, then propagates.
    """
    cfg = replace(config or EncoderTrainingConfig(), **overrides)
    check_run_settings(lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size)
    out = Path(out_dir)
    last_path, best_path, log_path = out / LAST_NAME, out / BEST_NAME, out / LOG_NAME
    if not resume and last_path.exists():
        raise TargetCLIPError(f"{out} already holds a training run (last.pt): resume it, or choose another output folder")
    saved = read_resume(last_path) if resume else None

    init_file = resolve_checkpoint(init)
    init_ckpt = read_encoder_checkpoint(init_file)
    G, decoder_state, generator_from = _generator_and_decoder(
        generator, init_ckpt, init_file, None if device is None else default_device(device))
    _check_fits(init_ckpt.cfg, G, init_file)
    if clip is None:
        from targetclip_core.encoders.clip import load_clip

        clip = load_clip("ViT-B-32", "openai", device=G.device)
    C = clip.to(G.device)
    for module in (G, C):
        make_autograd_ready(module)
    G.requires_grad_(False)  # the generator stays frozen, as in the coach (train_decoder False)

    data = prepare_data(images, val_images, val_fraction=cfg.val_fraction, max_val_images=cfg.max_val_images, seed=cfg.seed)
    size, batch_size = init_ckpt.cfg.input_size, min(cfg.batch_size, len(data.train))
    if saved is not None:  # the run's own sources, whatever is passed now
        _check_same_run(saved, cfg, data.digest, {"generator": G.identity, "clip": C.identity}, last_path)
        source_latents, sources_from = saved["sources"].to(G.device).float(), saved["opts"]["sources"]
        try:
            G.check_wplus(source_latents)
        except LatentError as e:
            raise LatentError(f"{last_path}: the run's sources: {e}") from None
    else:
        source_latents, sources_from = _training_sources(sources, G, cfg)
    objective = EssenceObjective(G, C, source_latents, cfg.lambdas, cfg.out_resolution)

    inverter = inverter_from_checkpoint(init_ckpt, init_file, add_latent_avg=cfg.start_from_latent_avg)
    encoder = EssenceEncoder(inverter).to(G.device).requires_grad_(True)
    params = list(encoder.parameters())
    optimizer = _make_optimizer(cfg.optimizer, params, cfg.lr)
    # the init's weights in parameter order (the checkpoint already in memory: no copy), for optimizer_copies
    init_params = [init_ckpt.state[name] for name, _ in encoder.net.encoder.named_parameters()]

    opts = _run_opts(init_ckpt, init_file, cfg, G, C, batch_size, source_latents.shape[0], sources_from, generator_from,
                     {**data.summary(), "input_size": size})
    raw_avg = init_ckpt.raw.get("latent_avg")
    run = RunFiles(decoder_state, raw_avg.detach().cpu() if torch.is_tensor(raw_avg) else None, opts,
                    source_latents.detach().cpu())

    step, best, best_step = 0, None, None
    if saved is not None:
        load_state_checked(encoder.net.encoder, {k[len("encoder.") :]: v for k, v in saved["state_dict"].items()
                                                 if k.startswith("encoder.")}, f"{last_path} (encoder)")
        optimizer_state = with_copies(saved["optimizer"], saved.get("optimizer_copies", []), params, init_params, last_path)
        load_optimizer_state(optimizer, optimizer_state, last_path)
        step, best, best_step = int(saved["global_step"]), saved["best_val_loss"], saved["best_step"]
    out.mkdir(parents=True, exist_ok=True)
    log = LossLog(log_path, step if saved is not None else None)

    val_targets = torch.stack([read_training_image(f, size) for f in data.val]).to(G.device)
    val_codes = objective.target_codes(val_targets)

    def validate(at: int) -> dict:
        nonlocal best, best_step
        losses = evaluate(encoder, objective, val_targets, val_codes, batch_size)
        log.append(at, "val", losses)
        if best is None or losses["total"] < best:
            best, best_step = losses["total"], at
            save_checkpoint(best_path, checkpoint_dict(encoder, run, at, best, best_step))
        return losses

    def save_last(at: int) -> None:
        save_checkpoint(last_path, checkpoint_dict(encoder, run, at, best, best_step, optimizer, init_params))

    if step == 0:
        validate(0)  # the e4e starting point, as a baseline
    stopped = False
    encoder.train()  # BatchNorm on batch statistics, as the coach trains
    while step < cfg.steps:
        started = time.perf_counter()
        targets = _training_batch(data.train, step, batch_size, size, cfg).to(G.device)
        train_losses = _train_step(encoder, objective, optimizer, targets)
        check_converged(train_losses["total"], f"encoder training (step {step + 1})")  # before a NaN encoder is saved
        step += 1
        log.append(step, "train", train_losses)
        val_losses = validate(step) if (step % cfg.val_every == 0 or step == cfg.steps) else None
        saved_now = step % cfg.save_every == 0 or step == cfg.steps
        if saved_now:
            save_last(step)
        if callback is None:
            continue
        progress = TrainProgress(step, cfg.steps, train_losses, val_losses, best, best_step, time.perf_counter() - started)
        try:
            keep_going = callback(progress)
        except BaseException:
            if not saved_now:
                save_last(step)
            raise
        if keep_going is False:
            if not saved_now:
                save_last(step)
            stopped = True
            break

    encoder.eval()
    return TrainResult(encoder, out, best_path, last_path, log_path, step, best, best_step, stopped)


def _train_step(encoder, objective: EssenceObjective, optimizer, targets: torch.Tensor) -> dict:
    """One update on a batch of targets; returns the batch-mean loss terms before it."""
    losses = objective(encoder(targets), objective.target_codes(targets))
    optimizer.zero_grad(set_to_none=True)
    losses["total"].mean().backward()
    optimizer.step()
    return {k: float(v.detach().mean()) for k, v in losses.items()}


def _training_batch(files, step: int, batch_size: int, size: int, cfg: EncoderTrainingConfig) -> torch.Tensor:
    """The (flipped) images of training step `step` (0-based): [B, 3, size, size] in [-1, 1]."""
    batch = torch.stack([read_training_image(files[i], size) for i in batch_indices(step, len(files), batch_size, cfg.seed)])
    if cfg.flip:
        flips = flip_mask(step, batch_size, cfg.seed)
        batch[flips] = batch[flips].flip(-1)
    return batch
