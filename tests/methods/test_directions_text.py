"""Text in the target-free methods: prompts as CLIP directions (methods.directions.prompts) and the text
constraint term for essences (methods.directions.text_constraints), by hand and in a short optimisation on a
tiny StyleGAN2 + tiny CLIP, with and without the constraint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.clip import tiny_clip
from helpers.essence_math import dot, unit
from helpers.generators import tiny_generator, truncated_sources

from targetclip_core.errors import TargetCLIPError
from targetclip_core.methods.directions import (
    IMAGENET_TEMPLATES,
    PLAIN,
    text_constraint,
    text_constraint_loss,
    text_direction,
    text_embedding,
)
from targetclip_core.methods.targetclip.optimize import essence_losses

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def C():
    return tiny_clip()


# --------------------------------------------------------------------------- prompts


def test_templates_are_the_styleclip_list():
    assert len(IMAGENET_TEMPLATES) == 79 and len(set(IMAGENET_TEMPLATES)) == 79
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert "a photo of many {}." not in IMAGENET_TEMPLATES  # the StyleCLIP code leaves it out
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."


def test_text_embedding_is_the_normalised_mean_of_normalised_templates(C):
    templates = ("a photo of a {}.", "a drawing of the {}.", "{}")
    with torch.no_grad():
        codes = [C.encode_text([t.format("smiling face")])[0] for t in templates]
    mean = [sum(float(c[i]) for c in codes) / 3 for i in range(len(codes[0]))]
    expected = torch.tensor(unit(torch.tensor(mean)))
    assert torch.allclose(text_embedding(C, "smiling face", templates), expected, atol=1e-6)
    assert torch.allclose(text_embedding(C, "smiling face", PLAIN), codes[2], atol=1e-6)


def test_text_direction_is_the_normalised_difference(C):
    t, n = text_embedding(C, "face with glasses"), text_embedding(C, "face")
    d = text_direction(C, "face with glasses")  # neutral "face" by default
    assert torch.allclose(d, F.normalize(t - n, dim=0), atol=1e-6)
    assert float(d.norm()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(TargetCLIPError, match="embed alike"):
        text_direction(C, "face", "face")
    with pytest.raises(TargetCLIPError, match="non-empty"):
        text_direction(C, "  ")
    with pytest.raises(TargetCLIPError, match="templates"):
        text_embedding(C, "face", ["no slot"])


# --------------------------------------------------------------------------- the constraint term by hand


def hand_term(edit, source, directions, signs, hinge=True):
    """sum_k mean_i h(sign_k * <f_i - e_i, d_k>) for one target, with plain loops."""
    total = 0.0
    for d, sign in zip(directions, signs, strict=True):
        values = [sign * (dot(edit[i], d) - dot(source[i], d)) for i in range(len(edit))]
        total += sum(max(v, 0.0) if hinge else v for v in values) / len(values)
    return total


def codes(shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("hinge", [True, False])
def test_term_is_the_hinged_movement_by_hand(hinge):
    edit, source, dirs = codes((3, 4, 16), 0), codes((4, 16), 1), codes((3, 16), 2)
    term = text_constraint(None, avoid=dirs[:2], keep=dirs[2:], hinge=hinge)
    out = term(edit, source)
    assert out.shape == (3,)
    for t in range(3):
        assert float(out[t]) == pytest.approx(hand_term(edit[t], source, dirs, [1, 1, -1], hinge), abs=1e-6)
    assert float(term(edit[0], source)) == pytest.approx(float(out[0]), abs=1e-6)  # [N, D] -> a scalar
    assert term.texts == ["avoid: direction 0", "avoid: direction 1", "keep: direction 0"]


def test_no_constraint_is_zero_so_the_paper_loss_is_unchanged(C):
    edit, source = codes((2, 4, 32), 3), codes((4, 32), 4)
    term = text_constraint(C)
    assert not term
    assert torch.equal(term(edit, source), torch.zeros(2))
    assert torch.equal(text_constraint_loss(edit, source, C), torch.zeros(2))


def test_texts_embed_as_their_own_direction_or_from_a_neutral_prompt(C):
    edit, source = codes((4, 32), 5), codes((4, 32), 6)
    d = text_embedding(C, "glasses", PLAIN)
    by_text = text_constraint_loss(edit, source, C, avoid="glasses")
    assert float(by_text) == pytest.approx(hand_term(edit, source, [d], [1]), abs=1e-6)
    n = text_embedding(C, "face", PLAIN)
    from_neutral = text_constraint_loss(edit, source, C, keep=["glasses"], neutral="face")
    assert float(from_neutral) == pytest.approx(hand_term(edit, source, [F.normalize(d - n, dim=0)], [-1]), abs=1e-6)
    with pytest.raises(TargetCLIPError, match="CLIP model"):
        text_constraint(None, avoid=["glasses"])
    with pytest.raises(TargetCLIPError, match="non-zero rows"):
        text_constraint(None, avoid=torch.zeros(1, 8))


def test_gradient_reaches_the_edit_codes_only(C):
    edit = codes((4, 32), 7).requires_grad_(True)
    source = codes((4, 32), 8)
    loss = text_constraint_loss(edit, source, C, avoid=["glasses"], hinge=False)
    loss.backward()
    d = text_embedding(C, "glasses", PLAIN)
    assert torch.allclose(edit.grad, d.expand(4, -1) / 4, atol=1e-6)  # d/df_i of mean_i <f_i - e_i, d>


# --------------------------------------------------------------------------- in an optimisation


CANDIDATES = ["glasses", "a beard", "red hair", "a smile", "an old man", "a child", "a hat", "makeup", "blue eyes",
              "a tattoo", "freckles", "sunglasses", "curly hair", "a mustache", "lipstick", "wrinkles"]
NEUTRAL = "a face"


def optimise(G, C, target, sources, constraint=None, lam=5.0, steps=12, lr=0.05):
    """The essence objective (optimize.essence_losses) plus lam * the constraint, a few Adam steps from b = 0."""
    with torch.no_grad():
        target_code = C.encode_image(target)
        source_codes = C.encode_image(G.synthesis(sources))
    b = torch.zeros(1, G.n_latent, G.w_dim, requires_grad=True)
    opt = torch.optim.Adam([b], lr=lr)
    for _ in range(steps):
        edit_codes = C.encode_image(G.synthesis(sources + b))[None]
        total = essence_losses(target_code, source_codes, edit_codes, b, (1.0, 0.5, 0.003))["total"]
        if constraint:
            total = total + lam * constraint(edit_codes, source_codes)
        opt.zero_grad()
        total.sum().backward()
        opt.step()
    with torch.no_grad():
        edit_codes = C.encode_image(G.synthesis(sources + b.detach()))
    return edit_codes, source_codes


def score(edit_codes, source_codes, d):
    """The constrained CLIP score: mean movement towards the text, cos(f_i, d) - cos(e_i, d)."""
    return float(((edit_codes - source_codes) @ d).mean())


def test_the_constraint_lowers_the_constrained_score(C):
    """A random tiny CLIP: which texts the plain optimisation drifts towards is found first (directions from the
    neutral prompt, as the texts' own embeddings all lie in one cone), then constrained against."""
    G = tiny_generator(32)
    sources = truncated_sources(G, 3, seed=11)
    with torch.no_grad():
        target = G.synthesis(truncated_sources(G, 1, seed=12) * 1.5)
    plain, src = optimise(G, C, target, sources)
    base = text_embedding(C, NEUTRAL, PLAIN)
    dirs = {t: F.normalize(text_embedding(C, t, PLAIN) - base, dim=0) for t in CANDIDATES}
    # avoid: the text the plain optimisation drifts towards most; keep: the one it drifts away from most
    towards = max(CANDIDATES, key=lambda t: score(plain, src, dirs[t]))
    away = min(CANDIDATES, key=lambda t: score(plain, src, dirs[t]))
    assert score(plain, src, dirs[towards]) > 0 > score(plain, src, dirs[away])

    avoided, _ = optimise(G, C, target, sources, text_constraint(C, avoid=[towards], neutral=NEUTRAL))
    assert score(avoided, src, dirs[towards]) < min(0.0, score(plain, src, dirs[towards]))
    kept, _ = optimise(G, C, target, sources, text_constraint(C, keep=[away], neutral=NEUTRAL))
    assert score(kept, src, dirs[away]) > max(0.0, score(plain, src, dirs[away]))
    # with lambda 0 the constrained run is the plain one: the term adds nothing else
    same, _ = optimise(G, C, target, sources, text_constraint(C, avoid=[towards], neutral=NEUTRAL), lam=0.0)
    assert torch.allclose(same, plain, atol=1e-6)


def test_optimize_essence_takes_avoid_and_leaves_the_paper_loss_alone_without_it(C):
    """The wiring in optimize_essence: no texts -> the same essence as before (no "text" term); avoid -> the
    avoided text's CLIP movement goes down, and the term is logged."""
    from targetclip_core.methods.targetclip.optimize import optimize_essence

    G = tiny_generator(32)
    sources = truncated_sources(G, 3, seed=11)
    with torch.no_grad():
        target = G.synthesis(truncated_sources(G, 1, seed=12) * 1.5)
    init = 0.3 * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(3))  # b = 0 is 0/0
    kw = dict(steps=30, lr=0.1, sources=sources, init=init, seed=0)
    plain = optimize_essence(G, C, target, **kw)
    assert "text" not in plain.losses and not torch.equal(plain.vector, init)  # it moved from its start
    assert torch.equal(optimize_essence(G, C, target, avoid=(), keep=(), **kw).vector, plain.vector)

    with torch.no_grad():
        src = C.encode_image(G.synthesis(sources))
        plain_codes = C.encode_image(G.synthesis(sources + plain.vector))
    # the direction the plain essence moves CLIP codes along (as a direction of one's own, not a text):
    # its movement along it is positive by construction, and avoiding it must lower that
    drift = F.normalize((plain_codes - src).mean(0), dim=0)
    assert score(plain_codes, src, drift) > 0
    avoided = optimize_essence(G, C, target, avoid=drift[None], lambda_text=5.0, **kw)
    assert len(avoided.losses["text"]) == 30
    with torch.no_grad():
        avoided_codes = C.encode_image(G.synthesis(sources + avoided.vector))
    assert score(avoided_codes, src, drift) < score(plain_codes, src, drift)
