"""Batched rendering (targetclip_core.generators.render) and the essence grid's sheet
(target_thumbnail_row, essence_grid_sheet), against expectations built by hand on tiny generators."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.eg3d import tiny_eg3d
from helpers.generators import tiny_generator

from targetclip_core.generators.render import (
    iter_latent_batches,
    render_latent_views,
    render_latents,
)
from targetclip_core.methods.targetclip.essence import (
    Essence,
    essence_grid_sheet,
    target_thumbnail_row,
)


@pytest.fixture(scope="module")
def G():
    return tiny_generator(32)


def wplus(G, n, seed=0):
    return torch.randn(n, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- render_latents


def test_render_latents_is_one_synthesis_call_in_batches(G):
    wp = wplus(G, 10)
    calls = []
    images = render_latents(G, wp, batch_size=4, on_batch=lambda done, total, batch: calls.append((done, total, batch)))
    with torch.no_grad():
        expected = G.synthesis(wp, noise_mode="const")
    assert images.shape == (10, 3, 32, 32)
    assert torch.allclose(images, expected, atol=1e-5)
    assert [(done, total) for done, total, _ in calls] == [(4, 10), (8, 10), (10, 10)]
    # each callback sees the batch just rendered (for the preview)
    assert [len(batch) for _, _, batch in calls] == [4, 4, 2]
    assert torch.equal(calls[1][2], images[4:8])


def test_render_latents_passes_noise_mode_and_out_resolution(G):
    wp = wplus(G, 3, seed=1)
    small = render_latents(G, wp, batch_size=2, noise_mode="none", out_resolution=16)
    with torch.no_grad():
        expected = G.synthesis(wp, noise_mode="none", out_resolution=16)
    assert small.shape == (3, 3, 16, 16) and torch.allclose(small, expected, atol=1e-5)


def test_render_latents_records_no_gradients_and_leaves_grad_mode_alone(G):
    wp = wplus(G, 3).requires_grad_()
    assert not render_latents(G, wp, batch_size=2).requires_grad
    for _done, _images in iter_latent_batches(G, wp, batch_size=2):
        assert torch.is_grad_enabled()  # no no_grad left open across the yield


def test_a_raising_callback_cancels_after_that_batch(G):
    seen = []

    def cancel(done, total, images):
        seen.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_latents(G, wplus(G, 10), batch_size=4, on_batch=cancel)
    assert seen == [4]


def test_render_latents_refuses_a_batch_size_below_one(G):
    with pytest.raises(ValueError, match="batch_size"):
        render_latents(G, wplus(G, 2), batch_size=0)


# --------------------------------------------------------------------------- render_latent_views (EG3D)


def test_render_latent_views_is_latent_major_with_depth_at_image_size():
    E = tiny_eg3d()
    with torch.no_grad():
        wp = E.to_wplus(E.mapping(torch.randn(3, E.z_dim, generator=torch.Generator().manual_seed(0))))
    yaws, pitches = [-20.0, 20.0], [0.0, 5.0]
    cams = E.camera(yaws, pitches)
    before = dict(E.rendering)
    calls = []
    images, depth = render_latent_views(E, wp, cams, latents_per_batch=2,
                                        on_batch=lambda done, total, batch: calls.append((done, total, len(batch))))
    assert images.shape == (6, 3, 128, 128) and depth.shape == (6, 1, 128, 128)
    # latents 0-1 together (2 views of 2 images), then latent 2 (2 views of 1 image)
    assert calls == [(2, 6, 2), (4, 6, 2), (5, 6, 1), (6, 6, 1)]
    assert E.rendering == before
    with torch.no_grad():
        for b in range(3):
            for k in range(2):
                out = E.render(wp[b : b + 1], E.camera(yaws[k], pitches[k]))
                ref_depth = F.interpolate(out["image_depth"], size=(128, 128), mode="bilinear", align_corners=False)
                assert torch.allclose(images[b * 2 + k], out["image"][0], atol=1e-5), (b, k)
                assert torch.allclose(depth[b * 2 + k], ref_depth[0], atol=1e-5), (b, k)


def test_render_latent_views_of_style_codes_equal_the_latents():
    E = tiny_eg3d()
    with torch.no_grad():
        wp = E.to_wplus(E.mapping(torch.randn(2, E.z_dim, generator=torch.Generator().manual_seed(1))))
        styles = E.styles(wp)
    cams = E.camera([0.0])
    from_latents, _ = render_latent_views(E, wp, cams)
    from_styles, _ = render_latent_views(E, styles, cams)
    assert from_styles.shape == (2, 3, 128, 128) and torch.equal(from_latents, from_styles)


# --------------------------------------------------------------------------- the essence grid's sheet


def essence(G, name, thumbnail=None):
    return Essence(vector=torch.zeros(1, G.n_latent, G.w_dim), generator=dict(G.identity), name=name, thumbnail=thumbnail)


def uniform_thumbnail(rgb, size=8):
    return torch.tensor(rgb, dtype=torch.uint8).expand(size, size, 3).contiguous()


def test_target_thumbnail_row_is_blank_then_each_target(G):
    red = essence(G, "red", uniform_thumbnail([255, 0, 51]))
    plain = essence(G, "plain")
    row = target_thumbnail_row([plain, red], 16, 24)
    assert row.shape == (3, 3, 16, 24)
    assert torch.equal(row[0], torch.full((3, 16, 24), -1.0))  # over the source column
    assert torch.equal(row[1], torch.full((3, 16, 24), -1.0))  # an essence without a target
    # a uniform colour stays that colour when resized: 255 -> 1, 0 -> -1, 51 -> 51 / 127.5 - 1
    for c, value in enumerate([1.0, -1.0, 51 / 127.5 - 1]):
        assert torch.allclose(row[2, c], torch.full((16, 24), value), atol=1e-6)


def cells(n, h=8, w=8):
    """n constant cells [n, 3, h, w] with values -0.9, -0.8, ...: each cell recognisable by its value."""
    return torch.stack([torch.full((3, h, w), -0.9 + 0.1 * i) for i in range(n)])


def test_essence_grid_sheet_places_sources_edits_and_targets(G):
    a, b = essence(G, "a"), essence(G, "b", uniform_thumbnail([255, 255, 255]))
    images = cells(6)  # 2 sources x (source + 2 essences)
    plain = essence_grid_sheet(images, [a, essence(G, "c")], captions=False)
    assert plain.shape == (1, 3, 16, 24)  # no captions, no thumbnails: just the cells
    for i in range(6):
        r, c = divmod(i, 3)
        assert torch.equal(plain[0, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8], images[i])

    sheet = essence_grid_sheet(images, [a, b], captions=True)
    strip = sheet.shape[2] - 3 * 8  # captions above a row of targets above the two source rows
    assert sheet.shape[:2] == (1, 3) and sheet.shape[3] == 24 and strip > 0
    assert torch.equal(sheet[0, :, strip : strip + 8, :16], torch.full((3, 8, 16), -1.0))  # blank, then a (no target)
    assert torch.equal(sheet[0, :, strip : strip + 8, 16:], torch.ones(3, 8, 8))  # b's white target
    assert torch.equal(sheet[0, :, strip + 8 :], plain[0])
    assert not torch.equal(sheet[0, :, :strip], torch.full((3, strip, 24), -1.0))  # some caption text
