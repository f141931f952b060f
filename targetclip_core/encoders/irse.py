"""The IR-SE50 residual backbone shared by the e4e/pSp encoders and the ArcFace identity network.

Layout and parameter names follow TreB1eN/InsightFace_Pytorch as reused by pSp and
e4e (`input_layer`, `body.N.res_layer.*`, `body.N.shortcut_layer.*`), so official
state dicts load without renaming.  The body is 24 bottleneck units in four stages
(64, 128, 256, 512 channels; 3, 4, 14, 3 units); each stage's first unit strides by 2.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from targetclip_core.errors import CheckpointError

# (in_channels, out_channels, units) of the four stages of the 50-layer body
STAGES_50 = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class SqueezeExcite(nn.Module):
    """Channel gating: x * sigmoid(fc2(relu(fc1(mean(x))))), both fcs 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)  # max() only matters for tiny test networks
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x):
        gate = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(gate))))


class BottleneckIR(nn.Module):
    """BN -> 3x3 conv -> PReLU -> 3x3 conv (strided) -> BN [-> SE], plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, se: bool = True):
        super().__init__()
        if in_channels == out_channels:
            # a 1x1 max-pool with stride is plain subsampling; it has no parameters
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        layers = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if se:
            layers.append(SqueezeExcite(out_channels))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x):
        return self.shortcut_layer(x) + self.res_layer(x)


def input_layer(channels: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.PReLU(channels))


def body(stages=STAGES_50, se: bool = True) -> nn.Sequential:
    units = []
    for cin, cout, n in stages:
        units.append(BottleneckIR(cin, cout, 2, se))
        units += [BottleneckIR(cout, cout, 1, se) for _ in range(n - 1)]
    return nn.Sequential(*units)


def stage_ends(stages=STAGES_50) -> list[int]:
    """Index of the last unit of each stage in `body()` (where the encoders tap features)."""
    ends, total = [], 0
    for _, _, n in stages:
        total += n
        ends.append(total - 1)
    return ends


def stages_from_state(state: dict, file) -> tuple:
    """Stage plan (in, out, units) of the body from its keys: a stage starts where a unit strides."""
    units = sorted({int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.res_layer\.1\.weight$", k))})
    if not units or units != list(range(len(units))):
        raise CheckpointError(f"{file}: the IR-SE body units are missing or not numbered 0..N")
    stages = []
    for i in units:
        cout, cin = state[f"body.{i}.res_layer.1.weight"].shape[:2]
        if not stages or cout != stages[-1][1]:
            stages.append([cin, cout, 1])
        else:
            stages[-1][2] += 1
    if len(stages) != 4:
        raise CheckpointError(
            f"{file}: expected a 4-stage IR-SE body (stages of distinct widths), found {len(stages)}: {stages}"
        )
    return tuple(tuple(s) for s in stages)
