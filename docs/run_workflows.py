"""Run the pack's API workflows (workflows/api/*.json) in a real ComfyUI, on tiny random-weight models, on CPU, offline.

    /tmp/comfyvenv/bin/python docs/run_workflows.py --comfyui /tmp/comfyui --workdir /tmp/targetclip_workflows

The Python running it needs ComfyUI's requirements.txt, `requests` and this pack's requirements.txt (torch, open_clip,
facenet-pytorch ...); the same interpreter runs ComfyUI. Name workflows (with or without .json) to run only those.

1. Builds tiny models under the names the workflows expect, in WORKDIR (ComfyUI's --base-directory; wiped first, so
   it must be new, empty or one this script made):
   models/stylegan/stylegan2-ffhq-config-f.pt   a 32px StyleGAN2 (8 W+ entries of 64) in rosinality's layout
   models/e4e/e4e_ffhq_encode.pt                a tiny e4e encoder with that generator as decoder (official layout)
   models/e4e/targetclip_essence_encoder.pt     a tiny essence encoder (e4e layout, no latent_avg)
   models/eg3d/ffhq512-128.pkl                  a tiny EG3D (tests/helpers/eg3d.py) in our .safetensors format (the
                                                loader sniffs the content, not the name)
   models/targetclip/{joker,elsa,keanu}.npy     official-format directions of the tiny W+ shape: the official vectors'
                                                first 8 x 64 values when ../shared/data/targetclip is there
   models/sat3d/faces_{ffhq,eg3d_ffhq512}.safetensors  untrained faces matrices (initial logits plus noise) with the
                                                layout and weights fingerprint of each generator
   models/facedetection/79999_iter.pth          random BiSeNet weights in the official layout
   models/e4e/alexnet-owt-7be5be79.pth          random torchvision AlexNet weights: the LPIPS trunk of Refine
                                                Inversion / Pivotal Tuning (the heads come with the lpips package)
   models/checkpoints/v1-5-pruned-emaonly.safetensors  random weights of the whole SD1.5 architecture (UNet, VAE,
                                                CLIP-L; 2.1 GB fp16), kept in WORKDIR/.sd-cache; --no-sd skips it
   input/photo.jpg, target.jpg, target.png      keanu, joker and elsa from ../shared/data/targetclip/targets: MTCNN
                                                (weights bundled with facenet-pytorch) needs a real face; without
                                                them the workflows that align a face are "not runnable offline"
   input/clip.mp4                               6 frames of photo.jpg drifting, with a 440 Hz tone (Edit Clip keeps it)
2. Starts `main.py --cpu --listen 127.0.0.1 --base-directory WORKDIR` with the pack linked as
   WORKDIR/custom_nodes/targetclip; checks that /object_info lists every TargetCLIP_* node of nodes/ and that the
   start-up log has no traceback from the pack.
3. POSTs each workflow with the inputs of TINY set in the copy (CLIP "pretrained": "none", i.e. random weights, as
   nothing can be downloaded; SAT3D Train's CLIP zero-shot training-set filter off, as random CLIP weights exclude
   every face; steps, sizes and frame counts lowered), follows /history until it finishes and prints one line per
   workflow: name, status (success, or error with the node and its message), seconds; then the failed nodes'
   tracebacks. A workflow using a node type /object_info marks deprecated is an error without running. Exit code 0
   only if every runnable workflow succeeded. The server is stopped at the end.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
API_DIR = REPO / "workflows" / "api"
SD_NAME = "v1-5-pruned-emaonly.safetensors"
MARKER = ".targetclip-run-workflows"  # a WORKDIR this script made (and may wipe)
OFFLINE = "not runnable offline"
FACE_WORKFLOWS = {"essence_in_one_pass_with_scores": "target.jpg", "photo_edit_with_essence": "photo.jpg"}  # aligned
PHOTOS = {"photo.jpg": "keanu.jpg", "target.jpg": "joker.jpg", "target.png": "elsa.jpg"}
# inputs changed in the prompt copy, by node type: random CLIP weights (no download) and tiny workloads
TINY = {
    "TargetCLIP_LoadCLIP": {"pretrained": "none"},
    "TargetCLIP_OptimizeEssence": {"steps": 2, "n_sources": 2, "preview_every": 1},
    # the training-set filter is CLIP zero-shot ("no hats"): random CLIP weights exclude every candidate, so it is off
    "TargetCLIP_SAT3DTrain": {"steps": 2, "n_codes": 4, "batch_size": 1, "preview_every": 1,
                              "filter_training_set": False},
    "TargetCLIP_LoadFaceParser": {"input_size": 64},
    "TargetCLIP_EssenceInterpret": {"n_sources": 2},
    "TargetCLIP_AlignFace": {"output_size": 256},
    "TargetCLIP_LatentDirection": {"n_samples": 2000},
    # the channel statistics: one image per channel over the layers up to 8 px (a full run is ~2 x 100 renders a channel)
    "TargetCLIP_TextDirection": {"n_images": 1, "max_resolution": 8, "beta": 0.001},  # random CLIP: weak relevances
    "ImageScale": {"width": 64, "height": 64},
    "KSampler": {"steps": 2},
    # the LPIPS backbone cannot be downloaded here: the perceptual term is off with a warning, as a user without it sees
    "TargetCLIP_RefineInversion": {"steps": 3},
    "TargetCLIP_PivotalTuning": {"steps": 2},
    "TargetCLIP_EssenceRamp": {"frames": 4},
    "TargetCLIP_Turntable": {"frames": 3},
}
ORBIT_FRAMES = "2"  # Render Views given a frame count ("24") renders this many instead
# SD1.5 as ComfyUI 0.8 knows it: its UNet config (comfy/model_detection.py) and VAE ddconfig (comfy/sd.py)
SD15_UNET = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2] * 4,
             "channel_mult": [1, 2, 4, 4], "transformer_depth": [1] * 6 + [0] * 2, "transformer_depth_middle": 1,
             "transformer_depth_output": [1] * 9 + [0] * 3, "context_dim": 768, "num_heads": 8, "legacy": False,
             "use_spatial_transformer": True, "use_linear_in_transformer": False, "adm_in_channels": None,
             "use_checkpoint": False, "use_temporal_attention": False, "use_temporal_resblock": False}
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def build_stylegan_and_encoders(models: Path):
    """The 32px rosinality StyleGAN2, the e4e inverter carrying it as decoder, the essence encoder. Returns G."""
    import torch
    from helpers.encoders import official_checkpoint, tiny_encoder
    from helpers.generators import random_rosinality_state, write_rosinality_checkpoint

    from targetclip_core.generators.load import load_generator

    path = models / "stylegan" / "stylegan2-ffhq-config-f.pt"
    state = random_rosinality_state(resolution=32, channels={4: 64, 8: 64, 16: 32, 32: 32}, style_dim=64)
    write_rosinality_checkpoint(path, state)
    z = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the real file carries latent_avg (truncation needs it): the mean w of this network
        w_avg = load_generator(path, device="cpu").mapping(z, truncation=1.0).mean(0)
    write_rosinality_checkpoint(path, state, latent_avg=w_avg)
    G = load_generator(path, device="cpu")
    inverter, essence = (tiny_encoder(n_styles=G.n_latent, w_dim=G.w_dim, seed=s).state_dict() for s in (0, 1))
    official_checkpoint(models / "e4e" / "e4e_ffhq_encode.pt", inverter, w_avg.repeat(G.n_latent, 1),
                        decoder_state=state)
    official_checkpoint(models / "e4e" / "targetclip_essence_encoder.pt", essence, None, start_from_latent_avg=False)
    return G


def build_essences(folder: Path, G, shared: Path) -> None:
    """Official-format .npy directions (1, n_latent, w_dim) for G: a corner of the official vectors when present."""
    import numpy as np

    for seed, name in enumerate(("joker", "elsa", "keanu")):
        official = shared / "data" / "targetclip" / "directions" / f"{name}.npy"
        if official.is_file():
            b = np.load(official)[:, : G.n_latent, : G.w_dim]
        else:
            b = 0.5 * np.random.default_rng(seed).standard_normal((1, G.n_latent, G.w_dim))
        np.save(folder / f"{name}.npy", np.ascontiguousarray(b, dtype=np.float32))


def build_matrix(path: Path, G) -> None:
    """A SAT3D matrix of the faces attributes for G: its StyleSpace layout and weights fingerprint, the paper's
    initial logits plus a little noise (so each attribute has strongest channels to report)."""
    import torch

    from targetclip_core.generators.stylespace import StyleLayout
    from targetclip_core.methods.sat3d import (
        SAT3DMatrix,
        generator_fingerprint,
        initial_logits,
        load_descriptors,
        save_sat3d_matrix,
    )

    names, layout = load_descriptors("faces").names, StyleLayout.from_generator(G)
    logits = initial_logits(names, layout.n_channels) + 0.5 * torch.randn(len(names) + 1, layout.n_channels,
                                                                          generator=torch.Generator().manual_seed(0))
    save_sat3d_matrix(path, SAT3DMatrix(logits=logits, attributes=names, layout=layout, generator=dict(G.identity),
                                        fingerprint=generator_fingerprint(G), descriptors="faces"))


def build_sd15_checkpoint(comfyui: Path, path: Path) -> None:
    """Random weights for the SD1.5 architecture in the single-file layout CheckpointLoaderSimple detects as SD1.5
    (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*); the shapes come from ComfyUI's own UNet, VAE
    and CLIP-L modules built on the meta device, so nothing large is allocated twice."""
    import math

    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(comfyui))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management looks for a GPU
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**SD15_UNET, device="meta", operations=comfy.ops.disable_weight_init)
        parts = {"model.diffusion_model.": unet,
                 "first_stage_model.": AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4),
                 "cond_stage_model.": comfy.sd1_clip.SDClipModel(device="meta")}
    gen, tensors = torch.Generator().manual_seed(0), {}
    for prefix, module in parts.items():
        for name, meta in module.state_dict().items():
            shape = tuple(meta.shape)
            if len(shape) >= 2:  # weights: unit-variance activations through the depth
                t = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
            elif name.endswith("weight"):  # norm scales
                t = torch.ones(shape)
            else:  # biases, logit_scale
                t = torch.zeros(shape)
            tensors[prefix + name] = t.half()
    save_file(tensors, str(path))


def build_workdir(workdir: Path, comfyui: Path, shared: Path, with_sd: bool) -> dict[str, tuple[str, str]]:
    """Fresh WORKDIR with the models, inputs and the pack link. Returns {workflow: (status, why)} of those
    that cannot run."""
    import torch
    from PIL import Image

    sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the engine and the test helpers (helpers.*)
    from helpers.eg3d import tiny_eg3d
    from helpers.video import write_face_clip
    from helpers.parsing import official_state

    from targetclip_core.generators.load import load_generator, save_generator

    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).is_file():
        raise SystemExit(f"{workdir} is not empty and not made by this script ({MARKER} missing): not wiping it")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by docs/run_workflows.py: wiped on every run but .sd-cache\n")
    for child in workdir.iterdir():
        if child.name in (MARKER, ".sd-cache"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)  # does not follow the link custom_nodes/targetclip
        else:
            child.unlink()
    models = workdir / "models"
    for sub in ("stylegan", "e4e", "eg3d", "targetclip", "sat3d", "facedetection", "checkpoints"):
        (models / sub).mkdir(parents=True)
    (workdir / "custom_nodes").mkdir()
    (workdir / "custom_nodes" / "targetclip").symlink_to(REPO, target_is_directory=True)

    G = build_stylegan_and_encoders(models)
    build_essences(models / "targetclip", G, shared)
    build_matrix(models / "sat3d" / "faces_ffhq.safetensors", G)
    save_generator(tiny_eg3d(), models / "eg3d" / "ffhq512-128.pkl")
    eg3d = load_generator(models / "eg3d" / "ffhq512-128.pkl", device="cpu")
    build_matrix(models / "sat3d" / "faces_eg3d_ffhq512.safetensors", eg3d)
    torch.save(official_state(), models / "facedetection" / "79999_iter.pth")
    import torchvision  # the LPIPS trunk of Refine Inversion / Pivotal Tuning, random weights, torchvision's file name

    torch.save(torchvision.models.alexnet(weights=None).state_dict(), models / "e4e" / "alexnet-owt-7be5be79.pth")

    missing: dict[str, tuple[str, str]] = {}  # workflow -> (status, why)
    (workdir / "input").mkdir()
    for name, source in PHOTOS.items():
        photo = shared / "data" / "targetclip" / "targets" / source
        if photo.is_file():
            Image.open(photo).convert("RGB").save(workdir / "input" / name)
            if name == "photo.jpg":  # 6 frames of it drifting, with a tone (tests/helpers/video.py)
                write_face_clip(photo, workdir / "input" / "clip.mp4", frames=6, fps=12, fit=256)
        else:  # enough for the workflows that never look for a face
            Image.fromarray((torch.rand(256, 256, 3) * 255).byte().numpy()).save(workdir / "input" / name)
            missing.update({wf: (OFFLINE, f"no face photo ({photo} missing): Align Face (MTCNN) needs a real face")
                            for wf, needs in FACE_WORKFLOWS.items() if needs == name})
            if name == "photo.jpg":
                missing["edit_clip_with_essence"] = (OFFLINE, f"no face photo ({photo} missing) to make the clip of")
    sd_cache = workdir / ".sd-cache" / SD_NAME  # 2 GB and a minute to write: kept between runs
    if with_sd and not sd_cache.is_file():
        sd_cache.parent.mkdir(exist_ok=True)
        build_sd15_checkpoint(comfyui, sd_cache)
    if sd_cache.is_file():
        (models / "checkpoints" / SD_NAME).symlink_to(sd_cache)
    else:
        missing["essence_then_sd_img2img"] = ("skipped", "--no-sd: no SD1.5 checkpoint")
    return missing


def pack_node_ids() -> list[str]:
    """Every TargetCLIP_* key of the NODE_CLASS_MAPPINGS literals in nodes/*.py (read statically: no ComfyUI here)."""
    ids = []
    for path in sorted((REPO / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = [getattr(t, "id", "") for t in getattr(node, "targets", [])]
            if "NODE_CLASS_MAPPINGS" in targets and isinstance(node.value, ast.Dict):
                keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
                ids += [k for k in keys if k.startswith("TargetCLIP_")]
    return ids


def start_server(comfyui: Path, workdir: Path, port: int, log_path: Path, timeout: float = 300) -> subprocess.Popen:
    """main.py --cpu on 127.0.0.1:port with WORKDIR as base directory; returns once /system_stats answers."""
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(workdir), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
           "--disable-api-nodes"]
    with open(log_path, "w") as log:  # the server keeps its own copy of the handle
        proc = subprocess.Popen(cmd, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {proc.returncode}; see {log_path}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/system_stats", timeout=5).ok:
                return proc
        except requests.RequestException:
            pass
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"ComfyUI did not answer on port {port} within {timeout:.0f}s; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # only the server this script started
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def import_tracebacks(log_text: str) -> tuple[list[str], list[str]]:
    """Tracebacks in the start-up log: (the pack's, other ones). A block runs from 'Traceback' to the next
    unindented line; it is the pack's when it names the pack's folder or an IMPORT FAILED line names it."""
    ours, others, lines = [], [], log_text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("Traceback (most recent call last)"):
            end = i + 1
            while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
                end += 1
            block = "\n".join(lines[max(0, i - 1): end + 1])
            (ours if "targetclip" in block or str(REPO) in block else others).append(block)
    ours += [line for line in lines if "IMPORT FAILED" in line and "targetclip" in line]
    return ours, others


def patched(prompt: dict) -> dict:
    """The prompt with TINY applied (and orbits of a frame count cut to ORBIT_FRAMES)."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node["inputs"]
        inputs.update(TINY.get(node["class_type"], {}))
        if node["class_type"] == "TargetCLIP_RenderViews" and str(inputs.get("views", "")).strip().isdigit():
            inputs["views"] = ORBIT_FRAMES
    return prompt


def run_prompt(base: str, prompt: dict, timeout: float) -> tuple[str, str, list[str]]:
    """POST the prompt, follow /history: (status, detail, traceback lines)."""
    r = requests.post(f"{base}/prompt", json={"prompt": prompt, "client_id": "targetclip-run-workflows"}, timeout=60)
    if not r.ok:
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {"error": r.text}
        errors = [f"#{nid} {e.get('class_type')}: " + "; ".join(f"{x.get('message')} ({x.get('details')})"
                                                              for x in e.get("errors", []))
                  for nid, e in (body.get("node_errors") or {}).items()]
        error = body.get("error")
        error = error.get("message") if isinstance(error, dict) else error
        return "error", f"refused: {error} " + " | ".join(errors), []
    prompt_id, deadline = r.json()["prompt_id"], time.time() + timeout
    while time.time() < deadline:
        entry = requests.get(f"{base}/history/{prompt_id}", timeout=30).json().get(prompt_id)
        status = (entry or {}).get("status") or {}
        if status.get("completed") or status.get("status_str") == "error":
            if status.get("status_str") == "success":
                return "success", "", []
            for event, data in status.get("messages", []):
                if event == "execution_error":
                    where = f"#{data['node_id']} {data['node_type']}"
                    return "error", f"{where}: {data['exception_type']}: {data['exception_message']}", data["traceback"]
            return "error", f"status {status.get('status_str')}", []
        time.sleep(0.5)
    requests.post(f"{base}/interrupt", timeout=10)
    return "error", f"timed out after {timeout:.0f}s", []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI checkout (main.py)")
    ap.add_argument("--workdir", type=Path, required=True, help="ComfyUI base directory to create (wiped first)")
    ap.add_argument("--port", type=int, default=8188)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("TARGETCLIP_SHARED") or REPO.parent / "shared"),
                    help="shared data (face photos, official directions); default $TARGETCLIP_SHARED or ../shared")
    ap.add_argument("--no-sd", action="store_true", help="do not build the 2 GB SD1.5 checkpoint (skip its workflow)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one workflow may take")
    ap.add_argument("workflows", nargs="*", help="names in workflows/api (default: all)")
    args = ap.parse_args(argv)
    names = [n.removesuffix(".json") for n in args.workflows] or sorted(p.stem for p in API_DIR.glob("*.json"))
    unknown = [n for n in names if not (API_DIR / f"{n}.json").is_file()]
    if unknown:
        ap.error(f"no such workflow in {API_DIR}: {', '.join(unknown)}")

    workdir, comfyui = args.workdir.resolve(), args.comfyui.resolve()
    t0 = time.time()
    with_sd = not args.no_sd and "essence_then_sd_img2img" in names
    not_runnable = build_workdir(workdir, comfyui, args.shared, with_sd)
    print(f"tiny models built in {workdir} ({time.time() - t0:.0f}s)")

    log_path, base = workdir / "comfyui.log", f"http://127.0.0.1:{args.port}"
    proc = start_server(comfyui, workdir, args.port, log_path)
    failures, results, tracebacks = [], [], []
    try:
        version = requests.get(f"{base}/system_stats", timeout=10).json()["system"].get("comfyui_version")
        print(f"ComfyUI {version} at {base} (log: {log_path})")
        ours, others = import_tracebacks(log_path.read_text(errors="replace"))
        failures += [f"traceback from the pack at import:\n{block}" for block in ours]
        if others:
            print(f"note: {len(others)} traceback(s) at start-up not from the pack (see the log)")
        object_info = requests.get(f"{base}/object_info", timeout=120).json()
        listed = set(object_info)
        expected = pack_node_ids()
        absent = [n for n in expected if n not in listed]
        if absent:
            failures.append(f"/object_info lacks {len(absent)} of the {len(expected)} pack nodes: {', '.join(absent)}")
        print(f"/object_info lists {len(expected) - len(absent)} of the pack's {len(expected)} TargetCLIP_* nodes")

        print(f"\n{'workflow':<36} {'status':<22} {'seconds':>7}  detail")
        for name in names:
            start, tb = time.time(), []
            prompt = json.loads((API_DIR / f"{name}.json").read_text())
            deprecated = sorted({n["class_type"] for n in prompt.values()
                                 if object_info.get(n["class_type"], {}).get("deprecated")})
            if deprecated:  # the frontend flags these and hides them from search: templates must not use them
                status, detail = "error", f"uses node types this ComfyUI marks deprecated: {', '.join(deprecated)}"
            elif name in not_runnable:
                status, detail = not_runnable[name]
            else:
                status, detail, tb = run_prompt(base, patched(prompt), args.timeout)
            results.append((name, status, detail, time.time() - start))
            tracebacks += [(name, "".join(tb))] if tb else []
            print(f"{name:<36} {status:<22} {results[-1][3]:7.1f}  {detail}", flush=True)
    finally:
        stop_server(proc)

    for name, tb in tracebacks:
        print(f"\n--- traceback of {name}:\n{tb}")
    for failure in failures:
        print(f"\nFAILED: {failure}")
    failed = [r for r in results if r[1] not in ("success", OFFLINE, "skipped")]
    offline, skipped = (sum(r[1] == s for r in results) for s in (OFFLINE, "skipped"))
    print(f"\n{sum(r[1] == 'success' for r in results)} succeeded, {len(failed)} failed, "
          f"{offline} {OFFLINE}, {skipped} skipped ({time.time() - t0:.0f}s in all)")
    return 0 if not failed and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
