"""ComfyUI adapters: one module per node family; the only code that imports comfy.*.

Nodes are registered as their capability lands in the engine (none yet: the node
pack is its own issue). Each module exports NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS, merged here.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
