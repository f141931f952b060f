"""Face parsing (BiSeNet of face-parsing.PyTorch): the official checkpoint layout loads strictly,
the network computes what the reference computes (ResNet-18 against torchvision, the rest
against a functional reading of the reference's model.py), preprocessing and region masks by
hand, safe and clear loading, and SAT3D training with the parser (L_bg on, pre-selection run)."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers.clip import tiny_clip
from helpers.generators import tiny_generator
from helpers.parsing import official_state

from targetclip_core.errors import CheckpointError, TargetCLIPError, UnsafePickleError, WeightsUnavailableError
from targetclip_core.faces import parsing as fp
from targetclip_core.generators.stylespace import StyleLayout
from targetclip_core.methods import sat3d

torch.set_num_threads(1)


# --------------------------------------------------------------------------- the official layout
# Written from the reference's model.py (ConvBNReLU = conv without bias + BatchNorm; ARM,
# FFM and BiSeNetOutput as there) and torchvision's ResNet-18 names for `cp.resnet.*`.


@pytest.fixture(scope="module")
def state():
    return official_state()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, state):
    path = tmp_path_factory.mktemp("parser") / "79999_iter.pth"
    torch.save(state, path)  # as train.py saves it: the bare state dict
    return path


def test_official_layout_has_the_files_191_tensors_and_loads_strictly(state):
    assert len(state) == 191  # 148 float tensors of the main path + aux heads + 31 BN counters
    net = fp.BiSeNet()
    assert set(net.state_dict()) == set(state)
    net.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- the network


def test_resnet18_backbone_equals_torchvision(state):
    import torchvision

    tv = torchvision.models.resnet18(weights=None).eval()
    tv.load_state_dict({k[len("cp.resnet."):]: v for k, v in state.items() if k.startswith("cp.resnet.")}, strict=False)
    ours = fp.ResNet18().eval()
    ours.load_state_dict({k[len("cp.resnet."):]: v for k, v in state.items() if k.startswith("cp.resnet.")}, strict=True)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))
        f8 = tv.layer2(h)
        f16 = tv.layer3(f8)
        f32 = tv.layer4(f16)
        got = ours(x)
    for a, b in zip(got, (f8, f16, f32)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _reference_forward(sd, x):
    """The reference BiSeNet.forward read off model.py, on a state dict, with torchvision's
    ResNet-18 for the backbone."""
    import torchvision

    def bn(p, t):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5)

    def cbr(p, t):
        k = sd[f"{p}.conv.weight"].shape[-1]
        return F.relu(bn(f"{p}.bn", F.conv2d(t, sd[f"{p}.conv.weight"], padding=k // 2)))

    def arm(p, t):
        feat = cbr(f"{p}.conv", t)
        att = torch.sigmoid(bn(f"{p}.bn_atten", F.conv2d(F.avg_pool2d(feat, feat.shape[2:]), sd[f"{p}.conv_atten.weight"])))
        return torch.mul(feat, att)

    def head(p, t):
        return F.conv2d(cbr(f"{p}.conv", t), sd[f"{p}.conv_out.weight"])

    res = torchvision.models.resnet18(weights=None).to(x.dtype).eval()
    res.load_state_dict({k[len("cp.resnet."):]: v for k, v in sd.items() if k.startswith("cp.resnet.")}, strict=False)
    feat8 = res.layer2(res.layer1(res.maxpool(res.relu(res.bn1(res.conv1(x))))))
    feat16 = res.layer3(feat8)
    feat32 = res.layer4(feat16)
    avg = cbr("cp.conv_avg", F.avg_pool2d(feat32, feat32.shape[2:]))
    avg_up = F.interpolate(avg, feat32.shape[2:], mode="nearest")
    feat32_up = cbr("cp.conv_head32", F.interpolate(arm("cp.arm32", feat32) + avg_up, feat16.shape[2:], mode="nearest"))
    feat16_up = cbr("cp.conv_head16", F.interpolate(arm("cp.arm16", feat16) + feat32_up, feat8.shape[2:], mode="nearest"))
    fuse = cbr("ffm.convblk", torch.cat([feat8, feat16_up], 1))
    att = torch.sigmoid(F.conv2d(F.relu(F.conv2d(F.avg_pool2d(fuse, fuse.shape[2:]), sd["ffm.conv1.weight"])), sd["ffm.conv2.weight"]))
    fuse = torch.mul(fuse, att) + fuse
    outs = (head("conv_out", fuse), head("conv_out16", feat16_up), head("conv_out32", feat32_up))
    return tuple(F.interpolate(o, x.shape[2:], mode="bilinear", align_corners=True) for o in outs)


@pytest.mark.parametrize("size", [(64, 64), (96, 72)])
def test_bisenet_equals_a_functional_reading_of_the_reference(state, size):
    # in float64, so the order of float additions (mean vs avg_pool, broadcast vs upsampled
    # 1x1 map) cannot hide a difference in the computation itself
    sd = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    net = fp.BiSeNet().double().eval()
    net.load_state_dict(sd)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        want = _reference_forward(sd, x)
        main = net(x)
        every = net(x, aux=True)
    assert main.shape == (2, 19, *size) and want[0].abs().max() > 1
    torch.testing.assert_close(main, want[0], atol=1e-9, rtol=1e-9)
    for a, b in zip(every, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_real_size_forward_from_the_file(ckpt):
    parser = fp.load_face_parser(ckpt, device="cpu")
    assert parser.input_size == 512 and parser.device == torch.device("cpu")
    img = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    probs = parser.probabilities(img)
    assert probs.shape == (1, 19, 64, 48)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 48))
    with torch.no_grad():
        assert parser.net(torch.zeros(1, 3, 512, 512)).shape == (1, 19, 512, 512)
    labels = parser.labels(img)
    assert labels.shape == (1, 64, 48) and labels.dtype == torch.int64 and labels.max() < 19


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("wrap", ["module-prefix", "state_dict", "model", "no-bn-counters"])
def test_saved_variants_load(tmp_path, state, wrap):
    sd = dict(state)
    if wrap == "module-prefix":
        sd = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "no-bn-counters":
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    else:
        sd = {wrap: sd, "epoch": 3}
    path = tmp_path / "parser.pth"
    torch.save(sd, path)
    net = fp.load_face_parser(path, device="cpu").net
    got = net.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state if not k.endswith("num_batches_tracked"))
    assert not net.training and not any(p.requires_grad for p in net.parameters())


class _Call:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def test_payload_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "79999_iter.pth"
    torch.save({"state_dict": _Call(os.system, (f"touch {marker}",))}, path)
    with pytest.raises(UnsafePickleError, match="system"):
        fp.load_face_parser(path, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("cp.arm16.conv_atten.weight"), r"missing keys: cp\.arm16\.conv_atten\.weight"),
    (lambda sd: sd.update({"sp.conv1.conv.weight": torch.zeros(64, 3, 7, 7)}), r"unexpected keys: sp\.conv1\.conv\.weight"),
    (lambda sd: sd.update({"cp.conv_head16.conv.weight": torch.zeros(128, 128, 1, 1)}),
     r"shape mismatch for cp\.conv_head16\.conv\.weight: file has \[128, 128, 1, 1\]"),
    (lambda sd: sd["ffm.conv2.weight"].__setitem__((0, 0, 0, 0), float("nan")), r"ffm\.conv2\.weight contains NaN"),
    (lambda sd: sd.update({"conv_out.conv_out.weight": torch.zeros(11, 256, 1, 1)}), r"predicts 11 classes"),
    (lambda sd: sd.pop("cp.resnet.conv1.weight"), r"not a BiSeNet face-parsing checkpoint: missing cp\.resnet\.conv1\.weight"),
])
def test_bad_state_dicts_name_the_key(tmp_path, state, change, message):
    sd = {k: v.clone() for k, v in state.items()}
    change(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=message):
        fp.load_face_parser(path, device="cpu")


def test_wrong_files_are_refused_clearly(tmp_path, monkeypatch):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        fp.load_face_parser(junk, device="cpu")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match="expected a BiSeNet state dict, found list"):
        fp.load_face_parser(listed, device="cpu")
    other = tmp_path / "other.pth"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="not a BiSeNet face-parsing checkpoint"):
        fp.load_face_parser(other, device="cpu")
    monkeypatch.setenv("TARGETCLIP_WEIGHTS_DIR", str(tmp_path / "empty-store"))
    with pytest.raises(WeightsUnavailableError, match=r"79999_iter\.pth from https://github\.com/xinntao/facexlib"):
        fp.load_face_parser()  # the manifest name, not on disk: the error says what to get from where


# --------------------------------------------------------------------------- preprocessing and regions by hand

LOGITS = [0.3 * ((7 * k) % 19) - 2.0 for k in range(19)]  # 19 distinct values


def constant_parser(state, logits, input_size=32) -> fp.FaceParser:
    """A parser whose logits are `logits` at every pixel: the main head's ConvBNReLU outputs 1
    everywhere (BN scale 0, shift 1) and its 1x1 conv reads logit_k / 256 from each channel."""
    sd = {k: v.clone() for k, v in state.items()}
    sd["conv_out.conv.bn.weight"].zero_()
    sd["conv_out.conv.bn.bias"].fill_(1.0)
    sd["conv_out.conv_out.weight"] = torch.tensor(logits).view(19, 1, 1, 1).expand(19, 256, 1, 1) / 256
    net = fp.BiSeNet()
    net.load_state_dict(sd)
    return fp.FaceParser(net, input_size=input_size)


def softmax_by_hand(logits):
    e = [math.exp(v) for v in logits]
    return [v / sum(e) for v in e]


def test_preprocessing_is_the_reference_normalisation(state):
    parser = constant_parser(state, LOGITS)
    seen = {}
    parser.net.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].clone()))
    colour = [-0.5, 0.25, 1.5]  # the last one is out of range: a saved image would show 1
    img = torch.tensor(colour).view(1, 3, 1, 1).expand(1, 3, 20, 30)
    parser(img, "hair")
    x = seen["x"]
    assert x.shape == (1, 3, 32, 32)
    for c, (v, m, s) in enumerate(zip([-0.5, 0.25, 1.0], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        torch.testing.assert_close(x[0, c], torch.full((32, 32), ((v + 1) / 2 - m) / s))


def test_region_masks_are_sums_of_class_probabilities(state):
    parser = constant_parser(state, LOGITS)
    p = softmax_by_hand(LOGITS)
    img = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(4)) * 2 - 1
    probs = parser.probabilities(img)
    assert probs.shape == (2, 19, 24, 40)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 24, 40))
    for k in range(19):
        torch.testing.assert_close(probs[:, k], torch.full((2, 24, 40), p[k]))
    # CelebAMask-HQ order: 1 skin, 2/3 brows, 4/5 eyes, 6 eye_g, 10 nose, 11 mouth, 12/13 lips, 14 neck, 17 hair
    by_hand = {
        "hair": p[17],
        "eyes": p[2] + p[3] + p[4] + p[5] + p[6],
        "glasses": p[6],
        "mouth": p[11] + p[12] + p[13],
        "nose": p[10],
        "face": p[1] + p[2] + p[3] + p[4] + p[5] + p[6] + p[10] + p[11] + p[12] + p[13],
        "lower_face": p[1] + p[11] + p[12] + p[13] + p[14],
        "Lower Face": p[1] + p[11] + p[12] + p[13] + p[14],
        "beard": p[1] + p[11] + p[12] + p[13] + p[14],
        "u_lip": p[12],
        "background": p[0],
        "foreground": 1 - p[0],
    }
    for region, want in by_hand.items():
        mask = parser(img, region)
        assert mask.shape == (2, 24, 40) and mask.dtype == img.dtype, region
        torch.testing.assert_close(mask, torch.full((2, 24, 40), want), msg=region)
    custom = fp.FaceParser(parser.net, input_size=32, regions={"upper_lip_and_nose": ["u_lip", 10], "hair": "hat"})
    torch.testing.assert_close(custom(img, "upper_lip_and_nose"), torch.full((2, 24, 40), p[12] + p[10]))
    torch.testing.assert_close(custom(img, "hair"), torch.full((2, 24, 40), p[18]))  # replaced; one name, not letters


def test_every_descriptor_region_of_the_face_set_is_known(state):
    parser = constant_parser(state, LOGITS)
    regions = {a.region for a in sat3d.load_descriptors("faces").attributes}
    assert regions == {"hair", "eyes", "face", "lower_face", "glasses", "mouth"}
    parser.check_regions(regions)
    with pytest.raises(TargetCLIPError, match=r"no region 'body'; known regions: .*eyes.*hair"):
        parser(torch.zeros(1, 3, 8, 8), "body")
    with pytest.raises(TargetCLIPError, match="'whiskers' is not a CelebAMask-HQ class"):
        fp.FaceParser(parser.net, regions={"cat": ["whiskers"]})


def test_masks_of_a_random_parser_are_soft_and_carry_no_graph(ckpt):
    parser = fp.load_face_parser(ckpt, device="cpu", input_size=64)
    img = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1).requires_grad_(True)
    for region in ("hair", "face", "background"):
        mask = parser(img, region)
        assert mask.shape == (2, 32, 32) and not mask.requires_grad
        assert mask.min() >= 0 and mask.max() <= 1
    with torch.inference_mode():
        assert parser(img.detach(), "hair").shape == (2, 32, 32)
    torch.testing.assert_close(sum(parser(img, c) for c in fp.CLASSES), torch.ones(2, 32, 32))


# --------------------------------------------------------------------------- SAT3D with the parser

HAIR_09 = [0.0] * 17 + [math.log(162.0), 0.0]  # p(hair) = 162 / (162 + 18) = 0.9, every other class 1/180


@pytest.fixture(scope="module")
def tiny_qmm():
    return sat3d.QMM(tiny_clip(), sat3d.load_descriptors("faces"))


def test_training_with_the_parser_turns_on_l_bg_and_preselection(state, tiny_qmm):
    G = tiny_generator(32)
    parser = constant_parser(state, HAIR_09)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = sat3d.train_sat3d(G, tiny_qmm, steps=6, batch_size=1, n_codes=64, lr=0.1, out_resolution=16, parser=parser,
                              preselect_kwargs={"n_samples": 1}, callback=lambda info: seen.append((info.attributes[0], info.losses)))
    assert not [w for w in caught if "L_bg is off" in str(w.message)]
    # the hard parse is hair everywhere: a hair attribute leaves no background pixel to keep (L_bg 0), any other
    # attribute's region is empty, so every pixel is background and L_bg measures the edit's change (none only
    # when the step drew the same latent as source and reference: then L_ref and L_src are 0 too)
    regions = {a.name: a.region for a in sat3d.load_descriptors("faces").attributes}
    assert [losses["bg"] for _, losses in seen] == m.losses["bg"] and len(seen) == 6
    assert any(regions[a] != "hair" and losses["bg"] > 0 for a, losses in seen)
    for attr, losses in seen:
        if regions[attr] == "hair":
            assert losses["bg"] == 0, attr
        else:
            assert math.isfinite(losses["bg"]) and (losses["bg"] > 0 or losses["ref"] == losses["src"] == 0), (attr, losses)
    # every channel's gradient falls in hair; face's classes are in no image
    assert m.preselection.startswith("Hairstyle: 214 channels (k 3500 scaled by this generator's 352 / the paper's "
                                     "5760 channels), d 1.8; Expression: 0 channels (region face in none of the 1 image)")
    start = sat3d.train_sat3d(G, tiny_qmm, steps=0, n_codes=64, out_resolution=16, parser=parser,
                              preselect_kwargs={"n_samples": 1}).logits  # the initial matrix
    picked = start[m.attributes.index("Hairstyle")] == torch.tensor(1.8)  # M[t, i] = d_t
    assert int(picked.sum()) == 214 and (start[-1][picked] == 0).all()


def test_l_bg_with_a_constant_region_by_hand(state, tiny_qmm):
    """Hair is the hard parse everywhere: for a hair attribute B is empty (L_bg 0); for the eye region B is the
    whole image, and L_bg = sum |edit - source| over pixels and colours / the pixel count."""
    G = tiny_generator(32)
    parser = constant_parser(state, HAIR_09)
    g = torch.Generator().manual_seed(6)
    src, ref = torch.randn(1, G.w_dim, generator=g), torch.randn(1, G.w_dim, generator=g)
    logits = sat3d.initial_logits(tiny_qmm.attributes, StyleLayout.from_generator(G).n_channels)
    matrix = sat3d.SAT3DMatrix(logits, list(tiny_qmm.attributes), StyleLayout.from_generator(G), dict(G.identity),
                               sat3d.generator_fingerprint(G))
    hair = sat3d.sat3d_losses(G, tiny_qmm, logits, src, ref, ["Hair color"], parser=parser, out_resolution=32)
    assert hair["bg"] == 0.0
    eyes = sat3d.sat3d_losses(G, tiny_qmm, logits, src, ref, ["Eye region"], parser=parser, out_resolution=32)
    with torch.no_grad():
        edit = sat3d.transfer(G, src, ref, matrix, ["Eye region"])
        source = G.synthesis(G.to_wplus(src))
    assert eyes["bg"] == pytest.approx(float((edit - source).abs().sum()) / (32 * 32), rel=1e-4)
    assert eyes["bg"] > 0


def test_unknown_regions_fail_before_training(state):
    parser = constant_parser(state, LOGITS)
    cats = sat3d.QMM(tiny_clip(), sat3d.load_descriptors("cats"))
    with pytest.raises(TargetCLIPError, match="no region 'body'"):
        sat3d.train_sat3d(tiny_generator(32), cats, steps=1, batch_size=1, n_codes=2, parser=parser, out_resolution=16)


def test_cli_sat3d_train_with_parser(tmp_path, ckpt, capsys, monkeypatch):
    from helpers.clip import TINY_CLIP, register_tiny_clip

    from targetclip_core.cli.sat3d import main
    from targetclip_core.generators.load import save_generator

    real_load = fp.load_face_parser
    used = {}

    def small_parser(path, device=None):  # the real file and loader at a small input size (CPU time)
        used["parser"] = real_load(path, device=device, input_size=32)
        return used["parser"]

    monkeypatch.setattr(fp, "load_face_parser", small_parser)
    register_tiny_clip()
    gen = tmp_path / "g.safetensors"
    save_generator(tiny_generator(32), gen)
    matrix = tmp_path / "m.safetensors"
    args = ["sat3d-train", "-g", str(gen), "-o", str(matrix), "--clip", TINY_CLIP, "--pretrained", "none", "--steps", "2",
            "--n-codes", "4", "--batch-size", "1", "--out-resolution", "16", "--device", "cpu"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--parser", str(ckpt)]) == 0
    assert not [w for w in caught if "L_bg is off" in str(w.message)]
    out = capsys.readouterr().out
    assert "pre-selection: Hairstyle:" in out and "skipped" not in out
    assert isinstance(used["parser"], fp.FaceParser)
    assert sat3d.load_sat3d_matrix(matrix).preselection.startswith("Hairstyle:")
    monkeypatch.setattr(fp, "load_face_parser", real_load)
    assert main([*args, "--parser", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
