"""LPIPS, the learned perceptual image distance (Zhang et al. 2018), from files read as data only.

The network is the `lpips` package's own `lpips.LPIPS` (version 0.1: ImageNet scaling, a frozen
AlexNet or VGG16 trunk, unit-normalised features, 1x1 linear heads, spatial average, sum over
layers), so the numbers are the package's.  It is built with ``pretrained=False, pnet_rand=True``,
which makes the package load nothing and download nothing (its heads are only read when
``pretrained`` is true, its trunk only fetched when ``pnet_rand`` is false); we then fill it from:

- the trunk: torchvision's ImageNet file (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``),
  from torch's hub cache where torchvision users already have it, else our weights store;
  torchvision's ``features.N.*`` keys become the package's ``net.sliceK.N.*``;
- the heads: the v0.1 file the package ships (``lpips/weights/v0.1/<net>.pth``), or a given path.

Both are read with `torch_load_safely` (weights only) and checked key by key against a skeleton
built on the meta device before any memory is spent.  `import lpips` happens at load time only,
so this module imports without the package; a missing package is a `WeightsUnavailableError`.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from targetclip_core.devices import default_device
from targetclip_core.encoders.inversion import check_images
from targetclip_core.errors import CheckpointError, TargetCLIPError, WeightsUnavailableError
from targetclip_core.formats.checkpoints import TranslatedState, check_state_matches, torch_load_safely
from targetclip_core.io.weights import resolve_checkpoint

__all__ = ["BACKBONES", "LPIPS", "load_lpips", "try_load_lpips"]

INSTALL_HINT = 'pip install lpips (or pip install "comfyui-targetclip[refine]")'

# net -> (torchvision file name, manifest name, the package's trunk slices as features-index ranges,
# the smallest input side whose last slice still has a pixel)
BACKBONES = {
    "alex": ("alexnet-owt-7be5be79.pth", "lpips-alex-backbone", ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), 31),
    "vgg": ("vgg16-397923af.pth", "lpips-vgg-backbone", ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)), 16),
}
_HEAD_KEY = re.compile(r"^lin\d+\.")  # the package also registers each head a second time as lins.N


class LPIPS(nn.Module):
    """`forward(a, b) -> [B]` LPIPS distances between images [B,3,H,W] in [-1,1]; frozen, always in eval mode.

    Nothing is resized: the caller picks the size (LPIPS was calibrated at 64 px patches; the NVlabs
    projector and PTI compare at 256 px).  Differentiable with respect to both images.
    """

    def __init__(self, model: nn.Module, net: str):
        super().__init__()
        self.model = model
        self.net = net
        self.min_size = BACKBONES[net][3]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        # The package's heads start with Dropout: a loss network must never switch it on.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.model.scaling_layer.shift.device

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = check_images(a, "first images for LPIPS")
        b = check_images(b, "second images for LPIPS")
        if a.shape != b.shape:
            raise TargetCLIPError(f"LPIPS compares images of one shape, got {list(a.shape)} and {list(b.shape)}")
        if min(a.shape[-2:]) < self.min_size:
            raise TargetCLIPError(
                f"LPIPS ({self.net}) needs images of at least {self.min_size}x{self.min_size} pixels, "
                f"got {a.shape[-2]}x{a.shape[-1]}"
            )
        a = a.to(self.device, torch.float32)
        b = b.to(self.device, torch.float32)
        return self.model(a, b).reshape(a.shape[0])


# --------------------------------------------------------------------------- loading


def _lpips_package():
    """The `lpips` module, or the clear error saying how to install it."""
    try:
        import lpips
    except ImportError as e:
        raise WeightsUnavailableError(f"LPIPS needs the lpips package ({e}); install it: {INSTALL_HINT}") from None
    return lpips


def _check_net(net: str) -> None:
    if net not in BACKBONES:
        raise TargetCLIPError(f"LPIPS network must be one of {sorted(BACKBONES)}, got {net!r}")


def _package_model(lpips, net: str) -> nn.Module:
    # pretrained=False: the package reads no heads file; pnet_rand=True: no torchvision download.
    # The package still passes torchvision's deprecated `pretrained=` argument: silence that warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(pretrained|weights).*", category=UserWarning)
        return lpips.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, pnet_tune=False, verbose=False)


def hub_cache_file(filename: str) -> Path:
    """Where torchvision keeps a downloaded file: `<torch.hub.get_dir()>/checkpoints/<filename>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def backbone_file(net: str, backbone=None) -> Path:
    """The trunk's file: `backbone` (a path or manifest name), else torch's hub cache, else the store."""
    if backbone is not None:
        return resolve_checkpoint(backbone)
    filename, manifest_name, _, _ = BACKBONES[net]
    cached = hub_cache_file(filename)
    if cached.is_file():
        return cached
    try:
        return resolve_checkpoint(manifest_name)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(
            f"LPIPS ({net}) needs torchvision's ImageNet weights {filename}, which are neither in torch's hub "
            f"cache ({cached.parent}) nor in the weights store. {e}"
        ) from None


def heads_file(lpips, net: str, heads=None) -> Path:
    """The linear heads: `heads` (a path), else the v0.1 file the installed package ships."""
    if heads is not None:
        return resolve_checkpoint(heads)
    shipped = importlib.resources.files(lpips) / "weights" / "v0.1" / f"{net}.pth"
    path = Path(os.fspath(shipped))
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the installed lpips package has no {net} heads file ({path}); reinstall it: {INSTALL_HINT}"
        )
    return path


def _state_dict_of(file: Path) -> dict:
    state = torch_load_safely(file)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{file}: expected a state dict of named tensors, found {type(state).__name__}")
    return state


def trunk_state(state: dict, net: str) -> TranslatedState:
    """torchvision's `features.N.*` -> the package's `sliceK.N.*` (relative to `LPIPS.net`); `classifier.*` dropped.

    Other keys stay as they are, so the check reports them as unexpected under the file's own names.
    """
    slices = BACKBONES[net][2]
    out = TranslatedState(file_key=_file_key_of)
    for key, value in state.items():
        if key.startswith("classifier."):
            continue  # the ImageNet classifier: LPIPS uses the convolutional features only
        ours = key
        m = re.match(r"^features\.(\d+)\.(.+)$", key)
        if m:
            index = int(m.group(1))
            k = next((i for i, (lo, hi) in enumerate(slices) if lo <= index < hi), None)
            if k is not None:
                ours = f"slice{k + 1}.{index}.{m.group(2)}"
        out[ours] = value
        out.origin[ours] = key
    return out


def _file_key_of(ours: str) -> str:
    """`sliceK.N.weight` -> `features.N.weight`: how a missing trunk key is named in torchvision's terms."""
    m = re.match(r"^slice\d+\.(\d+)\.(.+)$", ours)
    return f"features.{m.group(1)}.{m.group(2)}" if m else ours


def _assemble(lpips, net: str, trunk: dict, heads: dict, trunk_source: Path, heads_source: Path) -> nn.Module:
    """The package's network filled from `trunk` and `heads`, each checked against a meta skeleton first."""
    with torch.device("meta"):
        skeleton = _package_model(lpips, net)
    check_state_matches(skeleton.net.state_dict(), trunk, trunk_source)
    expected_heads = {k: v for k, v in skeleton.state_dict().items() if _HEAD_KEY.match(k)}
    check_state_matches(expected_heads, heads, heads_source)

    # Everything but the scaling constants comes from the files, so nothing is initialised at random:
    # the skeleton takes the files' tensors (assign=True), the constants come from the package's layer.
    state = {f"net.{k}": v.float() for k, v in trunk.items()}
    state.update({k: v.float() for k, v in heads.items()})
    state.update({f"scaling_layer.{k}": v for k, v in lpips.ScalingLayer().state_dict().items()})
    skeleton.load_state_dict(state, strict=False, assign=True)
    left = [n for n, t in (*skeleton.named_parameters(), *skeleton.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{trunk_source} + {heads_source}: LPIPS tensors left unfilled: {left[:5]}")
    return skeleton


def load_lpips(net: str = "alex", backbone=None, heads=None, device=None) -> LPIPS:
    """The LPIPS v0.1 distance on `net` ('alex' or 'vgg'), frozen, on `device` (default: the engine's).

    `backbone`: torchvision's ImageNet trunk file (a path or manifest name; default: torch's hub cache,
    then `lpips-<net>-backbone` in the store).  `heads`: the linear layers (default: the file the
    installed lpips package ships).  Raises WeightsUnavailableError when the package or a file is
    missing, CheckpointError / UnsafePickleError (naming the file) when a file is not what it should be.
    """
    _check_net(net)
    lpips = _lpips_package()
    trunk_path = backbone_file(net, backbone)
    heads_path = heads_file(lpips, net, heads)
    trunk = trunk_state(_state_dict_of(trunk_path), net)
    head_state = _state_dict_of(heads_path)
    model = _assemble(lpips, net, trunk, head_state, trunk_path, heads_path)
    return LPIPS(model, net).to(default_device(device))


def try_load_lpips(net: str = "alex", backbone=None, heads=None, device=None) -> tuple[LPIPS | None, str]:
    """`(load_lpips(...), "")`, or `(None, reason)` in one line when the package or a file cannot be had
    (callers then turn the perceptual term off with a warning).

    A file that is there but broken or hostile still raises (CheckpointError / UnsafePickleError):
    the user has a file to replace, which a quiet fallback would hide.
    """
    try:
        return load_lpips(net, backbone=backbone, heads=heads, device=device), ""
    except WeightsUnavailableError as e:
        return None, " ".join(str(e).split())
