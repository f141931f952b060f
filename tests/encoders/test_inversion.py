"""e4e / pSp inversion, ArcFace and the essence encoder: conformance with the reference outputs, invariants, bad input."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.paths import fixture_state_dict
from helpers.generators import rel_err, small_generator
from helpers.encoders import TINY_STAGES, official_checkpoint, tiny_encoder

from targetclip_core.encoders.arcface import ArcFace, load_arcface
from targetclip_core.encoders.e4e import EncoderConfig, StyleEncoder
from targetclip_core.encoders.inversion import load_inverter
from targetclip_core.errors import CheckpointError, TargetCLIPError, UnsafePickleError
from targetclip_core.generators.load import load_generator
from targetclip_core.methods.targetclip.essence import apply_essence
from targetclip_core.methods.targetclip.essence_encoder import load_essence_encoder

# --------------------------------------------------------------------------- conformance (shared fixtures)


E4E_LATENT_AVG = torch.randn(512, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def e4e_reference(fixtures_dir):
    with np.load(fixtures_dir / "e4e_encoder.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def e4e_inverter(fixtures_dir, tmp_path_factory):
    """The fixture weights written as an official e4e checkpoint (~0.9 GB of heads: written and loaded once)."""
    state = fixture_state_dict(fixtures_dir, "e4e_encoder")
    path = tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt"
    official_checkpoint(path, state, E4E_LATENT_AVG.repeat(18, 1), stylegan_size=1024)
    del state
    inv = load_inverter(path, device="cpu")
    path.unlink()
    return inv


def test_e4e_matches_reference_through_load_inverter(e4e_inverter, e4e_reference):
    inv = e4e_inverter
    assert (inv.cfg.kind, inv.n_latent, inv.w_dim, inv.cfg.input_size) == ("e4e", 18, 512, 256)
    wp = inv.invert(torch.from_numpy(e4e_reference["input"]))
    assert wp.shape == (1, 18, 512)
    # the fixture holds the encoder output before latent_avg; invert() adds it as e4e's pSp wrapper does
    assert rel_err(wp - E4E_LATENT_AVG, e4e_reference["output"]) < 1e-4


def test_inputs_not_at_256_are_resized_like_pil_bilinear(e4e_inverter):
    """The official inference resizes with torchvision/PIL bilinear (antialiased when shrinking)."""
    from PIL import Image

    photo = np.random.default_rng(0).integers(0, 256, (700, 500, 3), dtype=np.uint8)
    by_pil = np.asarray(Image.fromarray(photo).resize((256, 256), Image.BILINEAR), dtype=np.float32) / 127.5 - 1
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = e4e_inverter.prepare(x)[0].permute(1, 2, 0).numpy()
    assert ours.shape == (256, 256, 3)
    assert np.abs(ours - by_pil).mean() < 2 / 255  # PIL rounds to uint8 and uses fixed-point weights


def test_arcface_matches_reference_through_load_arcface(tmp_path, fixtures_dir):
    with np.load(fixtures_dir / "arcface_irse50.npz") as d:
        x, ref = d["input"], d["output"]
    path = tmp_path / "model_ir_se50.pth"
    torch.save(fixture_state_dict(fixtures_dir, "arcface_irse50"), path)  # a bare state dict, as released
    model = load_arcface(path, device="cpu")
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    assert rel_err(out, ref) < 1e-4
    assert torch.allclose(out.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_arcface_embed_is_the_idloss_crop_of_a_256_face():
    torch.manual_seed(0)
    model = ArcFace(stages=TINY_STAGES).eval()
    faces = torch.rand(2, 3, 1024, 1024) * 2 - 1
    by_hand = F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(faces, 256)[:, :, 35:223, 32:220], 112)
    with torch.no_grad():
        assert torch.allclose(model.embed(faces), model(by_hand), atol=1e-6)


# --------------------------------------------------------------------------- architecture invariants


def test_psp_and_e4e_heads_relate_as_w_plus_deltas():
    """Same weights: e4e entry i = pSp entry 0 + pSp entry i (i >= 1); e4e entry 0 = pSp entry 0."""
    e4e = tiny_encoder("e4e")
    psp = StyleEncoder(EncoderConfig("psp", 8, 32, TINY_STAGES, 64)).eval()
    psp.load_state_dict(e4e.state_dict())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a, b = e4e(x), psp(x)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)
    assert torch.allclose(a[:, 1:], b[:, :1] + b[:, 1:], atol=1e-5)


def test_head_groups_read_coarse_middle_fine_features():
    """Entries 0-2 depend only on the coarsest features: perturbing the finest FPN input leaves them unchanged."""
    enc = tiny_encoder("psp")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = enc(x)
        enc.latlayer2.bias.add_(1.0)  # only the fine level (entries 7+) sees latlayer2
        after = enc(x)
    assert torch.equal(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_tiny_checkpoint_config_is_inferred_from_keys(tmp_path):
    enc = tiny_encoder("e4e", n_styles=10, w_dim=32, input_size=64)
    path = official_checkpoint(tmp_path / "tiny.pt", enc.state_dict(), torch.randn(10, 32))
    inv = load_inverter(path, device="cpu")
    assert inv.cfg == enc.cfg
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = enc(x) + torch.load(path, weights_only=True)["latent_avg"][0]
    assert torch.allclose(inv.invert(x, batch_size=2), expected, atol=1e-5)


def test_latent_avg_is_not_added_when_the_checkpoint_says_so(tmp_path):
    enc = tiny_encoder()
    path = official_checkpoint(tmp_path / "psp.pt", enc.state_dict(), torch.randn(8, 32), start_from_latent_avg=False)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(load_inverter(path, device="cpu").invert(x), enc(x), atol=1e-6)


def test_checkpoint_decoder_is_the_inverters_generator(tmp_path, rosinality32_state):
    enc = tiny_encoder(n_styles=8, w_dim=512)
    path = official_checkpoint(tmp_path / "e4e.pt", enc.state_dict(), torch.randn(8, 512), decoder_state=rosinality32_state)
    inv = load_inverter(path, device="cpu")
    G = inv.generator
    assert (G.resolution, G.n_latent) == (32, 8)
    wp = inv.invert(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert G.synthesis(wp).shape == (1, 3, 32, 32)
    assert load_generator(path, device="cpu").n_latent == 8


# --------------------------------------------------------------------------- essence encoder


def test_essence_encoder_output_is_b_directly_and_applies(tmp_path):
    G = small_generator(32)  # 8 W+ entries of 32
    enc = tiny_encoder(n_styles=G.n_latent, w_dim=G.w_dim)
    path = official_checkpoint(tmp_path / "essence_enc.pt", enc.state_dict(), torch.randn(8, 32), start_from_latent_avg=False)
    E_enc = load_essence_encoder(path, device="cpu")
    target = torch.rand(1, 3, 100, 100) * 2 - 1  # any size: resized to the encoder's 64
    essence = E_enc.encode(target, name="joker")
    with torch.no_grad():
        expected = enc(F.interpolate(target, size=(64, 64), mode="bilinear", antialias=True))
    assert torch.allclose(essence.vector, expected, atol=1e-5)
    assert essence.source == "encoder" and essence.name == "joker"
    assert essence.generator["n_latent"] == G.n_latent and essence.generator["resolution"] == 32
    wp = torch.randn(2, G.n_latent, G.w_dim)
    with torch.no_grad():
        assert torch.allclose(apply_essence(G, wp, essence), G.synthesis(wp + essence.vector), atol=1e-5)
    assert len(E_enc.encode(torch.rand(3, 3, 64, 64) * 2 - 1)) == 3


# --------------------------------------------------------------------------- bad input


def test_not_an_encoder_checkpoint_is_named(tmp_path, rosinality32_state):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": rosinality32_state}, path)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_inverter(path, device="cpu")
    official_checkpoint(path, {}, decoder_state=rosinality32_state)
    with pytest.raises(CheckpointError, match="no 'encoder"):
        load_inverter(path, device="cpu")


def test_unsupported_encoder_type_and_wrong_shapes_are_named(tmp_path):
    enc = tiny_encoder()
    path = official_checkpoint(tmp_path / "x.pt", enc.state_dict(), torch.zeros(8, 32), encoder_type="BackboneEncoderUsingLastLayerIntoW")
    with pytest.raises(CheckpointError, match="BackboneEncoderUsingLastLayerIntoW"):
        load_inverter(path, device="cpu")
    state = dict(enc.state_dict())
    state["styles.3.linear.bias"] = torch.zeros(7)
    official_checkpoint(path, state, torch.zeros(8, 32))
    with pytest.raises(CheckpointError, match=r"styles\.3\.linear\.bias"):
        load_inverter(path, device="cpu")


def test_nan_weights_and_missing_latent_avg_are_refused(tmp_path):
    enc = tiny_encoder()
    state = dict(enc.state_dict())
    state["latlayer1.weight"] = torch.full_like(state["latlayer1.weight"], math.nan)
    path = official_checkpoint(tmp_path / "nan.pt", state, torch.zeros(8, 32))
    with pytest.raises(CheckpointError, match="NaN"):
        load_inverter(path, device="cpu")
    official_checkpoint(path, enc.state_dict(), None)
    with pytest.raises(TargetCLIPError, match="latent_avg"):
        load_inverter(path, device="cpu")


def test_pickled_payload_in_an_encoder_checkpoint_never_runs(tmp_path):
    path = tmp_path / "evil.pt"
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "opts": _Payload(str(marker))}, path)
    with pytest.raises(UnsafePickleError):
        load_inverter(path, device="cpu")
    assert not os.path.exists(marker)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_images_are_named(tmp_path):
    enc = tiny_encoder()
    inv = load_inverter(official_checkpoint(tmp_path / "e.pt", enc.state_dict(), torch.zeros(8, 32)), device="cpu")
    with pytest.raises(TargetCLIPError, match="RGB"):
        inv.invert(torch.zeros(1, 4, 64, 64))
    with pytest.raises(TargetCLIPError, match="NaN"):
        inv.invert(torch.full((1, 3, 64, 64), math.nan))
    with pytest.raises(TargetCLIPError, match="float"):
        inv.invert(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TargetCLIPError, match="tensor"):
        inv.invert(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(CheckpointError):
        (tmp_path / "trunc.pt").write_bytes((tmp_path / "e.pt").read_bytes()[:500])
        load_inverter(tmp_path / "trunc.pt", device="cpu")
