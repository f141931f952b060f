"""Where and in what precision the engine computes: the default device when a caller names none, and the
reduced-precision option (fp32 | bf16 | fp16 | auto) as a torch.autocast context."""

from __future__ import annotations

import torch

from targetclip_core.errors import TargetCLIPError


def default_device(device=None) -> torch.device:
    """`device` as a torch.device; None picks CUDA, then Apple MPS, then the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --------------------------------------------------------------------------- reduced precision

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bfloat16 in hardware (Intel AMX-BF16 / AVX512-BF16, Arm BF16): there bf16
    convolutions run about twice as fast as fp32 (measured: `targetclip bench optimize --precision`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "").split()
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16", "bf16"} & set(flags))


def resolve_precision(precision: str, device) -> torch.dtype:
    """The compute dtype of `precision` ("fp32", "bf16", "fp16" or "auto") on `device`.

    auto: bf16 on CUDA GPUs of compute capability 8 or later (Ampere on) and on CPUs with bf16 units, fp16 on
    older CUDA GPUs, fp32 everywhere else (CPUs without bf16 units emulate it slower than fp32; Apple MPS is
    kept at fp32 until measured). fp16 on a CPU is refused: PyTorch's CPU kernels are slow or missing for it."""
    if precision not in PRECISIONS:
        raise TargetCLIPError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            major, _ = torch.cuda.get_device_capability(device)
            return torch.bfloat16 if major >= 8 else torch.float16
        if device.type == "cpu" and cpu_has_bf16_units():
            return torch.bfloat16
        return torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise TargetCLIPError("fp16 is not offered on the CPU (slow or missing kernels): use bf16 or fp32")
    return _DTYPES[precision]


def resolved_name(precision: str, device) -> str:
    """What `precision` computes in on `device`, by name ("fp32", "bf16", "fp16"): auto resolved."""
    dtype = resolve_precision(precision, device)
    return next(name for name, d in _DTYPES.items() if d == dtype)


def autocast(precision: str, device):
    """A context computing in `precision` on `device` (torch.autocast: matmuls and convolutions in the reduced
    type, reductions and losses in fp32); fp32 is a plain no-op context."""
    import contextlib

    dtype = resolve_precision(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def active_autocast_dtype(device_type: str) -> torch.dtype | None:
    """The reduced type an enclosing torch.autocast computes in on `device_type`, or None outside one. Code with
    its own low-precision path (the frozen synthesis layer) reads it and then runs with autocast off."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4: no device-type arguments
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
        if not enabled:
            return None
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def full_precision(device_type: str):
    """A context where an enclosing autocast is off: the parts that must stay fp32 (demodulation, the RGB skip
    sum, statistics) run in their own types there."""
    return torch.autocast(device_type, enabled=False)


def widened(t: torch.Tensor) -> torch.Tensor:
    """`t` in fp32 when it is in a reduced type (bf16 / fp16), else as it is (fp32 and fp64 stay)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


# --------------------------------------------------------------------------- torch.compile, where it can run


def compile_supported(device) -> str | None:
    """Why torch.compile is not tried on `device` here, or None when it is: it needs torch 2.1+, a CUDA or CPU
    device (MPS support is partial) and, for Inductor's C++/Triton code, not Windows (no compiler by default)."""
    import sys

    if not hasattr(torch, "compile") or tuple(int(p) for p in torch.__version__.split(".")[:2] if p.isdigit()) < (2, 1):
        return f"torch {torch.__version__} has no usable torch.compile (2.1 or later)"
    if sys.platform == "win32":
        return "torch.compile needs a compiler toolchain that Windows installs lack"
    if torch.device(device).type not in ("cuda", "cpu"):
        return f"torch.compile is not used on {torch.device(device).type}"
    return None


class Compiled:
    """`fn` through torch.compile, falling back to `fn` itself, with one warning, where compilation is not
    supported (compile_supported) or fails at the first call (no compiler, an unsupported op): a slower run,
    never a failed one. Only for pure functions (the fallback calls `fn` again with the same arguments)."""

    def __init__(self, fn, device, what: str):
        self.fn, self.what = fn, what
        self.reason = compile_supported(device)
        self.compiled = None if self.reason else torch.compile(fn, dynamic=False)
        if self.reason:
            _warn_uncompiled(what, self.reason)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # any compiler failure: the eager function computes the same
                self.compiled = None
                _warn_uncompiled(self.what, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return self.fn(*args, **kwargs)


def _warn_uncompiled(what: str, reason: str) -> None:
    import warnings

    warnings.warn(f"{what} runs uncompiled: {reason}", RuntimeWarning, stacklevel=3)
