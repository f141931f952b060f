"""TorchScript archives (OpenAI's original CLIP .pt files) read as data: weights out, nothing run.

Every archive here is made by torch.jit.script/trace + torch.jit.save of a small module;
the reader must give `module.state_dict()` back without torch.jit.load (patched to fail),
refuse pickles that reach for anything else, and turn damaged files into CheckpointError.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import pickletools
import random
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from targetclip_core.errors import CheckpointError, UnsafePickleError
from targetclip_core.formats.torchscript import (
    _ALLOWED,
    OPENAI_EXTRA_KEYS,
    is_torchscript_archive,
    read_torchscript_state_dict,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


# --------------------------------------------------------------------------- helpers


def _save_scripted(module: nn.Module, path: Path, trace_input: torch.Tensor | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(module, trace_input) if trace_input is not None else torch.jit.script(module)
        torch.jit.save(scripted, str(path))
    return path


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _data_pkl_name(path: Path) -> str:
    return next(n for n in _members(path) if n.endswith("/data.pkl"))


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    """Copy a zip, replacing members: keys are member names relative to the root, values bytes
    (or a callable old -> new bytes, or None to drop the member)."""
    members = _members(src)
    root = _data_pkl_name(src).split("/")[0]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            rel = name[len(root) + 1:]
            if rel in changes:
                new = changes[rel]
                if new is None:
                    continue
                data = new(data) if callable(new) else new
            zf.writestr(name, data)
    return dst


def _globals(pkl: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(pkl) if op.name in ("GLOBAL", "STACK_GLOBAL")}


@pytest.fixture
def no_jit_load(monkeypatch):
    """torch.jit.load / torch.load must never be reached by the reader."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load/torch.load was called")
    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)


class Sub(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.register_buffer("buf", torch.arange(5.0))
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.none_param = None

    def forward(self, x):
        return self.lin(x) * self.scale + self.buf.sum()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sub = Sub()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)])
        self.seq = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
        self.bn = nn.BatchNorm1d(2)
        self.emb = nn.Parameter(torch.randn(3, 4)[:, 1:])  # a view: storage offset and stride
        self.hp = nn.Parameter(torch.randn(2).half())
        self.register_buffer("ibuf", torch.tensor([1, 2, 3]))
        self.count = 3

    def forward(self, x):
        x = self.sub(x)
        for layer in self.layers:
            x = layer(x)
        return self.bn(self.seq(x))


class Holder:
    """A TorchScript class (not a module), scripted on first use."""

    def __init__(self, a: int):
        self.a = a
        self.t = torch.ones(2)  # tensor of a non-module object: not a weight


class Typed(nn.Module):
    """Attributes of every kind TorchScript pickles; only some are weights."""

    def __init__(self) -> None:
        super().__init__()
        self.ints, self.floats, self.flags = [1, 2], [1.5], [True]
        self.tensors, self.table = [torch.zeros(1)], {"k": torch.ones(1)}
        self.pair, self.text, self.dev = (1, "a"), "str", torch.device("cpu")
        self.holder = _scripted_holder()(3)
        self.plist = nn.ParameterList([nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))])
        self.plain = torch.zeros(2)  # unregistered tensor attribute: not in state_dict
        self.frozen = nn.Parameter(torch.ones(1), requires_grad=False)
        self.lin = nn.Linear(2, 2).half()
        self.mha = nn.MultiheadAttention(4, 2)

    def forward(self, x):
        y = x + self.plain + self.table["k"] + self.tensors[0] + self.holder.t + self.frozen
        for p in self.plist:
            y = y + p.sum()
        q = torch.ones(1, 1, 4)
        return y * self.ints[0] * self.floats[0], self.mha(q, q, q)[0]


def _scripted_holder():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(Holder)


def _random_state(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))
    return module


def _assert_same_state(ours, ref) -> None:
    assert list(ours) == list(ref)
    for key, value in ref.items():
        got = ours[key]
        assert got.dtype == value.dtype, key
        assert got.shape == value.shape and got.stride() == value.stride(), key
        assert torch.equal(got, value), key
        assert got.device.type == "cpu" and not got.requires_grad, key


# --------------------------------------------------------------------------- reading weights


def test_scripted_module_state_dict(tmp_path, no_jit_load):
    torch.manual_seed(0)
    net = _random_state(Net())
    path = _save_scripted(net, tmp_path / "net.pt")
    assert is_torchscript_archive(path)
    _assert_same_state(read_torchscript_state_dict(path), net.state_dict())


def test_typed_attributes_and_non_weight_tensors(tmp_path, no_jit_load):
    """List/Dict/Device attributes, a TorchScript class instance, a ParameterList, a frozen
    parameter and an unregistered tensor attribute: only the state dict comes back."""

    net = _random_state(Typed())
    path = _save_scripted(net, tmp_path / "typed.pt")
    globs = _globals(_members(path)[_data_pkl_name(path)])
    assert {"torch.jit._pickle build_intlist", "torch.jit._pickle restore_type_tag", "torch device"} <= globs
    _assert_same_state(read_torchscript_state_dict(path), net.state_dict())


def test_traced_module(tmp_path, no_jit_load):
    class Traced(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 2))
            self.register_buffer("offset", torch.ones(2))

        def forward(self, x):
            return self.body(x) + self.offset

    net = _random_state(Traced())
    path = _save_scripted(net, tmp_path / "traced.pt", trace_input=torch.ones(1, 2))
    _assert_same_state(read_torchscript_state_dict(path), net.state_dict())


def test_non_persistent_buffers_come_back_like_jit_load(tmp_path, no_jit_load):
    """TorchScript cannot mark a buffer non-persistent: like torch.jit.load(...).state_dict(),
    the reader returns it among the buffers."""
    sub = _random_state(Sub())
    sub.register_buffer("scratch", torch.full((2,), 7.0), persistent=False)
    path = _save_scripted(sub, tmp_path / "np.pt")
    expected = sub.state_dict()
    expected["scratch"] = sub.scratch
    expected.move_to_end("scratch", last=True)
    ours = read_torchscript_state_dict(path)
    assert list(ours) == ["scale", "buf", "scratch", "lin.weight", "lin.bias"]
    for key in expected:
        assert torch.equal(ours[key], expected[key])


def test_shared_storage_stays_shared(tmp_path, no_jit_load):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            base = torch.arange(6.0)
            self.whole = nn.Parameter(base)
            self.register_buffer("tail", base[2:].view(2, 2))

        def forward(self, x):
            return x + self.whole.sum() + self.tail.sum()

    path = _save_scripted(Tied(), tmp_path / "tied.pt")
    sd = read_torchscript_state_dict(path)
    assert torch.equal(sd["tail"], torch.arange(2.0, 6.0).view(2, 2))
    assert sd["tail"].untyped_storage().data_ptr() == sd["whole"].untyped_storage().data_ptr()


def test_archive_globals_are_all_allowed(tmp_path):
    """What a real archive's data.pkl asks for: __torch__ classes plus a handful of torch helpers,
    all on the allow-list (guards against a torch upgrade changing the format)."""
    path = _save_scripted(Net(), tmp_path / "net.pt")
    globs = _globals(_members(path)[_data_pkl_name(path)])
    others = {g for g in globs if not g.startswith("__torch__")}
    assert others == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage",
                      "torch HalfStorage", "torch LongStorage"}
    assert all(tuple(g.split(" ")) in _ALLOWED for g in others)


def test_detection(tmp_path):
    ts = _save_scripted(Sub(), tmp_path / "sub.pt")
    plain = tmp_path / "plain.pt"
    torch.save(Sub().state_dict(), plain)  # a torch.save zip: data.pkl but no code/ or constants.pkl
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(256))
    assert is_torchscript_archive(ts) and is_torchscript_archive(str(ts))
    assert not is_torchscript_archive(plain)
    assert not is_torchscript_archive(junk)
    assert not is_torchscript_archive(tmp_path / "missing.pt")
    assert not is_torchscript_archive(tmp_path)
    with pytest.raises(CheckpointError, match="not a TorchScript archive"):
        read_torchscript_state_dict(plain)


# --------------------------------------------------------------------------- hostile pickles


def _payload_pickles(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()
    os_system = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."

    class Evil:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').write('ran')",))

    # the eval call sits inside otherwise plain data, protocol 4 (STACK_GLOBAL, frames)
    builtins_eval = pickle.dumps({"training": True, "weight": [Evil()]}, protocol=4)
    return {"os.system": os_system, "builtins.eval": builtins_eval}


@pytest.mark.parametrize("global_name", ["os.system", "builtins.eval"])
def test_code_execution_refused(tmp_path, no_jit_load, global_name):
    marker = tmp_path / "ran.txt"
    src = _save_scripted(Sub(), tmp_path / "sub.pt")
    bad = _rewrite(src, tmp_path / "bad.pt", **{"data.pkl": _payload_pickles(marker)[global_name]})
    assert is_torchscript_archive(bad)
    with pytest.raises(UnsafePickleError) as info:
        read_torchscript_state_dict(bad)
    assert global_name in str(info.value) and str(bad) in str(info.value)
    assert not marker.exists()


def _patched_pkl(old: bytes, new: bytes):
    def patch(data: bytes) -> bytes:
        assert old in data
        return data.replace(old, new, 1)
    return patch


def test_quantized_tensor_rebuild_refused(tmp_path, no_jit_load):
    src = _save_scripted(Sub(), tmp_path / "sub.pt")
    patch = _patched_pkl(b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_qtensor\n")
    bad = _rewrite(src, tmp_path / "q.pt", **{"data.pkl": patch})
    with pytest.raises(UnsafePickleError, match=r"torch\._utils\._rebuild_qtensor"):
        read_torchscript_state_dict(bad)


def test_storage_key_cannot_escape(tmp_path, no_jit_load):
    src = _save_scripted(Sub(), tmp_path / "sub.pt")
    patch = _patched_pkl(b"X\x01\x00\x00\x000", b"X\x04\x00\x00\x00../0")  # storage key '0' -> '../0'
    bad = _rewrite(src, tmp_path / "key.pt", **{"data.pkl": patch})
    with pytest.raises(CheckpointError, match="bad storage key"):
        read_torchscript_state_dict(bad)


def test_storage_size_must_match_its_entry(tmp_path, no_jit_load):
    src = _save_scripted(Sub(), tmp_path / "sub.pt")
    bad = _rewrite(src, tmp_path / "short.pt", **{"data/0": lambda b: b[:-4]})
    with pytest.raises(CheckpointError, match="storage 0 holds"):
        read_torchscript_state_dict(bad)
    missing = _rewrite(src, tmp_path / "missing.pt", **{"data/1": None})
    with pytest.raises(CheckpointError, match="storage 1 is missing"):
        read_torchscript_state_dict(missing)


def test_tensor_past_storage_end_refused(tmp_path, no_jit_load):
    # Sub.scale is the 0-d tensor on storage '0' (1 element); claim 3 elements instead
    src = _save_scripted(Sub(), tmp_path / "sub.pt")
    pkl = _members(src)[_data_pkl_name(src)]
    assert b"K\x00(t(t\x88" in pkl  # offset 0, size (), stride (), requires_grad
    patch = _patched_pkl(b"K\x00(t(t\x88", b"K\x00(K\x03t(K\x01t\x88")
    bad = _rewrite(src, tmp_path / "past.pt", **{"data.pkl": patch})
    with pytest.raises(CheckpointError, match="past the end"):
        read_torchscript_state_dict(bad)


# --------------------------------------------------------------------------- damaged files


def test_damaged_files(tmp_path, no_jit_load):
    src = _save_scripted(Net(), tmp_path / "net.pt")
    raw = src.read_bytes()
    cases = {
        "random.pt": os.urandom(4096),
        "empty.pt": b"",
        "truncated.pt": raw[: len(raw) // 2],
        "tail-cut.pt": raw[:-30],
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            read_torchscript_state_dict(path)
        assert str(path) in str(info.value), name
    with pytest.raises(CheckpointError, match="no such file"):
        read_torchscript_state_dict(tmp_path / "absent.pt")


def test_corrupt_members(tmp_path, no_jit_load):
    src = _save_scripted(Net(), tmp_path / "net.pt")
    # a flipped byte in tensor data: zipfile's CRC check catches it
    members = _members(src)
    root = _data_pkl_name(src).split("/")[0]
    key = f"{root}/data/0"
    raw = bytearray(src.read_bytes())
    at = raw.find(members[key])
    raw[at] ^= 0xFF
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_torchscript_state_dict(flipped)
    # data.pkl cut short
    cut = _rewrite(src, tmp_path / "cut.pt", **{"data.pkl": lambda b: b[: len(b) // 2]})
    with pytest.raises(CheckpointError, match="data.pkl"):
        read_torchscript_state_dict(cut)
    # random bytes as data.pkl
    rng = random.Random(0)
    noise = _rewrite(src, tmp_path / "noise.pt", **{"data.pkl": bytes(rng.randrange(256) for _ in range(512))})
    with pytest.raises(CheckpointError):
        read_torchscript_state_dict(noise)


# --------------------------------------------------------------------------- OpenAI CLIP end to end

TINY_OPENAI = "TargetCLIP-TinyOpenAI-test"
TINY_OPENAI_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    # OpenAI archives imply heads = width // 64; vocab_size must cover the tokenizer's ids
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


@pytest.fixture(scope="module")
def openai_archive(tmp_path_factory):
    """A tiny CLIP saved the way OpenAI shipped theirs: a TorchScript archive whose state dict has
    OpenAI's key names, fp16 weights where OpenAI had them, and the three extra buffers."""
    import open_clip
    from open_clip.model import convert_weights_to_fp16

    folder = tmp_path_factory.mktemp("openai_clip")
    cfg_path = folder / f"{TINY_OPENAI}.json"
    cfg_path.write_text(json.dumps(TINY_OPENAI_CFG), encoding="utf-8")
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(TINY_OPENAI, pretrained=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial values, exactly representable in fp16
            p.copy_((p + 0.02 * torch.randn(p.shape, generator=g)).half().float())
    reference = copy.deepcopy(model).eval()

    jit_model = copy.deepcopy(model)
    convert_weights_to_fp16(jit_model)
    mask = jit_model.attn_mask
    del jit_model.attn_mask  # OpenAI's model kept the causal mask outside its buffers
    jit_model.attn_mask = mask
    del jit_model.context_length, jit_model.vocab_size
    for key, value in zip(OPENAI_EXTRA_KEYS, (32, 16, 49408)):
        jit_model.register_buffer(key, torch.tensor(value))
    path = _save_scripted(jit_model, folder / "TinyOpenAI.pt")
    return path, reference


def test_openai_archive_layout(openai_archive, no_jit_load):
    path, reference = openai_archive
    sd = read_torchscript_state_dict(path)
    expected = list(reference.state_dict()) + list(OPENAI_EXTRA_KEYS)
    assert sorted(sd) == sorted(expected)
    assert sd["visual.conv1.weight"].dtype == torch.float16 and sd["logit_scale"].dtype == torch.float32
    assert sd["context_length"].item() == 16


def test_load_clip_from_openai_archive(openai_archive, no_jit_load):
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    from targetclip_core.encoders.clip import CLIPEncoder, load_clip

    path, reference = openai_archive
    enc = load_clip(TINY_OPENAI, pretrained=str(path), device="cpu")
    assert type(enc.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert enc.input_size == 32 and enc.model.training is False
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in enc.model.parameters())

    tokenizer = open_clip.get_tokenizer(TINY_OPENAI)
    direct = build_model_from_openai_state_dict(
        {k: v.clone() for k, v in reference.state_dict().items()}, cast_dtype=None).float()
    gen = torch.Generator().manual_seed(2)
    images = {"default": torch.rand(2, 3, 40, 48, generator=gen) * 2 - 1,  # resized and cropped
              "paper": torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1}
    texts = ["a face with a beard", "a photo of a cat"]
    for model in (reference, direct):
        other = CLIPEncoder(model, tokenizer, TINY_OPENAI, None)
        for mode, img in images.items():
            torch.testing.assert_close(enc.encode_image(img, mode), other.encode_image(img, mode), rtol=0, atol=1e-6)
        torch.testing.assert_close(enc.encode_text(texts), other.encode_text(texts), rtol=0, atol=1e-6)


def test_load_clip_archive_of_wrong_architecture(openai_archive, tmp_path, no_jit_load):
    from targetclip_core.encoders.clip import load_clip

    path, _ = openai_archive
    with pytest.raises(CheckpointError, match=r"embed_dim is 32, but 'ViT-B-32' has 512"):
        load_clip("ViT-B-32", pretrained=str(path), device="cpu")
    not_clip = _save_scripted(Net(), tmp_path / "net.pt")
    with pytest.raises(CheckpointError, match="not an OpenAI CLIP"):
        load_clip(TINY_OPENAI, pretrained=str(not_clip), device="cpu")
