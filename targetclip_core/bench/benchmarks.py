"""`targetclip bench generator`: time the generator, side by side with a rosinality-style baseline.

Every figure is the minimum over `repeats` interleaved runs (after a warm-up), so a
background process slowing one run does not decide a ratio, and ratios are only
ever taken between rows measured in the same run on the same machine.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import torch

from targetclip_core.bench.baselines import baseline_synthesis
from targetclip_core.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator


@dataclass
class Row:
    label: str
    impl: str
    out_resolution: int
    backward: bool
    seconds: float = float("inf")

    def per_image(self, batch: int) -> float:
        return self.seconds / batch


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_model()
        name += f", {torch.get_num_threads()} threads"
    return f"{name}; torch {torch.__version__}; {platform.system()} {platform.machine()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "CPU"


def random_generator(resolution: int, channel_multiplier: int = 2, seed: int = 0) -> StyleGAN2Generator:
    """A generator with the rosinality channel plan and non-trivial noise strengths."""
    torch.manual_seed(seed)
    cfg = StyleGAN2Config(resolution=resolution, channels=StyleGAN2Config.rosinality_channels(resolution, channel_multiplier))
    G = StyleGAN2Generator(cfg).eval().requires_grad_(False)
    for m in G.modules():
        if hasattr(m, "noise_strength"):
            m.noise_strength.fill_(0.1)
    return G


def sync_device(device):
    """Wait for `device` to finish its queued work (timings are the device's, not the host's)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_once(G, wp, row: Row) -> float:
    x = wp.detach().clone().requires_grad_(row.backward)
    sync_device(wp.device)
    start = time.perf_counter()
    with torch.set_grad_enabled(row.backward):
        if row.impl == "baseline":
            img = baseline_synthesis(G, x)
        else:
            G.modconv_impl = row.impl
            img = G.synthesis(x, out_resolution=row.out_resolution)
        if row.backward:
            img.square().mean().backward()
    sync_device(wp.device)
    return time.perf_counter() - start


def bench_generator(
    resolution=256, batch=4, device="cpu", out_resolution=None, repeats=3, with_baseline=True, with_fused=True, G=None, log=print
):
    """Measure and print the table; returns (rows, summary dict)."""
    device = torch.device(device)
    G = (G or random_generator(resolution)).to(device)
    resolution = G.resolution
    out_res = out_resolution or max(4, min(256, resolution // 4))
    wp = (torch.randn(batch, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(1)) * 0.5).to(device)

    # the baseline must compute the same image, or the comparison means nothing
    if with_baseline:
        with torch.no_grad():
            G.modconv_impl = "unfused"
            ours, ref = G.synthesis(wp), baseline_synthesis(G, wp)
        mismatch = float((ours - ref).abs().max() / ref.abs().max())
        if mismatch > 1e-4:
            raise RuntimeError(f"baseline and our synthesis disagree (max rel diff {mismatch:.2e})")

    rows = []
    impls = ["unfused"] + (["fused"] if with_fused else [])
    for bwd in (False, True):
        for impl in impls:
            rows.append(Row(f"ours {impl}", impl, resolution, bwd))
        if bwd:  # what the hand-written backward (synthesis_grad) brings, against autograd
            rows.append(Row("ours unfused, autograd backward", "unfused-autograd", resolution, bwd))
        if out_res != resolution:
            rows.append(Row(f"ours unfused, out_resolution={out_res}", "unfused", out_res, bwd))
        if with_baseline:
            rows.append(Row("rosinality-style baseline", "baseline", resolution, bwd))

    for row in rows:  # warm-up: first calls allocate and pick kernels
        _run_once(G, wp, row)
    for _ in range(repeats):
        for row in rows:
            row.seconds = min(row.seconds, _run_once(G, wp, row))
    G.modconv_impl = "auto"

    log(f"StyleGAN2 {resolution}px, batch {batch}, {device.type}: {machine_description(device)}")
    log(f"min of {repeats} interleaved runs; seconds per image")
    log(f"{'configuration':<44}{'forward':>12}{'fwd+bwd':>12}")
    by_key = {(r.label, r.backward): r for r in rows}
    for label in dict.fromkeys(r.label for r in rows if r.backward):  # every row has a fwd+bwd figure
        f, b = by_key.get((label, False)), by_key[(label, True)]
        forward = f"{f.per_image(batch):>12.4f}" if f else f"{'-':>12}"
        log(f"{label:<44}{forward}{b.per_image(batch):>12.4f}")
    summary = {}
    ours_fb = by_key[("ours unfused", True)].seconds
    if with_baseline:
        summary["speedup_vs_baseline_fwd_bwd"] = by_key[("rosinality-style baseline", True)].seconds / ours_fb
        summary["speedup_vs_baseline_fwd"] = by_key[("rosinality-style baseline", False)].seconds / by_key[("ours unfused", False)].seconds
        summary["baseline_max_rel_diff"] = mismatch
    summary["autograd_backward_over_hand_written_fwd_bwd"] = by_key[("ours unfused, autograd backward", True)].seconds / ours_fb
    if with_fused:
        summary["fused_over_unfused_fwd_bwd"] = by_key[("ours fused", True)].seconds / ours_fb
        summary["fused_over_unfused_fwd"] = by_key[("ours fused", False)].seconds / by_key[("ours unfused", False)].seconds
    if out_res != resolution:
        summary["out_resolution_saving_fwd_bwd"] = 1 - by_key[(f"ours unfused, out_resolution={out_res}", True)].seconds / ours_fb
    for k, v in summary.items():
        log(f"{k}: {v:.3g}")
    return rows, summary


def random_stylegan3(resolution: int, variant: str = "T", seed: int = 0):
    """A StyleGAN3 with the official config's channel plan (train.py: R doubles channel_base and channel_max)."""
    from targetclip_core.generators.stylegan3 import StyleGAN3Config, StyleGAN3Generator

    torch.manual_seed(seed)
    r = variant.upper() == "R"
    cfg = StyleGAN3Config(resolution=resolution, channel_base=65536 if r else 32768, channel_max=1024 if r else 512,
                          conv_kernel=1 if r else 3, use_radial_filters=r)
    return StyleGAN3Generator(cfg).eval().requires_grad_(False)


def bench_stylegan3(resolution=256, variant="T", batch=4, device="cpu", repeats=3, with_baseline=True, G=None, log=print):
    """StyleGAN3 forward and forward+backward (gradients to W+, as an essence step needs), ours against
    NVlabs' reference path on the same weights; returns (rows, summary dict)."""
    from targetclip_core.bench.stylegan3_reference import nvlabs_stylegan3_synthesis

    device = torch.device(device)
    G = (G or random_stylegan3(resolution, variant)).to(device)
    wp = (torch.randn(batch, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(1)) * 0.5).to(device)
    contenders = {"ours": G.synthesis}
    if with_baseline:
        contenders["NVlabs reference path"] = lambda x: nvlabs_stylegan3_synthesis(G, x)
        with torch.no_grad():
            ours, ref = G.synthesis(wp), nvlabs_stylegan3_synthesis(G, wp)
        mismatch = float((ours - ref).abs().max() / ref.abs().max())
        if mismatch > 1e-4:
            raise RuntimeError(f"the reference path and our synthesis disagree (max rel diff {mismatch:.2e})")

    def run_once(synthesis, backward):
        x = wp.detach().clone().requires_grad_(backward)
        sync_device(device)
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            img = synthesis(x)
            if backward:
                img.square().mean().backward()
        sync_device(device)
        return time.perf_counter() - start

    times = {(name, bwd): float("inf") for name in contenders for bwd in (False, True)}
    for name, bwd in times:  # warm-up
        run_once(contenders[name], bwd)
    for _ in range(repeats):
        for name, bwd in times:
            times[(name, bwd)] = min(times[(name, bwd)], run_once(contenders[name], bwd))

    log(f"{G.describe()}, batch {batch}, {device.type}: {machine_description(device)}")
    log(f"min of {repeats} interleaved runs; seconds per image")
    log(f"{'configuration':<44}{'forward':>12}{'fwd+bwd':>12}")
    for name in contenders:
        log(f"{name:<44}{times[(name, False)] / batch:>12.4f}{times[(name, True)] / batch:>12.4f}")
    summary = {"ours_fwd_s_per_image": times[("ours", False)] / batch,
               "ours_fwd_bwd_s_per_image": times[("ours", True)] / batch}
    if with_baseline:
        ref = "NVlabs reference path"
        summary["speedup_vs_reference_fwd"] = times[(ref, False)] / times[("ours", False)]
        summary["speedup_vs_reference_fwd_bwd"] = times[(ref, True)] / times[("ours", True)]
        summary["reference_max_rel_diff"] = mismatch
    for k, v in summary.items():
        log(f"{k}: {v:.3g}")
    return times, summary


def essence_step_seconds(G, C, target, sources, steps: int, precision: str, compile: bool = False) -> tuple[float, float]:
    """(seconds per step, the min over `steps` after the first; seconds of the setup and first step) of
    optimize_essence with the official optimiser's settings (learnt coefficients), waiting for the device
    at each step's end so the times are the device's."""
    from targetclip_core.methods.targetclip.optimize import optimize_essence

    stamps = []

    def stamp(info):
        sync_device(G.device)
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    optimize_essence(G, C, target, steps=steps + 1, sources=sources, learn_coefficients=True, precision=precision,
                     compile=compile, callback=stamp)
    return min(b - a for a, b in zip(stamps, stamps[1:])), stamps[0] - start


def precision_label(precision: str, device) -> str:
    """`precision` as a table shows it: auto with what it resolves to here ("auto (bf16)")."""
    from targetclip_core.devices import resolved_name

    return f"auto ({resolved_name('auto', device)})" if precision == "auto" else precision


def bench_optimize(resolution=256, n_sources=4, steps=3, device="cpu", clip_name="ViT-B-32", clip_pretrained=None,
                   precisions=("fp32",), with_compile=False, log=print):
    """Seconds per optimisation step: ours vs the official loop (with the rosinality-style
    generator it runs on, and with ours to separate loop savings from generator savings)."""
    from targetclip_core.bench.baselines import official_style_state, official_style_step
    from targetclip_core.encoders.clip import load_clip
    from targetclip_core.methods.targetclip.optimize import sample_sources

    device = torch.device(device)
    G = random_generator(resolution).to(device)
    C = load_clip(clip_name, clip_pretrained, device=device)
    target = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3)).to(device) * 2 - 1
    sources = sample_sources(G, n_sources, 0.7, seed=0)

    ours_by_precision = {}
    for precision in precisions:  # each in the same run as the official loop below
        ours_by_precision[precision] = essence_step_seconds(G, C, target, sources, steps, precision)
    compiled = {p: essence_step_seconds(G, C, target, sources, steps, p, compile=True) for p in precisions} if with_compile else {}
    ours, ours_setup = ours_by_precision[precisions[0]]

    def official(use_baseline_generator):
        state = official_style_state(G, C, target, sources)
        times = []
        for step in range(steps):
            t0 = time.perf_counter()
            official_style_step(G, C, state, step, steps, use_baseline_generator)
            times.append(time.perf_counter() - t0)
        return min(times)

    official_rosinality = official(True)
    official_ours_gen = official(False)
    log(f"essence optimisation step, StyleGAN2 {resolution}px, N={n_sources}, CLIP {clip_name}, {device.type}: {machine_description(device)}")
    log(f"min over {steps} steps; seconds per step")
    for precision, (seconds, setup) in ours_by_precision.items():
        label = f"ours, {precision_label(precision, device)} (sources cached, out_resolution auto, one batch)"
        log(f"{label:<68}{seconds:>10.3f}   (first step incl. setup {setup:.3f})")
    for precision, (seconds, setup) in compiled.items():
        label = f"ours, {precision_label(precision, device)}, CLIP compiled"
        log(f"{label:<68}{seconds:>10.3f}   (first step incl. setup and compilation {setup:.3f})")
    log(f"{'official loop, rosinality-style generator (faithful)':<68}{official_rosinality:>10.3f}")
    log(f"{'official loop, our generator':<68}{official_ours_gen:>10.3f}")
    summary = {"speedup_vs_official": official_rosinality / ours, "speedup_vs_official_loop_same_generator": official_ours_gen / ours}
    for precision, (seconds, _) in list(ours_by_precision.items())[1:]:
        summary[f"speedup_vs_official_{precision}"] = official_rosinality / seconds
    for k, v in summary.items():
        log(f"{k}: {v:.3g}")
    return summary


def bench_inversion(batches=(1, 8), repeats=3, device="cpu", resolution=256, opt_steps=1000,
                    clip_name="ViT-B-32", with_optimisation=True, log=print):
    """Seconds per image for e4e inversion and essence encoding (full-size IR-SE50 networks,
    random weights), and the per-target optimisation they replace, measured in the same run."""
    from targetclip_core.encoders.e4e import EncoderConfig, StyleEncoder
    from targetclip_core.encoders.inversion import Inverter
    from targetclip_core.methods.targetclip.essence_encoder import EssenceEncoder

    device = torch.device(device)
    torch.manual_seed(0)
    inverter = Inverter(StyleEncoder(EncoderConfig()).eval(), torch.zeros(512), add_latent_avg=True).to(device)
    encoder = EssenceEncoder(Inverter(StyleEncoder(EncoderConfig()).eval(), None, add_latent_avg=False)).to(device)
    log(f"e4e inversion / essence encoding (IR-SE50, 18 x 512, 256 px input), {device.type}: {machine_description(device)}")
    log(f"min of {repeats} runs after a warm-up; seconds per image")
    summary = {}
    for batch in batches:
        photos = torch.rand(batch, 3, 1024, 1024, generator=torch.Generator().manual_seed(batch)).to(device) * 2 - 1
        invert = min_time(lambda: inverter.invert(photos, batch_size=batch), repeats, device) / batch
        encode = min_time(lambda: encoder.encode(photos), repeats, device) / batch
        summary[f"invert_s_per_image_batch{batch}"] = invert
        summary[f"encode_s_per_image_batch{batch}"] = encode
        log(f"batch {batch:<4} invert {invert:8.4f}   encode essence {encode:8.4f}")
    if with_optimisation:
        from targetclip_core.encoders.clip import load_clip
        from targetclip_core.methods.targetclip.optimize import optimize_essence, sample_sources

        G = random_generator(resolution).to(device)
        C = load_clip(clip_name, None, device=device)
        target = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3)).to(device) * 2 - 1
        stamps = []
        optimize_essence(G, C, target, steps=3, sources=sample_sources(G, 4, 0.7, seed=0),
                         callback=lambda info: stamps.append(time.perf_counter()))
        per_step = min(b - a for a, b in zip(stamps, stamps[1:]))
        per_target = per_step * opt_steps
        one_pass = summary[f"encode_s_per_image_batch{batches[0]}"]
        summary["optimise_s_per_target"] = per_target
        summary["encoder_speedup_vs_optimisation"] = per_target / one_pass
        log(f"per-target optimisation ({opt_steps} steps x {per_step:.3f} s/step measured, StyleGAN2 {resolution}px, "
            f"CLIP {clip_name}): {per_target:.1f} s; one encoder pass is {per_target / one_pass:.0f}x faster")
    return summary


def min_time(fn, repeats, device) -> float:
    """The fastest of `repeats` timed calls of fn after a warm-up, the device waited for around each."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync_device(device)
        t0 = time.perf_counter()
        fn()
        sync_device(device)
        best = min(best, time.perf_counter() - t0)
    return best


def ffhq512_eg3d_config():
    """The architecture of EG3D's `ffhq512-128.pkl` (random weights are timed like trained ones)."""
    from targetclip_core.generators.eg3d import EG3DConfig

    channels = {r: min(32768 // r, 512) for r in (4, 8, 16, 32, 64, 128, 256)}
    backbone = StyleGAN2Config(resolution=256, channels=channels, c_dim=25, n_mlp=2, img_channels=96)
    rendering = {"depth_resolution": 48, "depth_resolution_importance": 48, "ray_start": 2.25, "ray_end": 3.3,
                 "box_warp": 1, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2], "c_scale": 1.0}
    return EG3DConfig(backbone=backbone, img_resolution=512, superresolution_module="SuperresolutionHybrid8XDC",
                      sr_conv_clamp=256.0, neural_rendering_resolution=128, rendering=rendering, source_format="random")


def bench_eg3d(frames=8, neural_resolution=128, repeats=2, device="cpu", G=None, log=print):
    """Seconds per frame of EG3D (ffhq512-128 architecture unless a checkpoint is given):
    one full frame and its parts, and an orbit of `frames` views rendered frame by frame
    (backbone every frame) vs from cached tri-planes (`render_views`), in the same run."""
    from targetclip_core.generators.cameras import orbit
    from targetclip_core.generators.eg3d import EG3DGenerator

    device = torch.device(device)
    if G is None:
        torch.manual_seed(0)
        G = EG3DGenerator(ffhq512_eg3d_config()).eval().requires_grad_(False)
    G = G.to(device)
    r = G.rendering
    log(f"EG3D {G.resolution}px, neural rendering {neural_resolution}px, {r['depth_resolution']}+"
        f"{r['depth_resolution_importance']} samples per ray, {device.type}: {machine_description(device)}")
    log(f"min of {repeats} runs after a warm-up; deterministic sampling")
    ws = G.to_wplus(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)).to(device)))
    styles = G.styles(ws)
    backbone_styles, sr_styles = G._split_styles(styles)
    cams = G.camera(*orbit(frames))
    summary = {}
    with torch.no_grad():
        planes = G.triplanes(backbone_styles)
        raw = G.render_triplanes(planes, sr_styles, cams[:1], neural_resolution, super_resolve=False)
        feature_image = torch.cat([raw["image_raw"], raw["image_raw"].new_zeros(1, 29, neural_resolution, neural_resolution)], 1)
        parts = {
            "backbone (tri-planes)": lambda: G.triplanes(backbone_styles),
            "volume rendering": lambda: G.render_triplanes(planes, sr_styles, cams[:1], neural_resolution, super_resolve=False),
            "super-resolution": lambda: G.superresolution(feature_image[:, :3], feature_image, sr_styles, "none"),
            "full frame": lambda: G.render(ws, cams[:1], neural_resolution),
        }
        for label, fn in parts.items():
            summary[label] = min_time(fn, repeats, device)
            log(f"{label:<28}{summary[label]:10.3f} s")
        if not G.rendering["white_back"] and G.rendering["ray_start"] != "auto" and not G.rendering["disparity_space_sampling"]:
            from targetclip_core.bench.baselines import reference_volume_render
            from targetclip_core.generators.cameras import split_label
            from targetclip_core.generators.volume_rendering import ray_bundle

            pose, K = split_label(cams[:1])
            origins, dirs = ray_bundle(pose, K, neural_resolution)
            ours = G._volume_render(planes, origins, dirs, True, None)
            ref = reference_volume_render(G, planes, origins, dirs)
            diff = max(float((a - b).abs().max()) for a, b in zip(ours, ref))
            base = min_time(lambda: reference_volume_render(G, planes, origins, dirs), repeats, device)
            summary["volume rendering, reference layout"] = base
            summary["volume_rendering_speedup"] = base / summary["volume rendering"]
            log(f"{'reference-layout rendering':<28}{base:10.3f} s   (ours {base / summary['volume rendering']:.2f}x; "
                f"max |difference| {diff:.1e})")
        per_frame = min_time(lambda: [G.render(ws, cams[k : k + 1], neural_resolution) for k in range(frames)], 1, device) / frames
        cached = min_time(lambda: list(G.render_views(ws, cams, neural_resolution)), 1, device) / frames
    summary.update(orbit_s_per_frame_naive=per_frame, orbit_s_per_frame_cached=cached, orbit_speedup=per_frame / cached)
    log(f"orbit of {frames}: frame by frame {per_frame:.3f} s/frame, cached tri-planes {cached:.3f} s/frame "
        f"({per_frame / cached:.2f}x)")
    return summary


def bench_reconstruction(resolution=1024, steps=3, device="cpu", with_lpips=True, with_arcface=True, log=print):
    """Seconds per W+ refinement step and per pivotal-tuning step on a random StyleGAN2 (rosinality channel plan),
    with LPIPS (random AlexNet trunk, the lpips package's heads) and ArcFace (random IR-SE50) as the CLI runs
    them; the peak memory after each. Returns the summary dict."""
    import resource
    import tempfile

    from targetclip_core.methods.reconstruction import Locality, ReconstructionTerms, pivotal_tuning, refine_inversion

    device = torch.device(device)
    G = random_generator(resolution).to(device)
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(1, 3, resolution, resolution, generator=gen) * 2 - 1).to(device)
    wp = (torch.randn(1, G.n_latent, G.w_dim, generator=gen) * 0.5).to(device)
    lpips = arcface = None
    if with_lpips:
        lpips = _random_lpips(device, tempfile.mkdtemp(prefix="targetclip-bench-"))
    if with_arcface:
        from targetclip_core.encoders.arcface import ArcFace

        arcface = ArcFace().eval().requires_grad_(False).to(device)

    def peak_gb() -> float:
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def timed(run) -> float:
        stamps = []

        def stamp(info) -> None:  # returns None: the run goes on
            sync_device(device)
            stamps.append(time.perf_counter())

        run(stamp)
        return min(b - a for a, b in zip(stamps, stamps[1:]))  # the first step includes warm-up

    terms = ReconstructionTerms(l2=1.0, lpips=1.0 if lpips is not None else 0.0, identity=0.1 if arcface is not None else 0.0)
    refine = timed(lambda cb: refine_inversion(G, target, wp, steps=steps + 1, terms=terms, lpips=lpips, arcface=arcface,
                                               callback=cb))
    refine_peak = peak_gb()
    pti_terms = ReconstructionTerms(l2=1.0, lpips=terms.lpips)
    pti = timed(lambda cb: pivotal_tuning(G, target, wp, steps=steps + 1, terms=pti_terms, lpips=lpips,
                                          locality=Locality(every=1), stop_below_lpips=None, callback=cb))
    pti_peak = peak_gb()
    log(f"StyleGAN2 {resolution}px, {device.type}: {machine_description(device)}")
    log(f"terms: L2{' + LPIPS (alex)' if lpips is not None else ''}{' + ArcFace identity' if arcface is not None else ''}"
        f"; PTI with the locality term on every step (its most expensive setting); min of {steps} steps")
    log(f"refine_inversion: {refine:.3f} s/step, peak {refine_peak:.2f} GB")
    log(f"pivotal_tuning:   {pti:.3f} s/step, peak {pti_peak:.2f} GB")
    return {"refine_s_per_step": refine, "pti_s_per_step": pti, "refine_peak_gb": refine_peak, "pti_peak_gb": pti_peak}


def _random_lpips(device, folder: str):
    """LPIPS (alex) with a random torchvision AlexNet trunk written to `folder`, loaded as a user's file would be."""
    import os

    import torchvision

    from targetclip_core.encoders.perceptual import BACKBONES, try_load_lpips

    path = os.path.join(folder, BACKBONES["alex"][0])
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    lpips, _ = try_load_lpips("alex", backbone=path, device=device)
    return lpips


def bench_edit_video(clip, resolution=1024, max_frames=8, device="cpu", log=print):
    """Seconds per frame of edit_clip on a real clip (a face is needed for the detector): a random StyleGAN2
    (rosinality channel plan) at `resolution`, a full-size random e4e (IR-SE50, its W+), a random essence; the
    stages timed from the progress callback. Returns the summary dict."""
    from targetclip_core.encoders.e4e import EncoderConfig, StyleEncoder
    from targetclip_core.encoders.inversion import Inverter
    from targetclip_core.io.video import read_clip
    from targetclip_core.methods.targetclip.essence import Essence
    from targetclip_core.methods.video import edit_clip, essence_edit

    device = torch.device(device)
    source = read_clip(clip, max_frames=max_frames)
    G = random_generator(resolution).to(device)
    cfg = EncoderConfig(n_styles=G.n_latent, w_dim=G.w_dim)
    inverter = Inverter(StyleEncoder(cfg).eval(), torch.zeros(G.w_dim), add_latent_avg=True).to(device)
    inverter.requires_grad_(False)
    vector = 0.3 * torch.randn(1, G.n_latent, G.w_dim, generator=torch.Generator().manual_seed(0))
    edit = essence_edit(G, Essence(vector=vector, generator=dict(G.identity), name="random"))
    last: dict = {}

    def on_frame(stage, done, total):
        last[stage] = time.perf_counter()

    start = time.perf_counter()
    result = edit_clip(source.frames, inverter, edit, resolution=G.resolution, device=device, on_frame=on_frame)
    end = time.perf_counter()
    n = len(result.faces)
    faces = n - result.frames_without_face
    stages = {"track (detect)": last["track"] - start}
    if "invert" in last:
        stages["align + invert"] = last["invert"] - last["track"]
        stages["edit + paste back"] = last["edit"] - last["invert"]
    log(f"edit_clip: {n} frames of {source.frames.shape[2]}x{source.frames.shape[1]} ({faces} with a face), "
        f"StyleGAN2 {resolution}px + e4e IR-SE50, {device.type}: {machine_description(device)}")
    for name, seconds in stages.items():
        log(f"  {name:<20}{seconds / n:>8.2f} s/frame")
    log(f"  {'total':<20}{(end - start) / n:>8.2f} s/frame")
    return {"s_per_frame": (end - start) / n, **{k: v / n for k, v in stages.items()}}
