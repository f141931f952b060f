"""The public facade keeps every name scripts import from `targetclip_core` (the list as it stood before the
engine moved into subpackages), and both generators satisfy the one generator protocol."""

import targetclip_core
from helpers.generators import tiny_generator
from helpers.eg3d import tiny_eg3d

import torch

PUBLIC_BEFORE_THE_LAYERS = """
AlignedFace ArcFace EssenceEncoder FaceParser Inverter PasteResult align_face detect_faces detect_landmarks face_mask
load_arcface load_essence_encoder load_face_parser load_inverter paste_back CLIPEncoder Essence apply_essence
edit_latents load_clip load_essence mix_essences optimize_essence save_essence CheckpointError LatentError
StyleGAN2Config StyleGAN2Generator TargetCLIPError UnsafePickleError WeightsUnavailableError load_generator
load_latents save_generator save_latents z_from_seeds
""".split()


def test_every_public_name_is_still_importable():
    missing = [name for name in PUBLIC_BEFORE_THE_LAYERS if not hasattr(targetclip_core, name)]
    assert not missing
    assert set(PUBLIC_BEFORE_THE_LAYERS) <= set(targetclip_core.__all__)
    assert all(hasattr(targetclip_core, name) for name in targetclip_core.__all__)


def test_every_generator_satisfies_the_protocol_with_the_same_shapes():
    from helpers.generators import small_stylegan3

    for G in (tiny_generator(), tiny_eg3d(), small_stylegan3("T")):
        assert isinstance(G, targetclip_core.Generator)
        z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            w = G.mapping(z, truncation=0.7)
            wp = G.to_wplus(w)
        assert w.shape == (3, G.w_dim)  # one shape for 2D and 3D generators
        assert wp.shape == (3, G.n_latent, G.w_dim) and torch.equal(wp[:, -1], w)
        assert G.truncation_latent().shape == (1, G.w_dim)
        assert G.mapping_network.w_avg.shape == (G.w_dim,)


def test_wplus_from_seeds_is_mapping_of_the_nvlabs_z():
    G = tiny_generator()
    wp = targetclip_core.wplus_from_seeds(G, [3, 5], truncation=0.5)
    z = targetclip_core.z_from_seeds([3, 5], G.z_dim)
    with torch.no_grad():
        expected = G.mapping(z, truncation=0.5)[:, None].expand(-1, G.n_latent, -1)
    torch.testing.assert_close(wp, expected, rtol=0, atol=0)
