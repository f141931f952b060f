"""ArcFace IR-SE50 face embeddings (`model_ir_se50.pth`), the identity network of pSp/e4e/TargetCLIP metrics.

`ArcFace.forward(x)` is the backbone exactly as the reference `Backbone.forward`:
[B,3,112,112] in [-1,1] -> the L2-normalised 512-d embedding (the conformance fixture's
output has unit norm too, whatever its README says).  `ArcFace.embed(images)` is what
identity scores use: pSp/e4e's `IDLoss` preprocessing (any size -> 256, crop
[35:223, 32:220] of an FFHQ-aligned face, average-pool to 112) before the backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from targetclip_core.devices import default_device
from targetclip_core.encoders import irse
from targetclip_core.encoders.inversion import check_images
from targetclip_core.encoders.irse import stages_from_state
from targetclip_core.errors import CheckpointError, malformed_file
from targetclip_core.formats.checkpoints import build_checked, require_keys, torch_load_safely
from targetclip_core.io.weights import resolve_checkpoint

ALIGNED_CROP = (35, 223, 32, 220)  # rows, cols of the face inside a 256 px FFHQ-aligned image (IDLoss)


class ArcFace(nn.Module):
    def __init__(self, stages=irse.STAGES_50, input_size: int = 112, affine: bool = True, dropout: float = 0.4):
        super().__init__()
        self.input_size = input_size
        self.input_layer = irse.input_layer(stages[0][0])
        self.body = irse.body(stages)
        c = stages[-1][1]
        side = input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(c * side * side, 512),
            nn.BatchNorm1d(512, affine=affine),
        )

    @property
    def device(self) -> torch.device:
        return self.input_layer[0].weight.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=-1)

    def embed(self, images: torch.Tensor, aligned_crop: bool = True) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] (FFHQ-aligned faces) -> unit-norm embeddings [B,512]; differentiable."""
        x = check_images(images, "faces to embed").to(self.device, torch.float32)
        if aligned_crop:
            if x.shape[-2:] != (256, 256):
                x = F.adaptive_avg_pool2d(x, 256)
            top, bottom, left, right = ALIGNED_CROP
            x = x[:, :, top:bottom, left:right]
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.adaptive_avg_pool2d(x, self.input_size)
        return self(x)


def load_arcface(path="arcface-ir-se50", device=None) -> ArcFace:
    """Load an InsightFace_Pytorch IR-SE50 state dict (`model_ir_se50.pth`) or a manifest name."""
    file = resolve_checkpoint(path)
    sd = torch_load_safely(file)
    with malformed_file(file, "ArcFace IR-SE checkpoint"):
        model = _arcface_from_state(sd, file)
    return model.eval().requires_grad_(False).to(default_device(device))


def _arcface_from_state(sd, file) -> ArcFace:
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{file}: expected a state dict, found {type(sd).__name__}")
    sd = {k[len("module.") :] if isinstance(k, str) and k.startswith("module.") else k: v for k, v in sd.items()}
    require_keys(sd, ["input_layer.0.weight", "output_layer.3.weight"], file, "ArcFace IR-SE")
    stages = stages_from_state(sd, file)
    flat = sd["output_layer.3.weight"].shape[1] // stages[-1][1]
    side = int(round(flat**0.5))
    return build_checked(lambda: ArcFace(stages, input_size=16 * side, affine="output_layer.4.weight" in sd), sd, file)
