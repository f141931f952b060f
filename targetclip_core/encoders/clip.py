"""Semantic encoder: open_clip models behind one differentiable, frozen interface.

`load_clip(name, pretrained)` accepts anything `open_clip.create_model` accepts
(built-in names with a pretrained tag or checkpoint path, "local-dir:/path",
"hf-hub:org/repo"), plus a checkpoint file given as `pretrained` with an
architecture name.  CLIP is never trained here: weights are frozen and in eval mode,
and gradients only flow through `encode_image` into the images.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from targetclip_core.errors import CheckpointError, TargetCLIPError

PREPROCESS_MODES = ("default", "paper")
HUB_HOST = "huggingface.co"
REACH_TIMEOUT_S = 2.0  # one short connect per host and process tells "offline" from "slow" well enough
_reachable: dict = {}  # host -> bool, cached for the process


def contiguous_attention(model: nn.Module) -> None:
    """Hand every batch-first nn.MultiheadAttention of `model` its inputs as contiguous [L, B, D] tensors.

    A batch-first attention transposes its input to [L, B, D] as a strided view, and PyTorch's matmul then
    runs the in-projection on that view through a batched product with the weight expanded over L: measured
    12 ms in fp32 and 120 ms in bf16, against 1 ms for a contiguous input (ViT-B/32, batch 4, this CPU). Here
    each such module runs sequence-first on a contiguous copy made by a forward pre-hook, and a forward hook
    transposes its output back: the same arithmetic (the module's keys and weights are untouched), CLIP's
    forward+backward 1.4x faster in fp32 and 7x in bf16."""
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention) and module.batch_first:
            module.batch_first = False
            module.register_forward_pre_hook(_sequence_first_inputs, with_kwargs=True)
            module.register_forward_hook(_batch_first_output, with_kwargs=True)


def _sequence_first_inputs(module, args, kwargs):
    names = ("query", "key", "value")
    given = list(args[:3]) + [kwargs[n] for n in names[len(args[:3]):] if n in kwargs]
    if len(given) != 3:
        raise TypeError("MultiheadAttention needs query, key and value")
    moved = {}  # the self-attention case (one tensor three times) is copied once and stays one tensor
    for t in given:
        if id(t) not in moved:
            moved[id(t)] = t.transpose(0, 1).contiguous()
    q, k, v = (moved[id(t)] for t in given)
    n_positional = len(args[:3])
    new_args = (q, k, v)[:n_positional] + tuple(args[3:])
    new_kwargs = dict(kwargs)
    for name, t in zip(names[n_positional:], (q, k, v)[n_positional:]):
        new_kwargs[name] = t
    return new_args, new_kwargs


def _batch_first_output(module, args, kwargs, output):
    return (output[0].transpose(0, 1),) + tuple(output[1:])


class CLIPEncoder(nn.Module):
    """Frozen CLIP with generator-friendly image input.

    encode_image(img): img [B,3,H,W] in [-1,1], any size; returns L2-normalised [B, D].
      "default": antialiased resize of the short side to the model's input size, centre
                 crop, the model's own mean/std normalisation.
      "paper":   the official TargetCLIP code's preprocessing, for reproduction: nearest
                 upsampling x7, average pooling with kernel 7H/224 (1024 -> 224), and no
                 mean/std normalisation (the official code feeds [-1, 1] as is).
    encode_text(texts): list of strings -> L2-normalised [T, D].
    """

    def __init__(self, model: nn.Module, tokenizer, name: str, pretrained: str | None, preprocess: str = "default"):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        contiguous_attention(self.model)
        self.tokenizer = tokenizer
        self.name, self.pretrained = name, pretrained
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.interpolation = cfg.get("interpolation", "bicubic")
        mean = cfg.get("mean", getattr(model.visual, "image_mean", (0.48145466, 0.4578275, 0.40821073)))
        std = cfg.get("std", getattr(model.visual, "image_std", (0.26862954, 0.26130258, 0.27577711)))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.preprocess = preprocess

    @property
    def identity(self) -> dict:
        return {"name": self.name, "pretrained": self.pretrained or ""}

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def train(self, mode: bool = True):  # CLIP stays in eval mode whatever a caller does
        return super().train(False)

    def preprocess_images(self, img: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        mode = mode or self.preprocess
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {mode!r}")
        if img.dim() != 4 or img.shape[1] != 3:
            raise TargetCLIPError(f"expected images [B, 3, H, W] in [-1, 1], got shape {list(img.shape)}")
        s = self.input_size
        if mode == "paper":
            # the official code feeds generated images in [-1, 1] without CLIP's mean/std
            # (a quirk kept for reproduction), after nearest x7 upsampling and average
            # pooling; that pair is the separable linear map A X A^T, far cheaper than the
            # 7x upsampled intermediate
            a = _paper_pool_matrix(img.shape[-1], s, img.device)
            b = a if img.shape[-2] == img.shape[-1] else _paper_pool_matrix(img.shape[-2], s, img.device)
            return torch.einsum("oh,bchw,pw->bcop", b, img.float(), a)
        # [-1, 1] -> [0, 1] -> CLIP's mean/std in one pass: x * 0.5/std + (0.5 - mean)/std; the resize below
        # is linear with weights summing to one, so it commutes with this per-channel affine map
        x = torch.addcmul((0.5 - self.mean) / self.std, img.float(), 0.5 / self.std)
        h, w = x.shape[-2:]
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            mode_ = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bicubic"
            x = F.interpolate(x, size=(nh, nw), mode=mode_, align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top : top + s, left : left + s]
        return x

    def encode_image(self, img: torch.Tensor, preprocess: str | None = None) -> torch.Tensor:
        x = self.preprocess_images(img.to(self.device), preprocess)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


def load_clip(name: str = "ViT-B-32", pretrained: str | None = "openai", device=None, preprocess: str = "default",
              where: str | None = None) -> CLIPEncoder:
    """Create a frozen CLIP encoder.

    name: an open_clip architecture ("ViT-B-32"), "local-dir:/path" or "hf-hub:org/repo".
    pretrained: an open_clip tag ("openai", "laion2b_s34b_b79k"), a checkpoint file
      (open_clip .bin/.pt state dict or .safetensors; OpenAI's original TorchScript .pt is read
      as data, see formats.torchscript), or None for random weights.
    where: where the caller's user puts a downloaded CLIP file (e.g. "ComfyUI's models/clip folder, then pick it as
      `pretrained`"), named in the offline error; default: pass the file's path as `pretrained`.
    Downloads go through open_clip's own cache when online. Offline (the hub does not answer a 2 s connect) a
    cached tag loads without any network call, and a missing one fails at once naming the file, its URL and
    where to put it.
    """
    import open_clip

    from targetclip_core.devices import default_device

    device = default_device(device)
    if pretrained and Path(pretrained).suffix in (".bin", ".pt", ".pth", ".safetensors") and not Path(pretrained).is_file():
        raise CheckpointError(f"{pretrained}: no such CLIP checkpoint file")
    schema = name.startswith(("local-dir:", "hf-hub:"))
    if not schema and name not in open_clip.list_models():
        raise TargetCLIPError(f"unknown CLIP architecture {name!r}; known: {', '.join(open_clip.list_models()[:8])}, ...")
    if pretrained and not schema and Path(pretrained).is_file():
        from targetclip_core.formats.torchscript import is_torchscript_archive, openai_clip_from_torchscript

        if is_torchscript_archive(pretrained):  # OpenAI's original .pt: read as data, never torch.jit.load
            model = openai_clip_from_torchscript(pretrained, name)
            return CLIPEncoder(model, open_clip.get_tokenizer(name), name, pretrained, preprocess=preprocess).to(device)
    from safetensors import SafetensorError

    if name.startswith("local-dir:"):
        check_local_clip_folder(Path(name[len("local-dir:"):]))
    offline, quick_gelu = contextlib.nullcontext(), False
    if name.startswith("hf-hub:"):
        offline = _hub_repo_offline(name[len("hf-hub:"):], where)
    elif pretrained and not schema and not Path(pretrained).is_file():
        offline = _offline_unless_reachable(name, pretrained, where)
        # a tag trained with QuickGELU (OpenAI's) on an architecture without it: open_clip only warns and builds
        # GELU, which gives other features than the weights were trained for
        quick_gelu = bool((open_clip.pretrained.get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu"))
    try:
        # require_pretrained: a folder or hub repo without weights is an error, not a random CLIP
        with offline:
            model = open_clip.create_model(name, pretrained=None if schema else pretrained, device="cpu",
                                           weights_only=True, require_pretrained=schema, force_quick_gelu=quick_gelu)
    except RuntimeError as e:
        raise CheckpointError(
            f"cannot load CLIP {name} ({pretrained}): {_first_line(e)}. Offline? Put the checkpoint file on disk and pass its "
            "path as `pretrained`, or use 'local-dir:/folder' with open_clip_config.json + open_clip_model.safetensors."
        ) from None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError,  # corrupt/truncated files
            AssertionError, TypeError, KeyError) as e:  # a folder's config open_clip cannot build
        raise CheckpointError(f"cannot load CLIP {name} ({pretrained}): {_first_line(e)}") from None
    tokenizer = open_clip.get_tokenizer(name)
    return CLIPEncoder(model, tokenizer, name, pretrained, preprocess=preprocess).to(device)


def hub_reachable(host: str = HUB_HOST, port: int = 443, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connect to host:port succeeds within `timeout` s; asked once per host and process."""
    if host not in _reachable:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _reachable[host] = True
        except OSError:
            _reachable[host] = False
    return _reachable[host]


def pretrained_file(name: str, tag: str) -> dict | None:
    """What open_clip downloads for (architecture, tag): {'file', 'url', 'host', 'hf_repo', 'cached'} or None
    for a tag open_clip does not know (open_clip then names the known ones). 'cached' is the file already in
    open_clip's cache (Hugging Face's or its URL cache), or None."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, has_hf_hub

    cfg = get_pretrained_cfg(name, tag)
    if not cfg or "file" in cfg:
        return None
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub and has_hf_hub():  # what open_clip prefers
        repo, filename = os.path.split(hub)  # open_clip's own split: 'org/model/' names the default file
        filename = filename or open_clip.pretrained.HF_WEIGHTS_NAME
        cached = _hf_cached(repo, filename)
        return {"file": filename, "url": f"https://{HUB_HOST}/{repo}/resolve/main/{filename}", "host": HUB_HOST,
                "hf_repo": repo, "cached": cached}
    if url:
        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        return {"file": os.path.basename(url), "url": url, "host": urlparse(url).hostname or "", "hf_repo": "",
                "cached": str(target) if target.is_file() else None}
    return None


def _hf_cached(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    from open_clip import pretrained

    alternatives = getattr(pretrained, "_get_safe_alternatives", lambda f: [])
    for candidate in [*alternatives(filename), filename]:  # open_clip tries safetensors first
        found = try_to_load_from_cache(repo, candidate)
        if isinstance(found, str):
            return found
    return None


def _offline_unless_reachable(name: str, tag: str, where: str | None):
    """A context for open_clip's download: nothing when the file's host answers; Hugging Face's offline mode when
    the file is cached but the host does not answer (no retries); a CheckpointError at once when neither."""
    info = pretrained_file(name, tag)
    if info is None or hub_reachable(info["host"]):
        return contextlib.nullcontext()
    if info["cached"]:
        return _hf_offline() if info["hf_repo"] else contextlib.nullcontext()
    put = where or "anywhere, and pass its path as `pretrained` (--pretrained PATH on the command line)"
    raise CheckpointError(
        f"cannot download CLIP {name} ({tag}): {info['host']} cannot be reached (offline?). Download "
        f"{info['file']} from {info['url']} on a machine with network, put it {put}.")


def _hub_repo_offline(repo: str, where: str | None):
    """For 'hf-hub:org/repo': as _offline_unless_reachable, for the repo's open_clip_config.json and weights."""
    if hub_reachable():
        return contextlib.nullcontext()
    if _hf_cached(repo, "open_clip_config.json"):
        return _hf_offline()
    put = where or "in one folder, and pass 'local-dir:/that/folder' as the CLIP name"
    raise CheckpointError(
        f"cannot download CLIP hf-hub:{repo}: {HUB_HOST} cannot be reached (offline?). Download open_clip_config.json "
        f"and open_clip_model.safetensors from https://{HUB_HOST}/{repo} on a machine with network, put them {put}.")


@contextlib.contextmanager
def _hf_offline():
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def check_local_clip_folder(folder: Path) -> None:
    """Refuse an open_clip `local-dir:` folder that open_clip would load wrongly or unboundedly: no
    config, no weights (open_clip only logs a warning and runs with random weights, so every run
    would give other results), or a config declaring a network far larger than its weights file."""
    import open_clip

    config = folder / "open_clip_config.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such CLIP folder (local-dir: needs a folder with open_clip_config.json "
                              "and open_clip_model.safetensors)")
    if not config.is_file():
        raise CheckpointError(f"{folder}: a CLIP folder without open_clip_config.json")
    weights = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("*.pth")])
    if not weights:
        raise CheckpointError(f"{folder}: a CLIP folder without weights: put open_clip_model.safetensors (or "
                              "open_clip_pytorch_model.bin) beside open_clip_config.json")
    try:
        with torch.device("meta"):  # allocates nothing: only the declared size is measured
            skeleton = open_clip.create_model(f"local-dir:{folder}", load_weights=False, device="meta")
    except (OSError, ValueError, RuntimeError, AssertionError, TypeError, KeyError) as e:
        raise CheckpointError(f"{config}: not a CLIP configuration open_clip can build ({_first_line(e)})") from None
    declared = sum(t.numel() for t in skeleton.state_dict().values())
    largest = max(w.stat().st_size for w in weights)
    if 2 * declared > largest * 1.05 + (1 << 20):  # fp16 is the smallest dtype CLIP weights ship in
        raise CheckpointError(f"{config}: the config declares a {declared:,}-parameter CLIP, far more than "
                              f"the weights files in {folder} hold ({largest:,} bytes)")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _paper_pool_matrix(n: int, out: int, device) -> torch.Tensor:
    """[out, n] matrix equal to nearest upsampling by 7 then average pooling by 7n/out.

    Row o averages the upsampled span [k*o, k*o + k) with k = 7n/out; input pixel i covers
    [7i, 7i + 7) of it, so A[o, i] = |overlap| / k.
    """
    up = 7 * n
    if up % out:
        raise TargetCLIPError(f"paper preprocessing needs 7*{n} to be a multiple of {out}")
    k = up // out
    lo = torch.arange(out, dtype=torch.float64)[:, None] * k
    i0 = torch.arange(n, dtype=torch.float64)[None, :] * 7
    overlap = (torch.minimum(lo + k, i0 + 7) - torch.maximum(lo, i0)).clamp(min=0)
    return (overlap / k).to(device=device, dtype=torch.float32)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) along the last dim (inputs need not be normalised)."""
    return 1 - F.cosine_similarity(a, b, dim=-1)
