"""ComfyUI adapters: one module per node family; the only code that imports comfy.*.

Nodes are registered as their capability lands in the engine. Each module exports
NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS, merged here.
"""

from . import common, directions, eg3d, essence, generator, metrics, photo, reconstruction, sat3d, video

common.register_model_folders()  # registers our model folders and creates the default ones (models/<name>)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (generator, eg3d, essence, photo, reconstruction, video, metrics, sat3d, directions):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
