"""SAT3D Train node with a face parser: channel pre-selection's statistics pass shows ComfyUI's progress bar per
image, Cancel stops it, and with a checkpoint name the statistics so far survive Cancel (the next run resumes).

Same harness as test_nodes_sat3d.py (helpers.comfy); every node method runs under torch.inference_mode().
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.generators import tiny_generator

torch.set_num_threads(1)

from helpers.comfy import loaded_generator, loaded_tiny_clip, node, pack_module  # noqa: E402, F401 - skips the module without ComfyUI's API

import comfy.model_management as mm  # noqa: E402, I001
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

# 5 steps, and a bank of 4 latents: the statistics pass has 4 images (its bar's total), the training bar 5
SETTINGS = dict(descriptors="faces", steps=5, batch_size=1, lr=0.1, n_codes=4, truncation=1.0, lambda_attr=3.5,
                lambda_prob=0.1, seed=0, preview_every=5, lambda_bg=40.0, filter_training_set=False)


@pytest.fixture(scope="module")
def loaded(pack):
    from helpers.parsing import official_state

    G = loaded_generator(pack, tiny_generator(32), "tiny_preselect.safetensors")
    C = loaded_tiny_clip(pack)
    faces = Path(folder_paths.get_folder_paths("facedetection")[0])
    faces.mkdir(parents=True, exist_ok=True)
    torch.save(official_state(), faces / "parsing_bisenet.pth")  # random weights, the official layout
    (parser,) = node(pack, "TargetCLIP_LoadFaceParser").load("parsing_bisenet.pth", 64)
    return G, C, parser


def _train(pack, loaded, hook, **kw):
    G, C, parser = loaded
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        return node(pack, "TargetCLIP_SAT3DTrain").train(G, C, **SETTINGS, face_parser=parser, **kw)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


def test_cancel_in_the_statistics_pass_keeps_it_and_the_next_run_resumes(pack, loaded):
    seen = []

    def cancel_after_two_images(value, total, preview, node_id=None):
        seen.append((value, total))
        if total == 4 and value >= 2:  # the pass's bar (4 images)
            mm.interrupt_current_processing(True)

    with pytest.raises(mm.InterruptProcessingException):
        _train(pack, loaded, cancel_after_two_images, checkpoint_name="preselect run")
    assert seen[:3] == [(0, 4), (1, 4), (2, 4)] and all(t == 4 for _, t in seen)  # cancelled before any step
    ckpt = Path(folder_paths.get_output_directory()) / "sat3d_checkpoints" / "preselect_run.ckpt"
    partial = torch.load(ckpt, weights_only=True)
    assert partial["logits"] is None and partial["preselect_statistics"]["done"] == 3  # written before each update

    resumed_bar = []
    resumed, _, report = _train(pack, loaded, lambda v, t, p, node_id=None: resumed_bar.append((v, t)),
                                checkpoint_name="preselect run")
    assert resumed_bar[:2] == [(3, 4), (4, 4)]  # image 4 only, then the training steps
    full, _, _ = _train(pack, loaded, None)
    assert torch.equal(resumed.logits, full.logits) and resumed.preselection == full.preselection
    assert "Hairstyle:" in resumed.preselection and "gradient statistics over 4 images" in report
