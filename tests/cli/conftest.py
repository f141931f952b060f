"""Fixtures of the command-line tests: a tiny generator checkpoint the commands read, and what it loads as."""

from __future__ import annotations

import pytest
from helpers.generators import tiny_generator

from targetclip_core.generators.load import load_generator, save_generator

RES = 32  # the tiny generator's resolution


@pytest.fixture(scope="module")
def gen_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny32.safetensors"
    save_generator(tiny_generator(RES), path)
    return path


@pytest.fixture(scope="module")
def G(gen_file):
    return load_generator(gen_file, device="cpu")  # what the CLI itself renders with
