"""Text prompts as CLIP directions, as StyleCLIP's global-direction code forms them (global_directions/MapTS.py).

A prompt is embedded through the 79 ImageNet templates ("a bad photo of a {}." ...; the code leaves out
"a photo of many {}."): each formatted text is embedded and normalised, the mean is normalised again
(`zeroshot_classifier`). A text direction is normalised(embedding(target) - embedding(neutral)) (`GetDt`),
the neutral prompt of the StyleCLIP examples being "face". `templates=PLAIN` embeds the prompt as written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from targetclip_core.errors import TargetCLIPError

DEFAULT_NEUTRAL = "face"
PLAIN = ("{}",)
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.", "itap of a {}.",
    "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)


def check_prompt(prompt, what: str = "prompt") -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise TargetCLIPError(f"the {what} must be a non-empty text, got {prompt!r}")
    return prompt.strip()


def text_embedding(C, prompt: str, templates=IMAGENET_TEMPLATES) -> torch.Tensor:
    """[D]: the normalised mean of the normalised embeddings of `prompt` in every template."""
    prompt = check_prompt(prompt)
    templates = tuple(templates)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise TargetCLIPError("templates must be texts each holding one '{}' where the prompt goes")
    with torch.no_grad():
        codes = F.normalize(C.encode_text([t.format(prompt) for t in templates]).float(), dim=-1)
        return F.normalize(codes.mean(0), dim=0)


def text_direction(C, target: str, neutral: str = DEFAULT_NEUTRAL, templates=IMAGENET_TEMPLATES) -> torch.Tensor:
    """[D]: normalised(embedding(target) - embedding(neutral)), StyleCLIP's delta t."""
    delta = text_embedding(C, check_prompt(target, "target prompt"), templates) - \
        text_embedding(C, check_prompt(neutral, "neutral prompt"), templates)
    if float(delta.norm()) < 1e-6:
        raise TargetCLIPError(f"the target prompt {target!r} and the neutral prompt {neutral!r} embed alike in this "
                              "CLIP: they give no direction")
    return F.normalize(delta, dim=0)
