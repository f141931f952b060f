"""The paper's evaluation protocol (TargetCLIP Sec. 5, Table 1) over targets x sources.

For each target t with essence b_t and every source w_s: the edit G(w_s + c b_t), scored against
the target and the source (metrics.py).  Per target: the mean of each score over the sources
(consistency is one number per target already).  Across targets: the mean and the population
standard deviation (np.std, as the official calc_metrics; it prints both x100, we keep cosines).

What a run writes into out_dir:
    results.csv   one row per target (row = "target") + rows "mean" and "std"; rewritten after each
                  target, so an interrupted run resumes where it stopped (`resume=True`)
    table.md      the Table 1 shaped summary (semantic, ID source, ID target, consistency) + per target
    sheet.png     contact sheet: sources across the top, one row per target (the target, then its
                  edits), the row's scores written under it
    edits/<target>/<source>.png, sources/<source>.png   with save_edits: the official layout of
                  calc_metrics' --manipulations_path / --input_img_path, and input for `targetclip fid`

Renders are scored as the saved PNGs would be (clamped, 8-bit: calc_metrics read PNG files).
The background change is measured on renders area-averaged to at most 256 px (kept in memory
for all sources at once); everything else sees the full render.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from targetclip_core.errors import LatentError, TargetCLIPError
from targetclip_core.io.files import atomic_path
from targetclip_core.metrics.scores import (
    arcface_embeddings,
    background_change,
    blip_features,
    clip_codes,
    consistency_score,
    identity_scores,
    quantize_8bit,
    semantic_scores,
)

SCORES = ("semantic", "id_source", "id_target", "consistency", "background", "blip")
CSV_FIELDS = ("row", "target", "essence", "n_sources", "strength", "clip", *SCORES)
TABLE_COLUMNS = (("semantic", "Semantic"), ("id_source", "ID source"), ("id_target", "ID target"),
                 ("consistency", "Consistency"), ("blip", "Semantic (BLIP)"))
DETAIL_LABELS = {"semantic": "semantic", "id_source": "ID source", "id_target": "ID target",
                 "consistency": "consistency", "background": "background", "blip": "BLIP"}
BACKGROUND_SIZE = 256


@dataclass
class TargetScores:
    """One target's scores, each the mean over the sources (None: not measured in this run)."""

    target: str
    essence: str
    n_sources: int
    strength: float
    clip: str
    scores: dict = field(default_factory=dict)  # score name -> float | None


@dataclass
class EvaluationResult:
    rows: list  # TargetScores, in target order
    summary: dict  # {"mean": {score: v}, "std": {score: v}}
    skipped: list  # targets already in results.csv (resumed)
    files: dict = field(default_factory=dict)  # "csv" | "table" | "sheet" -> Path

    def table(self, method: str = "TargetCLIP") -> str:
        return table_markdown(self.rows, method)


# --------------------------------------------------------------------------- inputs


def sources_from_seeds(G, seeds, truncation: float = 0.7) -> torch.Tensor:
    """W+ latents [N, n_latent, w_dim] of seeds, z drawn as NVlabs' generate.py (and our Sample Latents node)."""
    from targetclip_core.generators.latents import wplus_from_seeds

    return wplus_from_seeds(G, seeds, truncation)


def resolve_sources(G, sources, truncation: float = 0.7) -> tuple[torch.Tensor, list[str]]:
    """(W+ [N, n_latent, w_dim], names) from a W+/W tensor, a latent file, or seeds."""
    from targetclip_core.generators.latents import load_latents

    if isinstance(sources, (str, os.PathLike)):
        wp, names = load_latents(sources), None
    elif torch.is_tensor(sources):
        wp, names = sources, None
    else:
        seeds = [int(s) for s in sources]
        return sources_from_seeds(G, seeds, truncation), [f"seed{s:04d}" for s in seeds]
    wp = G.to_wplus(wp.to(G.device).float())
    return wp, names or [f"s{i:03d}" for i in range(len(wp))]


def resolve_essences(items) -> list:
    """Essence objects from Essence objects or files (.safetensors, official .npy)."""
    from targetclip_core.methods.targetclip.essence import Essence, load_essence

    return [item if isinstance(item, Essence) else load_essence(item) for item in items]


def resolve_targets(items, names=None) -> list[tuple[str, torch.Tensor]]:
    """[(name, image [1,3,H,W] in [-1,1])] from image files or tensors; names default to file stems."""
    from targetclip_core.io.images import EMBEDDING_MAX_SIDE, load_image

    items = list(items)
    if names is not None and len(names) != len(items):
        raise TargetCLIPError(f"{len(names)} target names for {len(items)} targets")
    out = []
    for i, item in enumerate(items):
        if torch.is_tensor(item):
            image, name = (item[None] if item.dim() == 3 else item), f"target{i:02d}"
        else:
            image, name = load_image(item, max_side=EMBEDDING_MAX_SIDE), Path(item).stem  # scored and tiled only
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise TargetCLIPError(f"target {i}: expected one image [1,3,H,W], got {list(image.shape)}")
        out.append((names[i] if names else name, image.float()))
    seen = [n for n, _ in out]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise TargetCLIPError(f"target names must be unique (they key results.csv): {', '.join(duplicates)}")
    return out


# --------------------------------------------------------------------------- summary, CSV, table


def summarize(rows) -> dict:
    """Mean and population std (ddof=0, as calc_metrics) across targets of each measured score."""
    summary = {"mean": {}, "std": {}}
    for name in SCORES:
        values = [r.scores.get(name) for r in rows]
        if rows and all(v is not None for v in values):
            arr = np.asarray(values, dtype=np.float64)
            summary["mean"][name], summary["std"][name] = float(arr.mean()), float(arr.std())
    return summary


def _fmt(v) -> str:
    return "" if v is None else f"{v:.8g}"


def write_results_csv(path, rows) -> Path:
    """results.csv: the target rows, then "mean" and "std" rows (written atomically)."""
    summary = summarize(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"row": "target", "target": r.target, "essence": r.essence, "n_sources": r.n_sources,
                         "strength": f"{r.strength:g}", "clip": r.clip, **{k: _fmt(r.scores.get(k)) for k in SCORES}})
    for kind in ("mean", "std"):
        if rows:
            writer.writerow({"row": kind, "target": "", "essence": "", "n_sources": rows[0].n_sources, "strength": "",
                             "clip": rows[0].clip, **{k: _fmt(summary[kind].get(k)) for k in SCORES}})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return Path(path)


def read_results_csv(path) -> list[TargetScores]:
    """The target rows of a results.csv (summary rows are recomputed, not read)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(CSV_FIELDS) - set(reader.fieldnames or ())
            if missing:
                raise TargetCLIPError(f"{path}: not a results.csv of `targetclip eval` (missing {', '.join(sorted(missing))})")
            return [TargetScores(r["target"], r["essence"], int(r["n_sources"]), float(r["strength"]), r["clip"],
                                 {k: float(r[k]) if r[k] else None for k in SCORES})
                    for r in reader if r["row"] == "target"]
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:  # UnicodeDecodeError is a ValueError
        if isinstance(e, TargetCLIPError):
            raise
        raise TargetCLIPError(f"{path}: cannot read results ({type(e).__name__}: {str(e)[:200]})") from None


def table_markdown(rows, method: str = "TargetCLIP") -> str:
    """Table 1 shaped Markdown: one summary line (mean ± std across targets), then one line per target."""
    summary = summarize(rows)
    cols = [(k, label) for k, label in TABLE_COLUMNS if k in summary["mean"]]
    lines = ["| Method | " + " | ".join(label for _, label in cols) + " |", "|---" * (len(cols) + 1) + "|",
             f"| {method} | " + " | ".join(f"{summary['mean'][k]:.3f} ± {summary['std'][k]:.3f}" for k, _ in cols) + " |"]
    n_sources = rows[0].n_sources if rows else 0
    clip = rows[0].clip if rows else ""
    lines += ["", f"{len(rows)} targets x {n_sources} sources; per-target means over the sources, then mean ± "
              f"population std across targets (calc_metrics prints the same x100). CLIP: {clip}.", ""]
    detail = [k for k in SCORES if k in summary["mean"]]
    lines += ["| Target | Essence | Strength | " + " | ".join(DETAIL_LABELS[k] for k in detail) + " |",
              "|---" * (len(detail) + 3) + "|"]
    for r in rows:
        lines.append(f"| {r.target} | {r.essence} | {r.strength:g} | " + " | ".join(f"{r.scores[k]:.3f}" for k in detail) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- contact sheet


def _cells(images: torch.Tensor, size: int) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> uint8 [B, size, size, 3] thumbnails (centre square, so nothing is squashed)."""
    from targetclip_core.io.images import to_uint8

    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = images[..., top : top + side, left : left + side].float()
    small = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return to_uint8(small)


def _stack_cells(cells: list, size: int) -> np.ndarray:
    return np.concatenate(cells) if cells else np.zeros((0, size, size, 3), np.uint8)


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


def caption(r: TargetScores) -> str:
    parts = [f"{DETAIL_LABELS[k]} {r.scores[k]:.3f}" for k in SCORES if r.scores.get(k) is not None]
    return f"{r.target} (x{r.strength:g}): " + ", ".join(parts)


def contact_sheet(source_cells: np.ndarray, rows: list, cell: int):
    """PIL image: a header row [blank | sources], then per target [target | edits] with its caption below.

    source_cells: uint8 [S, cell, cell, 3]; rows: [(target_cell [cell,cell,3], edit_cells [S,...], caption)].
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width = (1 + len(source_cells)) * cell
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(math.ceil(probe.textbbox((0, 0), "Ag", font=font)[3])) + 3
    wrapped = [_wrap(probe, text, font, width - 8) for _, _, text in rows]
    height = cell + sum(cell + 6 + line_h * len(w) for w in wrapped)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if draw.textlength("target \\ source", font=font) <= cell - 8:
        draw.text((4, 4), "target \\ source", fill=(0, 0, 0), font=font)
    for j, c in enumerate(source_cells):
        sheet.paste(Image.fromarray(c), ((1 + j) * cell, 0))
    y = cell
    for (target_cell, edit_cells, _), lines in zip(rows, wrapped):
        sheet.paste(Image.fromarray(target_cell), (0, y))
        for j, c in enumerate(edit_cells):
            sheet.paste(Image.fromarray(c), ((1 + j) * cell, y))
        y += cell + 3
        for line in lines:
            draw.text((4, y), line, fill=(0, 0, 0), font=font)
            y += line_h
        y += 3
    return sheet


# --------------------------------------------------------------------------- the protocol


@dataclass
class _SourceFeatures:
    clip: torch.Tensor  # [N, D]
    arcface: torch.Tensor | None  # [N, 512]
    small: torch.Tensor  # [N, 3, s, s] area-averaged renders for the background change
    cells: np.ndarray  # uint8 thumbnails of the first sheet_columns sources


def _render(G, wp, out_resolution):
    return quantize_8bit(G.synthesis(wp, noise_mode="const", out_resolution=out_resolution))


def _background_size(images) -> torch.Tensor:
    s = min(images.shape[-1], BACKGROUND_SIZE)
    return F.adaptive_avg_pool2d(images, s).cpu() if images.shape[-1] != s else images.cpu()


@torch.no_grad()
def _source_features(G, C, arcface, wp, names, batch_size, out_resolution, columns, cell, save_dir) -> _SourceFeatures:
    from targetclip_core.io.images import save_png

    codes, ids, small, cells = [], [], [], []
    for start in range(0, len(wp), batch_size):
        images = _render(G, wp[start : start + batch_size], out_resolution)
        codes.append(clip_codes(C, images).cpu())
        if arcface is not None:
            ids.append(arcface_embeddings(arcface, images).cpu())
        small.append(_background_size(images))
        if start < columns:
            cells.append(_cells(images[: columns - start], cell))
        if save_dir is not None:
            for name, img in zip(names[start : start + batch_size], images):
                save_png(img, save_dir / f"{name}.png")
    return _SourceFeatures(torch.cat(codes), torch.cat(ids) if ids else None, torch.cat(small), _stack_cells(cells, cell))


@torch.no_grad()
def _score_target(G, C, arcface, blip, wp, essence, strength, layers, target, src: _SourceFeatures, *, names,
                  batch_size, out_resolution, official_id_input, columns, cell, save_dir, on_batch):
    """(scores dict, edit thumbnails) of one target over all sources."""
    from targetclip_core.io.images import save_png
    from targetclip_core.methods.targetclip.essence import edit_latents

    e = essence.to(G.device)
    edit_codes, edit_ids, edit_blip, background, cells = [], [], [], [], []
    for start in range(0, len(wp), batch_size):
        edits = _render(G, edit_latents(wp[start : start + batch_size], e, strength, layers), out_resolution)
        edit_codes.append(clip_codes(C, edits).cpu())
        if arcface is not None:
            edit_ids.append(arcface_embeddings(arcface, edits, official_id_input).cpu())
        if blip is not None:
            edit_blip.append(blip_features(blip, edits).cpu())
        background.append(background_change(src.small[start : start + len(edits)], _background_size(edits)))
        if start < columns:
            cells.append(_cells(edits[: columns - start], cell))
        if save_dir is not None:
            for name, img in zip(names[start : start + batch_size], edits):
                save_png(img, save_dir / f"{name}.png")
        on_batch(len(edits))
    codes = torch.cat(edit_codes)
    scores = {
        "semantic": float(semantic_scores(clip_codes(C, target).cpu(), codes).mean()),
        "consistency": consistency_score(src.clip, codes),
        "background": float(torch.cat(background).mean()),
        "id_source": None, "id_target": None, "blip": None,
    }
    if arcface is not None:
        ids = torch.cat(edit_ids)
        scores["id_source"] = float(identity_scores(src.arcface, ids).mean())
        scores["id_target"] = float(identity_scores(arcface_embeddings(arcface, target).cpu(), ids).mean())
    if blip is not None:
        scores["blip"] = float(semantic_scores(blip_features(blip, target).cpu(), torch.cat(edit_blip)).mean())
    return scores, _stack_cells(cells, cell)


@torch.no_grad()
def _edit_cells(G, wp, essence, strength, layers, out_resolution, cell) -> np.ndarray:
    from targetclip_core.methods.targetclip.essence import edit_latents

    if len(wp) == 0:
        return np.zeros((0, cell, cell, 3), np.uint8)
    return _cells(_render(G, edit_latents(wp, essence.to(G.device), strength, layers), out_resolution), cell)


def _check_resumable(done: list, planned: dict, n_sources: int, clip_name: str, path) -> None:
    """Refuse to mix results made with other settings or for other targets into this run's file."""
    for r in done:
        if r.target not in planned:
            raise TargetCLIPError(f"{path} holds target {r.target!r}, which is not in this run: use another output folder")
        want = planned[r.target]
        if r.n_sources != n_sources or not math.isclose(r.strength, want, rel_tol=1e-6) or r.clip != clip_name:
            raise TargetCLIPError(
                f"{path}: target {r.target!r} was scored with {r.n_sources} sources, strength {r.strength:g}, CLIP {r.clip}; "
                f"this run uses {n_sources}, {want:g}, {clip_name}: use another output folder"
            )


def _clip_name(C) -> str:
    ident = getattr(C, "identity", {}) or {}
    return f"{ident.get('name', '?')}/{ident.get('pretrained') or 'random'}"


def evaluate(G, C, essences, targets, sources, *, arcface=None, blip=None, strength: float | None = None, layers=None,
             truncation: float = 0.7, target_names=None, out_dir=None, resume: bool = False,
             progress: Callable[[int, int, str], None] | None = None, batch_size: int = 4, out_resolution=None,
             official_id_input: bool = False, save_edits: bool = False, sheet_columns: int = 8, cell_size: int = 128,
             method: str = "TargetCLIP") -> EvaluationResult:
    """Score essences (paired with targets by position) over the same sources: Table 1 of the paper.

    essences: Essence objects or files (.safetensors, official .npy); targets: image files or
    [1,3,H,W] tensors in [-1,1] (FFHQ-aligned faces for the ID target score); sources: a W+ tensor,
    a latent file (e.g. the paper's celebs_68_wplus.npy) or seeds.  strength: c in G(w + c b)
    (default: each essence's recommended strength; the official evaluation used 1.2).
    arcface / blip: optional models for the ID and BLIP scores.  progress(done, total, target) is
    called after every rendered batch of edits.  With out_dir, writes results.csv, table.md and
    sheet.png; an existing results.csv is continued with resume=True (its targets are skipped) and
    refused otherwise.
    """
    essences = resolve_essences(essences)
    targets = resolve_targets(targets, target_names)
    if len(essences) != len(targets):
        raise TargetCLIPError(f"{len(essences)} essences for {len(targets)} targets: pass one essence per target, in the same order")
    for e in essences:
        e.check_compatible(G)
    wp, source_names = resolve_sources(G, sources, truncation)
    if len(wp) < 2:
        raise LatentError("the protocol needs at least two sources (consistency compares their edits)")
    strengths = [e.strength if strength is None else float(strength) for e in essences]
    clip_name = _clip_name(C)
    out = Path(out_dir) if out_dir is not None else None
    csv_path = out / "results.csv" if out is not None else None

    done: dict[str, TargetScores] = {}
    if csv_path is not None and csv_path.exists():
        if not resume:
            raise TargetCLIPError(f"{csv_path} exists: resume it (--resume) or choose another output folder")
        rows = read_results_csv(csv_path)
        _check_resumable(rows, {n: s for (n, _), s in zip(targets, strengths)}, len(wp), clip_name, csv_path)
        done = {r.target: r for r in rows}
    todo = [i for i, (name, _) in enumerate(targets) if name not in done]

    columns = max(0, min(sheet_columns, len(wp)))
    src = _source_features(G, C, arcface, wp, source_names, batch_size, out_resolution, columns, cell_size,
                           out / "sources" if (out is not None and save_edits) else None)
    total, finished = len(todo) * len(wp), 0
    edit_cells: dict[str, np.ndarray] = {}
    results = dict(done)
    for i in todo:
        name, image = targets[i]

        def on_batch(n, name=name):
            nonlocal finished
            finished += n
            if progress is not None:
                progress(finished, total, name)

        scores, cells = _score_target(
            G, C, arcface, blip, wp, essences[i], strengths[i], layers, image.to(G.device), src, names=source_names,
            batch_size=batch_size, out_resolution=out_resolution, official_id_input=official_id_input, columns=columns,
            cell=cell_size, save_dir=out / "edits" / name if (out is not None and save_edits) else None, on_batch=on_batch)
        results[name] = TargetScores(name, essences[i].name, len(wp), strengths[i], clip_name, scores)
        edit_cells[name] = cells
        if csv_path is not None:  # after every target: an interrupted run loses at most one
            write_results_csv(csv_path, [results[n] for n, _ in targets if n in results])

    rows = [results[name] for name, _ in targets]
    result = EvaluationResult(rows, summarize(rows), [n for n, _ in targets if n in done])
    if out is not None:
        result.files["csv"] = write_results_csv(csv_path, rows)
        with atomic_path(out / "table.md") as tmp:
            tmp.write_text(table_markdown(rows, method), encoding="utf-8")
        result.files["table"] = out / "table.md"
        sheet_rows = []
        for (name, image), essence, s in zip(targets, essences, strengths):
            cells = edit_cells.get(name)
            if cells is None:  # resumed target: re-render only the columns the sheet shows
                cells = _edit_cells(G, wp[:columns], essence, s, layers, out_resolution, cell_size)
            sheet_rows.append((_cells(image.clamp(-1, 1), cell_size)[0], cells, caption(results[name])))
        with atomic_path(out / "sheet.png") as tmp:
            contact_sheet(src.cells, sheet_rows, cell_size).save(tmp, format="PNG")
        result.files["sheet"] = out / "sheet.png"
    return result
