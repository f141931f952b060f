"""The frozen CLIP encoder (targetclip_core.clip) on the tiny open_clip config, random weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.clip import TINY_CLIP, TINY_CLIP_DIM, TINY_CLIP_INPUT, register_tiny_clip, tiny_clip

from targetclip_core.encoders.clip import load_clip
from targetclip_core.errors import CheckpointError, TargetCLIPError

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def C():
    return tiny_clip()


def images(b, h, w, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_image_is_l2_normalised_b_by_d(C):
    for h, w in [(32, 32), (40, 60), (64, 64)]:
        out = C.encode_image(images(3, h, w))
        assert out.shape == (3, TINY_CLIP_DIM)
        assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    # different images give different codes (the encoder is not collapsing everything)
    out = C.encode_image(images(2, 32, 32, seed=5))
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_encode_image_differentiable_wrt_image_not_clip(C):
    img = images(2, 48, 48).requires_grad_(True)
    C.encode_image(img)[:, 0].sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    params = list(C.parameters())
    assert params, "the encoder should expose its CLIP parameters"
    assert all(not p.requires_grad for p in params)
    assert all(p.grad is None for p in params)


def test_clip_stays_in_eval_mode(C):
    C.train()
    assert not C.training
    assert not any(m.training for m in C.modules())
    C.train(True)
    assert not any(m.training for m in C.modules())
    # and eval outputs are deterministic (no dropout sneaking in)
    x = images(2, 32, 32)
    assert torch.equal(C.encode_image(x), C.encode_image(x))


def hand_default_preprocess(x, size):
    """Resize the short side to `size` (bicubic, antialias), centre crop, [-1,1] -> [0,1], mean/std."""
    x = (x + 1) / 2
    h, w = x.shape[-2:]
    if h <= w:
        nh, nw = size, w * size // h
    else:
        nh, nw = h * size // w, size
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    return (x - CLIP_MEAN) / CLIP_STD


@pytest.mark.parametrize("hw", [(40, 60), (60, 40), (16, 24)])  # wide, tall, upsampled: exact resize ratios
def test_default_preprocessing_matches_hand_pipeline(C, hw):
    x = images(2, *hw, seed=3)
    ref = hand_default_preprocess(x, TINY_CLIP_INPUT)
    ours = C.preprocess_images(x, "default")
    assert ours.shape == (2, 3, TINY_CLIP_INPUT, TINY_CLIP_INPUT)
    assert torch.allclose(ours, ref, atol=1e-5)
    with torch.no_grad():
        expected = F.normalize(C.model.encode_image(ref), dim=-1)
    assert torch.allclose(C.encode_image(x, preprocess="default"), expected, atol=1e-5)


def test_default_preprocessing_matches_torchvision(C):
    TF = pytest.importorskip("torchvision.transforms.functional")
    x = images(1, 40, 60, seed=4)
    ref = TF.resize((x + 1) / 2, TINY_CLIP_INPUT, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    ref = TF.center_crop(ref, [TINY_CLIP_INPUT, TINY_CLIP_INPUT])
    ref = TF.normalize(ref, CLIP_MEAN.flatten().tolist(), CLIP_STD.flatten().tolist())
    assert torch.allclose(C.preprocess_images(x, "default"), ref, atol=1e-5)


def test_default_preprocessing_at_input_size_is_only_normalisation(C):
    x = images(1, 32, 32, seed=6)
    assert torch.allclose(C.preprocess_images(x, "default"), ((x + 1) / 2 - CLIP_MEAN) / CLIP_STD, atol=1e-6)


@pytest.mark.parametrize("h", [32, 64, 96, 128])
def test_paper_preprocessing_matches_official_upsample_then_pool(C, h):
    x = images(2, h, h, seed=h)
    ref = F.avg_pool2d(F.interpolate(x, scale_factor=7, mode="nearest"), kernel_size=7 * h // TINY_CLIP_INPUT)
    ours = C.preprocess_images(x, "paper")
    assert ours.shape == ref.shape == (2, 3, TINY_CLIP_INPUT, TINY_CLIP_INPUT)
    assert (ours - ref).abs().max() <= 1e-5  # no mean/std normalisation: values stay in [-1, 1] units
    with torch.no_grad():
        expected = F.normalize(C.model.encode_image(ref), dim=-1)
    assert torch.allclose(C.encode_image(x, preprocess="paper"), expected, atol=1e-5)


def test_paper_preprocessing_is_the_default_mode_when_chosen_at_load():
    register_tiny_clip()
    torch.manual_seed(1)
    Cp = load_clip(TINY_CLIP, None, device="cpu", preprocess="paper")
    x = images(1, 64, 64)
    ref = F.avg_pool2d(F.interpolate(x, scale_factor=7, mode="nearest"), kernel_size=14)
    assert torch.allclose(Cp.preprocess_images(x), ref, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 32, 32), (1, 4, 32, 32), (2, 3, 32)])
def test_bad_image_shape_is_a_targetclip_error(C, shape):
    with pytest.raises(TargetCLIPError, match="B, 3, H, W"):
        C.encode_image(torch.zeros(shape))


def test_unknown_preprocess_mode_is_refused(C):
    with pytest.raises(ValueError, match="preprocess"):
        C.encode_image(images(1, 32, 32), preprocess="fancy")


def test_load_clip_unknown_architecture():
    register_tiny_clip()
    with pytest.raises(TargetCLIPError, match="unknown CLIP architecture 'No-Such-CLIP'"):
        load_clip("No-Such-CLIP", None, device="cpu")


def test_load_clip_missing_checkpoint_file(tmp_path):
    register_tiny_clip()
    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(CheckpointError, match="no such CLIP checkpoint file") as info:
        load_clip(TINY_CLIP, str(missing), device="cpu")
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("filename,data", [
    ("zeros.safetensors", b"\x00" * 64),  # header length 0
    ("header.safetensors", b"\x10" + b"\x00" * 7 + b'{"a":1}'),  # header longer than the file
    ("random.pt", bytes(range(256)) * 2),  # neither a zip nor a legacy pickle
    ("empty.pt", b""),
    ("notzip.bin", b"PK\x03\x04 not really a zip"),
], ids=["zero-header", "short-file", "random-bytes", "empty", "bad-zip"])
def test_load_clip_corrupt_checkpoint_file_is_a_checkpoint_error(tmp_path, filename, data):
    register_tiny_clip()
    bad = tmp_path / filename
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match="cannot load CLIP TargetCLIP-Tiny") as info:
        load_clip(TINY_CLIP, str(bad), device="cpu")
    assert str(bad) in str(info.value)


def test_load_clip_state_dict_of_another_model_is_a_checkpoint_error(tmp_path):
    register_tiny_clip()
    other = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="cannot load CLIP"):
        load_clip(TINY_CLIP, str(other), device="cpu")


def test_identity_names_the_model(C):
    assert C.identity == {"name": TINY_CLIP, "pretrained": ""}
    assert C.input_size == TINY_CLIP_INPUT


def test_encode_text_is_normalised_t_by_d(C):
    out = C.encode_text(["a face with a beard", "a photo of a cat", "glasses"])
    assert out.shape == (3, TINY_CLIP_DIM)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not out.requires_grad
    single = C.encode_text("a face with a beard")
    assert single.shape == (1, TINY_CLIP_DIM)
    assert torch.allclose(single[0], out[0], atol=1e-5)


def _trained_looking_state(seed=11):
    """A tiny CLIP state dict with weights no random init would give (seeded normal draws)."""
    import open_clip

    register_tiny_clip()
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * 0.02).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["safetensors", "bin", "local-dir"])
def test_load_clip_reads_local_checkpoints(tmp_path, kind):
    import json

    from safetensors.torch import save_file

    state = _trained_looking_state()
    if kind == "safetensors":
        path = tmp_path / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        C = load_clip(TINY_CLIP, str(path), device="cpu")
    elif kind == "bin":
        path = tmp_path / "tiny.bin"
        torch.save(state, path)
        C = load_clip(TINY_CLIP, str(path), device="cpu")
    else:  # open_clip's own folder layout: config + safetensors weights
        from helpers.clip import CLIP_CONFIG_DIR

        folder = tmp_path / "tiny_dir"
        folder.mkdir()
        cfg = json.loads((CLIP_CONFIG_DIR / f"{TINY_CLIP}.json").read_text())
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "open_clip_model.safetensors"))
        C = load_clip(f"local-dir:{folder}", None, device="cpu")
    loaded = C.model.state_dict()
    for k, v in state.items():  # the file's weights, not a random init, are what encodes
        assert torch.equal(loaded[k].float(), v.float()), k
    assert all(not p.requires_grad for p in C.model.parameters())


def test_contiguous_attention_computes_what_open_clip_does():
    """CLIPEncoder runs open_clip's batch-first attention sequence-first on contiguous inputs (a speed fix, see
    contiguous_attention): image and text codes, and the gradient to the image, equal the untouched model's."""
    import copy

    import open_clip

    from targetclip_core.encoders.clip import CLIPEncoder

    register_tiny_clip()
    torch.manual_seed(4)
    model = open_clip.create_model(TINY_CLIP, pretrained=None, device="cpu").eval().requires_grad_(False)
    untouched = copy.deepcopy(model)
    C = CLIPEncoder(model, open_clip.get_tokenizer(TINY_CLIP), TINY_CLIP, None)
    hooked = [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert hooked and not any(m.batch_first for m in hooked)

    x = torch.rand(3, 3, TINY_CLIP_INPUT, TINY_CLIP_INPUT, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours_in, theirs_in = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = C.encode_image(ours_in)
    theirs = F.normalize(untouched.encode_image(C.preprocess_images(theirs_in)), dim=-1)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    (ours * torch.arange(TINY_CLIP_DIM)).sum().backward()
    (theirs * torch.arange(TINY_CLIP_DIM)).sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, atol=1e-6, rtol=1e-4)

    texts = ["a photo of a cat", "a face"]
    tokens = open_clip.get_tokenizer(TINY_CLIP)(texts)
    torch.testing.assert_close(C.encode_text(texts), F.normalize(untouched.encode_text(tokens), dim=-1), atol=1e-6, rtol=1e-5)

    # keyword query/key/value (another caller's style) reach the module the same way
    attn, reference = hooked[0], [m for m in untouched.modules() if isinstance(m, torch.nn.MultiheadAttention)][0]
    seq = torch.randn(2, 5, attn.embed_dim)
    torch.testing.assert_close(attn(seq, key=seq, value=seq, need_weights=False)[0],
                               reference(seq, seq, seq, need_weights=False)[0], atol=1e-6, rtol=1e-5)
