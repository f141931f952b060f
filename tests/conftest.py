"""Shared test fixtures: where ../shared lives, the conformance fixture weights, small generators.

`TARGETCLIP_SHARED` names the shared folder (docs, fixtures, data); by default it is the
folder `shared` beside the repository root.  Tests that need it skip with a clear
reason when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `pytest` run from elsewhere still finds targetclip_core
    sys.path.insert(0, str(REPO_ROOT))

from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator  # noqa: E402

SHARED_ENV = "TARGETCLIP_SHARED"
ROSINALITY_FIXTURE = "stylegan2_rosinality_32"

# Our StyleSpace / layer names -> rosinality module names of a 32px Generator, in synthesis order.
OURS_TO_ROSINALITY_32 = {
    "b4.conv1": "conv1.conv",
    "b4.torgb": "to_rgb1.conv",
    "b8.conv0": "convs.0.conv",
    "b8.conv1": "convs.1.conv",
    "b8.torgb": "to_rgbs.0.conv",
    "b16.conv0": "convs.2.conv",
    "b16.conv1": "convs.3.conv",
    "b16.torgb": "to_rgbs.1.conv",
    "b32.conv0": "convs.4.conv",
    "b32.conv1": "convs.5.conv",
    "b32.torgb": "to_rgbs.2.conv",
}


# --------------------------------------------------------------------------- locating ../shared


def shared_dir() -> Path:
    """The shared folder: $TARGETCLIP_SHARED, else `shared` beside the repository root."""
    override = os.environ.get(SHARED_ENV, "").strip()
    return Path(override).expanduser() if override else REPO_ROOT.parent / "shared"


def require_shared(*parts: str) -> Path:
    """Path inside the shared folder, or skip the test saying what is missing and how to point at it."""
    root = shared_dir()
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"shared test data not found: {path} is missing (set {SHARED_ENV} to the folder holding "
            "docs/, fixtures/ and data/)"
        )
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require_shared("fixtures")


def load_fixture_weights_module(fixtures: Path) -> ModuleType:
    """Import shared/fixtures/fixture_weights.py by path (it is not a package)."""
    path = fixtures / "fixture_weights.py"
    spec = importlib.util.spec_from_file_location("targetclip_test_fixture_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_state_dict(fixtures: Path, name: str, with_constants: bool = True) -> dict[str, torch.Tensor]:
    """The reference state dict of a fixture: drawn tensors (+ the FIR constants a real file holds)."""
    manifest = fixtures / f"{name}.json"
    sd = load_fixture_weights_module(fixtures).state_dict(str(manifest))
    if with_constants:
        constants = json.loads(manifest.read_text(encoding="utf-8")).get("constants", {})
        for key, value in constants.items():
            sd[key] = torch.tensor(value, dtype=torch.float32)
    return sd


def write_rosinality_checkpoint(path: Path, state_dict: dict, **extra) -> Path:
    """A rosinality/stylegan2-pytorch checkpoint file: torch.save({'g_ema': state_dict, ...})."""
    torch.save({"g_ema": state_dict, **extra}, path)
    return path


@pytest.fixture(scope="session")
def rosinality32_state(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    """Fixture weights of rosinality Generator(32, 512, 8, channel_multiplier=2). Do not mutate: copy."""
    return fixture_state_dict(fixtures_dir, ROSINALITY_FIXTURE)


@pytest.fixture(scope="session")
def rosinality32_ref(fixtures_dir: Path) -> dict[str, np.ndarray]:
    """Inputs and reference outputs computed by rosinality's own code for those weights."""
    with np.load(fixtures_dir / f"{ROSINALITY_FIXTURE}.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def rosinality32_ckpt(tmp_path_factory: pytest.TempPathFactory, rosinality32_state) -> Path:
    """The fixture weights written as a rosinality .pt (without latent_avg, like a bare g_ema file)."""
    return write_rosinality_checkpoint(tmp_path_factory.mktemp("ros32") / "stylegan2-32.pt", rosinality32_state)


# --------------------------------------------------------------------------- comparisons


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (the conformance measure of shared/fixtures/README.md)."""
    a = ours.detach().cpu().double().numpy() if torch.is_tensor(ours) else np.asarray(ours, dtype=np.float64)
    b = ref.detach().cpu().double().numpy() if torch.is_tensor(ref) else np.asarray(ref, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != reference shape {b.shape}"
    scale = np.abs(b).max()
    assert scale > 0, "reference is all zeros: the comparison would mean nothing"
    return float(np.abs(a - b).max() / scale)


# --------------------------------------------------------------------------- small random generators

SMALL_CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16, 64: 8}


def small_config(resolution: int = 32, **kw) -> StyleGAN2Config:
    channels = kw.pop("channels", {r: c for r, c in SMALL_CHANNELS.items() if r <= resolution})
    kw.setdefault("z_dim", 32)
    kw.setdefault("w_dim", 32)
    kw.setdefault("n_mlp", 2)
    return StyleGAN2Config(resolution=resolution, channels=channels, **kw)


def small_generator(resolution: int = 32, seed: int = 0, noise_strength: float = 0.3, **kw) -> StyleGAN2Generator:
    """A tiny random generator with non-zero noise strengths and non-trivial biases, in eval mode."""
    torch.manual_seed(seed)
    G = StyleGAN2Generator(small_config(resolution, **kw)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(noise_strength)
            elif name.endswith(".bias") and "affine" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return G


@pytest.fixture
def tiny_G() -> StyleGAN2Generator:
    return small_generator(32)


def random_wplus(G: StyleGAN2Generator, batch: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(batch, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(seed))


def random_rosinality_state(resolution: int = 16, channels=None, style_dim: int = 32, n_mlp: int = 2, seed: int = 0):
    """A random state dict in rosinality/stylegan2-pytorch Generator layout, small enough for bad-input tests.

    Names and shapes follow rosinality's model.py (channels shrunk: the loader reads them from the shapes).
    """
    channels = channels or {r: c for r, c in {4: 16, 8: 16, 16: 8, 32: 8}.items() if r <= resolution}
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, base=0.0, scale=1.0):
        return base + scale * torch.randn(*shape, generator=g)

    fir = torch.outer(torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([1.0, 3.0, 3.0, 1.0])) / 16  # kernel * 4
    sd: dict[str, torch.Tensor] = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = rnd(style_dim, style_dim, scale=100.0)
        sd[f"style.{i}.bias"] = rnd(style_dim, scale=10.0)
    sd["input.input"] = rnd(1, channels[4], 4, 4)

    def conv(name, cin, cout, up):
        sd[f"{name}.conv.weight"] = rnd(1, cout, cin, 3, 3)
        sd[f"{name}.conv.modulation.weight"] = rnd(cin, style_dim)
        sd[f"{name}.conv.modulation.bias"] = rnd(cin, base=1.0, scale=0.1)
        if up:
            sd[f"{name}.conv.blur.kernel"] = fir.clone()
        sd[f"{name}.noise.weight"] = rnd(1, scale=0.1)
        sd[f"{name}.activate.bias"] = rnd(cout, scale=0.1)

    def to_rgb(name, cin, up):
        sd[f"{name}.bias"] = rnd(1, 3, 1, 1, scale=0.1)
        sd[f"{name}.conv.weight"] = rnd(1, 3, cin, 1, 1)
        sd[f"{name}.conv.modulation.weight"] = rnd(cin, style_dim)
        sd[f"{name}.conv.modulation.bias"] = rnd(cin, base=1.0, scale=0.1)
        if up:
            sd[f"{name}.upsample.kernel"] = fir.clone()

    conv("conv1", channels[4], channels[4], up=False)
    to_rgb("to_rgb1", channels[4], up=False)
    resolutions = [2**k for k in range(3, int(np.log2(resolution)) + 1)]
    for j, res in enumerate(resolutions):
        conv(f"convs.{2 * j}", channels[res // 2], channels[res], up=True)
        conv(f"convs.{2 * j + 1}", channels[res], channels[res], up=False)
        to_rgb(f"to_rgbs.{j}", channels[res], up=True)
    sd["noises.noise_0"] = rnd(1, 1, 4, 4)
    for j, res in enumerate(resolutions):
        sd[f"noises.noise_{2 * j + 1}"] = rnd(1, 1, res, res)
        sd[f"noises.noise_{2 * j + 2}"] = rnd(1, 1, res, res)
    return sd


# --------------------------------------------------------------------------- ComfyUI node tests


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A temporary ComfyUI models/ and output/ (see comfy_harness; skips without ComfyUI's API)."""
    from comfy_harness import temporary_models_dir

    yield from temporary_models_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def pack(models_dir):
    """The pack imported as ComfyUI imports a custom node folder (see comfy_harness)."""
    from comfy_harness import imported_pack

    yield from imported_pack()
