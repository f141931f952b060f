"""EG3D: conformance with NVlabs/eg3d, cameras, rendering modes, multi-view geometry, StyleSpace."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.paths import fixture_state_dict
from helpers.generators import rel_err
from helpers.eg3d import tiny_eg3d, write_eg3d_pickle

from targetclip_core import load_generator
from targetclip_core.errors import CheckpointError, LatentError
from targetclip_core.generators.cameras import CameraRig, camera_labels, fov_to_intrinsics, orbit, split_label
from targetclip_core.generators.eg3d import EG3DGenerator
from targetclip_core.generators.volume_rendering import ray_bundle
from targetclip_core.generators.load import save_generator
from targetclip_core.generators.latents import wplus_from_z
from targetclip_core.generators.stylespace import StyleLayout

FIXTURE = "eg3d_128"


# --------------------------------------------------------------------------- conformance


@pytest.fixture(scope="module")
def eg3d_ref(fixtures_dir):
    with np.load(fixtures_dir / f"{FIXTURE}.npz") as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="module")
def eg3d_pickle(fixtures_dir, tmp_path_factory):
    manifest = json.loads((fixtures_dir / f"{FIXTURE}.json").read_text(encoding="utf-8"))
    state = fixture_state_dict(fixtures_dir, FIXTURE)
    path = tmp_path_factory.mktemp("eg3d") / "eg3d-fixture.pkl"
    return write_eg3d_pickle(path, state, manifest["init_kwargs"], manifest["neural_rendering_resolution"])


@pytest.fixture(scope="module")
def G_fixture(eg3d_pickle):
    return load_generator(eg3d_pickle, device="cpu")


def test_pickle_loads_as_eg3d(G_fixture):
    G = G_fixture
    assert isinstance(G, EG3DGenerator) and G.is_3d
    assert (G.resolution, G.n_latent, G.w_dim, G.c_dim) == (128, 14, 512, 25)
    assert G.neural_rendering_resolution == 32  # the pickle's attribute, not the constructor default
    assert G.rendering["depth_resolution"] == 12 and G.rendering["depth_resolution_importance"] == 12
    assert G.config.superresolution_module == "SuperresolutionHybrid2X" and G.config.sr_conv_clamp == 256.0
    assert G.backbone.config.channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}


def test_mapping_matches_reference(G_fixture, eg3d_ref):
    with torch.no_grad():
        ws = G_fixture.to_wplus(G_fixture.mapping(eg3d_ref["z"], eg3d_ref["c"]))
    assert rel_err(ws, eg3d_ref["ws"]) < 1e-4


def test_synthesis_matches_reference(G_fixture, eg3d_ref):
    with torch.no_grad():
        out = G_fixture.render(eg3d_ref["ws"], eg3d_ref["c"], neural_rendering_resolution=32)
    for key in ("image_raw", "image_depth", "image"):
        assert rel_err(out[key], eg3d_ref[key]) < 1e-4, key


def test_safetensors_round_trip_renders_the_same(G_fixture, eg3d_ref, tmp_path):
    path = tmp_path / "eg3d.safetensors"
    save_generator(G_fixture, path)
    G2 = load_generator(path, device="cpu")
    assert isinstance(G2, EG3DGenerator) and G2.config == G_fixture.config
    with torch.no_grad():
        a = G_fixture.render(eg3d_ref["ws"][:1], eg3d_ref["c"][:1])
        b = G2.render(eg3d_ref["ws"][:1], eg3d_ref["c"][:1])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_truncated_mapping_moves_toward_w_avg(G_fixture, eg3d_ref):
    G, z, c = G_fixture, eg3d_ref["z"], eg3d_ref["c"]
    with torch.no_grad():
        full = G.to_wplus(G.mapping(z, c))
        half = G.to_wplus(G.mapping(z, c, truncation=0.5))
        cut = wplus_from_z(G, z, c, truncation=0.5, truncation_cutoff=4)
    w_avg = G.backbone.mapping.w_avg
    torch.testing.assert_close(half, w_avg + 0.5 * (full - w_avg))
    torch.testing.assert_close(cut[:, :4], half[:, :4])
    torch.testing.assert_close(cut[:, 4:], full[:, 4:])


# --------------------------------------------------------------------------- cameras


def test_frontal_camera_by_hand():
    c = camera_labels(0.0, 0.0)
    pose, K = split_label(c)
    # on the +z axis at the FFHQ radius, looking down -z at the pivot; OpenCV axes: y points down
    torch.testing.assert_close(pose[0, :3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-6, rtol=0)
    torch.testing.assert_close(pose[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(pose[0, :3, 1], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)
    focal = 1 / (math.tan(18.837 * 3.14159 / 360) * 1.414)  # EG3D's FOV_to_intrinsics constants
    assert abs(focal - 4.2634) < 1e-4  # the focal length in the reference's labels (eg3d_128 fixture)
    torch.testing.assert_close(K[0], torch.tensor([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1.0]]))


def test_fixture_cameras_are_look_at_yaw_pitch(eg3d_ref):
    """The reference's second camera is LookAtPoseSampler(pi/2 + 0.35, pi/2 - 0.1, pivot (0, 0, 0.2), 2.7)."""
    c = camera_labels([0.0, math.degrees(0.35)], [0.0, math.degrees(-0.1)])
    assert (c - eg3d_ref["c"]).abs().max() < 1e-5


def test_camera_orbit_and_rig():
    yaw, pitch = orbit(4, yaw_range=30, pitch_range=10, pitch=2)
    np.testing.assert_allclose(yaw, [0, 30, 0, -30], atol=1e-9)
    np.testing.assert_allclose(pitch, [12, 2, -8, 2], atol=1e-9)
    c = camera_labels(yaw, pitch, CameraRig(radius=1.7, pivot=(0, 0, 0)))
    pose, _ = split_label(c)
    torch.testing.assert_close(pose[:, :3, 3].norm(dim=1), torch.full((4,), 1.7))
    # every camera looks at the pivot: the forward axis is parallel to -position
    cos = torch.nn.functional.cosine_similarity(pose[:, :3, 2], -pose[:, :3, 3], dim=1)
    torch.testing.assert_close(cos, torch.ones(4))


def test_bad_cameras_are_refused():
    with pytest.raises(LatentError, match=r"\[B, 25\]"):
        split_label(torch.zeros(2, 16))
    with pytest.raises(LatentError, match="NaN"):
        split_label(torch.full((1, 25), float("nan")))
    with pytest.raises(LatentError, match="finite"):
        camera_labels(float("inf"))
    with pytest.raises(ValueError, match="field of view"):
        fov_to_intrinsics(0)


def test_rays_go_through_pixel_centres():
    c = camera_labels(0.0, 0.0)
    pose, K = split_label(c)
    origins, dirs = ray_bundle(pose, K, 4)
    assert origins.shape == dirs.shape == (1, 16, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(1, 16))
    # pixel (row 0, col 3): u = 3.5/4, v = 0.5/4 -> camera-space direction ((u - 0.5)/f, (v - 0.5)/f, 1)
    f = K[0, 0, 0]
    cam = torch.tensor([(3.5 / 4 - 0.5) / f, (0.5 / 4 - 0.5) / f, 1.0])
    expected = pose[0, :3, :3] @ (cam / cam.norm())
    torch.testing.assert_close(dirs[0, 3], expected)


# --------------------------------------------------------------------------- rendering modes


@pytest.fixture(scope="module")
def G_tiny():
    return tiny_eg3d()


def test_deterministic_mode_repeats_exactly(G_tiny):
    G = G_tiny
    ws = G.to_wplus(G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1))))
    c = G.camera([10.0, -20.0], [5.0, 0.0])
    with torch.no_grad():
        a, b = G.render(ws, c), G.render(ws, c)
    for key in ("image", "image_raw", "image_depth"):
        assert torch.equal(a[key], b[key]), key
    assert a["image"].shape == (2, 3, 128, 128) and a["image_raw"].shape == (2, 3, 8, 8)
    assert a["image_depth"].shape == (2, 1, 8, 8)


def test_stochastic_mode_jitters_and_is_seedable(G_tiny):
    G = G_tiny
    ws = G.to_wplus(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(2))))
    c = G.camera(0.0)
    with torch.no_grad():
        det = G.render(ws, c)["image_depth"]
        r1 = G.render(ws, c, deterministic=False, generator=torch.Generator().manual_seed(0))["image_depth"]
        r2 = G.render(ws, c, deterministic=False, generator=torch.Generator().manual_seed(0))["image_depth"]
        r3 = G.render(ws, c, deterministic=False, generator=torch.Generator().manual_seed(1))["image_depth"]
    assert torch.equal(r1, r2)
    assert not torch.equal(r1, r3) and not torch.equal(r1, det)


def test_ray_chunks_do_not_change_the_result(G_tiny):
    G = G_tiny
    ws = G.to_wplus(G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3))))
    c = G.camera(15.0)
    with torch.no_grad():
        whole = G.render(ws, c)
        G.ray_chunk = 5
        try:
            chunked = G.render(ws, c)
        finally:
            G.ray_chunk = 2**15
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=0, atol=1e-6)


def test_orbit_from_cached_planes_equals_separate_renders(G_tiny):
    G = G_tiny
    ws = G.to_wplus(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(4))))
    styles = G.styles(ws)
    n = len(G.backbone.layer_names())
    codes = list(styles.values())
    cams = G.camera(*orbit(3))
    with torch.no_grad():
        planes = G.triplanes(codes[:n])
        views = [G.render_triplanes(planes, codes[n:], cams[i : i + 1])["image"] for i in range(3)]
        direct = [G.render(ws, cams[i : i + 1])["image"] for i in range(3)]
    for v, d in zip(views, direct):
        assert torch.equal(v, d)


# --------------------------------------------------------------------------- multi-view geometry


def _wall_generator(z_wall_n=-0.15):
    """Tiny EG3D whose planes and decoder make an opaque half-space behind the plane z = z0.

    Channel 0 of the xz plane (read at (x, z)) and of the zx plane (read at (z, x)) hold -z_n
    (z_n = 2 z / box_warp); the decoder turns f0 = mean over planes = -2 z_n / 3 into a density
    200 * softplus(400 (f0 - f*)) - 50, f* = -2 z0_n / 3: empty in front of the wall, steep behind it.
    """
    G = tiny_eg3d(depth_resolution=48, depth_resolution_importance=48)
    res = 64
    coord = (torch.arange(res) + 0.5) / res * 2 - 1  # grid_sample's align_corners=False texel centres
    planes = torch.zeros(1, 3, 32, res, res)
    planes[0, 1, 0] = -coord[:, None].expand(res, res)  # xz plane: z runs along the rows (v)
    planes[0, 2, 0] = -coord[None, :].expand(res, res)  # zx plane: z runs along the columns (u)
    f_star = -2 * z_wall_n / 3
    with torch.no_grad():
        for p in G.decoder.parameters():
            p.zero_()
        fc0, fc1 = G.decoder.net[0], G.decoder.net[2]
        fc0.weight[0, 0] = 400 / fc0.weight_gain
        fc0.bias[0] = -400 * f_star / fc0.bias_gain
        fc1.weight[0, 0] = 200 / fc1.weight_gain
        fc1.bias[0] = -50 / fc1.bias_gain  # empty space: the marcher's softplus(sigma - 1) must be ~0 there
    return G, planes, z_wall_n / 2  # world z of the wall (box_warp 1)


def test_depth_of_a_wall_is_the_ray_plane_intersection_in_every_view():
    G, planes, z_wall = _wall_generator()
    yaws, pitches = [0.0, 15.0, -20.0, 8.0], [0.0, 5.0, -6.0, 10.0]
    c = G.camera(yaws, pitches)
    with torch.no_grad():
        out = G.render_triplanes(planes.expand(4, -1, -1, -1, -1), [], c, neural_rendering_resolution=16, super_resolve=False)
    pose, K = split_label(c)
    origins, dirs = ray_bundle(pose, K, 16)
    expected = (z_wall - origins[..., 2]) / dirs[..., 2]  # distance along each ray to z = z_wall
    depth = out["image_depth"].reshape(4, -1)
    # 96 samples over 1.05 units; the steep density ramp puts the expected depth ~0.003 past the surface
    assert (depth - expected).abs().max() < 0.01


def test_a_scene_point_keeps_its_depth_across_views():
    """Back-project the centre pixel of view A, project the 3D point into view B: B's depth there agrees."""
    G, planes, _ = _wall_generator()
    res = 32
    cams = G.camera([0.0, 20.0], [0.0, -8.0])
    with torch.no_grad():
        out = G.render_triplanes(planes.expand(2, -1, -1, -1, -1), [], cams, neural_rendering_resolution=res, super_resolve=False)
    pose, K = split_label(cams)
    origins, dirs = ray_bundle(pose, K, res)
    centre = (res // 2) * res + res // 2
    point = origins[0, centre] + out["image_depth"][0].reshape(-1)[centre] * dirs[0, centre]
    # into camera B (OpenCV): x_cam = R^T (p - t), pixel = K x_cam / z
    R, t = pose[1, :3, :3], pose[1, :3, 3]
    x_cam = R.T @ (point - t)
    u, v = (K[1] @ (x_cam / x_cam[2]))[:2] * res - 0.5  # normalised intrinsics -> pixel index
    depth_b = out["image_depth"][1, 0]
    # bilinear read of B's depth map at (v, u)
    v0, u0 = int(v), int(u)
    fv, fu = float(v - v0), float(u - u0)
    d = ((1 - fv) * (1 - fu) * depth_b[v0, u0] + (1 - fv) * fu * depth_b[v0, u0 + 1]
         + fv * (1 - fu) * depth_b[v0 + 1, u0] + fv * fu * depth_b[v0 + 1, u0 + 1])
    assert abs(float(d) - float((point - t).norm())) < 0.01


# --------------------------------------------------------------------------- the 2D API and StyleSpace


def test_stylespace_is_the_backbone_convs(G_tiny):
    G = G_tiny
    layout = StyleLayout.from_generator(G)
    names = [n for n, _ in layout.layers]
    assert names == [n for n in G.backbone.layer_names() if not n.endswith("torgb")]
    assert all(not n.startswith("superresolution") for n in names)
    assert len(G.layer_names()) == len(G.backbone.layer_names()) + 6


def test_synthesis_from_styles_equals_synthesis_and_frontal_render(G_tiny):
    G = G_tiny
    ws = G.to_wplus(G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(5))))
    with torch.no_grad():
        a = G.synthesis(ws)
        b = G.synthesis_from_styles(G.styles(ws))
        c = G.render(ws, G.camera(0.0))["image"]
        raw = G.synthesis(ws, out_resolution=8)
        small = G.synthesis(ws, out_resolution=4)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(raw, G.render(ws, G.camera(0.0))["image_raw"])
    assert small.shape == (2, 3, 4, 4)
    assert G.output_resolutions == [8, 128]


def test_edited_backbone_codes_change_geometry_but_sr_codes_do_not_enter_edits(G_tiny):
    G = G_tiny
    ws = G.to_wplus(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(6))))
    styles = G.styles(ws)
    layout = StyleLayout.from_styles(styles)
    flat = layout.flatten(styles)
    edited = layout.unflatten(flat + 0.5, styles)
    for name in G.layer_names():
        if name.startswith("superresolution.") or name.endswith("torgb"):
            assert torch.equal(edited[name], styles[name])
    with torch.no_grad():
        d0 = G.render_from_styles(styles, G.camera(0.0))["image_depth"]
        d1 = G.render_from_styles(edited, G.camera(0.0))["image_depth"]
    assert not torch.equal(d0, d1)


def test_latents_of_another_generator_are_refused(G_tiny):
    with pytest.raises(LatentError, match="EG3D"):
        G_tiny.synthesis(torch.zeros(1, 18, 16))
    with pytest.raises(LatentError, match="cameras for"):
        G_tiny.render(G_tiny.to_wplus(G_tiny.mapping(torch.randn(3, 16))), G_tiny.camera([0.0, 1.0]))
    with pytest.raises(LatentError, match="camera labels for 3 latents"):
        G_tiny.mapping(torch.randn(3, 16), G_tiny.camera([0.0, 1.0]))


def test_default_conditioning_is_the_frontal_camera(G_tiny):
    G = G_tiny
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(G.mapping(z), G.mapping(z, G.camera(0.0)))
    assert not torch.allclose(G.mapping(z), G.mapping(z, G.camera(30.0)))


def test_unsupported_superresolution_is_a_clear_error(eg3d_ref, fixtures_dir, tmp_path):
    manifest = json.loads((fixtures_dir / f"{FIXTURE}.json").read_text(encoding="utf-8"))
    kw = json.loads(json.dumps(manifest["init_kwargs"]))
    kw["rendering_kwargs"]["superresolution_module"] = "training.superresolution.SuperresolutionHybridDeepfp32"
    path = write_eg3d_pickle(tmp_path / "deep.pkl", fixture_state_dict(fixtures_dir, FIXTURE), kw, 32)
    with pytest.raises(CheckpointError, match="SuperresolutionHybridDeepfp32"):
        load_generator(path, device="cpu")


# --------------------------------------------------------------------------- CLI, essences and SAT3D on EG3D


def test_parse_views():
    from targetclip_core.generators.cameras import parse_views

    assert parse_views("4", 20, 0) == orbit(4, 20, 0)
    assert parse_views("-30:5, 0 ,30") == ([-30.0, 0.0, 30.0], [5.0, 0.0, 0.0])
    assert parse_views("0") == ([0.0], [0.0])
    with pytest.raises(ValueError, match="cannot read views"):
        parse_views("left")


@pytest.fixture(scope="module")
def tiny_eg3d_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eg3d_cli") / "tiny_eg3d.safetensors"
    save_generator(tiny_eg3d(), path)
    return path


def test_cli_render_views_writes_every_view_and_depth(tiny_eg3d_file, tmp_path):
    from PIL import Image

    from targetclip_core.cli.main import main

    out = tmp_path / "views"
    assert main(["render", "-g", str(tiny_eg3d_file), "--seeds", "0-1", "--views", "3", "--depth", "-o", str(out),
                 "--device", "cpu"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"seed{s:04d}_view{k:02d}{d}.png" for s in (0, 1) for k in range(3) for d in ("", "_depth"))
    assert Image.open(out / "seed0001_view02.png").size == (128, 128)
    # the frontal render of a seed equals the 2D API's render (CLI seeds draw z like NVlabs)
    assert main(["render", "-g", str(tiny_eg3d_file), "--seeds", "0", "-o", str(tmp_path / "front"), "--device", "cpu"]) == 0
    assert (tmp_path / "front" / "seed0000.png").exists()


def test_cli_views_need_a_3d_generator(tmp_path, capsys):
    from helpers.generators import tiny_generator

    from targetclip_core.cli.main import main

    path = tmp_path / "flat.safetensors"
    save_generator(tiny_generator(), path)
    assert main(["render", "-g", str(path), "--seeds", "0", "--views", "3", "-o", str(tmp_path / "x")]) == 2
    assert "3D-aware" in capsys.readouterr().err


def test_cli_bench_eg3d_on_a_checkpoint(tiny_eg3d_file, capsys):
    from targetclip_core.cli.main import main

    assert main(["bench", "eg3d", "--checkpoint", str(tiny_eg3d_file), "--frames", "2", "--repeats", "1",
                 "--neural-resolution", "8"]) == 0
    out = capsys.readouterr().out
    assert "full frame" in out and "cached tri-planes" in out


def test_essence_optimisation_and_application_on_eg3d(G_tiny):
    from helpers.clip import tiny_clip

    from targetclip_core import apply_essence, optimize_essence

    G = G_tiny
    target = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    E = optimize_essence(G, tiny_clip(), target, steps=3, n_sources=2, lr=0.1)
    assert E.vector.shape == (1, G.n_latent, G.w_dim) and torch.isfinite(E.vector).all()
    assert E.generator == G.identity
    ws = G.to_wplus(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(9))))
    with torch.no_grad():
        edited = apply_essence(G, ws, E, strength=1.0)
        views = [out["image"] for _, out in G.render_views(ws + E.vector.to(ws), G.camera([-20.0, 20.0]))]
    assert edited.shape == (1, 3, 128, 128) and not torch.equal(edited, G.synthesis(ws))
    assert len(views) == 2 and views[0].shape == (1, 3, 128, 128)


def test_sat3d_training_and_transfer_on_eg3d(G_tiny):
    import warnings

    from helpers.clip import tiny_clip

    from targetclip_core.methods import sat3d

    G = G_tiny
    q = sat3d.QMM(tiny_clip(), sat3d.load_descriptors("faces"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sat3d.train_sat3d(G, q, steps=3, batch_size=1, n_codes=4, lr=0.1)
    assert m.layout == StyleLayout.from_generator(G) and m.generator == G.identity
    src, ref = (G.to_wplus(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(s)))) for s in (1, 2))
    styles = sat3d.transfer_styles(G, src, ref, m, [m.attributes[0]], delta=1.0)
    source_styles = G.styles(src)
    for name in G.layer_names():  # super-resolution and toRGB codes stay the source's
        if name.startswith("superresolution.") or name.endswith("torgb"):
            assert torch.equal(styles[name], source_styles[name])
    with torch.no_grad():
        frames = [out["image"] for _, out in G.render_views(styles, G.camera(*orbit(3)))]
    assert len(frames) == 3 and all(torch.isfinite(f).all() for f in frames)


def test_view_consistency_of_an_essence_by_hand(G_tiny):
    from helpers.clip import tiny_clip

    from targetclip_core.methods.targetclip.essence import Essence
    from targetclip_core.metrics.scores import view_consistency

    G, C = G_tiny, tiny_clip()
    b = torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(3)) * 0.5
    E = Essence(vector=b, generator=G.identity, strength=0.8)
    ws = G.to_wplus(G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(4))))
    got = view_consistency(C, G, ws, E, [-20.0, 0.0, 20.0])
    # by hand: CLIP deltas per view, mean cosine over the 6 ordered pairs of views, per source
    with torch.no_grad():
        for i in range(2):
            deltas = []
            for yaw in (-20.0, 0.0, 20.0):
                cam = G.camera(yaw)
                before = C.encode_image(G.render(ws[i : i + 1], cam)["image"])
                after = C.encode_image(G.render(ws[i : i + 1] + 0.8 * b, cam)["image"])
                deltas.append((after - before)[0])
            cos = [float(torch.nn.functional.cosine_similarity(deltas[p], deltas[q], dim=0))
                   for p in range(3) for q in range(3) if p != q]
            assert abs(float(got["per_source"][i]) - sum(cos) / 6) < 1e-4
    assert got["views"] == [(-20.0, 0.0), (0.0, 0.0), (20.0, 0.0)]


def test_auto_ray_limits_are_the_box_intersections():
    from targetclip_core.generators.volume_rendering import ray_box_limits

    origins = torch.tensor([[[0.0, 0.0, 2.7], [0.0, 0.0, 2.7], [0.3, 0.0, 2.7]]])
    dirs = torch.nn.functional.normalize(torch.tensor([[[0.0, 0.0, -1.0], [1.0, 0.0, -0.1], [0.0, 0.0, -1.0]]]), dim=-1)
    start, end = ray_box_limits(origins, dirs, 1.0)
    # straight through the unit box (side 1): enters at z = 0.5, leaves at z = -0.5
    assert torch.allclose(start[0, 0], torch.tensor([2.2])) and torch.allclose(end[0, 0], torch.tensor([3.2]))
    assert torch.allclose(start[0, 2], torch.tensor([2.2])) and torch.allclose(end[0, 2], torch.tensor([3.2]))
    # the second ray misses the box: it gets the smallest entry and the largest entry of the hits (as the reference)
    assert float(start[0, 1]) == float(start[0, [0, 2]].min()) and float(end[0, 1]) == float(start[0, [0, 2]].max())


def test_auto_limits_render_the_wall_where_it_is():
    G, planes, z_wall = _wall_generator()
    G.rendering.update(ray_start="auto", ray_end="auto")
    c = G.camera([0.0, 10.0])
    with torch.no_grad():
        out = G.render_triplanes(planes.expand(2, -1, -1, -1, -1), [], c, neural_rendering_resolution=8, super_resolve=False)
    pose, K = split_label(c)
    origins, dirs = ray_bundle(pose, K, 8)
    expected = (z_wall - origins[..., 2]) / dirs[..., 2]
    assert (out["image_depth"].reshape(2, -1) - expected).abs().max() < 0.02


def test_white_background_fills_empty_space_with_white():
    """Empty space (no density): features composite to 0, i.e. -1; with white_back, to +1 exactly as 2(1 - 0) - 1."""
    G = tiny_eg3d()
    with torch.no_grad():
        for p in G.decoder.parameters():
            p.zero_()
        G.decoder.net[2].bias[0] = -60 / G.decoder.net[2].bias_gain  # softplus(-61) ~ 0 everywhere
    ws = G.to_wplus(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))))
    with torch.no_grad():
        black = G.render(ws, G.camera(0.0))["image_raw"]
        G.rendering["white_back"] = True
        white = G.render(ws, G.camera(0.0))["image_raw"]
    assert torch.allclose(black, torch.full_like(black, -1.0), atol=1e-5)
    assert torch.allclose(white, torch.ones_like(white), atol=1e-5)


def test_conditioning_switches_of_the_rendering_options():
    G = tiny_eg3d()
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1))
    zero_c = G.backbone.mapping(z, torch.zeros(1, 25))
    G.rendering["c_gen_conditioning_zero"] = True
    torch.testing.assert_close(G.mapping(z, G.camera(25.0)), zero_c)
    G.rendering.update(c_gen_conditioning_zero=False, c_scale=0.0)
    torch.testing.assert_close(G.mapping(z, G.camera(25.0)), zero_c)
    # a pickle without c_scale maps as the reference does then: rendering_kwargs.get('c_scale', 0)
    from targetclip_core.generators.eg3d import RENDERING_DEFAULTS

    assert RENDERING_DEFAULTS["c_scale"] == 0.0


def test_sampling_multiplier_is_temporary():
    G = tiny_eg3d()
    with G.sampling(2.0):
        assert (G.rendering["depth_resolution"], G.rendering["depth_resolution_importance"]) == (12, 12)
    assert (G.rendering["depth_resolution"], G.rendering["depth_resolution_importance"]) == (6, 6)
    with pytest.raises(ValueError, match="positive"):
        with G.sampling(0.0):
            pass


def test_stratified_depths_by_hand():
    from targetclip_core.generators.volume_rendering import stratified_depths

    mid = stratified_depths(1, 2, 2.0, 3.0, 3, disparity=False, deterministic=True, device="cpu")
    torch.testing.assert_close(mid[0, 0, :, 0], torch.tensor([2.25, 2.75, 3.25]))  # bin starts + half a bin
    disp = stratified_depths(1, 1, 2.0, 3.0, 3, disparity=True, deterministic=True, device="cpu")
    d = torch.tensor([0.25, 0.75, 1.25])  # linspace(0, 1, 3) + 0.5 / 2, then inverse-depth interpolation
    torch.testing.assert_close(disp[0, 0, :, 0], 1 / (1 / 2.0 * (1 - d) + 1 / 3.0 * d))
    jitter = stratified_depths(1, 4, 2.0, 3.0, 3, disparity=False, deterministic=False, device="cpu",
                               generator=torch.Generator().manual_seed(0))
    lo = torch.tensor([2.0, 2.5, 3.0])
    assert ((jitter[0, :, :, 0] >= lo) & (jitter[0, :, :, 0] <= lo + 0.5)).all()
