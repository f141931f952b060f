"""load_clip without a network: a missing pretrained tag fails at once naming the file, its URL and the folder;
a cached one loads in Hugging Face's offline mode (no retries). The network is made unreachable here."""

from __future__ import annotations

import socket
import time

import pytest
from helpers.clip import TINY_CLIP, register_tiny_clip

from targetclip_core.encoders import clip as clip_module
from targetclip_core.encoders.clip import hub_reachable, load_clip, pretrained_file
from targetclip_core.errors import CheckpointError

OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No host answers (every connect fails at once) and the Hugging Face cache is an empty folder."""
    from huggingface_hub import constants

    calls = []

    def refuse(address, *args, **kwargs):
        calls.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(clip_module, "_reachable", {})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL cache ~/.cache/clip is empty too
    return calls


def test_a_missing_tag_fails_at_once_naming_file_url_and_folder(offline):
    started = time.monotonic()
    with pytest.raises(CheckpointError) as e:
        load_clip("ViT-B-32", "openai", device="cpu", where="in ComfyUI's models/clip folder")
    assert time.monotonic() - started < 5
    message = str(e.value)
    assert "open_clip_pytorch_model.bin" in message
    assert f"https://huggingface.co/{OPENAI_REPO}/resolve/main/open_clip_pytorch_model.bin" in message
    assert "models/clip" in message and "huggingface.co cannot be reached" in message
    assert offline == [("huggingface.co", 443)]


def test_without_a_hint_the_error_says_to_pass_the_file_as_pretrained(offline):
    with pytest.raises(CheckpointError, match=r"pass its path as `pretrained` \(--pretrained PATH"):
        load_clip("ViT-B-32", "laion2b_s34b_b79k", device="cpu")


def test_reachability_is_asked_once_per_process(offline):
    assert hub_reachable() is False and hub_reachable() is False
    for _ in range(2):
        with pytest.raises(CheckpointError):
            load_clip("ViT-B-32", "openai", device="cpu")
    assert offline == [("huggingface.co", 443)]


def test_the_file_open_clip_wants_is_named_from_its_config(offline):
    info = pretrained_file("ViT-B-32", "openai")
    assert (info["hf_repo"], info["file"], info["host"], info["cached"]) == (
        OPENAI_REPO, "open_clip_pytorch_model.bin", "huggingface.co", None)
    assert pretrained_file("ViT-B-32", "no-such-tag") is None


def test_a_cached_tag_loads_in_offline_mode(offline, monkeypatch):
    """Cached but offline: open_clip runs with HF_HUB_OFFLINE set (no retries), and it is restored afterwards."""
    import open_clip
    from huggingface_hub import constants

    register_tiny_clip()
    seen = []
    real_create = open_clip.create_model

    def spy(name, pretrained=None, **kwargs):
        seen.append((pretrained, constants.HF_HUB_OFFLINE))
        return real_create(TINY_CLIP, pretrained=None, device="cpu")

    monkeypatch.setattr(clip_module, "pretrained_file", lambda name, tag: {
        "file": "open_clip_model.safetensors", "url": "https://huggingface.co/x", "host": "huggingface.co",
        "hf_repo": "org/model", "cached": "/cache/open_clip_model.safetensors"})
    monkeypatch.setattr(open_clip, "create_model", spy)
    before = constants.HF_HUB_OFFLINE
    C = load_clip(TINY_CLIP, "some-tag", device="cpu")
    assert seen == [("some-tag", True)] and constants.HF_HUB_OFFLINE == before
    assert C.identity == {"name": TINY_CLIP, "pretrained": "some-tag"}


def test_an_hf_hub_repo_offline_fails_at_once_naming_its_files(offline):
    with pytest.raises(CheckpointError) as e:
        load_clip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None, device="cpu")
    message = str(e.value)
    assert "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert "open_clip_config.json" in message and "local-dir:" in message


def test_a_quickgelu_tag_builds_quickgelu(monkeypatch):
    """OpenAI's weights were trained with QuickGELU: open_clip only warns when the architecture lacks it."""
    import open_clip

    register_tiny_clip()
    seen = []
    real_create = open_clip.create_model

    def spy(name, pretrained=None, **kwargs):
        seen.append((name, pretrained, kwargs.get("force_quick_gelu")))
        return real_create(TINY_CLIP, pretrained=None, device="cpu")

    monkeypatch.setattr(clip_module, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(open_clip, "create_model", spy)
    load_clip("ViT-B-32", "openai", device="cpu")
    load_clip("ViT-B-32", "laion2b_s34b_b79k", device="cpu")
    assert seen == [("ViT-B-32", "openai", True), ("ViT-B-32", "laion2b_s34b_b79k", False)]
