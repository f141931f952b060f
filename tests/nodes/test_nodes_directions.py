"""The direction nodes (GANSpace / SeFa Direction, Directions from Text), loaded as ComfyUI loads the pack, on
tiny models (CPU): each node's outputs against the engine's own calls, the in-process PCA cache, the channel
statistics file kept in the temporary models folder (reused, resumed after Cancel), and the STYLESPACE output
rendered by Render Views.

Same harness as test_nodes.py (helpers.comfy): every node method runs under torch.inference_mode().
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.eg3d import tiny_eg3d
from helpers.generators import tiny_generator

from helpers.comfy import loaded_generator, node, pack_module  # skips without ComfyUI's API

import comfy.model_management as mm  # noqa: E402, I001
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

from targetclip_core.methods.directions import global_statistics as statistics_module  # noqa: E402
from targetclip_core.methods.directions import pipelines  # noqa: E402
from targetclip_core.methods.directions import (  # noqa: E402
    apply_global_direction,
    ganspace_directions,
    global_direction,
    global_direction_essence,
    load_global_statistics,
    sefa_directions,
)

torch.set_num_threads(1)

SAMPLES = 3000  # GANSpace W samples: enough for a stable PCA of 64-dimensional W, fast on CPU
TEXT = dict(target="smiling face", neutral="face", alpha=4.1, beta=0.15, n_images=1)  # one image per channel: fast


@pytest.fixture
def fresh_bases(pack):
    bases = pack_module("nodes.directions")._BASES
    bases.clear()
    yield bases
    bases.clear()


def counting(monkeypatch, module, name):
    """Replace module.name by a wrapper that counts its calls; returns the list of calls."""
    calls, real = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args[2:] if name == "channel_deltas" else kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def ganspace(pack, G, **kw):
    args = dict(method="ganspace", component=0, layers="all", n_samples=SAMPLES, seed=0, strength=1.0, preview_faces=2)
    return node(pack, "TargetCLIP_LatentDirection").direction(G, **{**args, **kw})


def test_nodes_are_registered_with_tooltips_and_the_statistics_folder(pack, models_dir):
    names = pack.NODE_DISPLAY_NAME_MAPPINGS
    assert names["TargetCLIP_LatentDirection"] == "GANSpace / SeFa Direction (TargetCLIP)"
    assert names["TargetCLIP_TextDirection"] == "Directions from Text (TargetCLIP)"
    for key in ("TargetCLIP_LatentDirection", "TargetCLIP_TextDirection"):
        cls = pack.NODE_CLASS_MAPPINGS[key]
        assert cls.CATEGORY == "TargetCLIP/directions" and cls.DESCRIPTION
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        for section in cls.INPUT_TYPES().values():
            assert all("tooltip" in decl[1] for decl in section.values()), key
    assert pack.NODE_CLASS_MAPPINGS["TargetCLIP_TextDirection"].RETURN_TYPES[:2] == ("ESSENCE", "STYLESPACE")
    paths, exts = folder_paths.folder_names_and_paths["targetclip_directions"]
    assert ".safetensors" in exts and Path(paths[0]).parent == Path(models_dir)


def test_ganspace_node_is_the_engines_direction_times_strength(pack, G, fresh_bases):
    essence, preview, info = ganspace(pack, G, component=2, layers="coarse", strength=1.0)
    ref = ganspace_directions(G, k=3, n_samples=SAMPLES, seed=0, layers="coarse")[2].essence
    assert torch.equal(essence.vector, ref.vector) and essence.generator == G.identity
    assert essence.vector[0, 4:].abs().sum() == 0  # coarse: W+ entries 0-3 only
    doubled, _, _ = ganspace(pack, G, component=2, layers="0-3", strength=-2.0)
    assert torch.allclose(doubled.vector, -2 * ref.vector)
    assert info.startswith("ganspace component 2 on W+ L0-3") and "% of the W variance" in info
    # two faces x (-s, 0, +s) under a caption strip (12 px at 32 px cells)
    assert preview.shape == (1, 12 + 2 * G.resolution, 3 * G.resolution, 3)
    assert float(preview.min()) >= 0 and float(preview.max()) <= 1


def test_one_pca_serves_every_component_and_layer_range(pack, G, fresh_bases, monkeypatch):
    calls = counting(monkeypatch, pipelines, "w_pca")
    for component, layers in ((0, "all"), (1, "all"), (3, "middle,fine"), (0, "2-5")):
        ganspace(pack, G, component=component, layers=layers)
    assert len(calls) == 1
    ganspace(pack, G, component=0, n_samples=SAMPLES + 1)  # other settings: another PCA
    ganspace(pack, G, component=0, seed=1)
    assert len(calls) == 3 and len(fresh_bases) == 3


def test_sefa_node_matches_the_engine_and_caches_its_factorisation(pack, G, fresh_bases, monkeypatch):
    calls = counting(monkeypatch, pipelines, "sefa_directions")
    essence, _, info = ganspace(pack, G, method="sefa", component=1, layers="middle")
    ref = sefa_directions(G, k=2, layers="middle", seed=0)[1].essence
    torch.testing.assert_close(essence.vector, ref.vector, rtol=1e-5, atol=1e-6)
    assert essence.vector[0, :4].abs().sum() == 0 and essence.vector[0, 4:8].abs().sum() > 0
    ganspace(pack, G, method="sefa", component=4, layers="4-7", strength=1.5)  # the same entries: cached
    assert len(calls) == 1
    assert info.startswith("sefa component 1 on W+ L4-7") and "eigenvalue" in info


def test_bad_layers_and_components_are_refused_clearly(pack, G, fresh_bases):
    cls = pack.NODE_CLASS_MAPPINGS["TargetCLIP_LatentDirection"]
    assert cls.VALIDATE_INPUTS("middle,fine") is True and cls.VALIDATE_INPUTS("0-3,8") is True
    assert "not one of" in cls.VALIDATE_INPUTS("coarse,eyes")
    assert "runs backwards" in cls.VALIDATE_INPUTS("5-2")
    with pytest.raises(Exception, match="out of range for 8 W"):
        ganspace(pack, G, layers="0-9")
    with pytest.raises(Exception, match="components 0-63"):
        ganspace(pack, G, component=64)


def test_the_direction_feeds_apply_and_mix_essences(pack, G, fresh_bases):
    essence, _, _ = ganspace(pack, G, component=0, strength=2.0)
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=3, count=2, truncation=0.7)
    images, edited = node(pack, "TargetCLIP_ApplyEssence").apply(G, lat, essence, 1.0, "all")
    assert torch.allclose(edited.latents, lat.latents + essence.vector, atol=1e-6)
    assert images.shape == (2, G.resolution, G.resolution, 3)
    (mixed,) = node(pack, "TargetCLIP_MixEssences").mix(essence, 0.5, essence, 0.5)
    assert torch.allclose(mixed.vector, essence.vector)


# --------------------------------------------------------------------------- Directions from Text


def statistics_files() -> list[Path]:
    return sorted(Path(folder_paths.get_folder_paths("targetclip_directions")[0]).glob("*.safetensors"))


def test_text_node_measures_the_statistics_once_and_matches_the_engine(pack, G, C, monkeypatch):
    deltas = counting(monkeypatch, statistics_module, "channel_deltas")
    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        essence, styles, preview, info = node(pack, "TargetCLIP_TextDirection").direction(G, C, **TEXT)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    files = statistics_files()
    assert len(files) == 1 and files[0].name in info and deltas
    stats = load_global_statistics(files[0], G, C)
    assert stats.complete and stats.settings["n_images"] == 1
    assert (stats.total, stats.total) in updates  # the bar reached the engine's channel count
    assert styles is None  # no latents connected
    direction = global_direction(stats, C, TEXT["target"], TEXT["neutral"], beta=TEXT["beta"], alpha=TEXT["alpha"])
    ref = global_direction_essence(G, direction).essence
    assert torch.allclose(essence.vector, TEXT["alpha"] * ref.vector, atol=1e-6) and essence.strength == 1.0
    assert preview.shape == (1, 12 + 3 * G.resolution, 3 * G.resolution, 3)  # 3 seeds x source | StyleSpace | W+

    # a second run (another text, latents connected) reads the file: nothing measured again
    before = len(deltas)
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G, seed=5, count=2, truncation=0.7)
    _, styles, preview, _ = node(pack, "TargetCLIP_TextDirection").direction(
        G, C, **{**TEXT, "target": "face with glasses"}, latents=lat)
    assert len(deltas) == before and statistics_files() == files
    direction = global_direction(stats, C, "face with glasses", "face", beta=TEXT["beta"], alpha=TEXT["alpha"])
    expected = apply_global_direction(G, lat.latents, direction, TEXT["alpha"])
    assert list(styles.styles) == list(expected) and len(styles) == 2
    for name in expected:
        assert torch.allclose(styles.styles[name], expected[name], atol=1e-5), name
    # the preview's middle cell of the first face is the exact StyleSpace edit
    with torch.no_grad():
        exact = ((G.synthesis_from_styles(styles.check_for(G))[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
    r = G.resolution
    assert preview.shape == (1, 12 + 2 * r, 3 * r, 3)
    assert torch.allclose(preview[0, 12 : 12 + r, r : 2 * r], exact, atol=1e-5)


def test_text_node_resumes_the_statistics_after_cancel(pack, C, monkeypatch):
    G2 = loaded_generator(pack, tiny_generator(32, seed=3), "tiny_other.safetensors")  # its own statistics file
    settings = {**TEXT, "max_resolution": 8}  # layers b4, b8: 192 channels, 12 groups of 16
    existing = set(statistics_files())
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None:
                                             mm.interrupt_current_processing(value >= 16))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node(pack, "TargetCLIP_TextDirection").direction(G2, C, **settings)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    (path,) = set(statistics_files()) - existing
    partial = load_global_statistics(path)
    assert 0 < partial.done < partial.total == 192
    deltas = counting(monkeypatch, statistics_module, "channel_deltas")
    essence, _, _, _ = node(pack, "TargetCLIP_TextDirection").direction(G2, C, **settings)
    assert len(deltas) == (partial.total - partial.done) // 16  # only the channels left
    assert load_global_statistics(path).complete
    assert essence.vector.shape == (1, G2.n_latent, G2.w_dim)


def test_text_styles_render_in_render_views_on_eg3d(pack, C):
    from targetclip_core.generators.render import render_latent_views

    G3 = loaded_generator(pack, tiny_eg3d(), "tiny_eg3d.safetensors", folder="eg3d")
    (lat,) = node(pack, "TargetCLIP_SampleLatents").sample(G3, seed=1, count=1, truncation=0.7)
    essence, styles, preview, _ = node(pack, "TargetCLIP_TextDirection").direction(
        G3, C, **{**TEXT, "max_resolution": 8}, latents=lat)
    assert essence.vector.shape == (1, G3.n_latent, G3.w_dim) and len(styles) == 1
    assert preview.shape == (1, 16 + G3.resolution, 3 * G3.resolution, 3)  # one face; 16 px captions at 128 px
    images, depth, _ = node(pack, "TargetCLIP_RenderViews").render(G3, "-20, 20", 30.0, 10.0, 18.837, 0, 1.0, True,
                                                                   styles=styles)
    assert images.shape == (2, G3.resolution, G3.resolution, 3) and depth.shape == (2, G3.resolution, G3.resolution)
    with torch.no_grad():
        ref, _ = render_latent_views(G3, styles.check_for(G3), G3.camera([-20.0, 20.0], [0.0, 0.0], fov_degrees=18.837))
    assert torch.allclose(images, ((ref.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1), atol=1e-5)
