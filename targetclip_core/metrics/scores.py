"""Scores of essence edits (TargetCLIP, Sec. 5 / Table 1): pure functions on tensors, plus thin
wrappers that take the models.

With I_s a source, I_t the target and I_st the edit of I_s with the target's essence:
    semantic      <C(I_t), C(I_st)>       CLIP image codes, per edit
    ID source     <A(I_s), A(I_st)>       ArcFace embeddings (ArcFace.embed), per edit
    ID target     <A(I_t), A(I_st)>
    consistency   1 - L_consistency       mean pairwise cosine of the deltas C(I_st) - C(I_s) (Eq. 6 as a score)
    background    mean |I_st - I_s| outside a face region, in 0..1 intensity units
    BLIP          <B(I_t), B(I_st)>       optional: BLIP ViT image features (transformers + your weights)

How this follows the official experiments/calc_metrics.py, and where it differs:
- CLIP: calc_metrics encodes the edit and the target with CLIP's own transform (bicubic resize of the
  short side to 224, centre crop, mean/std); so do we (`preprocess="default"`, whatever mode the
  encoder was set to for optimisation), with torch's antialiased bicubic in place of PIL's
  (pixel values agree to about 1e-3).
- ArcFace: pSp's IDLoss preprocessing (pool to 256, crop [35:223, 32:220], pool to 112); the
  embeddings are unit-norm, so <.,.> is their cosine.  calc_metrics reads the edit PNG with a
  bare ToTensor(), i.e. in [0, 1], while source and target are in [-1, 1]; we feed every face in
  [-1, 1].  `official_input=True` reproduces the quirk when matching the paper's numbers matters.
- the official edits were scored from 8-bit PNG files: `quantize_8bit` gives renders the same
  clamp and rounding (the evaluation applies it).
- consistency and background change are not in calc_metrics; they are defined here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from targetclip_core.errors import TargetCLIPError, WeightsUnavailableError
from targetclip_core.methods.targetclip.optimize import consistency_loss

# Rough head-and-hair region of an FFHQ-aligned crop: there the eyes sit at about y = 0.47, the
# mouth at y = 0.72 and the eye distance is a quarter of the width, so an ellipse centred in the
# crop with these half-axes (fractions of width, height) holds face, forehead, chin and the hair
# close to the head.  Corners and side strips are "background".
FFHQ_HEAD_CENTRE = (0.5, 0.5)
FFHQ_HEAD_HALF_AXES = (0.38, 0.48)


# --------------------------------------------------------------------------- pure scores


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of matching rows: a [D] or [B, D] against b [B, D] -> [B]."""
    a, b = a.float(), b.float()
    if a.dim() == 1:
        a = a[None]
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def semantic_scores(target_codes: torch.Tensor, edit_codes: torch.Tensor) -> torch.Tensor:
    """<C(I_t), C(I_st)> per edit; target_codes [D] or [1, D] (or one per edit), edit_codes [B, D] -> [B]."""
    return cosine_rows(target_codes.reshape(-1, target_codes.shape[-1]), edit_codes)


def identity_scores(reference_embeddings: torch.Tensor, edit_embeddings: torch.Tensor) -> torch.Tensor:
    """<A(I_ref), A(I_st)> per edit: the sources one by one (ID source) or the target (ID target)."""
    return cosine_rows(reference_embeddings.reshape(-1, reference_embeddings.shape[-1]), edit_embeddings)


def consistency_score(source_codes: torch.Tensor, edit_codes: torch.Tensor) -> float:
    """Mean over ordered pairs i != j of cos(d_i, d_j), d_i = C(I_st_i) - C(I_s_i): 1 - L_consistency.

    source_codes, edit_codes: [N, D] paired by row, N >= 2.  A delta of (almost) zero length has
    no direction; as in the loss it counts as agreeing with every other delta.
    """
    if source_codes.shape != edit_codes.shape or source_codes.dim() != 2:
        raise TargetCLIPError(f"consistency needs paired codes [N, D], got {list(source_codes.shape)} and {list(edit_codes.shape)}")
    if source_codes.shape[0] < 2:
        raise TargetCLIPError("consistency needs at least two sources")
    return float(1 - consistency_loss((edit_codes.float() - source_codes.float())))


def view_consistency(C, G, latents: torch.Tensor, essence, yaws, pitches=0.0, strength: float | None = None,
                     batch_size: int = 16) -> dict:
    """Does an essence change a face the same way from every camera? (3D-aware generators)

    For each source w and each view v the CLIP delta d_v = C(G(w + s b, v)) - C(G(w, v)) is
    taken; the score of a source is `consistency_score` over its views (mean cosine between
    the deltas of every ordered pair of views, 1 = the same semantic change everywhere).
    Returns {"per_source": [B] scores, "mean": float, "views": [(yaw, pitch), ...]}.
    """
    from targetclip_core.methods.targetclip.essence import edit_latents

    if not G.is_3d:
        raise TargetCLIPError(f"view consistency needs a 3D-aware generator; this is a {G.describe()}")
    yaws, pitches = torch.broadcast_tensors(torch.as_tensor(yaws, dtype=torch.float32).reshape(-1),
                                            torch.as_tensor(pitches, dtype=torch.float32).reshape(-1))
    if len(yaws) < 2:
        raise TargetCLIPError("view consistency needs at least two views")
    cams = G.camera(yaws.tolist(), pitches.tolist())
    wp = G.to_wplus(latents.to(G.device))
    essence.check_compatible(G)
    edited = edit_latents(wp, essence, essence.strength if strength is None else strength)
    with torch.no_grad():
        codes = [torch.stack([clip_codes(C, out["image"], batch_size) for _, out in G.render_views(w, cams)])
                 for w in (wp, edited)]  # each [V, B, D]
    per_source = torch.tensor([consistency_score(codes[0][:, b], codes[1][:, b]) for b in range(wp.shape[0])])
    return {"per_source": per_source, "mean": float(per_source.mean()),
            "views": list(zip(yaws.tolist(), pitches.tolist()))}


def default_face_mask(height: int, width: int, device=None) -> torch.Tensor:
    """[H, W] in {0, 1}: 1 inside the head-and-hair ellipse of an FFHQ-aligned crop (see FFHQ_HEAD_*)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    (cx, cy), (ax, ay) = FFHQ_HEAD_CENTRE, FFHQ_HEAD_HALF_AXES
    r2 = ((xs[None, :] - cx) / ax) ** 2 + ((ys[:, None] - cy) / ay) ** 2
    return (r2 <= 1).float()


def background_change(sources: torch.Tensor, edits: torch.Tensor, face_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute pixel change outside the face region, per edit, in 0..1 intensity units: [B].

    sources, edits: [B, 3, H, W] in [-1, 1], paired.  face_mask: [B, H', W'] or [H', W'] in 0..1
    (1 = face, e.g. alignment's paste-back mask), resized to H x W if needed; None = the default
    region of an FFHQ-aligned crop.  Weights are 1 - mask, so a soft mask counts pixels partly.
    """
    if sources.shape != edits.shape or sources.dim() != 4:
        raise TargetCLIPError(f"background change needs paired images [B,3,H,W], got {list(sources.shape)} and {list(edits.shape)}")
    b, _, h, w = edits.shape
    if face_mask is None:
        face_mask = default_face_mask(h, w, edits.device)
    m = face_mask.float().to(edits.device)
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or m.shape[0] not in (1, b):
        raise TargetCLIPError(f"face mask must be [H, W] or [B, H, W] with B = {b}, got {list(face_mask.shape)}")
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise TargetCLIPError("face mask values must be finite and within [0, 1]")
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    outside = (1 - m).expand(b, h, w)
    area = outside.sum(dim=(1, 2))
    if bool((area <= 0).any()):
        raise TargetCLIPError("the face mask covers the whole image: there is no background to measure")
    change = (edits.float() - sources.float()).abs().mean(1) / 2  # [-1, 1] range -> 0..1 units
    return (change * outside).sum(dim=(1, 2)) / area


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """What a PNG round trip does to [-1, 1] images: clamp, round to 256 levels (as images.to_uint8)."""
    levels = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
    return levels / 127.5 - 1


# --------------------------------------------------------------------------- models -> codes


def _batches(images: torch.Tensor, batch_size: int):
    for start in range(0, images.shape[0], max(1, batch_size)):
        yield images[start : start + batch_size]


@torch.no_grad()
def clip_codes(C, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """L2-normalised CLIP codes [B, D] with CLIP's own preprocessing (as calc_metrics)."""
    return torch.cat([C.encode_image(x, preprocess="default") for x in _batches(images, batch_size)])


@torch.no_grad()
def arcface_embeddings(A, images: torch.Tensor, official_input: bool = False, batch_size: int = 16) -> torch.Tensor:
    """Unit-norm ArcFace embeddings [B, 512] of FFHQ-aligned faces in [-1, 1].

    official_input: feed the faces in [0, 1] as calc_metrics does with the edits it reads.
    """
    if official_input:
        images = (images.float() + 1) / 2
    return torch.cat([A.embed(x) for x in _batches(images, batch_size)])


# --------------------------------------------------------------------------- BLIP (optional)


class BLIPImageFeatures(torch.nn.Module):
    """BLIP's ViT image feature: the class token of the last layer after the final LayerNorm,
    which is what calc_metrics takes (`blip(image, '', mode='image')[0, 0]`).

    Input as calc_metrics' load_image: the image squashed to image_size x image_size (bicubic,
    no crop) with CLIP's mean/std.  Weights come from a local Hugging Face BLIP folder (config.json
    + weights, e.g. a download of Salesforce/blip-itm-base-coco); the official BLIP repository's
    model_base.pth is a different file layout and is not read, so BLIP numbers can differ from
    the paper's by the checkpoint.
    """

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, vision_model: torch.nn.Module, image_size: int):
        super().__init__()
        self.vision_model = vision_model.eval().requires_grad_(False)
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.mean.device).float().clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True)
        out = self.vision_model(pixel_values=(x - self.mean) / self.std)
        return F.normalize(out.last_hidden_state[:, 0].float(), dim=-1)


def load_blip(path: str | os.PathLike, device=None) -> BLIPImageFeatures:
    """BLIP image features from a local Hugging Face folder, through `transformers` if installed."""
    from targetclip_core.devices import default_device

    folder = Path(path).expanduser()
    if not (folder.is_dir() and (folder / "config.json").is_file()):
        raise WeightsUnavailableError(
            f"BLIP score: {folder} is not a Hugging Face BLIP folder (config.json + model.safetensors). "
            "Download one (e.g. Salesforce/blip-itm-base-coco) and pass its folder; BLIP is an optional extra."
        )
    try:
        from transformers import AutoModel
    except Exception as e:  # not installed, or installed but broken (e.g. mismatched torch extensions)
        raise TargetCLIPError(f"BLIP score needs the `transformers` package: {type(e).__name__}: {_first_line(e)}") from None
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises many types for bad folders and broken installs
        raise TargetCLIPError(f"{folder}: cannot load BLIP through transformers ({type(e).__name__}: {_first_line(e)})") from None
    vision = getattr(model, "vision_model", model)
    size = getattr(getattr(vision, "config", None), "image_size", 224)
    return BLIPImageFeatures(vision, size).to(default_device(device))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


@torch.no_grad()
def blip_features(B, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    return torch.cat([B.encode_image(x) for x in _batches(images, batch_size)])


# --------------------------------------------------------------------------- all scores of a set of edits


@dataclass
class EditScores:
    """Per-edit scores of B edits of one target (None where the needed input or model was absent)."""

    semantic: torch.Tensor  # [B]
    consistency: float | None = None
    id_source: torch.Tensor | None = None  # [B]
    id_target: torch.Tensor | None = None  # [B]
    background: torch.Tensor | None = None  # [B]
    blip: torch.Tensor | None = None  # [B]

    PER_EDIT = ("semantic", "id_source", "id_target", "background", "blip")

    def means(self) -> dict:
        """Score name -> mean over the edits (consistency is one number already); absent ones left out."""
        out = {}
        for name in self.PER_EDIT:
            v = getattr(self, name)
            if v is not None:
                out[name] = float(v.float().mean())
            if name == "semantic" and self.consistency is not None:
                out["consistency"] = self.consistency
        return out

    def report(self) -> str:
        """A short human-readable summary: means, then one line per edit."""
        labels = {"semantic": "semantic (CLIP)", "consistency": "consistency", "id_source": "ID source",
                  "id_target": "ID target", "background": "background change", "blip": "semantic (BLIP)"}
        lines = [f"{len(self.semantic)} edit(s)"]
        lines += [f"  {labels[k]:<18} {v:.4f}" for k, v in self.means().items()]
        if self.consistency is None:
            lines.append("  consistency        n/a (needs the sources, at least two)")
        per_edit = [k for k in self.PER_EDIT if getattr(self, k) is not None]
        for i in range(len(self.semantic)):
            lines.append(f"  edit {i}: " + ", ".join(f"{k} {float(getattr(self, k)[i]):.4f}" for k in per_edit))
        return "\n".join(lines)


def pair_sources(edits: torch.Tensor, sources: torch.Tensor | None) -> torch.Tensor | None:
    """Source images [N, 3, H, W] paired with N edits: as many as the edits, or one repeated; refused when the
    counts or the sizes differ."""
    if sources is None:
        return None
    if sources.shape[0] == 1 and edits.shape[0] > 1:
        sources = sources.expand(edits.shape[0], -1, -1, -1)
    if sources.shape[0] != edits.shape[0]:
        raise TargetCLIPError(f"{sources.shape[0]} source images for {edits.shape[0]} edits: connect one source per edit, "
                              "in the same order")
    if sources.shape[-2:] != edits.shape[-2:]:
        raise TargetCLIPError(f"sources are {tuple(sources.shape[-2:])} but edits {tuple(edits.shape[-2:])}: use images "
                              "of one size")
    return sources


def score_edits(C, edits: torch.Tensor, target: torch.Tensor, sources: torch.Tensor | None = None, *, arcface=None,
                face_mask: torch.Tensor | None = None, blip=None, official_id_input: bool = False,
                batch_size: int = 16) -> EditScores:
    """All scores of edits [B,3,H,W] of one target [1,3,h,w] (sources [B,3,H,W] paired with the edits).

    Images in [-1, 1]; faces FFHQ-aligned for the ArcFace scores.  Without sources only the
    semantic (and target ID / BLIP) scores exist; consistency needs two sources or more.
    """
    from targetclip_core.encoders.inversion import check_images

    edits = check_images(edits, "edits")
    target = check_images(target, "target")
    if target.shape[0] != 1:
        raise TargetCLIPError(f"score_edits takes one target image, got {target.shape[0]}")
    if sources is not None:
        sources = check_images(sources, "sources")
        if sources.shape[0] != edits.shape[0]:
            raise TargetCLIPError(f"{sources.shape[0]} sources for {edits.shape[0]} edits: pair them one to one")
    edit_codes = clip_codes(C, edits, batch_size)
    scores = EditScores(semantic=semantic_scores(clip_codes(C, target), edit_codes).cpu())
    if sources is not None:
        if edits.shape[0] >= 2:
            scores.consistency = consistency_score(clip_codes(C, sources, batch_size), edit_codes)
        if sources.shape[-2:] == edits.shape[-2:]:
            scores.background = background_change(sources, edits.to(sources.device), face_mask).cpu()
    if arcface is not None:
        edit_ids = arcface_embeddings(arcface, edits, official_id_input, batch_size)
        scores.id_target = identity_scores(arcface_embeddings(arcface, target), edit_ids).cpu()
        if sources is not None:
            scores.id_source = identity_scores(arcface_embeddings(arcface, sources, batch_size=batch_size), edit_ids).cpu()
    if blip is not None:
        scores.blip = semantic_scores(blip_features(blip, target), blip_features(blip, edits, batch_size)).cpu()
    return scores
