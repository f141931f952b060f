"""The essence encoder's training images: folders listed and verified up front, pixels read lazily,
a seeded hold-out split, and batch order / flips that are functions of (seed, step) so a resumed
run replays the uninterrupted one exactly."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from targetclip_core.errors import TargetCLIPError
from targetclip_core.io.images import check_image, open_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_SPLIT, _ORDER, _FLIP = 1, 2, 3  # stream tags of the seeded random draws


def list_images(source) -> list[Path]:
    """Image files of a folder (recursive, sorted, hidden entries skipped) or an explicit list."""
    if isinstance(source, (list, tuple)):
        files = [Path(p) for p in source]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise TargetCLIPError(f"no such image file: {', '.join(missing[:5])}")
        where = "the image list"
    else:
        root = Path(source)
        if not root.is_dir():
            raise TargetCLIPError(f"{root}: no such folder of images")
        files = sorted(
            p for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        where = str(root)
    if not files:
        raise TargetCLIPError(f"{where}: no images ({', '.join(IMAGE_SUFFIXES)} files, searched recursively)")
    return files


def check_readable(files) -> None:
    """Verify every file's header up front (io.images.check_image: pixel limit, mode, structure), so a bad
    file is named before hours of training."""
    for f in files:
        check_image(f)


def read_training_image(path, size: int) -> torch.Tensor:
    """[3, size, size] in [-1, 1]: RGB (read by io.images.open_rgb: upright, alpha over white), PIL bilinear
    resize of the 8-bit image, as e4e's Resize/ToTensor/Normalize(0.5, 0.5)."""
    from PIL import Image

    arr = np.asarray(open_rgb(path).resize((size, size), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def _rng(seed: int, *keys: int) -> torch.Generator:
    """An independent random stream per (seed, keys): batches and flips never depend on history."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))


def split_holdout(files: list[Path], fraction: float, max_val: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, val): a seeded random `fraction` held out (at least one image, at most max_val)."""
    if fraction <= 0 or len(files) < 2:
        return files, []
    n_val = min(max(1, round(len(files) * fraction)), max_val, len(files) - 1)
    held = set(torch.randperm(len(files), generator=_rng(seed, _SPLIT)).tolist()[:n_val])
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def _subset(files: list[Path], k: int, seed: int) -> list[Path]:
    if len(files) <= k:
        return list(files)
    keep = sorted(torch.randperm(len(files), generator=_rng(seed, _SPLIT, 1)).tolist()[:k])
    return [files[i] for i in keep]


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Images of training step `step` (0-based): a fresh shuffle per epoch, incomplete batches dropped."""
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=_rng(seed, _ORDER, epoch))
    return order[i * batch_size : (i + 1) * batch_size].tolist()


def flip_mask(step: int, batch_size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch_size, generator=_rng(seed, _FLIP, step)) < 0.5


def _data_digest(train: list[Path], val: list[Path], root) -> str:
    """Fingerprint of the split, by paths relative to the folder (a moved folder still matches)."""
    def rel(p):
        try:
            return p.relative_to(root).as_posix() if root is not None else p.name
        except ValueError:
            return p.name

    text = "\n".join(map(rel, train)) + "\n--val--\n" + "\n".join(map(rel, val))
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class TrainingData:
    train: list[Path]
    val: list[Path]
    val_source: str  # held-out | folder | train
    digest: str
    description: str

    def summary(self) -> dict:
        return {"images": self.description, "n_train": len(self.train), "n_val": len(self.val),
                "val_source": self.val_source, "data_digest": self.digest}


def prepare_data(images, val_images, *, val_fraction: float, max_val_images: int, seed: int) -> TrainingData:
    """Training and validation files, verified up front; pixels are read lazily (large folders need not fit in memory)."""
    files = list_images(images)
    check_readable(files)
    if val_images is not None:
        train, val, val_source = files, list_images(val_images), "folder"
        check_readable(val)
    else:
        train, val = split_holdout(files, val_fraction, max_val_images, seed)
        val_source = "held-out" if val else "train"
    val = _subset(val or train, max_val_images, seed)
    from_folder = not isinstance(images, (list, tuple))
    digest = _data_digest(train, val, Path(images) if from_folder else None)
    return TrainingData(train, val, val_source, digest, str(images) if from_folder else f"{len(files)} files")
