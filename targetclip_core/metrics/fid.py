"""FID of a set of edits against a folder of reference images (optional extra `fid`).

Implementation: torchmetrics' `FrechetInceptionDistance`, with torch-fidelity's Inception
(`pip install "comfyui-targetclip[fid]"`).  Why this one among the maintained choices:
- torchmetrics is actively maintained (Lightning AI) and takes images as tensors, so edits are
  scored straight from memory, and it accepts any feature extractor, so FID of features you
  already have goes through the very same code (`frechet_distance_of_features`);
- torch-fidelity's Inception reproduces the original TensorFlow FID network and its TF1
  bilinear resize to 299, so numbers are comparable with the TF reference implementation;
- the weights are a plain state dict with a documented path argument, which makes offline use
  one file; clean-fid needs NVIDIA's TorchScript Inception (`torch.jit.load`, which this pack
  avoids for files from elsewhere) in a fixed folder, and pytorch-fid (last release 2023) fetches
  its weights only through torch.hub.
The extra adds torchmetrics, lightning-utilities and torch-fidelity; their other needs (numpy,
pillow, torchvision, tqdm) are already in any ComfyUI install.

Weights: `weights-inception-2015-12-05-6726825d.pth` (about 92 MB).  Pass its path, or put it in
torch.hub's checkpoint folder (`$TORCH_HOME/hub/checkpoints/`, by default
~/.cache/torch/hub/checkpoints/), where torch-fidelity itself would cache it.  Offline nothing is
downloaded unless asked (`download=True`).  torch-fidelity reads the file with an unrestricted
torch.load, so we first open it with weights_only=True: a file that would run code is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from targetclip_core.errors import TargetCLIPError, WeightsUnavailableError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
INSTALL_HINT = 'pip install "comfyui-targetclip[fid]" (torchmetrics + torch-fidelity)'


def _torchmetrics_fid():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except Exception as e:  # missing, or present but broken
        raise TargetCLIPError(f"FID needs torchmetrics: {INSTALL_HINT} ({type(e).__name__}: {e})") from None
    return FrechetInceptionDistance


def hub_checkpoint_path() -> Path:
    """Where torch.hub (and torch-fidelity) cache the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_weights_path(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The Inception weights file to use: `path`, else the torch.hub cache; refuses unsafe files.

    download: fetch it into the torch.hub cache (checking the hash in its name) when missing.
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise WeightsUnavailableError(f"{file}: no such Inception weights file ({INCEPTION_FILE} from {INCEPTION_URL})")
    else:
        file = hub_checkpoint_path()
        if not file.is_file() and download:
            try:
                torch.hub.load_state_dict_from_url(INCEPTION_URL, check_hash=True, weights_only=True, progress=True)
            except Exception as e:  # offline, proxy, bad hash
                raise WeightsUnavailableError(f"cannot download {INCEPTION_URL}: {type(e).__name__}: {e}") from None
        if not file.is_file():
            raise WeightsUnavailableError(
                f"FID needs the Inception weights {INCEPTION_FILE} (torch-fidelity's port of the TensorFlow FID "
                f"network, about 92 MB). Download {INCEPTION_URL} and put it in {file.parent}/ (set TORCH_HOME to "
                "move that folder), or pass its path (--inception-weights)."
            )
    from targetclip_core.formats.checkpoints import torch_load_safely

    state = torch_load_safely(file)  # raises UnsafePickleError for files that would run code
    if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
        raise TargetCLIPError(f"{file}: not torch-fidelity's Inception state dict")
    return file


class _FeatureRows(torch.nn.Module):
    """Feature 'extractor' for rows that are already features: torchmetrics then does only the statistics."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def frechet_distance_of_features(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two feature sets [N, D] and [M, D] (N, M >= 2), through torchmetrics' code."""
    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise TargetCLIPError(f"feature sets must be [N, D] and [M, D], got {list(features_a.shape)} and {list(features_b.shape)}")
    if min(features_a.shape[0], features_b.shape[0]) < 2:
        raise TargetCLIPError("FID needs at least two samples in each set")
    metric = _torchmetrics_fid()(feature=_FeatureRows(features_a.shape[1]))
    metric.update(features_a.double(), real=True)
    metric.update(features_b.double(), real=False)
    return float(metric.compute())


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursively), sorted."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise TargetCLIPError(f"{root}: no such image folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise TargetCLIPError(f"{root}: FID needs at least two images, found {len(files)}")
    return files


def _uint8_batches(images, batch_size: int):
    """uint8 [B,3,H,W] batches of equal-size images from files or a [-1, 1] tensor (torchmetrics' input)."""
    import numpy as np

    from targetclip_core.io.images import open_rgb, to_uint8

    if torch.is_tensor(images):
        for start in range(0, images.shape[0], batch_size):
            yield torch.from_numpy(to_uint8(images[start : start + batch_size])).permute(0, 3, 1, 2)
        return
    pending: list[torch.Tensor] = []
    for path in images:
        x = torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1)[None]  # 8-bit already: no float copy
        if pending and (x.shape != pending[0].shape or len(pending) == batch_size):
            yield torch.cat(pending)
            pending = []
        pending.append(x)
    if pending:
        yield torch.cat(pending)


@torch.no_grad()
def fid(edits, reference, *, inception_weights=None, download: bool = False, batch_size: int = 32, device=None) -> float:
    """FID of `edits` (a folder, a list of image files or a [-1, 1] tensor [B,3,H,W]) against `reference`
    (a folder or list of files).  Images of any size; the Inception resizes to 299 itself.
    """
    from targetclip_core.devices import default_device

    FrechetInceptionDistance = _torchmetrics_fid()
    weights = inception_weights_path(inception_weights, download)
    edit_files = edits if torch.is_tensor(edits) else (list_images(edits) if isinstance(edits, (str, os.PathLike)) else list(edits))
    ref_files = list_images(reference) if isinstance(reference, (str, os.PathLike)) else list(reference)
    if len(edit_files) < 2 or len(ref_files) < 2:
        raise TargetCLIPError("FID needs at least two edits and two reference images")
    device = default_device(device)
    try:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights)).to(device)
    except ModuleNotFoundError as e:  # torchmetrics without torch-fidelity
        raise TargetCLIPError(f"FID needs torch-fidelity for the Inception network: {INSTALL_HINT} ({e})") from None
    for batch in _uint8_batches(ref_files, batch_size):
        metric.update(batch.to(device), real=True)
    for batch in _uint8_batches(edit_files, batch_size):
        metric.update(batch.to(device), real=False)
    return float(metric.compute())
