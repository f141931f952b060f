"""Face parsing: the BiSeNet of zllrunning/face-parsing.PyTorch (`79999_iter.pth`, 19
CelebAMask-HQ classes) and the region masks SAT3D needs for L_bg and pre-selection (soft, and
binary: `region_mask`, the hard argmax parse).

The network follows the reference's model.py / resnet.py layer for layer, under the same
parameter names, so the official state dict loads strictly:
  - ContextPath on a ResNet-18 (`cp.resnet.*`, torchvision's layout without `fc`): the 1/8,
    1/16 and 1/32 features; a global-context vector (`cp.conv_avg`) is added to the refined
    1/32 map (`cp.arm32`), which is upsampled (nearest) and refined (`cp.conv_head32`),
    added to the refined 1/16 map (`cp.arm16`), upsampled again and refined
    (`cp.conv_head16`).
  - The spatial path: the reference's BiSeNet drops its SpatialPath module and uses the
    ResNet's 1/8 feature in its place; there are no `sp.*` weights, so there is none here.
  - FeatureFusionModule (`ffm`): concat(1/8 ResNet, 1/8 context) -> 1x1 ConvBNReLU ->
    feat * (1 + channel attention).
  - BiSeNetOutput heads: `conv_out` (256 -> 256 -> 19) is the parse; `conv_out16` and
    `conv_out32` were training-time auxiliary heads, kept so the file loads strictly and
    run only on request (`BiSeNet.forward(x, aux=True)`).
  - Logits are upsampled to the input size with bilinear, align_corners=True.
Preprocessing as the reference's test.py: RGB resized to 512x512 (bilinear; antialiased
when shrinking, like PIL), scaled to [0, 1], ImageNet mean/std.  Class order as its
prepropess_data.py: 0 background, then skin, l_brow, r_brow, l_eye, r_eye, eye_g, l_ear,
r_ear, ear_r, nose, mouth, u_lip, l_lip, neck, neck_l, cloth, hair, hat (1..18).

Decisions:
  - No ImageNet download at construction (the reference's Resnet18 fetches one): every
    weight comes from the checkpoint.
  - Files are read with torch.load(weights_only=True); a bare state dict, one under
    "state_dict" or "model", and `module.` prefixes (DataParallel) are accepted.  BatchNorm
    `num_batches_tracked` counters (training bookkeeping, unused in eval) may be absent.
  - A region is a set of classes; its soft mask is the sum of their softmax probabilities,
    computed at the network's 512 px and resized to the images' size with the same
    antialiased bilinear filter (a convex combination: masks stay in [0, 1] and the 19
    class probabilities still sum to 1).  REGIONS lists the names SAT3D's built-in face
    descriptors use plus a few more; every class name is a region of its own.  CelebAMask-HQ
    has no beard class (facial hair is annotated as skin), so "lower_face"/"beard" is skin,
    mouth, lips and neck: an over-approximation that protects hair, eyes, ears, clothes
    and background.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from targetclip_core.devices import default_device
from targetclip_core.encoders.inversion import check_images
from targetclip_core.errors import CheckpointError, TargetCLIPError, malformed_file
from targetclip_core.formats.checkpoints import require_keys
from targetclip_core.formats.checkpoints import build_checked, torch_load_safely
from targetclip_core.io.weights import resolve_checkpoint

__all__ = ["BiSeNet", "CLASSES", "FaceParser", "REGIONS", "load_face_parser"]

DEFAULT_WEIGHTS = "bisenet-face-parsing-79999"  # weights/manifest.json
INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CLASSES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip

_BROWS_EYES = ("l_brow", "r_brow", "l_eye", "r_eye")
_LIPS = ("mouth", "u_lip", "l_lip")
REGIONS: dict[str, tuple[str, ...]] = {
    "hair": ("hair",),
    # eyes behind glasses are labelled eye_g (it was painted over l_eye/r_eye in the labels)
    "eyes": (*_BROWS_EYES, "eye_g"),
    "eyebrows": ("l_brow", "r_brow"),
    "face": ("skin", *_BROWS_EYES, "eye_g", "nose", *_LIPS),
    "lower_face": ("skin", *_LIPS, "neck"),
    "beard": ("skin", *_LIPS, "neck"),
    "glasses": ("eye_g",),
    "eyeglasses": ("eye_g",),
    "mouth": _LIPS,
    "lips": ("u_lip", "l_lip"),
    "ears": ("l_ear", "r_ear", "ear_r"),
    "earrings": ("ear_r",),
    "necklace": ("neck_l",),
    "clothes": ("cloth",),
    "head": tuple(c for c in CLASSES if c not in ("background", "neck", "neck_l", "cloth")),
    "foreground": CLASSES[1:],
}


# --------------------------------------------------------------------------- the network


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNet18(nn.Module):
    """ResNet-18 without its classifier; returns the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        widths = ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2))
        for i, (cin, cout, stride) in enumerate(widths, 1):
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))

    def forward(self, x):
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


def _global_pool(x):
    return x.mean((2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_pool(feat))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, k=1)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        up32 = self.arm32(f32) + self.conv_avg(_global_pool(f32))  # the 1x1 context broadcast over the map
        up32 = self.conv_head32(F.interpolate(up32, size=f16.shape[2:], mode="nearest"))
        up16 = self.arm16(f16) + up32
        up16 = self.conv_head16(F.interpolate(up16, size=f8.shape[2:], mode="nearest"))
        return f8, up16, up32  # 1/8 ResNet, 1/8 context, 1/16 context


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, k=1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat([spatial, context], 1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_pool(feat)))))
        return feat * atten + feat


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The face-parsing BiSeNet: normalised RGB [B,3,H,W] -> class logits [B,n_classes,H,W]."""

    def __init__(self, n_classes: int = len(CLASSES)):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x, aux: bool = False):
        f8, context8, context16 = self.cp(x)
        heads = [self.conv_out(self.ffm(f8, context8))]
        if aux:
            heads += [self.conv_out16(context8), self.conv_out32(context16)]
        up = [F.interpolate(h, size=x.shape[2:], mode="bilinear", align_corners=True) for h in heads]
        return tuple(up) if aux else up[0]


# --------------------------------------------------------------------------- region masks


def _key(name: str) -> str:
    return re.sub(r"[\s-]+", "_", str(name).strip().lower())


class FaceParser:
    """A loaded BiSeNet with the reference's preprocessing, usable as SAT3D's region parser:
    `parser(images, region) -> [B, H, W]` soft mask in [0, 1] for images [B,3,H,W] in [-1, 1].

    input_size: the side the network sees (512 as the reference; smaller is faster and coarser).
    regions: extra or replaced region definitions, name -> class names or ids.
    """

    def __init__(self, net: BiSeNet, input_size: int = INPUT_SIZE,
                 regions: Mapping[str, Sequence[str | int]] | None = None, batch_size: int = 8):
        self.net = net.eval().requires_grad_(False)
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        self.regions: dict[str, tuple[int, ...]] = {}
        for name, members in {**{c: (c,) for c in CLASSES}, **REGIONS, **(regions or {})}.items():
            members = (members,) if isinstance(members, (str, int)) else members
            self.regions[_key(name)] = tuple(self._class_id(m, name) for m in members)

    @staticmethod
    def _class_id(member: str | int, region: str) -> int:
        if isinstance(member, int) and 0 <= member < len(CLASSES):
            return member
        if isinstance(member, str) and _key(member) in CLASSES:
            return CLASSES.index(_key(member))
        raise TargetCLIPError(f"face-parser region {region!r}: {member!r} is not a CelebAMask-HQ class "
                              f"(classes: {', '.join(CLASSES)})")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> FaceParser:
        self.net.to(device)
        return self

    def class_ids(self, region: str) -> tuple[int, ...]:
        ids = self.regions.get(_key(region))
        if ids is None:
            raise TargetCLIPError(f"the face parser knows no region {region!r}; known regions: {', '.join(sorted(self.regions))}")
        return ids

    def check_regions(self, names: Iterable[str]) -> None:
        """Raise before any work when one of `names` is not a region of this parser."""
        for name in names:
            self.class_ids(name)

    @torch.no_grad()
    def _probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B,19,S,S] at the network's input size."""
        x = check_images(images, "face-parser images").to(self.device, torch.float32)
        x = (x.clamp(-1, 1) + 1) / 2  # what a saved 8-bit image would show, in [0, 1]
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
        return torch.cat([self.net(chunk).softmax(1) for chunk in x.split(self.batch_size)])

    @staticmethod
    def _resize(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        size = tuple(images.shape[-2:])
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=True)
        return maps.to(images.device, images.dtype)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over the 19 classes, [B,19,H,W] at the images' resolution."""
        return self._resize(self._probabilities(images), images)

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """The hard parse (argmax class id) [B,H,W], as the reference's test.py."""
        return self.probabilities(images).argmax(1)

    def __call__(self, images: torch.Tensor, region: str) -> torch.Tensor:
        ids = list(self.class_ids(region))
        with torch.no_grad():
            soft = self._probabilities(images)[:, ids].sum(1, keepdim=True)
            return self._resize(soft, images)[:, 0].clamp(0, 1)

    def region_mask(self, images: torch.Tensor, region: str) -> torch.Tensor:
        """The region's hard parse: bool [B, H, W], True where the argmax class (`labels`) is one of its classes
        (the binary masks of SAT3D's background loss and channel pre-selection)."""
        ids = torch.tensor(self.class_ids(region))
        with torch.no_grad():
            labels = self.labels(images)
            return torch.isin(labels, ids.to(labels.device))


# --------------------------------------------------------------------------- loading


def _state_dict(ckpt, file) -> dict:
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{file}: expected a BiSeNet state dict, found {type(ckpt).__name__}")
    return {k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k: v for k, v in ckpt.items()}


def load_face_parser(path: str | os.PathLike = DEFAULT_WEIGHTS, device=None, input_size: int = INPUT_SIZE) -> FaceParser:
    """Load `79999_iter.pth` (face-parsing.PyTorch; facexlib's `parsing_bisenet.pth` is the
    same file) or a manifest name as a FaceParser on `device` (default: the best available)."""
    file = resolve_checkpoint(path)
    ckpt = torch_load_safely(file)
    with malformed_file(file, "BiSeNet face-parsing checkpoint"):
        net = _bisenet_from_state(_state_dict(ckpt, file), file)
    return FaceParser(net.to(default_device(device)), input_size=input_size)


def _bisenet_from_state(sd: dict, file) -> BiSeNet:
    require_keys(sd, ["cp.resnet.conv1.weight", "cp.arm32.conv.conv.weight", "ffm.convblk.conv.weight",
                  "conv_out.conv_out.weight"], file, "BiSeNet face-parsing")
    head = sd["conv_out.conv_out.weight"]
    if torch.is_tensor(head) and head.dim() == 4 and head.shape[0] != len(CLASSES):
        raise CheckpointError(f"{file}: the parser predicts {head.shape[0]} classes; "
                              f"the CelebAMask-HQ face parser has {len(CLASSES)}")
    for k in [k for k in sd if isinstance(k, str) and k.endswith(".running_var")]:
        sd.setdefault(k.replace(".running_var", ".num_batches_tracked"), torch.zeros((), dtype=torch.long))
    return build_checked(BiSeNet, sd, file)
