"""Tests of the restricted network-pickle reader.

Pickles are built the way NVlabs' training loop builds them: from persistent
classes in small fake ``torch_utils`` / ``dnnlib`` / ``training`` packages
written to a temporary directory.  Those packages are removed from sys.path and
sys.modules before anything is loaded, so the reader cannot lean on them.
"""

from __future__ import annotations

import copy
import importlib
import io
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import warnings
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from targetclip_core.errors import CheckpointError, UnsafePickleError
from targetclip_core.formats.network_pickle import load_network_pickle
from targetclip_core.formats.pickle_records import ModuleRecord, PersistentRecord, PickledEasyDict

FAKE_TOP_LEVEL = ("torch_utils", "dnnlib", "training")

# ---------------------------------------------------------------- fake NVlabs sources

FAKE_SOURCES = {
    "torch_utils/__init__.py": "",
    # Same record layout as NVlabs torch_utils/persistence.py (written independently).
    "torch_utils/persistence.py": '''
        import copy
        import inspect
        import sys

        _version = 6

        def _reconstruct_persistent_obj(meta):
            raise RuntimeError("fake persistence: a safe reader must never call this")

        def persistent_class(orig_class):
            module_src = inspect.getsource(sys.modules[orig_class.__module__])

            class Persistent(orig_class):
                _orig_module_src = module_src
                _orig_class_name = orig_class.__name__

                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    self._init_args = copy.deepcopy(args)
                    self._init_kwargs = copy.deepcopy(kwargs)

                def __reduce__(self):
                    fields = list(super().__reduce__()) + [None, None, None]
                    meta = dict(type="class", version=_version, module_src=self._orig_module_src,
                                class_name=self._orig_class_name, state=fields[2])
                    return (_reconstruct_persistent_obj, (meta,), None)

            Persistent.__name__ = orig_class.__name__
            return Persistent
    ''',
    "dnnlib/__init__.py": "from .util import EasyDict\n",
    "dnnlib/util.py": '''
        class EasyDict(dict):
            def __getattr__(self, name):
                try:
                    return self[name]
                except KeyError:
                    raise AttributeError(name)

            def __setattr__(self, name, value):
                self[name] = value

            def __delattr__(self, name):
                del self[name]
    ''',
    "training/__init__.py": "",
    "training/networks.py": '''
        import numpy as np
        import torch
        from torch_utils import persistence

        @persistence.persistent_class
        class FullyConnectedLayer(torch.nn.Module):
            def __init__(self, in_features, out_features, bias=True, lr_multiplier=1.0, bias_init=0.0):
                super().__init__()
                self.in_features = in_features
                self.out_features = out_features
                self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
                if bias:
                    self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init)))
                else:
                    self.register_parameter("bias", None)
                self.weight_gain = lr_multiplier / np.sqrt(in_features)  # a numpy float64
                self.bias_gain = lr_multiplier

        @persistence.persistent_class
        class MappingNetwork(torch.nn.Module):
            def __init__(self, z_dim, w_dim, num_layers=2):
                super().__init__()
                self.z_dim = z_dim
                self.num_layers = num_layers
                for idx in range(num_layers):
                    setattr(self, f"fc{idx}", FullyConnectedLayer(z_dim if idx == 0 else w_dim, w_dim, lr_multiplier=0.01))
                self.register_buffer("w_avg", torch.zeros([w_dim]))

        @persistence.persistent_class
        class SynthesisLayer(torch.nn.Module):
            def __init__(self, channels, resolution, channels_last=False, use_fp16=False):
                super().__init__()
                memory_format = torch.channels_last if channels_last else torch.contiguous_format
                weight = torch.randn([channels, channels, 3, 3]).to(memory_format=memory_format)
                self.weight = torch.nn.Parameter(weight.half() if use_fp16 else weight)
                self.register_buffer("resample_filter", torch.outer(torch.tensor([1., 3., 3., 1.]), torch.tensor([1., 3., 3., 1.])) / 64)
                self.register_buffer("noise_const", torch.randn([resolution, resolution]))
                self.register_buffer("scratch", torch.ones([3]), persistent=False)
                self.register_buffer("unset", None)
                self.in_size = np.broadcast_to(np.asarray(resolution), [2])  # StyleGAN3 keeps arrays like this
                self.act_gain = np.sqrt(2)

        @persistence.persistent_class
        class Generator(torch.nn.Module):
            def __init__(self, z_dim, w_dim, img_resolution, mapping_kwargs={}, **synthesis_kwargs):
                super().__init__()
                self.z_dim = z_dim
                self.img_resolution = img_resolution
                self.mapping = MappingNetwork(z_dim=z_dim, w_dim=w_dim, **mapping_kwargs)
                self.layers = torch.nn.ModuleList([
                    SynthesisLayer(synthesis_kwargs["channels"], img_resolution),
                    SynthesisLayer(synthesis_kwargs["channels"], img_resolution, channels_last=True, use_fp16=True),
                ])
                self.register_module("absent", None)

        @persistence.persistent_class
        class Discriminator(torch.nn.Module):
            def __init__(self, img_resolution, channels):
                super().__init__()
                self.out = FullyConnectedLayer(channels, 1, bias=False)
                self.register_buffer("resample_filter", torch.arange(16.).reshape(4, 4))
    ''',
    "training/triplane.py": '''
        import torch
        import dnnlib
        from torch_utils import persistence
        from training.networks import FullyConnectedLayer, MappingNetwork
        from training.volumetric_rendering.renderer import ImportanceRenderer

        @persistence.persistent_class
        class TriPlaneGenerator(torch.nn.Module):
            def __init__(self, z_dim, w_dim, rendering_kwargs={}):
                super().__init__()
                self.backbone = MappingNetwork(z_dim, w_dim)
                self.renderer = ImportanceRenderer()
                self.decoder = OSGDecoder(w_dim, {"decoder_lr_mul": 1.0, "decoder_output_dim": 3})
                self.neural_rendering_resolution = 64
                self.rendering_kwargs = rendering_kwargs

        class OSGDecoder(torch.nn.Module):  # not persistent, exactly like EG3D
            def __init__(self, n_features, options):
                super().__init__()
                self.hidden_dim = 16
                self.net = torch.nn.Sequential(
                    FullyConnectedLayer(n_features, self.hidden_dim, lr_multiplier=options["decoder_lr_mul"]),
                    torch.nn.Softplus(),
                    FullyConnectedLayer(self.hidden_dim, 1 + options["decoder_output_dim"]),
                )
    ''',
    "training/volumetric_rendering/__init__.py": "",
    "training/volumetric_rendering/ray_marcher.py": '''
        import torch

        class MipRayMarcher2(torch.nn.Module):
            pass
    ''',
    "training/volumetric_rendering/renderer.py": '''
        import torch
        from training.volumetric_rendering.ray_marcher import MipRayMarcher2

        class ImportanceRenderer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.ray_marcher = MipRayMarcher2()
                self.plane_axes = torch.eye(3).repeat(3, 1, 1)  # a plain tensor attribute, not a buffer
    ''',
}


def _forget_fake_packages(src_dir: Path) -> None:
    while str(src_dir) in sys.path:
        sys.path.remove(str(src_dir))
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_TOP_LEVEL:
            del sys.modules[name]
    importlib.invalidate_caches()


def _training_set_kwargs() -> dict:
    return dict(
        class_name="training.dataset.ImageFolderDataset",
        path="/data/ffhq.zip",
        use_labels=False,
        max_size=np.int64(70000),
        xflip=np.bool_(True),
        resolution=np.int32(16),
        mean=np.float32(0.5),
        shape=np.array([3, 16, 16]),
        big_endian=np.arange(6, dtype=">f8").reshape(2, 3),
        fortran=np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
    )


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("nvlabs")
    src_dir = root / "src"
    for rel, text in FAKE_SOURCES.items():
        path = src_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    sys.path.insert(0, str(src_dir))
    try:
        networks = importlib.import_module("training.networks")
        triplane = importlib.import_module("training.triplane")
        dnnlib = importlib.import_module("dnnlib")

        torch.manual_seed(0)
        mapping_kwargs = dnnlib.EasyDict(num_layers=2)
        G = networks.Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_kwargs=mapping_kwargs, channels=4)
        G_ema = networks.Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_kwargs=mapping_kwargs, channels=4)
        D = networks.Discriminator(img_resolution=16, channels=4)
        with torch.no_grad():  # an explicit, independently known value
            G.mapping.w_avg.copy_(torch.arange(8.0))
        for net in (G, G_ema, D):
            net.eval().requires_grad_(False)
        sg2 = dict(G=G, D=D, G_ema=G_ema, augment_pipe=None, training_set_kwargs=_training_set_kwargs())

        rendering_kwargs = dnnlib.EasyDict(box_warp=1, c_gen_conditioning_zero=False, ray_start=np.float64(2.25))
        T = triplane.TriPlaneGenerator(z_dim=8, w_dim=8, rendering_kwargs=rendering_kwargs).eval()
        eg3d = dict(G=T, D=D, G_ema=T, augment_pipe=None, training_set_kwargs=None)

        def snapshot(net: torch.nn.Module) -> "OrderedDict[str, torch.Tensor]":
            return OrderedDict((k, v.detach().clone()) for k, v in net.state_dict().items())

        ns = SimpleNamespace(
            root=root,
            expected={"G": snapshot(G), "G_ema": snapshot(G_ema), "D": snapshot(D), "eg3d": snapshot(T)},
            strides={k: v.stride() for k, v in G.state_dict().items()},
            plane_axes=T.renderer.plane_axes.clone(),
            weight_gain=G.mapping.fc0.weight_gain,
            networks_src=(src_dir / "training/networks.py").read_text(encoding="utf-8"),
            triplane_src=(src_dir / "training/triplane.py").read_text(encoding="utf-8"),
            sg2={}, eg3d={},
        )
        for protocol in (2, 3, 4, 5):
            for kind, data in (("sg2", sg2), ("eg3d", eg3d)):
                path = root / f"{kind}_p{protocol}.pkl"
                with open(path, "wb") as f:
                    pickle.dump(data, f, protocol=protocol)
                getattr(ns, kind)[protocol] = path
        # A persistent meta carrying a payload in its state, built while the fake modules exist.
        marker = root / "nested_payload_ran"
        meta_payload = networks.FullyConnectedLayer(2, 2)
        meta_payload.evil = _Call(os.system, (f"touch {marker}",))
        ns.nested_payload = pickle.dumps(dict(G=meta_payload), protocol=4)
        ns.nested_marker = marker
        return ns
    finally:
        _forget_fake_packages(src_dir)


@pytest.fixture(autouse=True)
def _no_fake_packages_imported() -> Any:
    yield
    leaked = [m for m in sys.modules if m.split(".")[0] in FAKE_TOP_LEVEL]
    assert not leaked, f"loading imported {leaked}"


# ---------------------------------------------------------------- helpers


class _Call:
    """Pickles as a call of `func(*args)`: how pickle payloads are written."""

    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


def _call_global(module: str, name: str, args: tuple) -> bytes:
    """A protocol-2 pickle of `module.name(*args)` for any spelling, importable or not."""
    body = pickle.dumps(args, protocol=2)
    assert body[:2] == b"\x80\x02" and body[-1:] == b"."
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + body[2:-1] + b"R."


def _assert_same_state(got: "OrderedDict[str, torch.Tensor]", expected: "OrderedDict[str, torch.Tensor]") -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key
        assert not got[key].requires_grad


def _load(path: Path) -> Any:
    return load_network_pickle(path)


# ---------------------------------------------------------------- well-formed pickles


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_stylegan2_ada_layout(fake: SimpleNamespace, protocol: int) -> None:
    data = _load(fake.sg2[protocol])
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    assert data["augment_pipe"] is None
    G, D, G_ema = data["G"], data["D"], data["G_ema"]
    assert isinstance(G, PersistentRecord) and isinstance(D, PersistentRecord)
    assert (G.class_name, D.class_name, G_ema.class_name) == ("Generator", "Discriminator", "Generator")
    assert G.version == 6 and G.module_name is None
    assert G.module_src == fake.networks_src

    kwargs = G.init_kwargs
    assert kwargs == {"z_dim": 8, "w_dim": 8, "img_resolution": 16, "mapping_kwargs": {"num_layers": 2}, "channels": 4}
    assert type(kwargs["mapping_kwargs"]) is dict
    assert isinstance(G.state["_init_kwargs"]["mapping_kwargs"], PickledEasyDict)
    assert G.state["_init_kwargs"]["mapping_kwargs"].num_layers == 2
    assert D.init_kwargs == {"img_resolution": 16, "channels": 4} and D.init_args == ()

    _assert_same_state(G.state_dict(), fake.expected["G"])
    _assert_same_state(G_ema.state_dict(), fake.expected["G_ema"])
    _assert_same_state(D.state_dict(), fake.expected["D"])
    assert torch.equal(G.state_dict()["mapping.w_avg"], torch.arange(8.0))
    assert "layers.0.scratch" not in G.state_dict()  # non-persistent buffer
    assert "out.bias" not in D.state_dict()  # None parameter
    assert {k: v.stride() for k, v in G.state_dict().items()} == fake.strides  # channels_last kept
    assert list(G.state_dict(prefix="G.")) == ["G." + k for k in fake.expected["G"]]

    layers = G.state["_modules"]["layers"]
    assert isinstance(layers, ModuleRecord)
    assert layers.class_path == "torch.nn.modules.container.ModuleList"
    layer0 = layers.state["_modules"]["0"]
    assert layer0.state["in_size"].tolist() == [16, 16]
    assert type(layer0.state["act_gain"]) is np.float64 and layer0.state["act_gain"] == np.sqrt(2)
    fc0 = G.state["_modules"]["mapping"].state["_modules"]["fc0"]
    assert type(fc0.state["weight_gain"]) is np.float64 and fc0.state["weight_gain"] == fake.weight_gain

    expected_tsk = _training_set_kwargs()
    tsk = data["training_set_kwargs"]
    assert set(tsk) == set(expected_tsk)
    for key, value in expected_tsk.items():
        if isinstance(value, np.ndarray):
            assert tsk[key].dtype == value.dtype and np.array_equal(tsk[key], value), key
            assert tsk[key].flags.writeable
        else:
            assert type(tsk[key]) is type(value) and tsk[key] == value, key


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_eg3d_layout(fake: SimpleNamespace, protocol: int) -> None:
    data = _load(fake.eg3d[protocol])
    G = data["G"]
    assert G is data["G_ema"]  # shared objects stay shared
    assert G.class_name == "TriPlaneGenerator" and G.module_src == fake.triplane_src
    assert G.init_kwargs["rendering_kwargs"] == {"box_warp": 1, "c_gen_conditioning_zero": False, "ray_start": 2.25}
    assert type(G.init_kwargs["rendering_kwargs"]) is dict
    _assert_same_state(G.state_dict(), fake.expected["eg3d"])

    modules = G.state["_modules"]
    decoder, renderer = modules["decoder"], modules["renderer"]
    assert isinstance(decoder, ModuleRecord) and decoder.class_path == "training.triplane.OSGDecoder"
    assert decoder.class_name == "OSGDecoder" and decoder.module_name == "training.triplane"
    net = decoder.state["_modules"]["net"]
    assert net.class_path == "torch.nn.modules.container.Sequential"
    children = net.state["_modules"]
    assert [type(c).__name__ for c in children.values()] == ["PersistentRecord", "ModuleRecord", "PersistentRecord"]
    assert children["1"].class_path == "torch.nn.modules.activation.Softplus"
    assert children["1"].state["beta"] == 1.0
    assert set(decoder.state_dict()) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert renderer.class_path == "training.volumetric_rendering.renderer.ImportanceRenderer"
    assert renderer.state["_modules"]["ray_marcher"].class_path == (
        "training.volumetric_rendering.ray_marcher.MipRayMarcher2")
    assert torch.equal(renderer.state["plane_axes"], fake.plane_axes)


def test_binary_file_object(fake: SimpleNamespace) -> None:
    raw = fake.sg2[4].read_bytes()
    data = load_network_pickle(io.BytesIO(raw))
    _assert_same_state(data["D"].state_dict(), fake.expected["D"])


class _StorageBytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple:
        return (torch.storage._load_from_bytes, (self.data,))


def _typed_storage(t: torch.Tensor) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t.storage()


@pytest.mark.parametrize("legacy", [True, False])
def test_storage_bytes_legacy_and_zip(legacy: bool) -> None:
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    buf = io.BytesIO()
    torch.save(_typed_storage(t), buf, _use_new_zipfile_serialization=not legacy)
    blob = buf.getvalue()
    assert blob.startswith(b"PK") != legacy  # really the format we mean
    tensor_call = _Call(torch._utils._rebuild_tensor_v2,
                        (_StorageBytes(blob), 1, (2, 3), (1, 2), False, OrderedDict()))
    got = load_network_pickle(io.BytesIO(pickle.dumps(tensor_call, protocol=4)))
    assert torch.equal(got, t.flatten()[1:].as_strided((2, 3), (1, 2)))


def test_tensor_outside_storage_is_refused() -> None:
    blob = io.BytesIO()
    torch.save(_typed_storage(torch.zeros(4)), blob)
    bad = _Call(torch._utils._rebuild_tensor_v2, (_StorageBytes(blob.getvalue()), 2, (4,), (1,), False, OrderedDict()))
    with pytest.raises(CheckpointError, match="past the end"):
        load_network_pickle(io.BytesIO(pickle.dumps(bad, protocol=4)))


# ---------------------------------------------------------------- payloads


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    cmd = f"touch {marker}"
    return {
        "os.system": (_call_global("os", "system", (cmd,)), "os.system"),
        "posix.system": (pickle.dumps(_Call(os.system, (cmd,)), protocol=4), f"{os.system.__module__}.system"),
        "builtins.eval": (pickle.dumps(_Call(eval, (f"open({str(marker)!r}, 'w').close()",)), protocol=4),
                          "builtins.eval"),
        "subprocess.Popen": (pickle.dumps(_Call(subprocess.Popen, (["touch", str(marker)],)), protocol=4),
                             "subprocess.Popen"),
        "made-up module": (_call_global("made_up_evil_module", "run", (cmd,)), "made_up_evil_module.run"),
        "protocol-0 text": (f"cos\nsystem\n(V{cmd}\ntR.".encode(), "os.system"),
        "non-class persistent meta": (
            _call_global("torch_utils.persistence", "_reconstruct_persistent_obj", (
                dict(type="function", version=6, module_src=f"import os\nos.system({cmd!r})\n",
                     class_name="run", state={}),)),
            "_reconstruct_persistent_obj"),
        "deep inside a network": (
            pickle.dumps(dict(G=dict(_modules=OrderedDict(x=[1, 2, {"k": _Call(os.system, (cmd,))}]))), protocol=3),
            f"{os.system.__module__}.system"),
        "storage bytes": (pickle.dumps(_StorageBytes(pickle.dumps(_Call(os.system, (cmd,)), protocol=2)), protocol=4),
                          "system"),
    }


PAYLOAD_NAMES = list(_payloads(Path("x")))


@pytest.mark.parametrize("which", PAYLOAD_NAMES)
def test_payload_is_refused_and_never_runs(tmp_path: Path, which: str) -> None:
    marker = tmp_path / "payload_ran"
    blob, named = _payloads(marker)[which]
    path = tmp_path / "evil.pkl"
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError) as info:
        load_network_pickle(path)
    message = str(info.value)
    assert named in message and str(path) in message
    assert "nothing" in message and "executed" in message
    assert not marker.exists()


def test_payload_fixture_is_live(tmp_path: Path) -> None:
    """Control: the same bytes do run under a plain unpickler, so the refusals above mean something."""
    marker = tmp_path / "payload_ran"
    pickle.loads(_payloads(marker)["os.system"][0])
    assert marker.exists()


def test_payload_in_persistent_state(fake: SimpleNamespace) -> None:
    with pytest.raises(UnsafePickleError, match=r"\.system"):
        load_network_pickle(io.BytesIO(fake.nested_payload))
    assert not fake.nested_marker.exists()


@pytest.mark.parametrize("blob, named", [
    (b"\x80\x02ctorch\nfloat32\n)R.", "call torch.float32"),                 # REDUCE on a value
    (b"\x80\x02cnumpy\nndarray\n)R.", "call numpy.ndarray"),                 # REDUCE on a marker
    (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "instantiate collections.OrderedDict"),  # NEWOBJ on a function
    (pickle.dumps(torch.zeros(2), protocol=2)[:-1] + b"}b.", "state of a torch.Tensor"),  # BUILD on a tensor
    (b"\x80\x02ccollections\nOrderedDict\n)R(K\x01tq\x00h\x00K\x02a.", "add items"),       # APPEND on a dict
    (b"(ios\nsystem\nS'true'\n.", "os.system"),                              # INST
])
def test_opcode_misuse_is_refused(blob: bytes, named: str) -> None:
    with pytest.raises(UnsafePickleError, match=named):
        load_network_pickle(io.BytesIO(blob))


# ---------------------------------------------------------------- broken files


def test_truncated_file(fake: SimpleNamespace, tmp_path: Path) -> None:
    raw = fake.sg2[4].read_bytes()
    for cut in (1, 100, len(raw) // 2, len(raw) - 1):
        path = tmp_path / f"cut{cut}.pkl"
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="cut"):
            load_network_pickle(path)


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "noise.pkl"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(CheckpointError, match="noise.pkl"):
        load_network_pickle(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pkl"):
        load_network_pickle(empty)
    with pytest.raises(CheckpointError, match="missing.pkl"):
        load_network_pickle(tmp_path / "missing.pkl")


@pytest.mark.parametrize("blob", [
    b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc",   # BINBYTES8 claiming a terabyte
    b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"abc",   # BYTEARRAY8 likewise
    b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"abc",   # FRAME likewise
])
def test_forged_lengths_do_not_allocate(blob: bytes) -> None:
    with pytest.raises(CheckpointError, match="truncated"):
        load_network_pickle(io.BytesIO(blob))


def test_unbuilt_numpy_array_is_refused() -> None:
    blob = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R."
    with pytest.raises(CheckpointError, match="numpy"):
        load_network_pickle(io.BytesIO(blob))


def test_object_arrays_are_refused() -> None:
    blob = pickle.dumps(np.array([1, "a"], dtype=object), protocol=4)
    with pytest.raises(CheckpointError, match="dtype"):
        load_network_pickle(io.BytesIO(blob))


def test_records_are_plain_data(fake: SimpleNamespace) -> None:
    data = _load(fake.sg2[4])
    clone = copy.deepcopy(data["G"])  # plain Python objects: deep-copyable, no hidden modules
    _assert_same_state(clone.state_dict(), fake.expected["G"])


# ---------------------------------------------------------------- other spellings


def test_numpy1_spellings(fake: SimpleNamespace) -> None:
    """Pickles written under numpy 1 name numpy.core, not numpy._core."""
    raw = fake.sg2[2].read_bytes()
    assert b"numpy._core.multiarray\n" in raw  # protocol 2 spells globals as text lines
    data = load_network_pickle(io.BytesIO(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")))
    assert np.array_equal(data["training_set_kwargs"]["big_endian"], _training_set_kwargs()["big_endian"])
    assert data["G"].state["_modules"]["mapping"].state["_modules"]["fc0"].state["weight_gain"] == fake.weight_gain


def test_eg3d_helper_from_rebuilt_module(fake: SimpleNamespace) -> None:
    """A helper class created through a persistence-rebuilt module is pickled under that module's name."""
    raw = fake.eg3d[2].read_bytes()
    rebuilt = b"_imported_module_" + b"0123456789abcdef" * 2
    data = load_network_pickle(io.BytesIO(raw.replace(b"training.triplane\nOSGDecoder\n", rebuilt + b"\nOSGDecoder\n")))
    decoder = data["G"].state["_modules"]["decoder"]
    assert decoder.class_path == rebuilt.decode() + ".OSGDecoder" and decoder.class_name == "OSGDecoder"
    _assert_same_state(data["G"].state_dict(), fake.expected["eg3d"])
    evil = raw.replace(b"training.triplane\nOSGDecoder\n", rebuilt + b"\nGenerator\n")
    with pytest.raises(UnsafePickleError, match=rebuilt.decode() + ".Generator"):
        load_network_pickle(io.BytesIO(evil))


def test_bytes_are_not_a_file() -> None:
    with pytest.raises(TypeError):
        load_network_pickle(b"\x80\x04N.")  # type: ignore[arg-type]


def test_torch_dtypes_and_devices() -> None:
    value = dict(dtype=torch.float16, other=torch.int64, device=torch.device("cuda", 1), cpu=torch.device("cpu"))
    assert load_network_pickle(io.BytesIO(pickle.dumps(value, protocol=4))) == value
