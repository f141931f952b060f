"""Checkpoint loading: NVlabs pickles, e4e files, our safetensors, and every kind of bad input.

NVlabs StyleGAN2-ADA pickles are written here in the layout of
NVlabs/stylegan2-ada-pytorch training/networks.py (parameter names and shapes, the
persistent-class record that torch_utils.persistence pickles, the `_init_kwargs` it
keeps), with the SAME fixture weights as the rosinality checkpoint: both layouts hold
the same function, so the loaded generator must reproduce rosinality's reference images.
The fake `torch_utils.persistence` / `dnnlib` modules exist only while a pickle is written.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.generators import (
    OURS_TO_ROSINALITY_32,
    random_rosinality_state,
    rel_err,
    small_generator,
    write_rosinality_checkpoint,
)
from helpers.nvlabs import (
    nvlabs_fixture_pickle,
    random_nvlabs_state,
    rosinality_to_nvlabs,
    write_nvlabs_pickle,
)
from helpers.paths import require_shared

from targetclip_core.errors import CheckpointError, LatentError, UnsafePickleError, WeightsUnavailableError
from targetclip_core.formats.checkpoints import sniff_format
from targetclip_core.generators.latents import load_latents
from targetclip_core.generators.load import load_generator, save_generator
from targetclip_core.generators.stylegan2 import SynthesisLayer, ToRGBLayer

TOL = 1e-4


# --------------------------------------------------------------------------- NVlabs layout


# --------------------------------------------------------------------------- NVlabs pickles


@pytest.fixture(scope="module")
def nvlabs32(tmp_path_factory, rosinality32_state, rosinality32_ref):
    """Fixture weights as an NVlabs pickle, with w_avg = the reference truncation centre."""
    path = tmp_path_factory.mktemp("nv32") / "network-snapshot.pkl"
    return nvlabs_fixture_pickle(path, rosinality32_state, w_avg=torch.from_numpy(rosinality32_ref["mean_w"]))


@pytest.fixture(scope="module")
def G_nv32(nvlabs32):
    return load_generator(nvlabs32, device="cpu")


def test_nvlabs_pickle_is_sniffed_as_pickle(nvlabs32):
    assert sniff_format(nvlabs32) == "pickle"


def test_nvlabs_config_from_init_kwargs(G_nv32):
    cfg = G_nv32.config
    assert (cfg.resolution, cfg.z_dim, cfg.w_dim, cfg.c_dim, cfg.n_mlp) == (32, 512, 512, 0, 8)
    assert cfg.channels == {4: 512, 8: 512, 16: 512, 32: 512}
    assert cfg.source_format == "nvlabs-pkl" and cfg.conv_clamp is None
    assert G_nv32.mapping.has_w_avg


@pytest.mark.parametrize("impl", ["fused", "unfused"])
def test_nvlabs_pickle_reproduces_the_rosinality_fixture(G_nv32, rosinality32_ref, impl):
    G, ref = G_nv32, rosinality32_ref
    G.modconv_impl = impl
    try:
        with torch.no_grad():
            w = G.mapping(torch.from_numpy(ref["z"]))
            img = G.synthesis(torch.from_numpy(ref["wplus"]))
            styles = G.styles(torch.from_numpy(ref["wplus"]))
            # truncation without an explicit latent: toward the pickle's w_avg (= the reference mean_w)
            wt = G.mapping(torch.from_numpy(ref["z"]), truncation=0.7)
            img_t = G.synthesis(G.to_wplus(wt))
    finally:
        G.modconv_impl = "auto"
    assert rel_err(w, ref["w"]) < TOL
    assert rel_err(img, ref["image_from_wplus"]) < TOL
    assert rel_err(img_t, ref["image_from_z_trunc07"]) < TOL
    for ours, theirs in OURS_TO_ROSINALITY_32.items():
        assert rel_err(styles[ours], ref[f"style_space/{theirs}"]) < TOL, ours


def test_nvlabs_w_avg_is_loaded(G_nv32, rosinality32_ref):
    assert torch.equal(G_nv32.mapping.w_avg, torch.from_numpy(rosinality32_ref["mean_w"][0]))
    assert torch.equal(G_nv32.mapping.truncation_latent(), torch.from_numpy(rosinality32_ref["mean_w"]))


def test_nvlabs_pickle_without_d(tmp_path, rosinality32_state, rosinality32_ref):
    path = nvlabs_fixture_pickle(tmp_path / "g_only.pkl", rosinality32_state, with_d=False)
    G = load_generator(path, device="cpu")
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(rosinality32_ref["wplus"]))
    assert rel_err(img, rosinality32_ref["image_from_wplus"]) < TOL


def _small_nvlabs(tmp_path, name="small.pkl", *, c_dim=0, conv_clamp=None, lr_multiplier=0.01, seed=0, **state_kw):
    channels = {4: 16, 8: 16, 16: 8}
    state = random_nvlabs_state(16, channels, z_dim=24, w_dim=32, c_dim=c_dim, n_mlp=3, seed=seed, lr_mul=lr_multiplier)
    path = write_nvlabs_pickle(tmp_path / name, state, resolution=16, z_dim=24, w_dim=32, c_dim=c_dim, n_mlp=3,
                               lr_multiplier=lr_multiplier, channel_base=128, channel_max=16, conv_clamp=conv_clamp)
    return path, state


def test_conv_clamp_is_honoured(tmp_path):
    clamp = 0.25
    clamped_path, _ = _small_nvlabs(tmp_path, "clamped.pkl", conv_clamp=clamp)
    free_path, _ = _small_nvlabs(tmp_path, "free.pkl", conv_clamp=None)
    G_c, G_f = load_generator(clamped_path, device="cpu"), load_generator(free_path, device="cpu")
    assert G_c.config.conv_clamp == clamp and G_f.config.conv_clamp is None
    wp = torch.randn(2, G_c.n_latent, G_c.w_dim, generator=torch.Generator().manual_seed(0))

    def run(G):
        seen = {}
        hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, out.detach().clone()))
                 for n, m in G.named_modules() if isinstance(m, (SynthesisLayer, ToRGBLayer))]
        try:
            with torch.no_grad():
                img = G.synthesis(wp)
        finally:
            for h in hooks:
                h.remove()
        return img, seen

    img_c, seen_c = run(G_c)
    img_f, seen_f = run(G_f)
    assert len(seen_c) == len(G_c.layer_names()) == 8
    for name, out in seen_c.items():
        assert out.abs().max() <= clamp, name
    assert max(float(o.abs().max()) for o in seen_f.values()) > clamp  # the clamp really bites
    assert (img_c - img_f).abs().max() > 1e-3
    # a clamp far above every activation changes nothing
    loose_path, _ = _small_nvlabs(tmp_path, "loose.pkl", conv_clamp=1e9)
    img_l, _ = run(load_generator(loose_path, device="cpu"))
    assert torch.equal(img_l, img_f)


def _hand_mapping(state, z, c, lr_mul, n_mlp):
    """StyleGAN2-ADA MappingNetwork.forward, by hand in float64 numpy."""
    def normalize(x):
        return x / np.sqrt(np.mean(x**2, axis=1, keepdims=True) + 1e-8)

    def fc(x, name, lr, act):
        W = state[f"{name}.weight"].double().numpy()
        b = state[f"{name}.bias"].double().numpy()
        y = x @ (W * lr / np.sqrt(W.shape[1])).T + b * lr
        return np.where(y >= 0, y, 0.2 * y) * np.sqrt(2) if act else y

    x = normalize(z.double().numpy())
    if c is not None:
        x = np.concatenate([x, normalize(fc(c.double().numpy(), "mapping.embed", 1.0, act=False))], axis=1)
    for i in range(n_mlp):
        x = fc(x, f"mapping.fc{i}", lr_mul, act=True)
    return x


@pytest.mark.parametrize("c_dim, lr_mul", [(0, 0.05), (5, 0.01), (5, 0.3)])
def test_mapping_lr_multiplier_and_class_conditioning(tmp_path, c_dim, lr_mul):
    path, state = _small_nvlabs(tmp_path, c_dim=c_dim, lr_multiplier=lr_mul, seed=c_dim)
    G = load_generator(path, device="cpu")
    assert G.c_dim == c_dim and G.config.mapping_lr_mul == pytest.approx(lr_mul)
    z = torch.randn(4, 24, generator=torch.Generator().manual_seed(1))
    c = torch.eye(c_dim)[[0, 2, 4, 1]] if c_dim else None
    with torch.no_grad():
        w = G.mapping(z, c)
    expected = _hand_mapping(state, z, c, lr_mul, n_mlp=3)
    assert rel_err(w, expected) < 1e-5
    if c_dim:
        with pytest.raises(LatentError, match="class label"):
            G.mapping(z)
        with pytest.raises(LatentError, match="5"):
            G.mapping(z, torch.zeros(4, 3))
        # different classes give different w for the same z
        with torch.no_grad():
            assert (G.mapping(z, torch.eye(5)[[0] * 4]) - G.mapping(z, torch.eye(5)[[1] * 4])).abs().max() > 1e-4


def test_w_avg_used_by_truncation(tmp_path):
    path, state = _small_nvlabs(tmp_path)
    G = load_generator(path, device="cpu")
    z = torch.randn(3, 24, generator=torch.Generator().manual_seed(2))
    w_avg = state["mapping.w_avg"].double().numpy()
    with torch.no_grad():
        w = G.mapping(z, truncation=0.6)
    expected = w_avg + 0.6 * (_hand_mapping(state, z, None, 0.01, 3) - w_avg)
    assert rel_err(w, expected) < 1e-5


def test_inconsistent_stylegan3_records_are_named(tmp_path):
    """StyleGAN3 records load (tests/generators/test_stylegan3.py); a broken or self-contradicting one is named."""
    _, state = _small_nvlabs(tmp_path)
    sg3 = OrderedDict((k, v) for k, v in state.items() if k.startswith("mapping."))
    sg3["synthesis.input.freqs"] = torch.randn(16, 2)
    sg3["synthesis.input.phases"] = torch.randn(16)
    sg3["synthesis.input.affine.weight"] = torch.randn(4, 32)
    sg3["synthesis.L0_36_512.weight"] = torch.randn(8, 16, 3, 3)
    path = write_nvlabs_pickle(tmp_path / "sg3.pkl", sg3, resolution=16, z_dim=24, w_dim=32, n_mlp=3)
    with pytest.raises(CheckpointError, match="StyleGAN3") as info:
        load_generator(path, device="cpu")
    assert "sg3.pkl" in str(info.value)
    # StyleGAN2 weights under StyleGAN3's source text
    src = "from torch_utils.ops import filtered_lrelu\nclass SynthesisInput(torch.nn.Module): ...\n"
    path = write_nvlabs_pickle(tmp_path / "sg3_src.pkl", state, resolution=16, z_dim=24, w_dim=32, n_mlp=3,
                               module_src=src)
    with pytest.raises(CheckpointError, match="StyleGAN3"):
        load_generator(path, device="cpu")


def test_incomplete_eg3d_pickle_is_named(tmp_path):
    state = OrderedDict([("backbone.mapping.fc0.weight", torch.randn(8, 8)), ("decoder.net.0.weight", torch.randn(4, 8))])
    path = write_nvlabs_pickle(tmp_path / "eg3d.pkl", state, resolution=16, class_name="TriPlaneGenerator")
    with pytest.raises(CheckpointError, match="EG3D backbone"):
        load_generator(path, device="cpu")


def test_other_network_in_g_ema_is_refused(tmp_path):
    path = write_nvlabs_pickle(tmp_path / "disc.pkl", {"b4.fromrgb.weight": torch.ones(2, 3, 1, 1)}, resolution=16,
                               class_name="Discriminator")
    with pytest.raises(CheckpointError, match="Discriminator"):
        load_generator(path, device="cpu")


def test_pickle_without_g_ema(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    with pytest.raises(CheckpointError, match="G_ema"):
        load_generator(path, device="cpu")


class _Call:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _global_call(module: str, name: str, args: tuple) -> bytes:
    body = pickle.dumps(args, protocol=2)
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + body[2:-1] + b"R."


@pytest.mark.parametrize("which", ["os.system", "builtins.eval", "made-up module", "inside G_ema"])
def test_payload_pickles_are_refused_and_never_run(tmp_path, which):
    marker = tmp_path / "payload_ran"
    cmd = f"touch {marker}"
    blob, named = {
        "os.system": (_global_call("os", "system", (cmd,)), "os.system"),
        "builtins.eval": (pickle.dumps(_Call(eval, (f"open({str(marker)!r}, 'w').close()",)), protocol=4), "builtins.eval"),
        "made-up module": (_global_call("made_up_evil_module", "run", (cmd,)), "made_up_evil_module.run"),
        "inside G_ema": (pickle.dumps(dict(G_ema={"_modules": _Call(os.system, (cmd,))}), protocol=4), "system"),
    }[which]
    path = tmp_path / "evil.pkl"
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError) as info:
        load_generator(path, device="cpu")
    assert named in str(info.value) and "evil.pkl" in str(info.value)
    assert not marker.exists()
    # control: the same bytes do run under a plain unpickler
    if which == "os.system":
        pickle.loads(blob)
        assert marker.exists()


# --------------------------------------------------------------------------- round trips


def test_rosinality_to_safetensors_round_trip_is_bit_identical(tmp_path, rosinality32_state, rosinality32_ref):
    src = write_rosinality_checkpoint(tmp_path / "g.pt", rosinality32_state,
                                      latent_avg=torch.from_numpy(rosinality32_ref["mean_w"][0]))
    G = load_generator(src, device="cpu")
    out = tmp_path / "sub" / "g.safetensors"
    save_generator(G, out)
    assert sniff_format(out) == "safetensors"
    assert not list(out.parent.glob("*.part"))
    H = load_generator(out, device="cpu")
    assert H.config == G.config
    assert H.mapping.has_w_avg and torch.equal(H.mapping.w_avg, G.mapping.w_avg)
    assert list(H.state_dict()) == list(G.state_dict())
    for k, v in G.state_dict().items():
        assert torch.equal(H.state_dict()[k], v), k
    ref = rosinality32_ref
    with torch.no_grad():
        for M in (G, H):
            M.modconv_impl = "unfused"
        assert torch.equal(H.mapping(torch.from_numpy(ref["z"]), truncation=0.7),
                           G.mapping(torch.from_numpy(ref["z"]), truncation=0.7))
        assert torch.equal(H.synthesis(torch.from_numpy(ref["wplus"])), G.synthesis(torch.from_numpy(ref["wplus"])))
        img = H.synthesis(H.to_wplus(H.mapping(torch.from_numpy(ref["z"]), truncation=0.7)))
    # latent_avg of the rosinality file is the truncation centre
    assert rel_err(img, ref["image_from_z_trunc07"]) < TOL


def test_nvlabs_to_safetensors_keeps_conditioning_and_clamp(tmp_path):
    path, _ = _small_nvlabs(tmp_path, c_dim=5, conv_clamp=0.5, lr_multiplier=0.05)
    G = load_generator(path, device="cpu")
    save_generator(G, tmp_path / "cond.safetensors")
    H = load_generator(tmp_path / "cond.safetensors", device="cpu")
    assert H.config == G.config and H.config.c_dim == 5 and H.config.conv_clamp == 0.5
    z = torch.randn(2, 24, generator=torch.Generator().manual_seed(0))
    c = torch.eye(5)[[1, 3]]
    with torch.no_grad():
        assert torch.equal(H(z, c), G(z, c))


def test_e4e_checkpoint_loads_its_decoder(tmp_path, rosinality32_state, rosinality32_ref):
    ref = rosinality32_ref
    mean_w = torch.from_numpy(ref["mean_w"])
    ckpt = {
        "state_dict": {
            **{"decoder." + k: v for k, v in rosinality32_state.items()},
            "encoder.input_layer.0.weight": torch.randn(4, 3, 3, 3),
            "encoder.styles.0.linear.weight": torch.randn(8, 8),
        },
        "latent_avg": mean_w.repeat(8, 1),  # [n_latent, w_dim], as e4e stores it
        "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 32, "start_from_latent_avg": True},
    }
    path = tmp_path / "e4e_ffhq_encode.pt"
    torch.save(ckpt, path)
    G = load_generator(path, device="cpu")
    assert G.mapping.has_w_avg and torch.equal(G.mapping.w_avg, mean_w[0])
    with torch.no_grad():
        img = G.synthesis(G.to_wplus(G.mapping(torch.from_numpy(ref["z"]), truncation=0.7)))
        img_wp = G.synthesis(torch.from_numpy(ref["wplus"]))
    assert rel_err(img, ref["image_from_z_trunc07"]) < TOL
    assert rel_err(img_wp, ref["image_from_wplus"]) < TOL


def test_rosinality_training_checkpoint_with_args(tmp_path, rosinality32_state, rosinality32_ref):
    """rosinality's train.py saves g, d, g_ema, optimiser states and an argparse.Namespace."""
    path = write_rosinality_checkpoint(
        tmp_path / "050000.pt", rosinality32_state,
        g={"style.1.weight": torch.zeros(2, 2)}, d={"convs.0.0.weight": torch.zeros(2, 3, 1, 1)},
        g_optim={"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]},
        args=argparse.Namespace(size=32, channel_multiplier=2, lr=0.002),
    )
    G = load_generator(path, device="cpu")
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(rosinality32_ref["wplus"]))
    assert rel_err(img, rosinality32_ref["image_from_wplus"]) < TOL


def test_checkpoint_without_noise_buffers_warns(tmp_path):
    sd = {k: v for k, v in random_rosinality_state(16).items() if not k.startswith("noises.")}
    path = write_rosinality_checkpoint(tmp_path / "old.pt", sd)
    with pytest.warns(UserWarning, match="noise"):
        G = load_generator(path, device="cpu")
    assert G.resolution == 16


# --------------------------------------------------------------------------- bad input
# (on a tiny random rosinality-layout checkpoint: these tests do not need ../shared)


@pytest.fixture(scope="module")
def tiny_ros_state():
    return random_rosinality_state(16, seed=5)


@pytest.fixture(scope="module")
def tiny_ros_ckpt(tmp_path_factory, tiny_ros_state):
    return write_rosinality_checkpoint(tmp_path_factory.mktemp("tiny_ros") / "tiny.pt", tiny_ros_state)


def _assert_names_file(info, path):
    assert str(path) in str(info.value)


def test_random_bytes(tmp_path):
    for seed in range(4):
        path = tmp_path / f"noise{seed}.pt"
        data = random.Random(seed).randbytes(4096)
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_generator(path, device="cpu")
        _assert_names_file(info, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown checkpoint format") as info:
        load_generator(path, device="cpu")
    _assert_names_file(info, path)


def test_truncated_torch_file(tmp_path, tiny_ros_ckpt):
    assert load_generator(tiny_ros_ckpt, device="cpu").resolution == 16  # the uncut file is fine
    raw = tiny_ros_ckpt.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_generator(path, device="cpu")
    _assert_names_file(info, path)


@pytest.fixture(scope="module")
def tiny_safetensors(tmp_path_factory):
    G = small_generator(16)
    path = tmp_path_factory.mktemp("st") / "tiny.safetensors"
    save_generator(G, path)
    return path, G


def test_tiny_safetensors_round_trip(tiny_safetensors):
    path, G = tiny_safetensors
    H = load_generator(path, device="cpu")
    assert H.config == G.config and not H.mapping.has_w_avg
    wp = torch.randn(2, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(0))
    G.requires_grad_(False)  # loaded generators are frozen: the same code path on both sides
    with torch.no_grad():
        G.modconv_impl = H.modconv_impl = "unfused"
        assert torch.equal(H.synthesis(wp), G.synthesis(wp))


def test_truncated_safetensors(tmp_path, tiny_safetensors):
    raw = tiny_safetensors[0].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_generator(path, device="cpu")
    _assert_names_file(info, path)


def test_safetensors_of_another_format(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"model.diffusion.weight": torch.zeros(4, 4)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a TargetCLIP StyleGAN2, StyleGAN3 or EG3D generator") as info:
        load_generator(path, device="cpu")
    assert "'pt'" in str(info.value)
    save_file({"x": torch.zeros(2)}, str(path))  # no metadata at all
    with pytest.raises(CheckpointError, match="None"):
        load_generator(path, device="cpu")


def _safetensors_with(tmp_path, tiny_safetensors, edit, name="edited.safetensors"):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_safetensors[0]), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    path = tmp_path / name
    save_file(tensors, str(path), metadata=meta)
    return path


def test_safetensors_missing_unexpected_and_misshapen_keys(tmp_path, tiny_safetensors):
    key = "synthesis_blocks.b8.conv1.conv.affine.bias"
    path = _safetensors_with(tmp_path, tiny_safetensors, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match="missing keys") as info:
        load_generator(path, device="cpu")
    assert key in str(info.value)

    path = _safetensors_with(tmp_path, tiny_safetensors, lambda t: t.update({"synthesis_blocks.b8.extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected keys") as info:
        load_generator(path, device="cpu")
    assert "synthesis_blocks.b8.extra" in str(info.value)

    path = _safetensors_with(tmp_path, tiny_safetensors, lambda t: t.update({key: torch.ones(31)}))
    with pytest.raises(CheckpointError, match="shape mismatch") as info:
        load_generator(path, device="cpu")
    assert key in str(info.value) and "[31]" in str(info.value) and "[32]" in str(info.value)


def _rosinality_with(tmp_path, state, edit, name="edited.pt"):
    sd = dict(state)
    edit(sd)
    return write_rosinality_checkpoint(tmp_path / name, sd)


def test_rosinality_missing_key_is_named(tmp_path, tiny_ros_state):
    key = "convs.1.conv.modulation.bias"
    path = _rosinality_with(tmp_path, tiny_ros_state, lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match="missing") as info:
        load_generator(path, device="cpu")
    assert key in str(info.value)
    _assert_names_file(info, path)


def test_rosinality_unexpected_key_is_named(tmp_path, tiny_ros_state):
    path = _rosinality_with(tmp_path, tiny_ros_state, lambda sd: sd.update({"convs.9.conv.weight_orig": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected") as info:
        load_generator(path, device="cpu")
    assert "convs.9.conv.weight_orig" in str(info.value)


def test_rosinality_shape_mismatch_names_key_and_shapes(tmp_path, tiny_ros_state):
    key = "convs.1.conv.modulation.bias"
    path = _rosinality_with(tmp_path, tiny_ros_state, lambda sd: sd.update({key: torch.ones(500)}))
    with pytest.raises(CheckpointError, match="shape mismatch") as info:
        load_generator(path, device="cpu")
    msg = str(info.value)
    assert key in msg and "[500]" in msg and "[16]" in msg
    # a shape that cannot even be brought into our layout is reported as clearly, not as a traceback
    key = "convs.1.noise.weight"
    path = _rosinality_with(tmp_path, tiny_ros_state, lambda sd: sd.update({key: torch.zeros(2)}), "noise.pt")
    with pytest.raises(CheckpointError, match="shape mismatch") as info:
        load_generator(path, device="cpu")
    assert key in str(info.value) and "[2]" in str(info.value)


def test_non_tensor_entry_is_refused(tmp_path, tiny_ros_state):
    path = _rosinality_with(tmp_path, tiny_ros_state, lambda sd: sd.update({"input.input": "not a tensor"}))
    with pytest.raises(CheckpointError, match="input.input"):
        load_generator(path, device="cpu")


def test_nan_weight_is_refused(tmp_path, tiny_ros_state):
    key = "convs.2.conv.weight"

    def poison(sd):
        t = sd[key].clone()
        t[0, 1, 2, 1, 1] = float("nan")
        sd[key] = t

    path = _rosinality_with(tmp_path, tiny_ros_state, poison)
    with pytest.raises(CheckpointError, match="NaN") as info:
        load_generator(path, device="cpu")
    assert key in str(info.value)


def test_not_a_generator_dict(tmp_path):
    path = tmp_path / "optim.pt"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="no StyleGAN2 generator") as info:
        load_generator(path, device="cpu")
    assert "optimizer" in str(info.value)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="Tensor"):
        load_generator(path, device="cpu")


def test_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        load_generator(tmp_path, device="cpu")


def test_unknown_name_is_weights_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("TARGETCLIP_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="not-a-real-checkpoint") as info:
        load_generator("not-a-real-checkpoint", device="cpu")
    assert "stylegan2-ffhq-config-f" in str(info.value)  # the known names are listed
    with pytest.raises(WeightsUnavailableError, match="Download stylegan2-ffhq-config-f.pt"):
        load_generator("stylegan2-ffhq-config-f", device="cpu")


def test_manifest_name_resolves_through_the_store(tmp_path, monkeypatch, tiny_ros_state):
    monkeypatch.setenv("TARGETCLIP_WEIGHTS_DIR", str(tmp_path))
    write_rosinality_checkpoint(tmp_path / "stylegan2-ffhq-config-f.pt", tiny_ros_state)
    G = load_generator("stylegan2-ffhq-config-f", device="cpu")
    assert G.resolution == 16 and G.config.source_format == "rosinality"
    assert torch.equal(G.synthesis_blocks["b16"].torgb.conv.weight, tiny_ros_state["to_rgbs.1.conv.weight"][0])


class Sneaky:
    """Pickled by class; restoring its state would run code (BUILD calls __setstate__)."""

    marker: Path | None = None

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def test_custom_class_in_torch_file_is_refused(tmp_path):
    marker = tmp_path / "setstate_ran"
    path = tmp_path / "sneaky.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2, 2)}, "extra": Sneaky(marker)}, path)
    with pytest.raises(UnsafePickleError) as info:
        load_generator(path, device="cpu")
    msg = str(info.value)
    assert "Sneaky" in msg and "sneaky.pt" in msg
    assert not marker.exists()


def test_reduce_payload_in_torch_file_is_refused(tmp_path):
    marker = tmp_path / "reduce_ran"
    path = tmp_path / "reduce.pt"
    torch.save({"g_ema": _Call(os.system, (f"touch {marker}",))}, path)
    with pytest.raises(UnsafePickleError, match="system"):
        load_generator(path, device="cpu")
    assert not marker.exists()


def _as_saved_on_cuda(src: Path, dst: Path) -> None:
    """Rewrite a zip torch.save so its storages say they were saved on 'cuda:0'."""
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"  # BINUNICODE: 4-byte length + utf-8
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert cpu in data
                data = data.replace(cpu, cuda)
            zout.writestr(info, data)


def test_tiny_checkpoint_saved_on_cuda_loads_on_cpu(tmp_path, tiny_ros_ckpt, tiny_ros_state):
    path = tmp_path / "tiny_from_gpu.pt"
    _as_saved_on_cuda(tiny_ros_ckpt, path)
    G = load_generator(path, device="cpu")
    assert G.device == torch.device("cpu")
    assert torch.equal(G.synthesis_blocks["b4"].const, tiny_ros_state["input.input"][0])
    assert torch.equal(G.mapping.fc1.weight, tiny_ros_state["style.2.weight"])


def test_checkpoint_saved_on_cuda_loads_on_cpu(tmp_path, rosinality32_ckpt, rosinality32_ref):
    path = tmp_path / "from_gpu.pt"
    _as_saved_on_cuda(rosinality32_ckpt, path)
    with zipfile.ZipFile(path) as z:
        assert b"cuda:0" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    G = load_generator(path, device="cpu")
    assert G.device == torch.device("cpu")
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(rosinality32_ref["wplus"]))
    assert rel_err(img, rosinality32_ref["image_from_wplus"]) < TOL


def test_real_latents_saved_from_cuda_load_on_cpu():
    path = require_shared("data", "targetclip", "sources", "optimizer_sources_4.pt")
    with zipfile.ZipFile(path) as z:  # really recorded as CUDA storages
        assert b"cuda:0" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    wp = load_latents(path)
    assert wp.shape == (4, 18, 512) and wp.dtype == torch.float32 and wp.device.type == "cpu"
    assert torch.isfinite(wp).all() and wp.abs().max() > 0.1
    # four different sources
    assert all((wp[i] - wp[j]).abs().max() > 1e-3 for i in range(4) for j in range(i + 1, 4))


def test_a_different_resampling_filter_is_refused_in_both_layouts(tmp_path):
    # the network is built with the [1,3,3,1] FIR; a checkpoint storing another one must not load silently
    box = torch.full((4, 4), 1 / 16)
    sd = random_rosinality_state(16, n_mlp=2)
    sd["convs.0.conv.blur.kernel"] = box * 4
    torch.save({"g_ema": sd}, tmp_path / "box.pt")
    with pytest.raises(CheckpointError, match=r"convs\.0\.conv\.blur\.kernel is not the \[1,3,3,1\] FIR"):
        load_generator(tmp_path / "box.pt", device="cpu")

    nv = rosinality_to_nvlabs(random_rosinality_state(16, n_mlp=2), 16, 2)
    nv["synthesis.b8.resample_filter"] = box
    write_nvlabs_pickle(tmp_path / "box.pkl", nv, resolution=16, z_dim=32, w_dim=32, n_mlp=2)
    with pytest.raises(CheckpointError, match=r"synthesis\.b8\.resample_filter is not the \[1,3,3,1\] FIR"):
        load_generator(tmp_path / "box.pkl", device="cpu")
