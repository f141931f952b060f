"""LPIPS (encoders.perceptual) against a hand computation from the paper's definition, with random weights
written to files the way torchvision and the lpips package write theirs; hostile and missing files.

The hand computation (`hand_lpips`) runs torchvision's own network and knows nothing of our module:
ImageNet shift/scale, the features at the five ReLU taps, unit-normalised channels (eps 1e-10), squared
difference, the 1x1 heads (no bias), spatial mean, sum over layers.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lpips = pytest.importorskip("lpips")
tv_models = pytest.importorskip("torchvision.models")

from helpers.hostile import write_torch_zip  # noqa: E402

from targetclip_core.encoders import perceptual  # noqa: E402
from targetclip_core.encoders.perceptual import load_lpips, try_load_lpips  # noqa: E402
from targetclip_core.errors import CheckpointError, UnsafePickleError, WeightsUnavailableError  # noqa: E402

ALEX_FILE = "alexnet-owt-7be5be79.pth"
VGG_FILE = "vgg16-397923af.pth"
# torchvision `features` indices of the ReLUs LPIPS reads (alexnet relu1-5; vgg16 relu1_2, 2_2, 3_3, 4_3, 5_3)
TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- random weights on disk


def random_trunk(net: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    make = tv_models.alexnet if net == "alex" else tv_models.vgg16
    with torch.device("meta"):  # the classifier (most of the parameters) is never used: leave it unallocated
        model = make(weights=None)
    model.features.to_empty(device="cpu")
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, torch.nn.Conv2d):
                layer.reset_parameters()
        for name, p in model.features.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)  # torchvision starts some biases at 0: make the mapping of each one matter
    return model.eval()


def write_trunk(model: torch.nn.Module, path: Path, full_classifier: bool) -> Path:
    state = model.state_dict()
    # The classifier is ignored: `full_classifier` writes it at its real shapes, else as small stand-ins.
    state = {k: v if k.startswith("features.") else
             (torch.randn(v.shape) if full_classifier else torch.randn(2, 2)) for k, v in state.items()}
    torch.save(state, path)
    return path


def random_heads(net: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(CHANNELS[net])}


@pytest.fixture(scope="module")
def alex(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips_alex")
    trunk = random_trunk("alex", 0)
    heads = random_heads("alex", 1)
    torch.save(heads, folder / "heads.pth")
    return trunk, heads, write_trunk(trunk, folder / ALEX_FILE, full_classifier=False), folder / "heads.pth"


@torch.no_grad()
def hand_lpips(trunk: torch.nn.Module, heads: dict, net: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 from its definition, in float64 on torchvision's own network."""
    features = [copy.deepcopy(m).double() for m in trunk.features]
    weights = [heads[f"lin{i}.model.1.weight"].double().flatten() for i in range(5)]

    def taps(x):
        out, h = [], (x.double() - SHIFT.double()) / SCALE.double()
        for i, layer in enumerate(features[: TAPS[net][-1] + 1]):
            h = layer(h)
            if i in TAPS[net]:
                out.append(h.clone())
        return out

    total = 0
    for fa, fb, w in zip(taps(a), taps(b), weights):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + ((na - nb) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    return total


def images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x.double() - ref.double()).abs() / ref.double().abs()).max())


# --------------------------------------------------------------------------- the distance


@pytest.mark.filterwarnings("ignore:.*(pretrained|weights).*:UserWarning")  # the package's torchvision call
def test_alex_equals_the_hand_computation_and_the_package(alex):
    trunk, heads, trunk_path, heads_path = alex
    model = load_lpips("alex", backbone=trunk_path, heads=heads_path, device="cpu")
    a, b = images(3, 64, 2), images(3, 64, 3)
    with torch.no_grad():
        ours = model(a, b)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    assert rel_err(ours, hand_lpips(trunk, heads, "alex", a, b)) < 1e-5

    # the lpips package itself, filled its own way (the trunk modules by index, its strict=False head load)
    pkg = lpips.LPIPS(pretrained=False, net="alex", version="0.1", pnet_rand=True, verbose=False)
    for k, (lo, hi) in enumerate(((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))):
        for i in range(lo, hi):
            getattr(pkg.net, f"slice{k + 1}")._modules[str(i)].load_state_dict(trunk.features[i].state_dict())
    pkg.load_state_dict(torch.load(heads_path, map_location="cpu", weights_only=True), strict=False)
    with torch.no_grad():
        theirs = pkg(a, b).flatten()
    assert rel_err(ours, theirs) < 1e-5


def test_vgg_equals_the_hand_computation(tmp_path):
    trunk = random_trunk("vgg", 4)
    heads = random_heads("vgg", 5)
    torch.save(heads, tmp_path / "heads.pth")
    path = write_trunk(trunk, tmp_path / VGG_FILE, full_classifier=False)
    model = load_lpips("vgg", backbone=path, heads=tmp_path / "heads.pth", device="cpu")
    a, b = images(2, 24, 6), images(2, 24, 7)
    with torch.no_grad():
        ours = model(a, b)
    assert rel_err(ours, hand_lpips(trunk, heads, "vgg", a, b)) < 1e-5


def test_identical_zero_symmetric_differentiable_frozen(alex):
    _, _, trunk_path, heads_path = alex
    model = load_lpips("alex", backbone=trunk_path, heads=heads_path, device="cpu")
    a, b = images(2, 48, 8), images(2, 48, 9)
    with torch.no_grad():
        assert torch.equal(model(a, a), torch.zeros(2))
        assert torch.allclose(model(a, b), model(b, a), rtol=1e-6, atol=0)
    model.train()  # a loss network stays in eval mode (no dropout in the heads)
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    x = a.clone().requires_grad_(True)
    model(x, b).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_too_small_or_mismatched_images_are_refused(alex):
    _, _, trunk_path, heads_path = alex
    model = load_lpips("alex", backbone=trunk_path, heads=heads_path, device="cpu")
    with pytest.raises(ValueError, match="at least 31x31"):
        model(images(1, 30, 0), images(1, 30, 1))
    with pytest.raises(ValueError, match="one shape"):
        model(images(1, 32, 0), images(1, 40, 1))


def test_the_packaged_heads_load_by_default(alex):
    _, _, trunk_path, _ = alex
    model = load_lpips("alex", backbone=trunk_path, device="cpu")
    shipped = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    expected = torch.load(shipped, map_location="cpu", weights_only=True)
    assert len(expected) == 5
    for key, value in expected.items():
        assert torch.equal(model.model.state_dict()[key], value), key


def test_the_trunk_is_found_in_torchs_hub_cache(alex, tmp_path, monkeypatch):
    trunk, heads, _, heads_path = alex
    (tmp_path / "checkpoints").mkdir()  # torchvision's file as it downloads it: the classifier at its real shapes
    write_trunk(trunk, tmp_path / "checkpoints" / ALEX_FILE, full_classifier=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = load_lpips("alex", heads=heads_path, device="cpu")
    a, b = images(1, 40, 10), images(1, 40, 11)
    with torch.no_grad():
        assert rel_err(model(a, b), hand_lpips(trunk, heads, "alex", a, b)) < 1e-5


# --------------------------------------------------------------------------- files that are not what they should be


class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("which", ["heads", "backbone"])
@pytest.mark.parametrize("container", ["plain-pickle", "torch-zip"])
def test_a_pickle_payload_runs_nothing(alex, tmp_path, which, container):
    _, _, trunk_path, heads_path = alex
    marker = tmp_path / "RAN"
    if container == "plain-pickle":
        evil = {"lin0.model.1.weight": _Payload(os.system, f"touch {marker}")}
        bad = tmp_path / "evil.pth"
        bad.write_bytes(pickle.dumps(evil, protocol=2))
    else:
        evil = {"features.0.weight": _Payload(exec, f"open({str(marker)!r}, 'w').close()")}
        bad = write_torch_zip(tmp_path / "evil.pth", evil, {})
    kwargs = {"backbone": trunk_path, "heads": heads_path, which: bad}
    with pytest.raises(UnsafePickleError) as err:
        load_lpips("alex", device="cpu", **kwargs)
    assert str(bad) in str(err.value)
    assert not marker.exists()


def test_a_wrong_shape_or_missing_key_names_the_files_key(alex, tmp_path):
    trunk, _, _, heads_path = alex
    state = {k: v for k, v in trunk.state_dict().items() if k.startswith("features.")}
    wrong = dict(state, **{"features.3.weight": torch.zeros(192, 64, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"wrong\.pth: shape mismatch for features\.3\.weight"):
        load_lpips("alex", backbone=tmp_path / "wrong.pth", heads=heads_path, device="cpu")

    missing = {k: v for k, v in state.items() if k != "features.8.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth: .*missing keys: features\.8\.bias"):
        load_lpips("alex", backbone=tmp_path / "missing.pth", heads=heads_path, device="cpu")

    heads = random_heads("alex", 0)
    del heads["lin4.model.1.weight"]
    torch.save(heads, tmp_path / "heads4.pth")
    with pytest.raises(CheckpointError, match=r"heads4\.pth: .*missing keys: lin4\.model\.1\.weight"):
        load_lpips("alex", backbone=alex[2], heads=tmp_path / "heads4.pth", device="cpu")


def test_no_trunk_anywhere_says_what_to_get_and_where(tmp_path, monkeypatch):
    hub, store = tmp_path / "hub", tmp_path / "store"
    hub.mkdir()
    store.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("TARGETCLIP_WEIGHTS_DIR", str(store))
    with pytest.raises(WeightsUnavailableError) as err:
        load_lpips("alex", device="cpu")
    message = str(err.value)
    for part in (ALEX_FILE, f"https://download.pytorch.org/models/{ALEX_FILE}", str(store), str(hub / "checkpoints")):
        assert part in message, part
    model, reason = try_load_lpips("alex", device="cpu")
    assert model is None and reason == " ".join(message.split()) and "\n" not in reason


def test_no_package_is_a_clear_error_not_an_import_error(alex, monkeypatch):
    _, _, trunk_path, heads_path = alex
    monkeypatch.setitem(sys.modules, "lpips", None)
    with pytest.raises(WeightsUnavailableError, match=r"pip install lpips.*comfyui-targetclip\[refine\]"):
        load_lpips("alex", backbone=trunk_path, heads=heads_path, device="cpu")
    model, reason = try_load_lpips("alex", backbone=trunk_path, heads=heads_path, device="cpu")
    assert model is None and "pip install lpips" in reason


def test_the_module_imports_without_the_package():
    code = "import sys; sys.modules['lpips'] = None; import targetclip_core.encoders.perceptual as p; print(p.LPIPS)"
    root = Path(perceptual.__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_an_unknown_net_is_refused():
    with pytest.raises(ValueError, match="'alex', 'vgg'"):
        load_lpips("squeeze")
