"""Random BiSeNet face-parser weights with the official file's names and shapes (zllrunning/face-parsing.PyTorch
model.py; torchvision's ResNet-18 names for `cp.resnet.*`)."""

from __future__ import annotations

import math

import torch


def _conv_bn(prefix, cin, cout, k):
    return {f"{prefix}.conv.weight": (cout, cin, k, k), **_bn(f"{prefix}.bn", cout)}


def _bn(prefix, c):
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def official_shapes() -> dict:
    import torchvision

    shapes = {f"cp.resnet.{k}": tuple(v.shape) for k, v in torchvision.models.resnet18(weights=None).state_dict().items()
              if not k.startswith("fc.")}
    for name, cin in (("arm16", 256), ("arm32", 512)):
        shapes |= _conv_bn(f"cp.{name}.conv", cin, 128, 3) | {f"cp.{name}.conv_atten.weight": (128, 128, 1, 1)}
        shapes |= _bn(f"cp.{name}.bn_atten", 128)
    shapes |= _conv_bn("cp.conv_head32", 128, 128, 3) | _conv_bn("cp.conv_head16", 128, 128, 3)
    shapes |= _conv_bn("cp.conv_avg", 512, 128, 1)
    shapes |= _conv_bn("ffm.convblk", 256, 256, 1) | {"ffm.conv1.weight": (64, 256, 1, 1), "ffm.conv2.weight": (256, 64, 1, 1)}
    for head, cin, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        shapes |= _conv_bn(f"{head}.conv", cin, mid, 3) | {f"{head}.conv_out.weight": (19, mid, 1, 1)}
    return shapes


def official_state(seed: int = 0) -> dict:
    """A random state dict with the official file's names and shapes, BN statistics included."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_shapes().items():
        leaf = k.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            sd[k] = torch.tensor(80000)
        elif leaf == "running_var":
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif leaf in ("running_mean", "bias"):
            sd[k] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BN scale
            sd[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # conv: He scale keeps activations in range through the depth
            fan_in = shape[1] * shape[2] * shape[3]
            sd[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return sd
