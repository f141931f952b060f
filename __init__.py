"""ComfyUI entry point of the TargetCLIP node pack (clone this folder into ComfyUI/custom_nodes)."""

import importlib.util
import os
import sys

try:  # installed with `pip install -e .`
    import targetclip_core  # noqa: F401
except ImportError:  # a plain clone in custom_nodes: the engine sits beside this file
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

if "comfy" in sys.modules or importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported outside ComfyUI (e.g. by a test runner): the engine works alone, no nodes
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
